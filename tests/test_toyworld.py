"""The toy world (docs/DESIGN.md §5): determinism, COCO validity, the base/novel split, what captions and boxes
hold."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from regionclip_min import toyworld


def _checksums(root):
    root = Path(root)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path):
    a = toyworld.generate(tmp_path / "a", seed=3, num_train=12, num_val=6)
    b = toyworld.generate(tmp_path / "b", seed=3, num_train=12, num_val=6, workers=2)  # worker count: no effect
    c = toyworld.generate(tmp_path / "c", seed=4, num_train=12, num_val=6)
    sa, sb, sc = _checksums(a["root"]), _checksums(b["root"]), _checksums(c["root"])
    assert len(sa) == 12 + 6 + 5  # images + 2 captions + 3 instances files
    assert sa == sb
    assert set(sa) == set(sc)
    differing = [k for k in sa if sa[k] != sc[k]]
    assert len(differing) == len(sa)  # every image and every json changes with the seed


def test_written_paths_and_formats(toy_world):
    for key in ("captions_train", "captions_val", "instances_train_base", "instances_train_all",
                "instances_val_all"):
        assert Path(toy_world[key]).is_file()
    caps = json.loads(Path(toy_world["captions_train"]).read_text())
    assert {"images", "annotations"} <= set(caps)
    per_image = {}
    for a in caps["annotations"]:
        assert a["caption"].strip()
        per_image.setdefault(a["image_id"], []).append(a["caption"])
    assert set(per_image) == {im["id"] for im in caps["images"]}
    assert all(1 <= len(v) <= 3 for v in per_image.values())


def test_categories_carry_split(toy_world):
    cats = json.loads(Path(toy_world["instances_val_all"]).read_text())["categories"]
    assert len(cats) == len(toyworld.SHAPES) >= 10
    assert {c["name"] for c in cats if c["split"] == "novel"} == set(toyworld.NOVEL_SHAPES)
    assert all(c["split"] in ("base", "novel") for c in cats)


def test_base_file_has_no_novel_annotation(toy_world):
    base = json.loads(Path(toy_world["instances_train_base"]).read_text())
    allf = json.loads(Path(toy_world["instances_train_all"]).read_text())
    novel_ids = {c["id"] for c in base["categories"] if c["split"] == "novel"}
    assert novel_ids
    assert not any(a["category_id"] in novel_ids for a in base["annotations"])
    # the all-categories file does hold novel boxes, and the base file holds every base box
    assert any(a["category_id"] in novel_ids for a in allf["annotations"])
    assert len(base["annotations"]) == sum(a["category_id"] not in novel_ids for a in allf["annotations"])


def test_boxes_inside_images_and_object_sizes(toy_world):
    d = json.loads(Path(toy_world["instances_train_all"]).read_text())
    sizes = {im["id"]: (im["width"], im["height"], im["kind"]) for im in d["images"]}
    kinds = {k for *_, k in sizes.values()}
    assert kinds == {"object", "scene"}
    for a in d["annotations"]:
        x, y, w, h = a["bbox"]
        W, H, kind = sizes[a["image_id"]]
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= W + 1e-6 and y + h <= H + 1e-6
        side = max(w, h)
        if kind == "object":  # object-centric: one large object, roughly half the frame or more
            assert side >= 0.4 * W
        else:
            assert side <= 0.5 * W
    counts = {}
    for a in d["annotations"]:
        counts[a["image_id"]] = counts.get(a["image_id"], 0) + 1
    for image_id, (_, _, kind) in sizes.items():
        n = counts.get(image_id, 0)
        assert (n == 1) if kind == "object" else (1 <= n <= 4)


def test_captions_name_shapes_that_are_in_the_image(toy_world):
    d = json.loads(Path(toy_world["instances_train_all"]).read_text())
    caps = json.loads(Path(toy_world["captions_train"]).read_text())["annotations"]
    names = {c["id"]: c["name"] for c in d["categories"]}
    present = {}
    for a in d["annotations"]:
        present.setdefault(a["image_id"], set()).add(names[a["category_id"]])
    for c in caps:
        words = c["caption"].lower().replace(",", " ").replace(".", " ").split()
        mentioned = {n for n in toyworld.SHAPES if n in words or toyworld.plural(n) in words}
        assert mentioned, c["caption"]
        assert mentioned <= present[c["image_id"]], (c["caption"], present[c["image_id"]])


def test_cocoeval_on_ground_truth_gives_ap50_one(toy_world):
    gt = COCO(toy_world["instances_val_all"])
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
            for a in gt.dataset["annotations"]]
    ev = COCOeval(gt, gt.loadRes(dets), "bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[1] == pytest.approx(1.0)  # AP at IoU 0.5


def test_image_pixels_are_rgb_and_match_declared_size(toy_world):
    from PIL import Image

    d = json.loads(Path(toy_world["instances_val_all"]).read_text())
    im = d["images"][0]
    img = Image.open(Path(toy_world["images"]) / im["file_name"])
    assert img.mode == "RGB" and img.size == (im["width"], im["height"])
    arr = np.asarray(img)
    assert arr.std() > 5  # textured, not blank


def test_image_size_scales_objects(tmp_path):
    p = toyworld.generate(tmp_path, seed=1, num_train=4, num_val=2, image_size=256)
    d = json.loads(Path(p["instances_train_all"]).read_text())
    assert all(im["width"] == 256 for im in d["images"])
    assert max(max(a["bbox"][2:]) for a in d["annotations"]) > 50


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match="num_train"):
        toyworld.generate(tmp_path, num_train=0)


def test_cli_prints_summary(tmp_path, capsys):
    toyworld.main(["--out", str(tmp_path), "--num-train", "6", "--num-val", "3"])
    out = capsys.readouterr().out
    assert "novel (3)" in out and "instances_train_base.json" in out


def test_world_stats_parse_and_take_effect(tmp_path):
    assert toyworld.parse_stats("") == toyworld.WorldStats()
    assert toyworld.parse_stats("world-c") == toyworld.WORLD_C != toyworld.WorldStats()
    assert toyworld.parse_stats("object_centric_fraction=0.35,scene_size=26:56,color_mention_prob=0.3") == \
        toyworld.WORLD_C
    for bad in ("nope=1", "scene_size=26", "object_centric_fraction=x", "scene_size"):
        with pytest.raises(ValueError, match="world stats"):
            toyworld.parse_stats(bad)
    # every image object-centric, or every image a scene of exactly 3 small objects
    only_objects = toyworld.generate(tmp_path / "o", seed=2, num_train=16, num_val=2,
                                     stats=toyworld.parse_stats("object_centric_fraction=1"))
    scenes = toyworld.generate(tmp_path / "s", seed=2, num_train=16, num_val=2, stats=toyworld.parse_stats(
        "object_centric_fraction=0,scene_objects=3:3,scene_size=20:24,color_mention_prob=0"))
    o = json.loads(Path(only_objects["instances_train_all"]).read_text())
    s = json.loads(Path(scenes["instances_train_all"]).read_text())
    assert {im["kind"] for im in o["images"]} == {"object"} and {im["kind"] for im in s["images"]} == {"scene"}
    assert len(s["annotations"]) == 3 * 16 and all(max(a["bbox"][2:]) <= 24 * 1.1 for a in s["annotations"])
    caps = json.loads(Path(scenes["captions_train"]).read_text())
    words = {w for a in caps["annotations"] for w in a["caption"].lower().replace(",", " ").replace(".", " ").split()}
    assert not words & set(toyworld.COLORS)  # colour never named
    assert caps["info"]["stats"]["scene_objects"] == [3, 3] and o["info"]["stats"]["object_centric_fraction"] == 1


def test_cli_takes_world_stats(tmp_path, capsys):
    toyworld.main(["--out", str(tmp_path), "--num-train", "4", "--num-val", "2", "--stats", "world-c"])
    d = json.loads((tmp_path / "instances_train_all.json").read_text())
    assert d["info"]["stats"]["scene_size"] == [26, 56] and d["info"]["stats"]["color_mention_prob"] == 0.3
    with pytest.raises(SystemExit):
        toyworld.main(["--out", str(tmp_path), "--stats", "bogus=1"])
    assert "world stats" in capsys.readouterr().err


def test_the_novel_split_is_a_world_setting_that_leaves_the_images_alone(tmp_path):
    stats = toyworld.parse_stats("novel=ring:star")
    assert stats.novel == ("star", "ring") and toyworld.WorldStats().novel == toyworld.NOVEL_SHAPES  # SHAPES order
    for bad in ("novel=star:blob", "novel=", "novel=star:star", "novel=" + ":".join(toyworld.SHAPES)):
        with pytest.raises(ValueError, match="world stats"):
            toyworld.parse_stats(bad)
    default = toyworld.generate(tmp_path / "d", seed=3, num_train=12, num_val=2)
    other = toyworld.generate(tmp_path / "n", seed=3, num_train=12, num_val=2, stats=stats)
    cats = json.loads(Path(other["instances_val_all"]).read_text())["categories"]
    assert [c["name"] for c in cats if c["split"] == "novel"] == ["star", "ring"]
    star_ring = {toyworld.SHAPES.index(n) + 1 for n in ("star", "ring")}
    base = json.loads(Path(other["instances_train_base"]).read_text())["annotations"]
    every = json.loads(Path(other["instances_train_all"]).read_text())["annotations"]
    assert not any(a["category_id"] in star_ring for a in base)
    assert len(base) == sum(a["category_id"] not in star_ring for a in every) < len(every)
    assert json.loads(Path(other["captions_train"]).read_text())["info"]["stats"]["novel"] == ["star", "ring"]
    for name in ("train_000001.png", "train_000012.png"):  # the split changes the files' labels, not the world
        assert (tmp_path / "d" / "images" / name).read_bytes() == (tmp_path / "n" / "images" / name).read_bytes()
    assert json.loads(Path(default["instances_train_all"]).read_text())["annotations"] == every
