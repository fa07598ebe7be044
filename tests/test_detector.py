"""The open-vocabulary detector (regionclip_min/detector.py) and the detection metrics (scoring.py), issue 5."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.models.detection.roi_heads
from torchvision.models.detection.roi_heads import RoIHeads

from regionclip_min.clip_model import load_clip
from regionclip_min.detector import (AlignedRoIPool, FocalRoIHeads, TextEmbeddingPredictor, build_detector,
                                     set_vocabulary)
from regionclip_min.drawing import draw_detections
from regionclip_min.regions import RegionEncoder
from regionclip_min.rpn import ProposalNetwork, propose
from regionclip_min.scoring import detect, detection_ap, ovd_ap, proposal_recall

TOY = dict(min_size=256, max_size=256, anchor_sizes=(32, 64, 128, 256), rpn_post_nms_top_n_train=50,
           rpn_post_nms_top_n_test=50, box_batch_size_per_image=16)


@pytest.fixture(scope="module")
def visual():
    torch.manual_seed(0)
    return load_clip("RN-toy")[0].visual  # random weights: every invariant below holds for any weights


def _detector(visual, k=9, **kw):
    torch.manual_seed(0)
    return build_detector(visual, torch.randn(k, 64), **{**TOY, **kw})


def _targets(n_images, empty=()):
    out = []
    for i in range(n_images):
        if i in empty:
            out.append({"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)})
        else:
            boxes = torch.tensor([[10.0, 12, 60, 70], [64, 40, 120, 110]])
            out.append({"boxes": boxes, "labels": torch.tensor([1, 4])})
    return out


# ---- predictor ---------------------------------------------------------------------------------------------------
def test_background_is_index_0_with_logit_0_and_classes_are_cosine_over_tau():
    emb = torch.randn(5, 16)
    pred = TextEmbeddingPredictor(emb, tau=0.01)
    x = torch.randn(7, 16)
    logits, deltas = pred(x)
    assert logits.shape == (7, 6) and deltas.shape == (7, 24)
    assert torch.equal(logits[:, 0], torch.zeros(7))
    expected = F.normalize(x, dim=-1) @ F.normalize(emb, dim=-1).t() / 0.01  # class k -> column k + 1
    assert torch.allclose(logits[:, 1:], expected, atol=1e-4)


def test_class_agnostic_deltas_are_the_same_for_every_class():
    pred = TextEmbeddingPredictor(torch.randn(5, 16))
    torch.nn.init.normal_(pred.bbox_pred.weight)  # non-trivial deltas
    _, deltas = pred(torch.randn(7, 16))
    per_class = deltas.view(7, 6, 4)  # (R, K + 1, 4) as torchvision's postprocess reads it
    assert torch.equal(per_class, per_class[:, :1].expand_as(per_class))
    assert per_class.abs().sum() > 0


def test_swapping_the_vocabulary_changes_K_and_nothing_else(visual):
    det = _detector(visual, k=9).eval()
    before = {k: v.clone() for k, v in det.state_dict().items()}
    x = torch.randn(3, 64)
    logits9, deltas9 = det.roi_heads.box_predictor(x)
    new = torch.cat([det.roi_heads.box_predictor.class_embeddings, torch.randn(3, 64)])  # base + 3 novel
    set_vocabulary(det, new)
    after = det.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    logits12, deltas12 = det.roi_heads.box_predictor(x)
    assert logits12.shape == (3, 13) and deltas12.shape == (3, 52)
    assert torch.allclose(logits12[:, :10], logits9, atol=1e-5)  # the old classes score the same
    assert torch.equal(deltas12[:, :4], deltas9[:, :4])
    with pytest.raises(ValueError, match="D ="):
        set_vocabulary(det, torch.randn(4, 32))
    out = det([torch.rand(3, 128, 128)])[0]
    assert out["labels"].numel() == 0 or int(out["labels"].max()) <= 12


# ---- the assembled detector ----------------------------------------------------------------------------------------
def test_backbone_pooler_and_head_reproduce_the_region_encoder(visual):
    det = _detector(visual).eval()
    enc = RegionEncoder(visual).eval()
    x = torch.randn(2, 3, 256, 256)
    boxes = [torch.tensor([[0.0, 0, 256, 256], [10, 20, 100, 120]]), torch.tensor([[5.0, 5, 60, 70]])]
    fmap = det.backbone(x)
    assert torch.equal(fmap, enc.feature_map(x))
    heads = det.roi_heads
    assert heads.box_roi_pool.pooler_size == enc.pooler_size == 8
    assert torch.allclose(heads.box_head(heads.box_roi_pool({"0": fmap}, boxes, None)), enc(x, boxes), atol=1e-6)


def test_pooler_refuses_more_box_lists_than_images():
    pool = AlignedRoIPool(8)
    with pytest.raises(ValueError, match="box lists"):
        pool({"0": torch.randn(1, 4, 16, 16)}, [torch.zeros(1, 4), torch.zeros(1, 4)], None)


def test_frozen_parts_and_batchnorm_stay_frozen(visual):
    det = _detector(visual)
    det.train()
    bns = [m for m in det.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and not any(m.training for m in bns)
    assert not any(p.requires_grad for m in bns for p in m.parameters())
    grads = {n: p.requires_grad for n, p in det.named_parameters()}
    assert not any(v for n, v in grads.items() if n.startswith(("backbone.conv", "backbone.layer1")))
    convs = [m for m in det.backbone.layer2.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.weight.requires_grad for m in convs)
    assert grads["roi_heads.box_predictor.bbox_pred.weight"] and grads["rpn.head.conv.0.0.weight"]
    assert "roi_heads.box_predictor.class_embeddings" not in det.state_dict()  # vocabulary is not a weight
    assert det.transform.image_mean == [0.48145466, 0.4578275, 0.40821073]  # CLIP's, not ImageNet's


def test_image_without_boxes_trains_with_zero_box_losses(visual):
    det = _detector(visual).train()
    losses = det([torch.rand(3, 128, 128)], _targets(1, empty=(0,)))
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert losses["loss_box_reg"].item() == 0 and losses["loss_rpn_box_reg"].item() == 0
    assert all(math.isfinite(v.item()) for v in losses.values())
    sum(losses.values()).backward()
    # mixed batch: the empty image contributes background RoIs only, everything stays finite
    losses = det([torch.rand(3, 128, 128), torch.rand(3, 128, 128)], _targets(2, empty=(1,)))
    assert all(math.isfinite(v.item()) for v in losses.values()) and losses["loss_box_reg"].item() > 0


def test_focal_heads_with_gamma_0_and_weight_1_equal_torchvisions_losses_at_beta_0(visual, monkeypatch):
    """FocalRoIHeads(gamma 0, background weight 1) gives torchvision's fastrcnn_loss exactly once its smooth-L1 runs
    at beta 0 (detectron2's SMOOTH_L1_BETA, the official value; torchvision hard-codes 1/9): plain CE, and a box loss
    that reads the deltas of the true class, which class-agnostic regression makes the same as ours."""
    smooth_l1 = F.smooth_l1_loss
    monkeypatch.setattr(torchvision.models.detection.roi_heads.F, "smooth_l1_loss",
                        lambda a, b, beta, reduction: smooth_l1(a, b, beta=0.0, reduction=reduction))
    det = _detector(visual, focal_gamma=0.0, background_weight=1.0).train()
    ours = det.roi_heads
    theirs = RoIHeads(ours.box_roi_pool, ours.box_head, ours.box_predictor, 0.5, 0.5, 16, 0.25, None, 0.05, 0.5, 100)
    fmap = {"0": det.backbone(torch.randn(2, 3, 256, 256))}
    proposals = [torch.tensor([[0.0, 0, 100, 100], [20, 24, 120, 140], [128, 80, 240, 220]])] * 2
    targets = [{"boxes": t["boxes"] * 2, "labels": t["labels"]} for t in _targets(2)]
    out = []
    for heads in (ours, theirs):
        torch.manual_seed(3)  # the same RoI sample
        out.append(heads(fmap, [p.clone() for p in proposals], [(256, 256)] * 2, targets)[1])
    for k in ("loss_classifier", "loss_box_reg"):
        assert torch.allclose(out[0][k], out[1][k], atol=1e-6), k
    focal = _detector(visual).roi_heads  # the COCO recipe (0.5, 0.2) gives a different, smaller loss
    assert isinstance(focal, FocalRoIHeads) and (focal.focal_gamma, focal.background_weight) == (0.5, 0.2)


def test_eval_outputs_are_in_the_input_image_frame(visual):
    det = _detector(visual, box_score_thresh=0.0).eval()
    out = det([torch.rand(3, 128, 96)])[0]
    assert out["boxes"].shape[1] == 4 and len(out["boxes"]) > 0
    assert out["boxes"][:, [0, 2]].max() <= 96 and out["boxes"][:, [1, 3]].max() <= 128
    assert int(out["labels"].min()) >= 1


def test_offline_rpn_is_frozen_and_gives_no_loss(visual):
    torch.manual_seed(0)
    kw = dict(anchor_sizes=(32, 64, 128, 256), aspect_ratios=(0.5, 1.0, 2.0), pre_nms_top_n_train=200,
              pre_nms_top_n_test=200, post_nms_top_n_train=50, post_nms_top_n_test=50, nms_thresh=0.7,
              batch_size_per_image=64)
    rpn = ProposalNetwork(load_clip("RN-toy")[0].visual, min_size=256, max_size=256, **kw)
    det = _detector(visual, offline_rpn=rpn).train()
    assert not rpn.training and not any(p.requires_grad for p in rpn.parameters())
    before = {k: v.clone() for k, v in rpn.state_dict().items()}
    losses = det([torch.rand(3, 128, 128)], _targets(1))
    assert set(losses) == {"loss_classifier", "loss_box_reg"}
    torch.optim.SGD([p for p in det.parameters() if p.requires_grad], lr=1.0).zero_grad()
    sum(losses.values()).backward()
    assert all(torch.equal(before[k], v) for k, v in rpn.state_dict().items())


def test_propose_returns_boxes_in_the_pixels_of_the_images_passed(visual):
    torch.manual_seed(0)
    rpn = ProposalNetwork(visual, min_size=256, max_size=256, anchor_sizes=(32, 64, 128, 256),
                          aspect_ratios=(0.5, 1.0, 2.0), pre_nms_top_n_train=200, pre_nms_top_n_test=200,
                          post_nms_top_n_train=50, post_nms_top_n_test=50, nms_thresh=0.7, batch_size_per_image=64)
    image = torch.rand(3, 128, 128)
    small = propose(rpn, [image], 20)[0]
    assert 0 < len(small) <= 20 and small.shape[1] == 4 and small.max() <= 128 and small.max() > 64
    # the 2x image, enlarged exactly as the network's own transform enlarges the 128-px one: it sees the same
    # tensor, so the boxes must come back twice as large
    big = propose(rpn, [F.interpolate(image[None], scale_factor=2.0, mode="bilinear", recompute_scale_factor=True,
                                      align_corners=False)[0]], 20)[0]
    assert torch.allclose(big, 2 * small, atol=1e-3)
    normed = propose(rpn, (image[None] - torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1))
                     / torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1), 20, clip_normalized=True)
    assert torch.allclose(normed[0], small, atol=1e-3)
    fewer = propose(rpn, [image], 20, nms_thresh=0.3)[0]
    assert len(fewer) <= 20 and torch.equal(fewer[0], small[0])  # the best box survives any NMS
    rows = propose(rpn, [image], 20, with_scores=True)[0]  # proposals-file rows [x1, y1, x2, y2, objectness]
    assert rows.shape == (len(small), 5) and torch.equal(rows[:, :4], small)
    assert (rows[:, 4] >= 0).all() and (rows[:, 4] <= 1).all() and (rows[:-1, 4] >= rows[1:, 4]).all()


# ---- detection metrics --------------------------------------------------------------------------------------------
def _gt():
    cats = [{"id": 1, "name": "a", "split": "base", "frequency": "f"}, {"id": 2, "name": "b", "split": "base",
            "frequency": "c"}, {"id": 7, "name": "n", "split": "novel", "frequency": "r"}]
    images = [{"id": i, "file_name": f"{i}.png", "width": 100, "height": 100} for i in (1, 2)]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30]},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [50, 50, 40, 30]},
            {"id": 3, "image_id": 2, "category_id": 2, "bbox": [5, 20, 50, 60]},
            {"id": 4, "image_id": 2, "category_id": 7, "bbox": [60, 10, 30, 30]}]
    return {"images": images, "annotations": anns, "categories": cats}


def _perfect(gt, cats=None):
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
            for a in gt["annotations"] if cats is None or a["category_id"] in cats]


def test_perfect_detections_give_ap50_and_ap_of_one(tmp_path):
    gt = _gt()
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    m = ovd_ap(str(path), _perfect(gt))
    assert m["ap50"] == pytest.approx({"novel": 1.0, "base": 1.0, "all": 1.0}) and m["ap"]["all"] == pytest.approx(1)
    assert m["n_images"] == 2 and m["lvis"] == pytest.approx({"APr": 1.0, "APc": 1.0, "APf": 1.0, "AP": 1.0})
    assert m["per_category"]["n"] == pytest.approx({"ap50": 1.0, "ap": 1.0})


def test_novel_only_detections_split_correctly():
    """Perfect novel boxes and nothing else: novel 1, base 0 (ground truth, no detection), all = mean of the 3."""
    gt = _gt()
    m = ovd_ap(gt, _perfect(gt, cats={7}))
    assert m["ap50"]["novel"] == pytest.approx(1) and m["ap50"]["base"] == 0
    assert m["ap50"]["all"] == pytest.approx(1 / 3)
    # without base ground truth the base number is undefined (nan), not 0
    gt_novel_only = {**gt, "annotations": [a for a in gt["annotations"] if a["category_id"] == 7]}
    m = ovd_ap(gt_novel_only, _perfect(gt, cats={7}))
    assert m["ap50"]["novel"] == pytest.approx(1) and math.isnan(m["ap50"]["base"])
    assert m["ap50"]["all"] == pytest.approx(1)


def test_ap_counts_misses_wrong_classes_and_empty_results():
    gt = _gt()
    shifted = [{**d, "bbox": [d["bbox"][0] + 25, *d["bbox"][1:]]} for d in _perfect(gt)]  # IoU < 0.5
    assert ovd_ap(gt, shifted)["ap50"]["all"] == 0.0
    swapped = [{**d, "category_id": 1 if d["category_id"] == 2 else 2 if d["category_id"] == 1 else 7}
               for d in _perfect(gt)]
    assert ovd_ap(gt, swapped)["ap50"]["base"] == 0.0
    empty = ovd_ap(gt, [])
    assert empty["ap50"] == {"novel": 0.0, "base": 0.0, "all": 0.0}
    one_image = detection_ap(gt, _perfect(gt), groups={"x": [1, 2]}, image_ids=[1])
    assert one_image["ap50"]["x"] == pytest.approx(1)
    assert math.isnan(one_image["per_category"][2]["ap50"])  # category 2 has no ground truth in image 1


def test_proposal_recall_and_drawing(tmp_path):
    props = [torch.tensor([[10.0, 10, 40, 40]]), torch.zeros(0, 4)]
    gts = [torch.tensor([[10.0, 10, 40, 40], [60, 60, 90, 90]]), torch.tensor([[0.0, 0, 5, 5]])]
    novel = [torch.tensor([False, True]), torch.tensor([True])]
    r = proposal_recall(props, gts, novel)
    assert r == {"all": pytest.approx(1 / 3), "base": 1.0, "novel": 0.0, "n_boxes": 3}
    path = tmp_path / "p.png"
    draw_detections(torch.rand(3, 64, 64), torch.tensor([[4.0, 4, 30, 30]]), ["circle"], torch.tensor([0.9]), path,
                    is_novel=[True])
    from PIL import Image
    assert Image.open(path).size == (192, 192)


def test_a_second_vocabulary_in_the_same_pass_equals_its_own_pass(visual, toy_world):
    """open_vocabulary_ap's closed-vocabulary score comes from the open pass's RoIs (set_vocabulary also=): the
    detections must be those of a separate pass with the base names alone, boxes back in json pixels."""
    from regionclip_min.data import DetectionDataset
    det = _detector(visual, k=12, box_score_thresh=0.0).eval()
    emb = torch.randn(12, 64)
    val = DetectionDataset(toy_world["instances_val_all"], toy_world["images"])  # 128 px, the detector runs at 256
    base = val.category_ids[::2]
    sub = emb[[val.category_ids.index(c) for c in base]]
    set_vocabulary(det, emb)
    whole, _ = detect(det, val, max_images=2)
    set_vocabulary(det, sub)
    closed, _ = detect(det, val, max_images=2, category_ids=base)
    set_vocabulary(det, emb, also={"closed": sub})
    whole2, ids, also = detect(det, val, max_images=2, also={"closed": base})
    assert whole2 == whole and also["closed"] == closed and len(closed) > 0 and len(ids) == 2
    set_vocabulary(det, emb)  # drops the second vocabulary
    assert det.roi_heads.also == {} and detect(det, val, max_images=2)[0] == whole


def test_detect_maps_labels_to_the_given_category_ids(toy_world):
    from regionclip_min.data import DetectionDataset

    class Fixed(torch.nn.Module):  # two boxes per image, labels 1 and 2 of whatever vocabulary it holds
        def forward(self, images):
            return [{"boxes": torch.tensor([[0.0, 0.0, 8.0, 8.0], [2.0, 2.0, 9.0, 9.0]]),
                     "labels": torch.tensor([1, 2]), "scores": torch.tensor([0.9, 0.8])} for _ in images]

    val = DetectionDataset(toy_world["instances_val_all"], toy_world["images"])
    whole, ids = detect(Fixed(), val, max_images=3)
    assert [r["category_id"] for r in whole[:2]] == val.category_ids[:2] and len(ids) == 3
    base = [c for c, s in zip(val.category_ids, val.category_splits) if s == "base"][::-1]  # any subset, any order
    closed, _ = detect(Fixed(), val, max_images=3, category_ids=base)
    assert [r["category_id"] for r in closed[:2]] == base[:2]
    assert [r["bbox"] for r in closed] == [r["bbox"] for r in whole]
