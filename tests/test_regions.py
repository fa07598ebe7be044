"""Tests for regions.py: region head parity with open_clip's encode_image, box checks, frozen BN, proposals."""
import json
import math

import pytest
import torch

from regionclip_min import regions
from regionclip_min.clip_model import load_clip
from regionclip_min.proposals import grid_boxes, load_proposals_file, random_boxes
from regionclip_min.regions import CropEncoder, RegionEncoder, attention_pool, whole_image_boxes


def _randomize_batchnorm(model, seed=0):
    """Random BN statistics and affine terms, so parity tests exercise every branch (open_clip zero-inits
    each bn3 weight, which would make the residual branches vanish at random init)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    model, _ = load_clip("RN-toy")
    return _randomize_batchnorm(model).eval()


@pytest.fixture(scope="module")
def rn50():
    torch.manual_seed(0)
    model, _ = load_clip("RN50")
    return _randomize_batchnorm(model).eval()


def _rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("name,size,pooler", [("toy", 128, 8), ("rn50", 224, 14)])
def test_whole_image_region_equals_encode_image(name, size, pooler, request):
    model = request.getfixturevalue(name)
    enc = RegionEncoder(model.visual)
    assert enc.pooler_size == pooler
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fmap = enc.feature_map(x)  # (B, C4, H/16, W/16)
        assert fmap.shape[-2:] == (size // 16, size // 16)
        pooled = enc.pool(fmap, whole_image_boxes(x))  # (B, C4, P, P)
        region = enc.head(pooled)  # (B, D)
        reference = model.encode_image(x)  # (B, D)
        one_by_one = torch.cat([enc(x[i:i + 1], whole_image_boxes(x[i:i + 1])) for i in range(2)])
    # the whole-image box samples every res4 cell at its centre: pooling is the identity on the map
    assert torch.allclose(pooled, fmap, rtol=0, atol=1e-6)
    assert region.shape == reference.shape
    assert _rel_err(region, reference) <= 1e-4
    assert _rel_err(one_by_one, reference) <= 1e-4


def test_sampling_ratio_exactness(toy):
    """sampling_ratio 0 and 1 sample each res4 cell at its centre (exact); 2 averages off-centre samples."""
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = toy.encode_image(x)
        fmap = RegionEncoder(toy.visual).feature_map(x)
        for sr in (0, 1, 2):
            enc = RegionEncoder(toy.visual, sampling_ratio=sr)
            pooled = enc.pool(fmap, whole_image_boxes(x))
            exact = torch.allclose(pooled, fmap, rtol=0, atol=1e-6)
            assert exact == (sr in (0, 1)), sr
            if exact:
                assert _rel_err(enc.head(pooled), reference) <= 1e-5


def test_batched_regions_equal_one_by_one(toy):
    enc = RegionEncoder(toy.visual)
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    boxes = [torch.tensor([[10.0, 20.0, 90.0, 100.0], [0.0, 0.0, 40.0, 30.5]]), torch.tensor([[5.0, 5.0, 120.0, 64.0]])]
    with torch.no_grad():
        batched = enc(x, boxes)  # (3, D)
        single = torch.cat([enc(x[i:i + 1], [boxes[i]]) for i in range(2)])  # (3, D)
    assert batched.shape == (3, 64)
    assert _rel_err(batched, single) <= 1e-5


def test_inference_runs_the_head_in_chunks_with_the_same_outputs(toy, monkeypatch):
    enc = RegionEncoder(toy.visual)
    pooled = torch.randn(600, 256, enc.pooler_size, enc.pooler_size, generator=torch.Generator().manual_seed(4))
    sizes = []
    layer4 = toy.visual.layer4.forward
    monkeypatch.setattr(toy.visual.layer4, "forward", lambda x: sizes.append(len(x)) or layer4(x))
    with torch.no_grad():
        chunked = enc.head(pooled)  # (600, D)
        whole = attention_pool(toy.visual.attnpool, layer4(pooled))  # (600, D), one call
    assert sizes == [256, 256, 88]
    assert _rel_err(chunked, whole) <= 1e-5
    sizes.clear()
    enc.head(pooled[:300].requires_grad_())  # training: one call, the graph intact
    assert sizes == [300]


def test_box_list_count_checked_before_roi_align(toy, monkeypatch):
    enc = RegionEncoder(toy.visual)
    called = []
    monkeypatch.setattr(regions, "roi_align", lambda *a, **k: called.append(1))
    fmap = torch.randn(2, 256, 8, 8)
    box = torch.tensor([[0.0, 0.0, 64.0, 64.0]])
    for boxes_list in ([box], [box, box, box]):
        with pytest.raises(ValueError, match="box lists for a batch of 2"):
            enc.pool(fmap, boxes_list)
        with pytest.raises(ValueError, match="box lists for a batch of 2"):
            enc(torch.randn(2, 3, 128, 128), boxes_list)
    assert not called


@pytest.mark.parametrize("bad,match", [
    (torch.tensor([[0.0, 0.0, float("nan"), 10.0]]), "non-finite"),
    (torch.tensor([[0.0, 0.0, float("inf"), 10.0]]), "non-finite"),
    (torch.tensor([[0, 0, 10, 10]]), "float"),
    (torch.tensor([0.0, 0.0, 10.0, 10.0]), r"\(R_i, 4\)"),
    (torch.zeros(2, 5), r"\(R_i, 4\)"),
])
def test_bad_boxes_raise(toy, bad, match):
    enc = RegionEncoder(toy.visual)
    with pytest.raises(ValueError, match=match):
        enc.pool(torch.randn(1, 256, 8, 8), [bad])
    with pytest.raises(ValueError, match="list"):
        enc.pool(torch.randn(1, 256, 8, 8), torch.zeros(1, 5))


def test_empty_box_lists(toy):
    enc = RegionEncoder(toy.visual)
    x = torch.randn(2, 3, 128, 128)
    fmap = enc.feature_map(x)
    pooled = enc.pool(fmap, [torch.zeros(0, 4), torch.zeros(0, 4)])
    assert pooled.shape == (0, 256, 8, 8)
    assert enc.head(pooled).shape == (0, 64)
    mixed = enc(x, [torch.zeros(0, 4), torch.tensor([[0.0, 0.0, 128.0, 128.0]])])
    assert mixed.shape == (1, 64)
    none = enc(x, [torch.zeros(0, 4), torch.zeros(0, 4)])
    assert none.shape == (0, 64)
    none.sum().backward()  # a batch without proposals still backpropagates (zero gradient)


def test_train_keeps_batchnorm_frozen():
    model, _ = load_clip("RN-toy")
    enc = RegionEncoder(model.visual).train()
    bns = [m for m in enc.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    assert all(not p.requires_grad for m in bns for p in m.parameters())
    assert enc.training and enc.visual.attnpool.training and enc.visual.layer4.training
    before = [m.running_mean.clone() for m in bns]
    out = enc(torch.randn(2, 3, 128, 128), [torch.tensor([[0.0, 0.0, 64.0, 64.0]])] * 2)
    out.sum().backward()  # trainable layers still get gradients
    assert enc.visual.layer4[0].conv1.weight.grad is not None
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, bns))
    enc.eval().train()
    assert all(not m.training for m in bns)


def test_whole_image_boxes():
    boxes = whole_image_boxes(torch.zeros(3, 3, 96, 160))
    assert len(boxes) == 3
    assert all(torch.equal(b, torch.tensor([[0.0, 0.0, 160.0, 96.0]])) for b in boxes)


def test_random_boxes_inside_and_deterministic():
    a = random_boxes(500, 100, 150, generator=torch.Generator().manual_seed(0), min_size=8)
    b = random_boxes(500, 100, 150, generator=torch.Generator().manual_seed(0), min_size=8)
    c = random_boxes(500, 100, 150, generator=torch.Generator().manual_seed(1), min_size=8)
    assert a.shape == (500, 4) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a[:, 0] >= 0).all() and (a[:, 1] >= 0).all() and (a[:, 2] <= 150).all() and (a[:, 3] <= 100).all()
    w, h = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    assert (w >= 8 - 1e-4).all() and (h >= 8 - 1e-4).all()
    assert w.max() > 100 and h.max() > 70  # large boxes occur too
    assert random_boxes(0, 100, 150).shape == (0, 4)
    with pytest.raises(ValueError):
        random_boxes(3, 10, 10, min_size=16)


def test_grid_boxes():
    boxes = grid_boxes(64, 128, levels=(1, 2))
    assert boxes.shape == (5, 4)
    assert torch.equal(boxes[0], torch.tensor([0.0, 0.0, 128.0, 64.0]))
    cells = torch.tensor([[0.0, 0, 64, 32], [64, 0, 128, 32], [0, 32, 64, 64], [64, 32, 128, 64]])
    assert torch.equal(boxes[1:], cells)


def test_load_proposals_file(tmp_path):
    path = tmp_path / "props.json"
    path.write_text(json.dumps({"7": [[1, 2, 30, 40, 0.9], [0.5, 0.5, 9.5, 9.5, 0.1]], "8": []}))
    props = load_proposals_file(path)
    assert set(props) == {7, 8}
    assert props[7].shape == (2, 5) and props[7].dtype == torch.float32
    assert props[8].shape == (0, 5)
    assert math.isclose(props[7][1, 2].item(), 9.5)


@pytest.mark.parametrize("content,match", [
    ('{"3": [[1, 2, 3, 4]]}', "image 3, row 0"),
    ('{"3": [[1, 2, 30, 40, 1.0], [5, 2, 5, 40, 0.5]]}', "image 3, row 1: need x2 > x1"),
    ('{"3": [[1, 2, 30, 2, 1.0]]}', "image 3, row 0: need x2 > x1 and y2 > y1"),
    ('{"3": [[1, 2, NaN, 40, 1.0]]}', "image 3, row 0: non-finite"),
    ('{"3": [[1, 2, "30", 40, 1.0]]}', "image 3, row 0"),
    ('{"abc": []}', "image id 'abc'"),
    ('{"3": {"boxes": []}}', "image 3"),
    ('[[1, 2, 3, 4, 5]]', "json object"),
    ('{"3": [', "not valid json"),
])
def test_load_proposals_file_errors(tmp_path, content, match):
    path = tmp_path / "bad_props.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match) as info:
        load_proposals_file(path)
    assert "bad_props.json" in str(info.value)


@pytest.mark.parametrize("name", ["toy", "rn50"])
def test_first_token_attention_pool_equals_open_clips(name, request):
    """attention_pool asks one query instead of G*G + 1; the output must be open_clip's attnpool output."""
    pool = request.getfixturevalue(name).visual.attnpool
    grid = round((pool.positional_embedding.shape[0] - 1) ** 0.5)
    x = torch.randn(5, pool.k_proj.in_features, grid, grid, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours, reference = attention_pool(pool, x), pool(x)
    assert ours.shape == reference.shape and _rel_err(ours, reference) <= 1e-5
    assert {n for n, _ in pool.named_parameters()} == {"positional_embedding", "q_proj.weight", "q_proj.bias",
                                                        "k_proj.weight", "k_proj.bias", "v_proj.weight",
                                                        "v_proj.bias", "c_proj.weight", "c_proj.bias"}


def test_crop_encoder_whole_box_is_encode_image_and_crops_are_squares_with_context(toy):
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        whole = CropEncoder(toy.visual, context=1.0)(x, whole_image_boxes(x))  # (2, D)
        assert _rel_err(whole, toy.encode_image(x)) <= 1e-5  # one sample at each pixel centre: the image itself
        enc = CropEncoder(toy.visual)  # context 1.25
        assert torch.allclose(enc.crop_boxes(torch.tensor([[10.0, 20.0, 30.0, 60.0]])),
                              torch.tensor([[-5.0, 15.0, 45.0, 65.0]]))  # centre (20, 40), side 1.25 x 40
        # a box is encoded from its own pixels: the same object pasted elsewhere gives the same embedding
        obj = torch.randn(3, 40, 40, generator=torch.Generator().manual_seed(4))
        a, b = torch.zeros(1, 3, 256, 256), torch.zeros(1, 3, 256, 256)
        a[..., 20:60, 30:70], b[..., 150:190, 100:140] = obj, obj
        va = enc(a, [torch.tensor([[30.0, 20.0, 70.0, 60.0]])])
        vb = enc(b, [torch.tensor([[100.0, 150.0, 140.0, 190.0]])])
        assert va.shape == (1, 64) and _rel_err(va, vb) <= 1e-5
        with pytest.raises(ValueError, match="2 box"):
            enc(a, [torch.zeros(0, 4), torch.zeros(0, 4)])
    with pytest.raises(ValueError, match="context"):
        CropEncoder(toy.visual, context=0.0)
    assert isinstance(regions.region_encoder("crop", toy.visual, crop_context=1.5), CropEncoder)
    assert type(regions.region_encoder("pooled", toy.visual)) is RegionEncoder
    with pytest.raises(ValueError, match="'pooled' or 'crop'"):
        regions.region_encoder("vild", toy.visual)
