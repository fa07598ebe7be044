"""Tests for clip_model.py: configs, loading (offline failure, local files), prompt-ensemble text encoding."""
import time

import pytest
import torch
import torch.nn.functional as F

from regionclip_min.clip_model import (SINGLE_TEMPLATE, TEMPLATES, CachedTokenizer, encode_texts, load_clip,
                                      logit_scale)


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    return load_clip("RN-toy")


def test_rn_toy_config(toy):
    model, tokenizer = toy
    assert not model.training
    assert model.visual.image_size == 128
    assert model.visual.attnpool.c_proj.out_features == 64
    assert [len(model.visual.layer1), len(model.visual.layer4)] == [1, 1]
    assert model.visual.layer3[-1].conv3.out_channels == 256  # res4 channels
    assert model.transformer.width == 128 and len(model.transformer.resblocks) == 2
    assert model.transformer.resblocks[0].attn.num_heads == 2
    assert tokenizer(["a red circle"]).shape == (1, 32)
    assert model.encode_image(torch.randn(1, 3, 128, 128)).shape == (1, 64)
    assert logit_scale(model) == pytest.approx(1 / 0.07, rel=1e-4)


@pytest.mark.parametrize("name,dim,res4", [("RN50", 1024, 1024), ("RN50x4", 640, 1280)])
def test_rn50_family_random_init(name, dim, res4):
    model, tokenizer = load_clip(name)
    assert model.visual.attnpool.c_proj.out_features == dim
    assert model.visual.layer3[-1].conv3.out_channels == res4
    assert tokenizer(["x"]).shape == (1, 77)


def test_pretrained_tag_offline_fails_fast(tmp_path, monkeypatch):
    # offline by the variable and with an empty cache folder: the tag is refused before any download is tried
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="needs the internet") as info:
        load_clip("RN50", pretrained="openai", cache_dir=str(tmp_path))
    assert time.perf_counter() - start < 3.0
    assert "pass the local file" in str(info.value)


def test_unknown_tag_says_how_to_pass_a_file():
    with pytest.raises(ValueError, match="local weights file"):
        load_clip("RN-toy", pretrained="no-such-tag")


@pytest.mark.parametrize("wrap", ["plain", "model_key", "ddp_prefix", "safetensors"])
def test_local_state_dict_round_trip(toy, tmp_path, wrap):
    model, tokenizer = toy
    state = model.state_dict()
    path = tmp_path / "toy.pt"
    if wrap == "plain":
        torch.save(state, path)
    elif wrap == "model_key":
        torch.save({"model": state, "step": torch.tensor(3)}, path)
    elif wrap == "ddp_prefix":
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    else:
        safetensors = pytest.importorskip("safetensors.torch")
        path = tmp_path / "toy.safetensors"
        safetensors.save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    loaded, _ = load_clip("RN-toy", pretrained=str(path))
    x = torch.randn(2, 3, 128, 128)
    text = tokenizer(["a blue star", "two squares"])
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(x), model.encode_image(x))
        assert torch.equal(loaded.encode_text(text), model.encode_text(text))


def test_bad_weights_files_name_the_file(toy, tmp_path):
    model, _ = toy
    corrupt = tmp_path / "corrupt_weights.pt"
    corrupt.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(ValueError, match="corrupt_weights.pt"):
        load_clip("RN-toy", pretrained=str(corrupt))
    wrong = tmp_path / "rn_toy_for_rn50.pt"
    torch.save(model.state_dict(), wrong)
    with pytest.raises(ValueError, match="rn_toy_for_rn50.pt.*RN50"):
        load_clip("RN50", pretrained=str(wrong))
    partial = tmp_path / "partial.pt"
    torch.save({k: v for k, v in model.state_dict().items() if not k.startswith("visual.")}, partial)
    with pytest.raises(ValueError, match="partial.pt"):
        load_clip("RN-toy", pretrained=str(partial))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_clip("RN-toy", pretrained=str(tmp_path / "missing.pt"))


def test_templates():
    assert 75 <= len(TEMPLATES) <= 90 and len(set(TEMPLATES)) == len(TEMPLATES)
    assert "{}." in TEMPLATES and all(t.count("{}") == 1 for t in TEMPLATES)
    assert SINGLE_TEMPLATE == ["a photo of a {}."]


def test_cached_tokenizer_gives_the_tokenizers_rows():
    import open_clip
    tok = open_clip.get_tokenizer("RN-toy")
    cached = CachedTokenizer(tok)
    texts = ["a red circle", "two blue stars and a ring", "a red circle"]
    assert torch.equal(cached(texts), tok(texts))
    assert len(cached.rows) == 2  # the repeated caption was tokenized once
    more = ["a ring", "two blue stars and a ring"]
    assert torch.equal(cached(more), tok(more)) and len(cached.rows) == 3


def test_encode_texts_is_normalised_mean_of_unnormalised(toy):
    model, tokenizer = toy
    names, templates = ["circle", "red star", "cross"], TEMPLATES[:5]
    emb = encode_texts(model, tokenizer, names, templates, batch_size=4)  # batches straddle names
    assert emb.shape == (3, 64) and not emb.requires_grad
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    with torch.no_grad():
        per_name = [model.encode_text(tokenizer([t.format(n) for t in templates])) for n in names]  # N x (T, D)
        manual = torch.stack([e.mean(0) for e in per_name])  # (N, D)
        mean_of_normalised = torch.stack([F.normalize(e, dim=-1).mean(0) for e in per_name])  # (N, D)
    assert torch.allclose(emb, F.normalize(manual, dim=-1), atol=1e-5)
    assert not torch.allclose(emb, F.normalize(mean_of_normalised, dim=-1), atol=1e-5)
    single = encode_texts(model, tokenizer, ["circle"], SINGLE_TEMPLATE)
    with torch.no_grad():
        assert torch.allclose(single, model.encode_text(tokenizer(["a photo of a circle."]), normalize=True), atol=1e-5)
    assert encode_texts(model, tokenizer, [], templates).shape == (0, 64)
    with pytest.raises(ValueError):
        encode_texts(model, tokenizer, names, ["no placeholder"])
