"""train_detect.py end to end on the small toy world: toy-rpn, toy (joint and offline RPN), resume, non-finite stop,
the paper's COCO preset on CPU (issue 5)."""
import json
from pathlib import Path

import pytest
import torch

import train_detect
from regionclip_min.checkpoint import load_checkpoint
from regionclip_min.data import DetectionDataset
from regionclip_min.detector import load_detector
from regionclip_min.rpn import load_rpn, propose


def _metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def _args(preset, toy_world, stage0_run, out, *extra):
    return ["--preset", preset, "--init", str(stage0_run / "final.pt"), "--train_json",
            toy_world["instances_train_base"], "--val_json", toy_world["instances_val_all"], "--out_dir", str(out),
            "--batch_size", "2", "--num_workers", "0", "--templates", "single", "--warmup_steps", "2",
            "--log_every", "1", "--rpn_post_nms_top_n_train", "50", "--box_batch_size_per_image", "16",
            "--eval_max_images", "6", "--draw_images", "2", *extra]


@pytest.fixture(scope="module")
def rpn_run(toy_world, stage0_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("toy-rpn")
    train_detect.main(_args("toy-rpn", toy_world, stage0_run, out, "--max_steps", "4"))
    return out


def test_toy_rpn_trains_scores_recall_and_serves_proposals(rpn_run, toy_world, capsys):
    rows = _metrics(rpn_run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(set(r) >= {"loss_objectness", "loss_rpn_box_reg"} for r in rows)
    results = json.loads((rpn_run / "results.json").read_text())
    assert set(results["recall@100"]) == {"all", "base", "novel", "n_boxes"} and results["n_images"] == 6
    state = load_checkpoint(rpn_run / "final.pt")
    assert state["kind"] == "rpn" and state["step"] == 4 and state["rpn_kwargs"]["min_size"] == [256]
    rpn = load_rpn(rpn_run / "final.pt")
    image, _ = DetectionDataset(toy_world["instances_val_all"], toy_world["images"])[0]  # (3, 128, 128) in [0, 1]
    boxes = propose(rpn, [image, image], 30)
    assert len(boxes) == 2 and 0 < len(boxes[0]) <= 30 and boxes[0].max() <= 128
    with pytest.raises(ValueError, match="not a detector checkpoint"):
        load_detector(rpn_run / "final.pt")


def test_toy_detector_trains_evaluates_and_reloads(toy_world, stage0_run, tmp_path, capsys):
    out = tmp_path / "det"
    train_detect.main(_args("toy", toy_world, stage0_run, out, "--max_steps", "3"))
    rows = _metrics(out)
    assert len(rows) == 3
    for r in rows:
        for k in ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"):
            assert r[k] == r[k] and abs(r[k]) < 1e4
    printed = capsys.readouterr().out
    assert "resolved config" in printed and "next:" in printed and "9 training classes" in printed
    results = json.loads((out / "results.json").read_text())
    assert set(results["ap50"]) == {"novel", "base", "all"} and results["n_images"] == 6
    assert set(results["base_vocabulary"]) == {"ap50", "ap"}  # the same detector offered only the base names
    assert len(list((out / "predictions").glob("*.png"))) == 2
    state = load_checkpoint(out / "final.pt")
    assert state["kind"] == "detector" and len(state["class_names"]["train"]) == 9
    # the toy preset's classifier runs at the stage-0 CLIP's own temperature, recorded where the run is rebuilt from
    own_tau = 1.0 / float(load_checkpoint(stage0_run / "final.pt")["model"]["logit_scale"].exp())
    assert own_tau != pytest.approx(0.01)
    assert state["detector_kwargs"]["tau"] == pytest.approx(own_tau)
    assert json.loads((out / "config.json").read_text())["tau"] == pytest.approx(own_tau)
    assert "the loaded CLIP's own" in printed
    assert len(state["class_names"]["test"]) == 12 and state["class_embeddings"]["test"].shape == (12, 64)
    # the saved detector reloads with either vocabulary and detects with labels in range
    det = load_detector(out / "final.pt", vocabulary="test")
    assert det.roi_heads.box_predictor.class_embeddings.shape == (12, 64)
    image, _ = DetectionDataset(toy_world["instances_val_all"], toy_world["images"])[0]
    pred = det([image])[0]
    assert pred["labels"].numel() == 0 or 1 <= int(pred["labels"].min()) <= int(pred["labels"].max()) <= 12
    # --eval_only rebuilds the detector from final.pt alone (no --init) and reproduces the numbers
    (out / "results.json").rename(out / "results_train.json")
    train_detect.main(_args("toy", toy_world, stage0_run, out, "--eval_only", "true", "--init", "none"))
    again = json.loads((out / "results.json").read_text())
    assert again["ap50"] == pytest.approx(results["ap50"], nan_ok=True) and again["step"] == 3
    # the CLIP parts that are frozen did not move; the trained ones did
    before = load_checkpoint(stage0_run / "final.pt")["model"]
    after = state["model"]
    assert torch.equal(after["backbone.conv1.weight"], before["visual.conv1.weight"])
    assert torch.equal(after["backbone.layer1.0.conv1.weight"], before["visual.layer1.0.conv1.weight"])
    assert torch.equal(after["backbone.layer2.0.bn1.running_mean"], before["visual.layer2.0.bn1.running_mean"])
    assert not torch.equal(after["roi_heads.box_head.layer4.0.conv1.weight"], before["visual.layer4.0.conv1.weight"])


def test_toy_detector_with_the_offline_rpn(rpn_run, toy_world, stage0_run, tmp_path):
    out = tmp_path / "det-offline"
    train_detect.main(_args("toy", toy_world, stage0_run, out, "--max_steps", "2", "--rpn", "offline",
                            "--rpn_checkpoint", str(rpn_run / "final.pt")))
    rows = _metrics(out)
    assert set(rows[0]) >= {"loss_classifier", "loss_box_reg"} and "loss_objectness" not in rows[0]
    rpn_weights = load_checkpoint(rpn_run / "final.pt")["model"]
    det_weights = load_checkpoint(out / "final.pt")["model"]
    assert all(torch.equal(v, det_weights[f"rpn.net.{k}"]) for k, v in rpn_weights.items())  # frozen
    assert load_detector(out / "final.pt").rpn.top_k_test == 300


def test_resume_gives_identical_weights(toy_world, stage0_run, tmp_path):
    args = ["--max_steps", "4", "--ckpt_every", "2", "--keep_ckpts", "0", "--eval_at_end", "false"]
    a, b = tmp_path / "a", tmp_path / "b"
    train_detect.main(_args("toy", toy_world, stage0_run, a, *args))
    train_detect.main(_args("toy", toy_world, stage0_run, b, *args))
    for p in (b / "final.pt", b / "ckpt_0000004.pt"):  # a run killed after its step-2 checkpoint
        p.unlink()
    train_detect.main(_args("toy", toy_world, stage0_run, b, *args, "--resume", "true"))
    wa, wb = load_checkpoint(a / "final.pt")["model"], load_checkpoint(b / "final.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = tmp_path / "c"
    train_detect.main(_args("toy", toy_world, stage0_run, c, *args, "--seed", "1"))
    wc = load_checkpoint(c / "final.pt")["model"]
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_repeat_factor_sampling_trains_and_says_what_it_repeats(toy_world, stage0_run, tmp_path, capsys):
    """--repeat_factor_threshold (the LVIS recipe) feeds the engine a RepeatFactorSampler; at t = 1 every image
    with a box is repeated, as every category is in less than all images."""
    out = tmp_path / "rfs"
    train_detect.main(_args("toy", toy_world, stage0_run, out, "--max_steps", "2", "--eval_at_end", "false",
                            "--repeat_factor_threshold", "1.0"))
    printed = capsys.readouterr().out
    assert "repeat-factor sampling:" in printed and "factors up to" in printed
    assert [r["step"] for r in _metrics(out)] == [1, 2]


def test_non_finite_loss_stops_and_keeps_last_checkpoint(toy_world, stage0_run, tmp_path):
    out = tmp_path / "diverge"
    with pytest.raises(SystemExit, match="non-finite loss"):
        train_detect.main(_args("toy", toy_world, stage0_run, out, "--max_steps", "30", "--ckpt_every", "1",
                                "--lr", "1e8", "--optimizer", "sgd", "--grad_clip", "0", "--warmup_steps", "0"))
    last = sorted(out.glob("ckpt_*.pt"))[-1]
    assert all(torch.isfinite(v).all() for v in load_checkpoint(last)["model"].values() if v.is_floating_point())
    assert not (out / "final.pt").exists()


def test_bad_config_values_are_rejected(toy_world, tmp_path):
    with pytest.raises(SystemExit, match="--rpn offline needs"):
        train_detect.main(["--preset", "toy", "--rpn", "offline", "--out_dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="--task"):
        train_detect.main(["--task", "segment", "--out_dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="not found"):
        train_detect.main(["--preset", "toy", "--init", str(tmp_path / "missing.pt"), "--out_dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        train_detect.main(["--max_steps", "ten"])


def test_coco_preset_builds_and_runs_one_step_on_cpu(toy_world, rpn_run, tmp_path):
    """The paper's COCO recipe (RN50, random weights here) on toy files, one step at a reduced size, with the toy
    RPN as its offline RPN; and the coco-rpn preset that trains that RPN."""
    rpn = tmp_path / "coco-rpn"
    train_detect.main(["--preset", "coco-rpn", "--pretrained", "none", "--device", "cpu", "--train_json",
                       toy_world["instances_train_base"], "--val_json", toy_world["instances_val_all"],
                       "--image_root", toy_world["images"], "--val_image_root", toy_world["images"],
                       "--category_split", "json", "--out_dir", str(rpn), "--max_steps", "1", "--batch_size", "2",
                       "--num_workers", "0", "--min_sizes", "224", "--max_size", "224", "--eval_max_images", "2"])
    state = load_checkpoint(rpn / "final.pt")
    assert state["kind"] == "rpn" and state["config"]["lr"] == 0.02 and state["config"]["lr_steps"] == "60000,80000"
    out = tmp_path / "coco"
    train_detect.main(["--preset", "coco-ovd-rn50", "--init", "none", "--device", "cpu", "--rpn_checkpoint",
                       str(rpn_run / "final.pt"), "--train_json",
                       toy_world["instances_train_base"], "--val_json", toy_world["instances_val_all"],
                       "--image_root", toy_world["images"], "--val_image_root", toy_world["images"],
                       "--category_split", "json", "--out_dir", str(out), "--max_steps", "1", "--batch_size", "2",
                       "--num_workers", "0", "--templates", "single", "--min_sizes", "224", "--max_size", "224",
                       "--box_batch_size_per_image", "16", "--eval_max_images", "2", "--draw_images", "1",
                       "--rpn_post_nms_top_n_test", "50"])
    row = _metrics(out)[0]
    assert row["step"] == 1 and all(row[k] == row[k] for k in row)
    state = load_checkpoint(out / "final.pt")
    assert state["config"]["lr"] == 0.002 and state["config"]["max_steps"] == 1 and state["config"]["rpn"] == "offline"
    assert (state["config"]["warmup_steps"], state["config"]["box_nms"], state["config"]["box_score_thresh"]) == (
        5000, "soft", 0.001)
    assert state["detector_kwargs"]["focal_gamma"] == 0.5 and state["detector_kwargs"]["background_weight"] == 0.2
    assert state["detector_kwargs"]["tau"] == 0.01  # the paper's value, whatever the (random) weights' logit_scale
    assert state["class_embeddings"]["train"].shape[1] == 1024  # RN50's embedding width
    from regionclip_min.splits import COCO_OVD_BASE, COCO_OVD_NOVEL
    assert len(COCO_OVD_BASE) == 48 and len(COCO_OVD_NOVEL) == 17


def test_pretraining_with_rpn_proposals(rpn_run, toy_world, stage0_run, tmp_path):
    """train_pretrain.py --proposals rpn takes its boxes from the class-agnostic RPN checkpoint."""
    import train_pretrain

    out = tmp_path / "rc-rpn"
    train_pretrain.main(["--preset", "toy", "--captions", toy_world["captions_train"], "--init",
                         str(stage0_run / "final.pt"), "--out_dir", str(out), "--batch_size", "2",
                         "--proposals_per_image", "5", "--num_workers", "0", "--concept_cache", str(out / "cache"),
                         "--max_steps", "2", "--log_every", "1", "--proposals", "rpn", "--rpn_checkpoint",
                         str(rpn_run / "final.pt"), "--rpn_top_k", "20"])
    assert [r["step"] for r in _metrics(out)] == [1, 2]
    with pytest.raises(SystemExit, match="--rpn_checkpoint .*nope.pt does not exist: rpn proposals need"):
        train_pretrain.main(["--preset", "toy", "--captions", toy_world["captions_train"], "--rpn_checkpoint",
                             str(tmp_path / "nope.pt")])
