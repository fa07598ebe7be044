"""The official RegionCLIP release (official.py): checkpoints written in the official key layout from random weights
load strictly and give the same region and text embeddings as the same weights loaded the open_clip way; the
fine-tuned detector maps onto ours; embedding files; templates; QuickGELU; clear errors."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

import eval_zeroshot
import train_detect
import train_pretrain
from regionclip_min import official
from regionclip_min.checkpoint import load_checkpoint, save_checkpoint
from regionclip_min.clip_model import TEMPLATES, activation, clean_name, encode_texts, load_clip
from regionclip_min.data import DetectionDataset
from regionclip_min.detector import detector_from_official
from regionclip_min.regions import RegionEncoder
from regionclip_min.rpn import ProposalNetwork

TOL = 1e-5


def official_pretrained_state(model: torch.nn.Module, *, teacher: bool = True, offline: bool = True) -> dict:
    """The key map of official.py applied backwards: an open_clip CLIP's state dict in PretrainFastRCNN's layout."""
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith("visual."):
            if k.endswith("num_batches_tracked"):  # FrozenBatchNorm2d has no counter
                continue
            out["backbone." + k[len("visual."):]] = v
            if teacher:
                out["teacher_backbone." + k[len("visual."):]] = v  # same tensor: stored once by torch.save
        elif k != "logit_scale":  # the official language encoder has none
            out["lang_encoder." + k] = v
    if offline:  # a few keys of a Detectron2 R50 RPN
        out["offline_backbone.stem.conv1.weight"] = torch.randn(4, 3, 7, 7)
        out["offline_proposal_generator.rpn_head.conv.weight"] = torch.randn(4, 4, 3, 3)
    return out


def official_detector_state(visual: torch.nn.Module, test_emb: torch.Tensor, base_rows: list[int]) -> dict:
    """A CLIPFastRCNN state dict: backbone.*, the box predictor, offline RPN and (LVIS) mask head keys."""
    state = {"backbone." + k: v for k, v in visual.state_dict().items() if not k.endswith("num_batches_tracked")}
    d = test_emb.shape[1]
    p = official.PREDICTOR
    state.update({p + "cls_score.weight": test_emb[base_rows].clone(), p + "test_cls_score.weight": test_emb.clone(),
                  p + "cls_bg_score.weight": torch.zeros(1, d), p + "bbox_pred.weight": 0.01 * torch.randn(4, d),
                  p + "bbox_pred.bias": 0.01 * torch.randn(4),
                  "offline_backbone.stem.conv1.weight": torch.randn(4, 3, 7, 7),
                  "roi_heads.mask_head.predictor.weight": torch.randn(1, 4, 1, 1)})
    return state


def _randomise(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():  # off open_clip's init (bn3 zeros, ...), so every weight matters
            p.add_(0.02 * torch.randn_like(p))
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                b.normal_(0, 0.1)
    return model


def _compare_routes(name, tmp_path, capsys, image_size):
    """(max abs difference of region, image and text embeddings between the open_clip route and the official one,
    the official model, printout)."""
    model = _randomise(load_clip(name, quick_gelu=True, verbose=False)[0])
    ours = tmp_path / "open_clip_layout.pt"
    torch.save(model.state_dict(), ours)
    off = tmp_path / "regionclip_pretrained-fixture.pth"
    torch.save({"model": official_pretrained_state(model)}, off)
    a, tok = load_clip(name, str(ours), quick_gelu=True)
    capsys.readouterr()
    b, _ = load_clip(name, str(off))
    printed = capsys.readouterr().out
    torch.manual_seed(2)
    images = torch.randn(2, 3, image_size, image_size)
    boxes = [torch.tensor([[0.0, 0, image_size, image_size], [10, 20, 90, 100]]), torch.tensor([[5.0, 5, 60, 50]])]
    tokens = tok(["a photo of a cat.", "itap of a bow weapon."])
    with torch.no_grad():
        region = RegionEncoder(a.visual)(images, boxes) - RegionEncoder(b.visual)(images, boxes)
        diffs = {"region": region.abs().max(),
                 "image": (a.encode_image(images) - b.encode_image(images)).abs().max(),
                 "text": (a.encode_text(tokens) - b.encode_text(tokens)).abs().max()}
    return {k: float(v) for k, v in diffs.items()}, b, printed


def test_official_pretrained_rn_toy_equals_the_open_clip_route(tmp_path, capsys):
    diffs, model, printed = _compare_routes("RN-toy", tmp_path, capsys, 128)
    assert max(diffs.values()) <= TOL, diffs
    assert activation(model) == "QuickGELU"  # the official text tower's activation
    assert float(model.logit_scale.detach().exp()) == pytest.approx(100.0)  # tau 0.01: the file has no logit_scale
    assert "regionclip-pretrained layout" in printed and "dropped teacher_backbone.*" in printed
    assert "dropped offline_backbone.*" in printed and "RPN" in printed and "QuickGELU" in printed


def test_official_pretrained_rn50_key_counts_and_equality(tmp_path, capsys):
    model = load_clip("RN50", verbose=False)[0]
    state = official_pretrained_state(model, offline=False)
    assert sum(k.startswith("backbone.") for k in state) == 284  # the official file's counts
    assert sum(k.startswith("lang_encoder.") for k in state) == 149
    assert sum(k.startswith("teacher_backbone.") for k in state) == 284
    mapped, notes = official.clip_state(state, "x.pth")
    assert set(mapped) == set(model.state_dict()) and any("teacher_backbone" in n for n in notes)
    diffs, _, printed = _compare_routes("RN50", tmp_path, capsys, 224)
    assert max(diffs.values()) <= TOL, diffs
    assert "QuickGELU" in printed


def test_quick_gelu_is_chosen_from_the_weights_and_can_be_overridden(tmp_path, capsys):
    rn50 = load_clip("RN50", verbose=False)[0]
    path = tmp_path / "RN50.pt"
    torch.save(rn50.state_dict(), path)
    quick, _ = load_clip("RN50", str(path))
    assert activation(quick) == "QuickGELU" and "OpenAI-lineage" in capsys.readouterr().out
    gelu, tok = load_clip("RN50", str(path), quick_gelu=False)
    assert activation(gelu) == "GELU" and "set by quick_gelu" in capsys.readouterr().out
    with torch.no_grad():
        t = tok(["a photo of a dog."])
        assert (quick.encode_text(t) - gelu.encode_text(t)).abs().max() > 1e-5  # the README example's old error
    toy = load_clip("RN-toy", verbose=False)[0]
    toy_file = tmp_path / "toy.pt"
    torch.save(toy.state_dict(), toy_file)
    assert activation(load_clip("RN-toy", str(toy_file))[0]) == "GELU"  # trained here with open_clip's GELU
    recorded = tmp_path / "recorded.pt"
    torch.save({"model": toy.state_dict(), "quick_gelu": True, "stage": "clip"}, recorded)
    assert activation(load_clip("RN-toy", str(recorded))[0]) == "QuickGELU"
    with pytest.raises(ValueError, match="contradicts"):
        load_clip("RN50-quickgelu", quick_gelu=False)


def test_openai_state_dict_with_its_scalar_entries_loads(tmp_path, capsys):
    toy = _randomise(load_clip("RN-toy", quick_gelu=True, verbose=False)[0])
    state = {k: v for k, v in toy.state_dict().items() if not k.endswith("num_batches_tracked")}
    state.update(input_resolution=torch.tensor(128), context_length=torch.tensor(32), vocab_size=torch.tensor(49408))
    path = tmp_path / "openai_layout.pt"
    torch.save(state, path)
    loaded, _ = load_clip("RN-toy", str(path))
    assert "openai layout" in capsys.readouterr().out and activation(loaded) == "QuickGELU"
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(x), toy.encode_image(x))


def test_unknown_and_wrong_layouts_name_expected_and_found_keys(tmp_path):
    odd = tmp_path / "odd.pth"
    torch.save({"model": {"encoder.layer.weight": torch.zeros(2), "head.bias": torch.zeros(1)}}, odd)
    with pytest.raises(ValueError, match="odd.pth") as info:
        load_clip("RN-toy", str(odd))
    assert "encoder.* (1)" in str(info.value) and "backbone.*, lang_encoder.*" in str(info.value)
    toy = load_clip("RN-toy", verbose=False)[0]
    extra = official_pretrained_state(toy)
    extra["roi_heads.something.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="outside the official RegionCLIP layout"):
        official.clip_state(extra, "x.pth")
    wrong_arch = tmp_path / "toy_official.pth"
    torch.save({"model": official_pretrained_state(toy)}, wrong_arch)
    with pytest.raises(ValueError, match="pass --model_name RN-toy"):
        load_clip("RN50", str(wrong_arch))
    visual_only = tmp_path / "visual_only.pth"
    torch.save({"model": {k: v for k, v in official_pretrained_state(toy).items() if "backbone." in k}}, visual_only)
    with pytest.raises(ValueError, match="no text tower"):
        load_clip("RN-toy", str(visual_only))
    det = tmp_path / "finetuned.pth"
    torch.save({"model": official_detector_state(toy.visual, torch.randn(12, 64), [0, 1])}, det)
    with pytest.raises(ValueError, match="no text encoder"):
        load_clip("RN-toy", str(det))


def test_templates_are_the_official_ensemble_and_names_are_cleaned():
    assert len(TEMPLATES) == 81 and TEMPLATES[0] == "{}." and len(set(TEMPLATES)) == 81
    assert TEMPLATES[1:] == [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]  # imported, in open_clip's order
    for t in ("itap of a {}.", "a photo of the hard to see {}.", "graffiti of a {}.", "a {} in a video game."):
        assert t in TEMPLATES
    assert clean_name("bow_(weapon)") == "bow weapon" and clean_name("hair_dryer") == "hair dryer"
    assert clean_name("salt+pepper, shaker") == "salt pepper shaker" and clean_name("red square") == "red square"


def test_class_embeddings_equal_the_official_recipe_on_a_random_tower(tmp_path):
    model, tok = load_clip("RN-toy", quick_gelu=True, verbose=False)
    _randomise(model)
    names = ["bow_(weapon)", "hair_dryer", "cat"]
    ours = encode_texts(model, tok, names, TEMPLATES, batch_size=50)  # (3, 64)
    recipe = []  # the official recipe: clean, template, encode, mean of the UNnormalised embeddings
    for n in names:
        n = n.replace("_", " ").replace("(", "").replace(")", "")  # get_cls_names (LVIS)
        n = n.replace(",", "").replace("+", " ")  # prompt_engineering
        with torch.no_grad():
            recipe.append(model.encode_text(tok([t.replace("{}", n) for t in TEMPLATES])).mean(0))
    recipe = torch.stack(recipe)  # (3, 64), what an official embedding file holds
    assert (ours - F.normalize(recipe, dim=-1)).abs().max() <= TOL
    path = tmp_path / "lvis_3_emb.pth"
    torch.save(recipe, path)
    assert (official.read_embeddings(path, names, dim=64) - ours).abs().max() <= TOL


def test_embedding_files_are_checked(tmp_path):
    path = tmp_path / "emb.pth"
    torch.save(torch.randn(3, 64), path)
    with pytest.raises(SystemExit, match="3 rows, but 2 names"):
        official.read_embeddings(path, ["a", "b"])
    with pytest.raises(SystemExit, match="D = 64, the model embeds to D = 1024"):
        official.read_embeddings(path, ["a", "b", "c"], dim=1024)
    torch.save({"embeddings": torch.randn(3, 64)}, path)
    with pytest.raises(SystemExit, match="holds a dict"):
        official.read_embeddings(path, ["a", "b", "c"])
    torch.save(torch.randn(3), path)
    with pytest.raises(SystemExit, match=r"shape \(3,\)"):
        official.read_embeddings(path, ["a", "b", "c"])
    with pytest.raises(SystemExit, match="missing.pth does not exist"):
        official.read_embeddings(tmp_path / "missing.pth", ["a"])


def test_fine_tuned_detector_maps_onto_ours():
    torch.manual_seed(3)
    visual = _randomise(load_clip("RN-toy", verbose=False)[0]).visual
    test_emb = torch.randn(12, 64)
    parts = official.detector_parts(official_detector_state(visual, test_emb, [0, 2, 4]), "det.pth")
    assert any("mask head" in n for n in parts.notes) and any("RPN" in n for n in parts.notes)
    rpn = ProposalNetwork(load_clip("RN-toy", verbose=False)[0].visual, min_size=256, max_size=256,
                          anchor_sizes=[32, 64], aspect_ratios=[1.0], pre_nms_top_n_train=100, pre_nms_top_n_test=100,
                          post_nms_top_n_train=50, post_nms_top_n_test=50, nms_thresh=0.7, batch_size_per_image=64)
    det = detector_from_official(parts, "RN-toy", offline_rpn=rpn, min_size=256, max_size=256)
    heads = det.roi_heads
    x = torch.randn(5, 64)  # region embeddings
    with torch.no_grad():
        logits, deltas = heads.box_predictor(x)
        # the official FastRCNNOutputLayers.forward: [cos(x, test rows), x . bg] / T, background LAST (Detectron2)
        xn = F.normalize(x, dim=1)
        official_scores = torch.cat([xn @ F.normalize(test_emb, dim=1).t(), xn @ torch.zeros(64, 1)], 1) / 0.01
        w = parts.bbox_pred
        assert (logits[:, 1:] - official_scores[:, :12]).abs().max() <= 1e-3  # logits ~100: 1e-5 relative
        assert torch.equal(logits[:, 0], official_scores[:, 12])  # torchvision puts background first
        assert (deltas[:, :4] - (x @ w["weight"].t() + w["bias"])).abs().max() <= TOL
        assert torch.equal(deltas[:, :4], deltas[:, 4:8])  # class-agnostic
        pooled = torch.randn(3, 256, 8, 8)
        assert (heads.box_head(pooled) - visual.attnpool(visual.layer4(pooled))).abs().max() <= TOL
    bad = official_detector_state(visual, test_emb, [0])
    bad[official.PREDICTOR + "cls_bg_score.weight"] = torch.ones(1, 64)
    with pytest.raises(ValueError, match="not zero"):
        official.detector_parts(bad, "bg.pth")
    bad = official_detector_state(visual, test_emb, [0])
    del bad[official.PREDICTOR + "bbox_pred.bias"]
    with pytest.raises(ValueError, match="bbox_pred.bias"):
        official.detector_parts(bad, "nobias.pth")


@pytest.fixture(scope="module")
def official_files(stage0_run, toy_world, tmp_path_factory):
    """The stage-0 CLIP written as an official pretrained checkpoint and as an official fine-tuned detector (its
    visual tower + its single-template class embeddings of the 12 toy categories), an embedding file of the same
    rows, and one of our RPN checkpoints (random weights)."""
    d = tmp_path_factory.mktemp("official")
    clip, tok = load_clip("RN-toy", str(stage0_run / "final.pt"), verbose=False)
    torch.save({"model": official_pretrained_state(clip)}, d / "regionclip_pretrained-toy.pth")
    names = DetectionDataset(toy_world["instances_val_all"], toy_world["images"]).category_names
    emb = encode_texts(clip, tok, names, ["a photo of a {}."])
    torch.save(emb, d / "toy_12_emb.pth")
    base = [i for i, n in enumerate(names) if n in
            DetectionDataset(toy_world["instances_train_base"], toy_world["images"], categories="base").category_names]
    torch.save({"model": official_detector_state(clip.visual, emb, base)}, d / "regionclip_finetuned-toy.pth")
    kw = train_detect.rpn_kwargs(train_detect.DetectConfig())
    rpn = ProposalNetwork(load_clip("RN-toy", verbose=False)[0].visual, **kw)
    save_checkpoint(d / "rpn.pt", {"model": rpn.state_dict(), "kind": "rpn", "model_name": "RN-toy", "rpn_kwargs": kw,
                                   "step": 0})
    return d


def test_eval_zeroshot_gives_the_same_numbers_for_every_route(official_files, stage0_run, toy_world, tmp_path):
    common = ["--instances", toy_world["instances_val_all"], "--templates", "single", "--eval_max_images", "8"]
    own = eval_zeroshot.main(["--checkpoint", str(official_files / "regionclip_finetuned-toy.pth"), *common, "--out",
                              str(tmp_path / "own.json")])
    assert own["tau"] == pytest.approx(0.01) and own["tau_source"] == "the official CLSS_TEMP"  # no logit_scale
    common += ["--tau", "0.01"]  # one temperature for every route (the toy CLIP's own is ~0.057), so AP50 agrees
    ours = eval_zeroshot.main(["--checkpoint", str(stage0_run / "final.pt"), *common, "--out",
                               str(tmp_path / "a.json")])
    routes = {
        "official pretrained": ["--checkpoint", str(official_files / "regionclip_pretrained-toy.pth"),
                                "--quick_gelu", "false"],  # the stage-0 CLIP was trained with GELU
        "--pretrained official": ["--model_name", "RN-toy", "--pretrained",
                                  str(official_files / "regionclip_pretrained-toy.pth"), "--quick_gelu", "false"],
        "official detector (its own class embeddings)": ["--checkpoint",
                                                         str(official_files / "regionclip_finetuned-toy.pth")],
        "--class_embeddings": ["--checkpoint", str(stage0_run / "final.pt"), "--class_embeddings",
                               str(official_files / "toy_12_emb.pth")],
    }
    for route, args in routes.items():
        got = eval_zeroshot.main([*args, *common, "--out", str(tmp_path / f"{len(route)}-{route[:8]}.json")])
        for key in ("gt_box_top1", "gt_box_ap50", "whole_image_top1"):
            assert got[key] == pytest.approx(ours[key], abs=1e-6), (route, key)
    demo = eval_zeroshot.main(["--checkpoint", str(official_files / "regionclip_finetuned-toy.pth"), "--instances",
                               toy_world["instances_val_all"], "--image", str(toy_world["images"]) + "/val_000003.png",
                               "--rpn_checkpoint", str(official_files / "rpn.pt"), "--region_scale", "2", "--out_image",
                               str(tmp_path / "demo.png"), "--score_thresh", "0"])  # names: its own rows
    assert demo["detections"] and (tmp_path / "demo.png").is_file()
    bad = tmp_path / "wrong_rows.pth"
    torch.save(torch.randn(5, 64), bad)
    with pytest.raises(SystemExit, match="5 rows, but 12 names"):
        eval_zeroshot.main(["--checkpoint", str(stage0_run / "final.pt"), *common, "--class_embeddings", str(bad)])
    with pytest.raises(SystemExit, match="no text encoder"):
        eval_zeroshot.main(["--checkpoint", str(official_files / "regionclip_finetuned-toy.pth"), *common,
                            "--vocabulary", "circle,square,triangle,star,cross,heart,diamond,hexagon,pentagon,crescent,"
                            "arrow,ring,kite"])  # a 13th name: it would need a text encoder


def test_train_detect_eval_only_scores_an_official_detector(official_files, toy_world, tmp_path, capsys):
    args = ["--eval_only", "true", "--checkpoint", str(official_files / "regionclip_finetuned-toy.pth"),
            "--val_json", toy_world["instances_val_all"], "--out_dir", str(tmp_path), "--eval_max_images", "4",
            "--draw_images", "1", "--min_sizes", "256", "--max_size", "256"]
    with pytest.raises(SystemExit, match="Detectron2 R50 RPN"):
        train_detect.main(args)
    train_detect.main([*args, "--rpn_checkpoint", str(official_files / "rpn.pt")])
    printed = capsys.readouterr().out
    assert "12 class embeddings" in printed and "dropped roi_heads.mask_head.*" in printed
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["checkpoint"].endswith("regionclip_finetuned-toy.pth")
    assert set(results["ap50"]) >= {"novel", "base", "all"} and math.isfinite(results["ap50"]["all"])


def test_transfer_and_pretraining_start_from_official_files(official_files, toy_world, tmp_path, capsys):
    pre = official_files / "regionclip_pretrained-toy.pth"
    emb = torch.load(official_files / "toy_12_emb.pth", weights_only=True)
    names = DetectionDataset(toy_world["instances_val_all"], toy_world["images"]).category_names
    torch.save(emb.flip(0), tmp_path / "reversed_emb.pth")  # rows in another order, named by --vocabulary
    (tmp_path / "reversed_names.txt").write_text("\n".join(reversed(names)) + "\n")
    train_detect.main(["--preset", "toy", "--init", str(pre), "--train_json", toy_world["instances_train_base"],
                       "--val_json", toy_world["instances_val_all"], "--out_dir", str(tmp_path / "det"),
                       "--class_embeddings", str(tmp_path / "reversed_emb.pth"), "--vocabulary",
                       str(tmp_path / "reversed_names.txt"), "--batch_size", "2",
                       "--num_workers", "0", "--max_steps", "2", "--warmup_steps", "1", "--rpn_post_nms_top_n_train",
                       "30", "--box_batch_size_per_image", "8", "--eval_at_end", "false", "--quick_gelu", "false"])
    state = load_checkpoint(tmp_path / "det" / "final.pt")
    assert torch.allclose(state["class_embeddings"]["test"], F.normalize(emb, dim=-1), atol=TOL)
    assert len(state["class_embeddings"]["train"]) == 9
    names = tmp_path / "concepts.txt"
    names.write_text("circle\nstar\nsquare\n")
    torch.save(torch.randn(3, 64), tmp_path / "nouns_3.pth")
    out = tmp_path / "pre"
    common = ["--preset", "toy", "--captions", toy_world["captions_train"], "--init", str(pre), "--batch_size", "4",
              "--proposals_per_image", "4", "--num_workers", "0", "--max_steps", "2", "--warmup_steps", "1",
              "--concepts", str(names), "--quick_gelu", "false", "--proposals", "random"]
    train_pretrain.main([*common, "--out_dir", str(out), "--concept_embeddings", str(tmp_path / "nouns_3.pth")])
    printed = capsys.readouterr().out
    assert "dropped teacher_backbone.*" in printed
    assert load_checkpoint(out / "final.pt")["concepts"] == ["circle", "star", "square"]
    torch.save(torch.randn(3, 32), tmp_path / "nouns_bad.pth")
    with pytest.raises(SystemExit, match="D = 32"):
        train_pretrain.main([*common, "--out_dir", str(tmp_path / "pre2"), "--concept_embeddings",
                             str(tmp_path / "nouns_bad.pth")])
