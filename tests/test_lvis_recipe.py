"""The LVIS recipe: the lvis-rpn and lvis-ovd-rn50 presets, the f + c / r split, RPN-score fusion, and the federated
scoring of a transfer, on a toy world written in LVIS's format."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import train_detect
from regionclip_min.checkpoint import load_checkpoint
from regionclip_min.cli import parse_config
from regionclip_min.configs.detect import PRESETS, DetectConfig


def _as_lvis(src: str, out: Path) -> str:
    """The toy json with LVIS's fields: novel categories rare, base ones alternately common and frequent (no
    "split"); every image checked negative for the categories it lacks, none marked not exhaustive."""
    data = json.loads(Path(src).read_text())
    base = [c for c in data["categories"] if c.get("split") != "novel"]
    for c in data["categories"]:
        c["frequency"] = "r" if c.get("split") == "novel" else "cf"[base.index(c) % 2]
        c.pop("split", None)
    present: dict[int, set] = {}
    for a in data["annotations"]:
        present.setdefault(a["image_id"], set()).add(a["category_id"])
    for im in data["images"]:
        im["neg_category_ids"] = [c["id"] for c in data["categories"] if c["id"] not in present.get(im["id"], ())]
        im["not_exhaustive_category_ids"] = []
    out.write_text(json.dumps(data))
    return str(out)


def test_lvis_presets_read_as_the_official_recipe():
    cfg, _ = parse_config(DetectConfig, ["--preset", "lvis-ovd-rn50"], PRESETS)
    assert (cfg.category_split, cfg.focal_gamma, cfg.background_weight, cfg.repeat_factor_threshold) == (
        "lvis", 0.0, 0.8, 0.001)
    assert (cfg.box_score_thresh, cfg.detections_per_img, cfg.rpn_score_fusion, cfg.box_nms) == (0.02, 300, True,
                                                                                                   "soft")
    assert (cfg.max_steps, cfg.lr_steps, cfg.warmup_steps, cfg.lr, cfg.batch_size) == (180_000, "120000,160000",
                                                                                        5000, 0.002, 16)
    assert (cfg.rpn, cfg.rpn_checkpoint, cfg.rpn_post_nms_top_n_test) == ("offline", "runs/lvis-rpn/final.pt", 1000)
    rpn, _ = parse_config(DetectConfig, ["--preset", "lvis-rpn"], PRESETS)
    assert (rpn.task, rpn.category_split, rpn.repeat_factor_threshold, rpn.max_steps) == ("rpn", "lvis", 0.001,
                                                                                          180_000)


def test_rpn_score_fusion_is_the_square_root_of_class_probability_times_objectness():
    """One proposal, two classes: the fused scores are sqrt(p_k * objectness), as MULTIPLY_RPN_SCORE computes them."""
    from regionclip_min.clip_model import load_clip
    from regionclip_min.detector import build_detector
    torch.manual_seed(0)
    visual = load_clip("RN-toy")[0].visual
    det = build_detector(visual, torch.randn(2, 64), min_size=128, max_size=128, box_score_thresh=0.0,
                         box_nms="hard", rpn_score_fusion=True).eval()
    heads = det.roi_heads
    heads.objectness = lambda: [torch.tensor([0.25])]
    logits = torch.tensor([[0.0, 1.0, 2.0]])  # background, class 1, class 2
    proposals = [torch.tensor([[10.0, 10.0, 50.0, 60.0]])]
    boxes, scores, labels = heads.postprocess_detections(logits, torch.zeros(1, 12), proposals, [(128, 128)])
    p = F.softmax(logits, -1)[0, 1:]
    expected = dict(zip([1, 2], (p * 0.25).sqrt().tolist()))
    assert {int(k): v for k, v in zip(labels[0], scores[0].tolist())} == pytest.approx(expected)
    heads.objectness = None
    _, plain, _ = heads.postprocess_detections(logits, torch.zeros(1, 12), proposals, [(128, 128)])
    assert sorted(plain[0].tolist()) == pytest.approx(sorted(p.tolist()))


def test_lvis_transfer_trains_on_frequent_and_common_and_is_scored_federated(toy_world, stage0_run, rpn_ckpt,
                                                                              tmp_path):
    train = _as_lvis(toy_world["instances_train_all"], tmp_path / "lvis_train.json")
    val = _as_lvis(toy_world["instances_val_all"], tmp_path / "lvis_val.json")
    out = tmp_path / "lvis"
    train_detect.main(["--preset", "lvis-ovd-rn50", "--model_name", "RN-toy", "--init", str(stage0_run / "final.pt"),
                       "--device", "cpu", "--rpn_checkpoint", str(rpn_ckpt), "--train_json", train, "--val_json", val,
                       "--image_root", toy_world["images"], "--val_image_root", toy_world["images"],
                       "--out_dir", str(out), "--max_steps", "2", "--batch_size", "2", "--num_workers", "0",
                       "--templates", "single", "--min_sizes", "256", "--max_size", "256",
                       "--box_batch_size_per_image", "16", "--eval_max_images", "4", "--draw_images", "0",
                       "--rpn_post_nms_top_n_test", "50", "--rpn_post_nms_top_n_train", "50"])
    state = load_checkpoint(out / "final.pt")
    cats = json.loads(Path(val).read_text())["categories"]
    assert sorted(state["category_ids"]["train"]) == sorted(c["id"] for c in cats if c["frequency"] in "cf")
    assert sorted(state["category_ids"]["test"]) == sorted(c["id"] for c in cats)
    kwargs = state["detector_kwargs"]
    assert kwargs["rpn_score_fusion"] is True and kwargs["detections_per_img"] == 300
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"] == "lvis-federated" and set(results["lvis"]) == {"APr", "APc", "APf", "AP"}
