"""eval_zeroshot.py: GT-box recognition + AP50, RPN zero-shot detection, vocabularies, the demo, region features."""
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import eval_zeroshot
import train_detect
from regionclip_min.clip_model import load_clip
from regionclip_min.concepts import read_names
from regionclip_min.data import DetectionDataset
from regionclip_min.evaluation import (FEATURE_KEYS, encode_regions, gt_box_accuracy, named_as, region_detections,
                                       top1_accuracy)
from regionclip_min.regions import RegionEncoder


def _one_image_world(toy_world, tmp_path):
    """A val image whose boxes all have different classes, as its own instances json (same image folder)."""
    data = json.loads(open(toy_world["instances_val_all"]).read())
    by_image = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    image_id = next(i for i, anns in by_image.items()
                    if len(anns) >= 2 and len({a["category_id"] for a in anns}) == len(anns))
    data["images"] = [im for im in data["images"] if im["id"] == image_id]
    data["annotations"] = by_image[image_id]
    path = tmp_path / "one.json"
    path.write_text(json.dumps(data))
    return DetectionDataset(path, toy_world["images"])


def test_oracle_vocabulary_gives_perfect_gt_box_accuracy(toy_world, tmp_path):
    """Class embeddings set to the regions' own embeddings: each box must be classified as its own class."""
    model, _ = load_clip("RN-toy")
    enc = RegionEncoder(model.visual)
    ds = _one_image_world(toy_world, tmp_path)
    (rec,) = encode_regions(enc, ds, scale=2.0)
    class_emb = torch.randn(len(ds.category_names), rec["embeddings"].shape[1])
    class_emb[rec["labels"]] = rec["embeddings"]  # every other class keeps a random embedding
    res = gt_box_accuracy(enc, ds, class_emb, scale=2.0, kinds=None)
    assert res["all"] == 1.0 and res["n_boxes"] == len(rec["labels"]) >= 2
    # the same vocabulary with its rows shifted by one class cannot be perfect
    assert top1_accuracy([rec], class_emb.roll(1, dims=0), ds.category_splits)["all"] < 1.0


def test_named_as_counts_each_box_under_the_name_it_got():
    """Boxes of class 0 sit on vocabulary rows 0, 0, 2 (a distractor); class 1 on row 1; class 2 has no box."""
    vocab = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    rec = {"embeddings": vocab[[0, 2, 0, 1]] + 0.01, "labels": torch.tensor([0, 0, 0, 1])}
    table = named_as([rec], vocab, ["cat", "dog", "kite"], ["cat", "dog", "hexagon"])
    assert table == {"cat": {"boxes": 3, "named_as": {"cat": 2, "kite": 1}},
                     "dog": {"boxes": 1, "named_as": {"dog": 1}}}
    assert list(table["cat"]["named_as"]) == ["cat", "kite"]  # most frequent first
    assert named_as([rec], vocab, ["cat", "dog", "kite"], ["cat", "dog", "hexagon"], top=1)["cat"]["named_as"] == \
        {"cat": 2}
    # consistent with the accuracy: the boxes named as their own class are the correct ones
    acc = top1_accuracy([rec], vocab, [None, None, "novel"])
    assert acc["all"] == pytest.approx(3 / 4)


def test_gt_box_detections_report_each_box_once_per_class_with_probabilities():
    emb = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    rec = {"image_id": 7, "boxes": torch.tensor([[0., 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 70]]),
           "embeddings": emb, "labels": torch.tensor([0, 1, 2]), "objectness": torch.ones(3)}
    class_emb = torch.randn(4, 16)
    dets = region_detections([rec], class_emb, [10, 11, None, 13], tau=0.1, nms_thresh=None, score_thresh=0.0)
    assert len(dets) == 3 * 3  # the distractor row (None) takes probability but is never reported
    assert {d["category_id"] for d in dets} == {10, 11, 13}
    probs = torch.softmax(emb @ torch.nn.functional.normalize(class_emb, dim=-1).t() / 0.1, dim=-1)
    got = {(tuple(d["bbox"]), d["category_id"]): d["score"] for d in dets}
    assert got[((50.0, 50.0, 10.0, 20.0), 13)] == pytest.approx(probs[2, 3].item())
    # with NMS per class, the two overlapping boxes (IoU 0.68) keep one detection per class
    nmsd = region_detections([rec], class_emb, [10, 11, None, 13], tau=0.1, nms_thresh=0.5, score_thresh=0.0)
    assert len(nmsd) == 2 * 3


def test_gt_mode_from_main_writes_table_json_and_features(toy_world, stage0_run, tmp_path, capsys):
    out, feats = tmp_path / "zs.json", tmp_path / "feats.pt"
    res = eval_zeroshot.main(["--checkpoint", str(stage0_run / "final.pt"), "--instances",
                              toy_world["instances_val_all"], "--templates", "single", "--out", str(out),
                              "--save-region-features", str(feats)])
    saved = json.loads(out.read_text())
    acc = saved["gt_box_top1"]
    assert acc["n_boxes"] > 0 and saved["whole_image_top1"]["n_images"] > 0
    for k in ("all", "base", "novel"):
        assert 0.0 <= acc[k] <= 1.0 and 0.0 <= saved["gt_box_ap50"][k] <= 1.0
    assert res["gt_box_top1"] == acc
    printed = capsys.readouterr().out
    assert "GT-box top-1" in printed and "AP50 novel" in printed and "GT boxes named as" in printed
    named = saved["gt_box_named_as"]  # each box is counted once, under the name it got
    assert sum(row["boxes"] for row in named.values()) == acc["n_boxes"]
    assert all(sum(row["named_as"].values()) <= row["boxes"] for row in named.values())
    f = torch.load(feats, weights_only=True)
    assert set(f) == set(FEATURE_KEYS) and f["box_source"] == "gt"
    n = acc["n_boxes"]
    assert f["boxes"].shape == (n, 4) and f["embeddings"].shape == (n, 64) and f["image_ids"].shape == (n,)
    assert torch.allclose(f["embeddings"].norm(dim=-1), torch.ones(n), atol=1e-5)
    ds = DetectionDataset(toy_world["instances_val_all"], toy_world["images"])
    assert set(f["category_ids"].tolist()) <= set(ds.category_ids)
    assert set(f["image_ids"].tolist()) <= {i for i, k in zip(ds.image_ids, ds.kinds) if k == "scene"}


def test_rpn_mode_from_main_scores_ap50(toy_world, stage0_run, rpn_ckpt, tmp_path, capsys):
    out, feats = tmp_path / "rpn.json", tmp_path / "rpn_feats.pt"
    res = eval_zeroshot.main(["--checkpoint", str(stage0_run / "final.pt"), "--instances",
                              toy_world["instances_val_all"], "--templates", "single", "--boxes", "rpn",
                              "--rpn_checkpoint", str(rpn_ckpt), "--rpn_top_k", "10", "--eval_max_images", "6",
                              "--out", str(out), "--save_region_features", str(feats)])
    assert res["n_images"] == 6 and res["kinds"] == "all"
    for k in ("novel", "base", "all"):
        assert res["rpn_ap50"][k] != res["rpn_ap50"][k] or 0.0 <= res["rpn_ap50"][k] <= 1.0
    assert json.loads(out.read_text())["rpn_ap50"] == pytest.approx(res["rpn_ap50"], nan_ok=True)
    assert "RPN AP50 novel" in capsys.readouterr().out
    f = torch.load(feats, weights_only=True)
    assert f["box_source"] == "rpn" and len(f["boxes"]) <= 60 and (f["category_ids"] == -1).all()
    assert ((f["objectness"] >= 0) & (f["objectness"] <= 1)).all()


def test_detector_checkpoint_uses_its_box_head_and_the_init_text_encoder(toy_world, stage0_run, tmp_path):
    det = tmp_path / "det"
    train_detect.main(["--preset", "toy", "--init", str(stage0_run / "final.pt"), "--train_json",
                       toy_world["instances_train_base"], "--val_json", toy_world["instances_val_all"],
                       "--out_dir", str(det), "--batch_size", "2", "--num_workers", "0", "--templates", "single",
                       "--warmup_steps", "1", "--max_steps", "2", "--rpn_post_nms_top_n_train", "30",
                       "--box_batch_size_per_image", "8", "--eval_max_images", "2", "--draw_images", "0",
                       "--lr", "0.05"])
    args = ["--instances", toy_world["instances_val_all"], "--templates", "single", "--eval_max_images", "5"]
    from_det = eval_zeroshot.main(["--checkpoint", str(det / "final.pt"), "--out", str(tmp_path / "a.json"), *args])
    from_clip = eval_zeroshot.main(["--checkpoint", str(stage0_run / "final.pt"), "--out", str(tmp_path / "b.json"),
                                    *args])
    assert "detector" in from_det["model"] and from_det["gt_box_top1"]["n_boxes"] == from_clip["gt_box_top1"]["n_boxes"]
    model, _, _, _ = eval_zeroshot.load_model(eval_zeroshot.EvalConfig(checkpoint=str(det / "final.pt")), "cpu")
    clip, _ = load_clip("RN-toy", str(stage0_run / "final.pt"))
    assert not torch.equal(model.visual.layer4[0].conv1.weight, clip.visual.layer4[0].conv1.weight)  # trained
    assert torch.equal(model.visual.conv1.weight, clip.visual.conv1.weight)  # stem frozen in transfer
    assert torch.equal(model.token_embedding.weight, clip.token_embedding.weight)  # the init's text encoder


def test_vocabulary_parsing_files_duplicates_unicode_and_empty(tmp_path, capsys):
    assert read_names(" red circle, star,,Star , heart ")[0] == ["red circle", "star", "heart"]
    assert "1 duplicate" in capsys.readouterr().out
    f = tmp_path / "v.txt"
    f.write_text("café sign\n\n  étoile  \ncafé   sign\n", encoding="utf-8")
    assert read_names(str(f)) == (["café sign", "étoile"], f"--vocabulary file {f}")
    f.write_text("\n  \n")
    with pytest.raises(SystemExit, match="names no class"):
        read_names(str(f))
    with pytest.raises(SystemExit, match="names no class"):
        read_names(" , ,")
    f.write_bytes(b"circle\n\xff\xfe star\n")
    with pytest.raises(SystemExit, match="not UTF-8"):
        read_names(str(f))


def test_vocabulary_must_name_every_dataset_category(toy_world, stage0_run, tmp_path):
    with pytest.raises(ValueError, match="lacks 11 of the dataset's categories"):
        eval_zeroshot.main(["--checkpoint", str(stage0_run / "final.pt"), "--instances",
                            toy_world["instances_val_all"], "--vocabulary", "circle,zebra", "--out",
                            str(tmp_path / "x.json")])
    ds = DetectionDataset(toy_world["instances_val_all"], toy_world["images"])
    vocab = ",".join(["zebra"] + [n.upper() for n in reversed(ds.category_names)])  # reordered, a distractor
    res = eval_zeroshot.main(["--checkpoint", str(stage0_run / "final.pt"), "--instances",
                              toy_world["instances_val_all"], "--vocabulary", vocab, "--templates", "single",
                              "--eval_max_images", "4", "--out", str(tmp_path / "y.json")])
    assert res["vocabulary"][0] == "zebra" and res["gt_box_top1"]["n_boxes"] > 0


def test_demo_prints_a_table_and_writes_a_png_of_the_image_size(toy_world, stage0_run, rpn_ckpt, tmp_path, capsys):
    image = tmp_path / "photo.jpg"
    first = sorted(Path(toy_world["images"]).iterdir())[0]
    Image.open(first).convert("RGB").resize((150, 110)).save(image)  # an odd size, not a multiple of 16
    png, feats = tmp_path / "demo.png", tmp_path / "demo.pt"
    res = eval_zeroshot.main(["--checkpoint", str(stage0_run / "final.pt"), "--image", str(image), "--vocabulary",
                              "red circle,star,heart", "--rpn_checkpoint", str(rpn_ckpt), "--score_thresh", "0",
                              "--templates", "single", "--out_image", str(png), "--save_region_features",
                              str(feats)])
    printed = capsys.readouterr().out
    assert "| # | name | score |" in printed and res["png"] == str(png)
    assert 0 < len(res["detections"]) <= 5 and {d["name"] for d in res["detections"]} <= {"red circle", "star", "heart"}
    assert Image.open(png).size == (150, 110)
    f = torch.load(feats, weights_only=True)
    assert f["box_source"] == "image" and f["embeddings"].shape[0] == f["boxes"].shape[0] > 0


def test_demo_and_config_errors_are_clear(toy_world, stage0_run, rpn_ckpt, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(SystemExit, match="cannot read it as an image"):
        eval_zeroshot.main(["--checkpoint", str(stage0_run / "final.pt"), "--image", str(bad), "--vocabulary", "a",
                            "--rpn_checkpoint", str(rpn_ckpt), "--templates", "single"])
    with pytest.raises(SystemExit, match="--rpn_checkpoint .* does not exist"):
        eval_zeroshot.main(["--boxes", "rpn", "--rpn_checkpoint", str(tmp_path / "none.pt"),
                            "--instances", toy_world["instances_val_all"]])
    with pytest.raises(SystemExit, match="--boxes must be gt, rpn, random, grid, file or windows"):
        eval_zeroshot.main(["--boxes", "crops", "--instances", toy_world["instances_val_all"]])
    with pytest.raises(SystemExit, match="proposal network"):
        eval_zeroshot.main(["--checkpoint", str(rpn_ckpt), "--instances", toy_world["instances_val_all"]])
    with pytest.raises(SystemExit, match="--region_encoder must be pooled or crop"):
        eval_zeroshot.main(["--region_encoder", "vild", "--instances", toy_world["instances_val_all"]])


def test_crop_region_encoder_differs_from_pooling_and_is_recorded(toy_world, stage0_run, tmp_path):
    common = ["--checkpoint", str(stage0_run / "final.pt"), "--instances", toy_world["instances_val_all"],
              "--templates", "single", "--eval_max_images", "6"]
    pooled = eval_zeroshot.main(common + ["--out", str(tmp_path / "pooled.json"), "--save-region-features",
                                          str(tmp_path / "pooled.pt")])
    crop = eval_zeroshot.main(common + ["--out", str(tmp_path / "crop.json"), "--region_encoder", "crop",
                                        "--save-region-features", str(tmp_path / "crop.pt")])
    assert pooled["region_encoder"] == "pooled" and crop["region_encoder"] == "crop (context 1.25)"
    assert crop["gt_box_top1"]["n_boxes"] == pooled["gt_box_top1"]["n_boxes"] > 0
    a, b = (torch.load(tmp_path / f"{k}.pt", weights_only=True)["embeddings"] for k in ("pooled", "crop"))
    assert a.shape == b.shape and not torch.allclose(a, b, atol=1e-3)  # the same boxes, embedded another way


@pytest.mark.parametrize("name", ["rpn", "random", "grid", "file", "windows"])
def test_every_proposer_answers_the_one_interface(name, toy_world, rpn_ckpt, tmp_path):
    """Each PROPOSERS method, built by build_proposer as eval_zeroshot builds it, gives (R_i, 5) rows inside each
    image of a batch of two images of different sizes, with scores in [0, 1]."""
    from regionclip_min.proposals import PROPOSERS, build_proposer
    assert name in PROPOSERS
    (tmp_path / "p.json").write_text(json.dumps({"7": [[0, 0, 50, 40, 0.25], [10, 10, 90, 60, 1.0]], "8": []}))
    proposer, _ = build_proposer(name, per_image=None if name == "rpn" else 6, image_ids=[7, 8],
                                 rpn_checkpoint=str(rpn_ckpt), rpn_top_k=5, nms_thresh=None, clip_normalized=False,
                                 proposals_file=str(tmp_path / "p.json"))
    images, sizes = [torch.rand(3, 64, 96), torch.rand(3, 80, 48)], [[64, 96], [80, 48]]
    batch = {"image_ids": torch.tensor([7, 8]), "sizes": torch.tensor(sizes), "orig_sizes": torch.tensor([[96, 64],
                                                                                                          [48, 80]])}
    out = proposer(images, sizes, batch, torch.Generator().manual_seed(0))
    assert len(out) == 2
    for rows, (h, w) in zip(out, sizes):
        assert rows.shape[1] == 5 and len(rows) <= (5 if name == "rpn" else 6)
        assert (rows[:, 0] >= 0).all() and (rows[:, 2] <= w).all() and (rows[:, 3] <= h).all()
        assert (rows[:, 2] > rows[:, 0]).all() and (rows[:, 3] > rows[:, 1]).all()
        assert ((rows[:, 4] >= 0) & (rows[:, 4] <= 1)).all()
    if name == "file":  # the file's rows, in the file's pixels (the images are at their files' sizes here)
        assert out[0].tolist() == [[0, 0, 50, 40, 0.25], [10, 10, 90, 60, 1.0]] and len(out[1]) == 0
    if name in ("random", "grid", "windows"):
        assert (out[0][:, 4] == 1).all() and len(out[0]) == 6


def test_proposals_file_of_the_gt_boxes_scores_as_the_gt_protocol(toy_world, stage0_run, tmp_path):
    """--boxes file with every ground-truth box as a proposal (score 1), without NMS (--nms_thresh 1), names the
    same regions as --boxes gt: the same AP50. A file missing an image stops before any model is loaded."""
    inst = json.loads(Path(toy_world["instances_val_all"]).read_text())
    table = {str(im["id"]): [] for im in inst["images"]}
    for a in inst["annotations"]:
        x, y, w, h = a["bbox"]
        table[str(a["image_id"])].append([x, y, x + w, y + h, 1.0])
    (tmp_path / "gt.json").write_text(json.dumps(table))
    common = ["--checkpoint", str(stage0_run / "final.pt"), "--instances", toy_world["instances_val_all"],
              "--templates", "single", "--kinds", "scene", "--eval_max_images", "8"]
    gt = eval_zeroshot.main([*common, "--out", str(tmp_path / "gt-res.json")])
    res = eval_zeroshot.main([*common, "--boxes", "file", "--proposals_file", str(tmp_path / "gt.json"),
                              "--nms_thresh", "1", "--out", str(tmp_path / "file-res.json")])
    assert res["file_ap50"] == pytest.approx(gt["gt_box_ap50"], nan_ok=True)
    assert res["proposals_file"] == str(tmp_path / "gt.json") and res["n_images"] == gt["n_images"] == 8
    del table[str(inst["images"][0]["id"])]
    (tmp_path / "short.json").write_text(json.dumps(table))
    with pytest.raises(SystemExit, match="short.json: no proposals for 1 of"):
        eval_zeroshot.main([*common, "--kinds", "all", "--boxes", "file", "--proposals_file",
                            str(tmp_path / "short.json"), "--out", str(tmp_path / "short-res.json")])


def test_class_probabilities_are_at_the_models_own_temperature_unless_tau_is_given(toy_world, stage0_run, tmp_path):
    """The zero-shot protocol reads probabilities at the loaded model's own 1/exp(logit_scale) (0.01 for OpenAI's
    CLIP): the toy CLIP's learned one. --tau 0.01 keeps the literal value; top-1 is the same, AP is not."""
    from regionclip_min.clip_model import load_clip, logit_scale

    common = ["--checkpoint", str(stage0_run / "final.pt"), "--instances", toy_world["instances_val_all"],
              "--templates", "single", "--eval_max_images", "8"]
    own = eval_zeroshot.main([*common, "--out", str(tmp_path / "own.json")])
    clip = load_clip("RN-toy", str(stage0_run / "final.pt"), verbose=False)[0]
    assert own["tau"] == pytest.approx(1 / logit_scale(clip)) and own["tau"] != pytest.approx(0.01)
    assert own["tau_source"] == "the model's own 1/exp(logit_scale)"
    literal = eval_zeroshot.main([*common, "--tau", "0.01", "--out", str(tmp_path / "literal.json")])
    assert literal["tau"] == 0.01 and literal["tau_source"] == "--tau"
    assert literal["gt_box_top1"] == own["gt_box_top1"]
    assert literal["gt_box_ap50"] != own["gt_box_ap50"]
    with pytest.raises(SystemExit, match="--tau"):
        eval_zeroshot.main([*common, "--tau", "0"])
