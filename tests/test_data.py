"""Tests of regionclip_min/data.py on tiny COCO/TSV fixtures written into tmp_path (no toy world needed)."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from regionclip_min.data import DetectionDataset, ImageCaptionDataset, collate_detection, collate_image_caption
from regionclip_min.transforms import (CLIP_MEAN, CLIP_STD, boxes_to_resized, flip_valid, hflip, image_transform,
                                       normalize, open_rgb)

RED = (255, 0, 0)

# Categories deliberately unsorted and non-contiguous: sorted ids 3, 5, 7 -> circle 1, square 2, star 3.
CATEGORIES = [{"id": 7, "name": "star", "split": "novel"}, {"id": 3, "name": "circle", "split": "base"},
              {"id": 5, "name": "square", "split": "base"}]


def make_instances(root, annotations=None, *, images=None, categories=None, raw=None, name="instances.json"):
    """Writes 3 PNGs (40x30 RGB, 32x32 grayscale, 20x20 RGBA) and an instances json; returns the json path.

    Default boxes: image 1 has circle [2, 4, 10, 6] (drawn in red) and star [20, 10, 15, 15], a crowd square;
    image 2 has a square [0, 0, 32, 32]; image 3 has none.
    """
    (root / "images").mkdir(exist_ok=True)
    img = Image.new("RGB", (40, 30), (0, 0, 0))
    img.paste(RED, (2, 4, 12, 10))
    img.save(root / "images" / "a.png")
    Image.new("L", (32, 32), 128).save(root / "images" / "b.png")
    Image.new("RGBA", (20, 20), (0, 255, 0, 0)).save(root / "images" / "c.png")
    if images is None:
        images = [{"id": 1, "file_name": "a.png", "width": 40, "height": 30, "kind": "scene"},
                  {"id": 2, "file_name": "b.png", "width": 32, "height": 32, "kind": "object"},
                  {"id": 3, "file_name": "c.png", "width": 20, "height": 20}]
    if annotations is None:
        annotations = [{"id": 10, "image_id": 1, "category_id": 3, "bbox": [2, 4, 10, 6], "iscrowd": 0},
                       {"id": 11, "image_id": 1, "category_id": 7, "bbox": [20, 10, 15, 15]},
                       {"id": 12, "image_id": 1, "category_id": 5, "bbox": [0, 0, 5, 5], "iscrowd": 1},
                       {"id": 13, "image_id": 2, "category_id": 5, "bbox": [0, 0, 32, 32]}]
    obj = {"images": images, "annotations": annotations, "categories": categories or CATEGORIES}
    path = root / name
    path.write_text(raw if raw is not None else json.dumps(obj))
    return path


def make_captions(root, annotations=None):
    make_instances(root)  # the images
    images = [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}, {"id": 3, "file_name": "c.png"}]
    if annotations is None:
        annotations = [{"id": 1, "image_id": 1, "caption": "a red circle "}, {"id": 2, "image_id": 1, "caption": "x"},
                       {"id": 3, "image_id": 2, "caption": "gray"}, {"id": 4, "image_id": 3, "caption": "green"}]
    path = root / "captions.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


# --- detection: shapes, dtypes, labels ------------------------------------------------------------------------

def test_detection_items_and_label_order(tmp_path):
    ds = DetectionDataset(make_instances(tmp_path), tmp_path / "images")
    assert ds.category_names == ["circle", "square", "star"] and ds.category_ids == [3, 5, 7]
    assert ds.category_splits == ["base", "base", "novel"]
    assert ds.kinds == ["scene", "object", None] and ds.image_ids == [1, 2, 3]
    assert ds.coco_json_path == str(tmp_path / "instances.json") and len(ds) == 3
    image, target = ds[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0 and image[:, 5, 3].tolist() == [1.0, 0.0, 0.0]
    assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
    torch.testing.assert_close(target["boxes"], torch.tensor([[2.0, 4, 12, 10], [20, 10, 35, 25]]))  # crowd dropped
    assert target["labels"].tolist() == [1, 3] and target["image_id"] == 1
    assert target["orig_size"].tolist() == [30, 40]
    gray, t2 = ds[1]  # grayscale -> 3 equal channels
    assert gray.shape == (3, 32, 32) and torch.equal(gray[0], gray[2]) and t2["labels"].tolist() == [2]
    rgba, t3 = ds[2]  # RGBA -> RGB, no boxes
    assert rgba.shape == (3, 20, 20) and rgba[1].max() == 1.0
    assert t3["boxes"].shape == (0, 4) and t3["labels"].shape == (0,) and t3["labels"].dtype == torch.int64
    assert not ds.skipped and "3 images, 3 boxes, 3 categories; skipped nothing" in ds.summary()


def test_lvis_images_named_by_coco_url_only(tmp_path):
    # LVIS v1 lists images by coco_url; the file is <root>/<split folder>/<name>
    make_instances(tmp_path)
    (tmp_path / "val2017").mkdir()
    (tmp_path / "images" / "a.png").rename(tmp_path / "val2017" / "a.png")
    images = [{"id": 1, "coco_url": "http://images.cocodataset.org/val2017/a.png", "width": 40, "height": 30}]
    ds = DetectionDataset(make_instances(tmp_path, images=images, annotations=[], name="lvis.json"), tmp_path)
    image, _ = ds[0]
    assert ds.images[0]["file_name"] == "val2017/a.png" and image.shape == (3, 30, 40)


def test_open_rgb_applies_exif_orientation_and_scales_every_mode(tmp_path):
    # a 40 x 20 picture with a red left half, stored rotated 90 degrees with EXIF orientation 6 ("rotate 270 to view")
    upright = Image.new("RGB", (40, 20), (0, 0, 255))
    upright.paste(RED, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    seen = open_rgb(tmp_path / "phone.jpg")
    assert seen.size == (40, 20) and seen.getpixel((5, 10))[0] > 200 and seen.getpixel((35, 10))[2] > 200
    ramp16 = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)  # 16-bit grayscale, black to white
    Image.fromarray(ramp16).save(tmp_path / "gray16.png")
    assert Image.open(tmp_path / "gray16.png").mode.startswith("I")
    modes = {"I;16 png": open_rgb(tmp_path / "gray16.png")}
    Image.fromarray(ramp16.astype(np.int32), mode="I").save(tmp_path / "gray32.tif")
    modes["I tif"] = open_rgb(tmp_path / "gray32.tif")
    Image.fromarray((ramp16 / 65535.0).astype(np.float32), mode="F").save(tmp_path / "float.tif")
    modes["F tif, values in [0, 1]"] = open_rgb(tmp_path / "float.tif")
    for mode, im in modes.items():  # scaled, not clipped: a ramp from black to white, never all white
        a = np.asarray(im)
        assert im.mode == "RGB" and a.shape == (8, 8, 3), mode
        assert a[0, 0, 0] == 0 and a[-1, -1, 0] == 255 and 100 < a[4, 0, 0] < 160, (mode, a[:, :, 0])
    wide = np.linspace(-1000, 5e6, 64).reshape(8, 8).astype(np.float32)  # out of [0, 1]: stretched
    Image.fromarray(wide, mode="F").save(tmp_path / "wide.tif")
    a = np.asarray(open_rgb(tmp_path / "wide.tif"))
    assert a.min() == 0 and a.max() == 255
    for mode in ("L", "P", "1", "LA", "RGBA", "CMYK"):
        Image.new("RGB", (6, 4), (200, 30, 30)).convert(mode).save(tmp_path / f"m.{'tif' if mode == 'CMYK' else 'png'}")
        im = open_rgb(tmp_path / f"m.{'tif' if mode == 'CMYK' else 'png'}")
        assert im.mode == "RGB" and im.size == (6, 4), mode


def test_category_subset_remaps_labels(tmp_path):
    path = make_instances(tmp_path)
    ds = DetectionDataset(path, categories=["star", 3])  # by name and by id; image_root defaults to json folder
    ds.image_root = tmp_path / "images"
    assert ds.category_names == ["circle", "star"] and ds.category_ids == [3, 7]
    assert ds[0][1]["labels"].tolist() == [1, 2] and ds[1][1]["boxes"].shape == (0, 4)  # square dropped
    novel = DetectionDataset(path, tmp_path / "images", categories="novel", drop_empty=True)
    assert novel.category_names == ["star"] and len(novel) == 1 and novel[0][1]["labels"].tolist() == [1]
    assert not novel.skipped  # boxes of other categories are not problems
    with pytest.raises(ValueError, match="'hexagon'"):
        DetectionDataset(path, categories=["hexagon"])
    with pytest.raises(ValueError, match="no category has split 'rare'"):
        DetectionDataset(path, categories="rare")


def test_collate_detection_variable_boxes_and_empty(tmp_path):
    ds = DetectionDataset(make_instances(tmp_path), tmp_path / "images")
    images, targets = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate_detection)))
    assert [tuple(i.shape) for i in images] == [(3, 30, 40), (3, 32, 32), (3, 20, 20)]
    assert [tuple(t["boxes"].shape) for t in targets] == [(2, 4), (1, 4), (0, 4)]
    images, targets = collate_detection([None, ds[2]])
    assert len(images) == len(targets) == 1 and collate_detection([None]) == ([], [])


def test_min_size_scales_image_and_boxes(tmp_path):
    ds = DetectionDataset(make_instances(tmp_path), tmp_path / "images", min_size=60)
    image, target = ds[0]
    assert image.shape == (3, 60, 80) and target["orig_size"].tolist() == [30, 40]
    torch.testing.assert_close(target["boxes"], torch.tensor([[4.0, 8, 24, 20], [40, 20, 70, 50]]))
    image, target = DetectionDataset(ds.path, ds.image_root, min_size=31)[0]  # 40x30 -> 41x31: sx != sy
    assert image.shape == (3, 31, 41)
    torch.testing.assert_close(target["boxes"][0], torch.tensor([2 * 41 / 40, 4 * 31 / 30, 12 * 41 / 40, 10 * 31 / 30]))


def test_hflip_flips_boxes_with_the_pixels(tmp_path):
    ds = DetectionDataset(make_instances(tmp_path), tmp_path / "images", hflip_prob=1.0)
    image, target = ds[0]
    torch.testing.assert_close(target["boxes"], torch.tensor([[28.0, 4, 38, 10], [5, 10, 20, 25]]))
    red = (image[0] == 1) & (image[1] == 0)  # (H, W) the drawn circle box, after the flip
    ys, xs = red.nonzero(as_tuple=True)
    assert [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1] == [28, 4, 38, 10]
    img2, boxes2 = hflip(image, target["boxes"])  # flipping twice is the identity
    assert torch.equal(img2, DetectionDataset(ds.path, ds.image_root)[0][0])
    torch.testing.assert_close(boxes2, torch.tensor([[2.0, 4, 12, 10], [20, 10, 35, 25]]))
    assert hflip(image, torch.zeros(0, 4))[1].shape == (0, 4)


# --- transforms -----------------------------------------------------------------------------------------------

def test_normalize_numerics():
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    x = torch.rand(2, 3, 4, 5)
    torch.testing.assert_close(normalize(x), (x - mean) / std)
    torch.testing.assert_close(normalize(mean.expand(3, 4, 5)), torch.zeros(3, 4, 5))
    torch.testing.assert_close(normalize(torch.ones(3, 1, 1)).flatten(), (1 - mean.flatten()) / std.flatten())
    with pytest.raises(ValueError, match="RGB"):
        normalize(torch.rand(1, 4, 4))


def test_image_transform_resize_crop_flip():
    img = Image.new("L", (60, 30), 255)  # grayscale, landscape
    img.paste(0, (0, 0, 30, 30))  # left half black
    out = image_transform(16)(img)
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    torch.testing.assert_close(out[:, 8, 0], normalize(torch.zeros(3, 1, 1)).flatten())  # center crop, left black
    torch.testing.assert_close(out[:, 8, 15], normalize(torch.ones(3, 1, 1)).flatten(), atol=1e-5, rtol=0)
    torch.manual_seed(0)
    flipped = [bool(image_transform(16, train=True)(img)[0, 8, 0] > 0) for _ in range(20)]
    assert any(flipped) and not all(flipped)


# --- image-caption --------------------------------------------------------------------------------------------

def test_image_caption_coco_json_and_collate(tmp_path):
    ds = ImageCaptionDataset(make_captions(tmp_path), tmp_path / "images", image_size=16, train=True)
    assert len(ds) == 3
    item = ds[0]
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    assert item["captions"] == ["a red circle", "x"] and item["image_id"] == 1
    batch = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate_image_caption)))
    assert batch["images"].shape == (3, 3, 16, 16) and batch["image_ids"].tolist() == [1, 2, 3]
    assert batch["image_ids"].dtype == torch.int64 and batch["captions"][2] == ["green"]
    assert collate_image_caption([None, None]) is None
    assert collate_image_caption([None, item])["images"].shape == (1, 3, 16, 16)


def test_pretraining_images_keep_their_aspect_and_are_padded(tmp_path):
    """max_size: short side S, long side at most max_size, no crop (the official 800 / 1333); a batch is padded at
    the bottom and right with 0 (the mean colour), flips stay inside each image, file boxes follow the resize."""
    (tmp_path / "images").mkdir()
    Image.new("RGB", (40, 20), (255, 0, 0)).save(tmp_path / "images" / "wide.png")  # 2:1
    Image.new("RGB", (20, 80), (0, 255, 0)).save(tmp_path / "images" / "tall.png")  # 1:4, capped by max_size
    caps = {"images": [{"id": 1, "file_name": "wide.png"}, {"id": 2, "file_name": "tall.png"}],
            "annotations": [{"image_id": 1, "caption": "red"}, {"image_id": 2, "caption": "green"}]}
    (tmp_path / "caps.json").write_text(json.dumps(caps))
    ds = ImageCaptionDataset(tmp_path / "caps.json", tmp_path / "images", image_size=16, max_size=48)
    assert ds[0]["image"].shape == (3, 16, 32) and ds[1]["image"].shape == (3, 48, 12)
    batch = collate_image_caption([ds[0], ds[1]])
    assert batch["images"].shape == (2, 3, 48, 32) and batch["sizes"].tolist() == [[16, 32], [48, 12]]
    assert torch.all(batch["images"][0, :, 16:] == 0) and torch.all(batch["images"][1, :, :, 12:] == 0)
    left = batch["images"][1, :, :, 0].clone()
    batch["images"][1, :, :, 11] = 5.0  # mark the last valid column
    flip_valid(batch["images"], batch["sizes"], torch.tensor([False, True]))
    assert torch.all(batch["images"][1, :, :, 0] == 5.0) and torch.equal(batch["images"][1, :, :, 11], left)
    assert torch.all(batch["images"][1, :, :, 12:] == 0)  # the padding stayed at the right
    boxes = boxes_to_resized(torch.tensor([[0.0, 0, 20, 10, 0.9], [10, 70, 30, 90, 0.5]]), (20, 80), (48, 12))
    torch.testing.assert_close(boxes, torch.tensor([[0, 0, 12, 6, 0.9], [6, 42, 12, 48, 0.5]]))


@pytest.mark.parametrize("train", [False, True])
def test_image_caption_cache_gives_the_same_items(tmp_path, train):
    path = make_captions(tmp_path)
    (tmp_path / "images" / "c.png").write_bytes(b"not a png")  # a bad image is skipped in both modes
    plain = ImageCaptionDataset(path, tmp_path / "images", image_size=16, train=train)
    cached = ImageCaptionDataset(path, tmp_path / "images", image_size=16, train=train, cache_images=True)
    for epoch in range(3):  # the first read fills the cache, later ones read it
        for i in range(len(plain)):
            torch.manual_seed(epoch * 10 + i)  # the same flip draw for both
            a = plain[i]
            torch.manual_seed(epoch * 10 + i)
            b = cached[i]
            if a is None:
                assert b is None and i == 2
                continue
            assert torch.equal(a["image"], b["image"]) and a["orig_size"] == b["orig_size"]
            assert a["captions"] == b["captions"] and a["image_id"] == b["image_id"]
    assert sorted(cached.cache) == [0, 1] and cached.cache[0][0].dtype == torch.uint8


def test_image_caption_tsv_paths(tmp_path):
    make_instances(tmp_path)
    lines = ["images/a.png\ta circle ", "", f"{tmp_path / 'images' / 'b.png'}\tgray\twith tab", "images/a.png\tmore"]
    (tmp_path / "pairs.tsv").write_text("\n".join(lines) + "\n")
    ds = ImageCaptionDataset(tmp_path / "pairs.tsv", image_size=8)
    assert len(ds) == 2 and ds[0]["captions"] == ["a circle", "more"] and ds[1]["captions"] == ["gray\twith tab"]
    assert ds[1]["image_id"] == 1 and ds[1]["image"].shape == (3, 8, 8)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "rel.tsv").write_text("c.png\tgreen\r\n")
    ds = ImageCaptionDataset(tmp_path / "sub" / "rel.tsv", tmp_path / "images", image_size=8)
    assert ds[0]["captions"] == ["green"] and ds[0]["image"].shape == (3, 8, 8)
    (tmp_path / "pairs.csv").write_text("a.png,x\n")
    with pytest.raises(ValueError, match="pairs.csv: expected a .json"):
        ImageCaptionDataset(tmp_path / "pairs.csv")


# --- bad input: structural ------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [DetectionDataset, ImageCaptionDataset])
def test_missing_and_malformed_json(tmp_path, cls):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        cls(tmp_path / "nope.json")
    path = make_instances(tmp_path, raw='{"images": [', name="bad.json")
    with pytest.raises(ValueError, match="bad.json: malformed JSON"):
        cls(path)
    path = make_instances(tmp_path, raw='{"images": []}', name="keys.json")
    with pytest.raises(ValueError, match=r"keys.json: top level is missing required key\(s\) \['annotations'"):
        cls(path)
    path = make_instances(tmp_path, raw='{"images": {}, "annotations": [], "categories": []}', name="types.json")
    with pytest.raises(ValueError, match="types.json: each of .* must be a list"):
        cls(path)


def test_missing_keys_in_entries(tmp_path):
    anns = [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1]}, {"id": 2, "image_id": 1}]
    with pytest.raises(ValueError, match=r"instances.json: annotations\[1\] is missing .*'category_id', 'bbox'"):
        DetectionDataset(make_instances(tmp_path, anns))
    with pytest.raises(ValueError, match=r"images\[0\] is missing .*'width'"):
        DetectionDataset(make_instances(tmp_path, [], images=[{"id": 1, "file_name": "a.png"}]))
    with pytest.raises(ValueError, match=r"captions.json: annotations\[0\] is missing .*'caption'"):
        ImageCaptionDataset(make_captions(tmp_path, [{"image_id": 1}]))
    twice = [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}] * 2
    with pytest.raises(ValueError, match=r"instances.json: images\[1\] repeats image id 1"):
        DetectionDataset(make_instances(tmp_path, [], images=twice))


# --- bad input: per sample (strict raises naming file + index; non-strict skips, counts, warns once) -------------

BAD_ANNOTATIONS = {  # kind: (annotation, words of the message)
    "box_degenerate": ({"bbox": [5, 5, 0, 4]}, "w <= 0"),
    "box_outside": ({"bbox": [30, 5, 12, 4]}, "outside the 40x30 image"),
    "box_invalid": ({"bbox": [1, 2, 3]}, "not 4 finite numbers"),
    "unknown_category": ({"category_id": 99}, "unknown category_id 99"),
    "unknown_image": ({"image_id": 42}, "unknown image_id 42"),
}


@pytest.mark.parametrize("kind", sorted(BAD_ANNOTATIONS))
def test_bad_annotation(tmp_path, kind):
    bad, words = BAD_ANNOTATIONS[kind]
    good = {"id": 1, "image_id": 1, "category_id": 3, "bbox": [2, 4, 10, 6]}
    anns = [good, {**good, "id": 2, **bad}, {**good, "id": 3, **bad}]
    path = make_instances(tmp_path, anns)
    with pytest.raises(ValueError, match=rf"instances.json: annotations\[1\] \(id 2\): .*{words}"):
        DetectionDataset(path, strict=True)
    with pytest.warns(UserWarning, match=rf"skipped 2 x {kind}; first: .*annotations\[1\]") as record:
        ds = DetectionDataset(path, tmp_path / "images")
    assert len(record) == 1 and ds.skipped == {kind: 2} and f"skipped {kind}=2" in ds.summary()
    assert ds[0][1]["boxes"].shape == (1, 4)


def test_box_slightly_outside_is_clipped(tmp_path):
    path = make_instances(tmp_path, [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [-0.5, 20, 40.9, 10.4]}])
    ds = DetectionDataset(path, tmp_path / "images", strict=True)
    torch.testing.assert_close(ds[0][1]["boxes"], torch.tensor([[0.0, 20, 40, 30]]))


def _corrupt(path):
    path.write_bytes(b"not a png at all")


def _truncate(path):
    path.write_bytes(path.read_bytes()[:60])


def _shrink(path):
    Image.new("RGB", (8, 8)).save(path)


@pytest.mark.parametrize("damage, kind, error, words", [
    (lambda p: p.unlink(), "image_missing", FileNotFoundError, "image file not found"),
    (_corrupt, "image_unreadable", ValueError, "cannot read image"),
    (_truncate, "image_unreadable", ValueError, "cannot read image"),
    (_shrink, "image_size_mismatch", ValueError, "image is 8x8, the json says 32x32"),
])
def test_bad_image_detection(tmp_path, damage, kind, error, words):
    path = make_instances(tmp_path)
    damage(tmp_path / "images" / "b.png")
    with pytest.raises(error, match=rf"b.png \(images\[1\] \(id 2\) of .*instances.json\): {words}"):
        DetectionDataset(path, tmp_path / "images", strict=True)[1]
    ds = DetectionDataset(path, tmp_path / "images")
    with pytest.warns(UserWarning, match=words):
        images, targets = collate_detection([ds[i] for i in range(3)])
    assert len(images) == 2 and [t["image_id"] for t in targets] == [1, 3]
    assert ds[1] is None and ds.skipped == {kind: 1}  # counted once per image


@pytest.mark.parametrize("damage, kind, error", [(lambda p: p.unlink(), "image_missing", FileNotFoundError),
                                                 (_corrupt, "image_unreadable", ValueError)])
def test_bad_image_caption(tmp_path, damage, kind, error):
    path = make_captions(tmp_path)
    damage(tmp_path / "images" / "a.png")
    with pytest.raises(error, match=r"a.png \(images\[0\] of .*captions.json\)"):
        ImageCaptionDataset(path, tmp_path / "images", strict=True)[0]
    ds = ImageCaptionDataset(path, tmp_path / "images", image_size=8)
    with pytest.warns(UserWarning):
        batch = collate_image_caption([ds[0], ds[1]])
    assert batch["image_ids"].tolist() == [2] and ds.skipped == {kind: 1}


def test_empty_caption_json(tmp_path):
    anns = [{"id": 1, "image_id": 1, "caption": "ok"}, {"id": 2, "image_id": 1, "caption": "  "},
            {"id": 3, "image_id": 2, "caption": ""}, {"id": 4, "image_id": 9, "caption": "who"}]
    path = make_captions(tmp_path, anns)
    with pytest.raises(ValueError, match=r"captions.json: annotations\[1\] \(id 2\): empty caption"):
        ImageCaptionDataset(path, strict=True)
    with pytest.warns(UserWarning) as record:
        ds = ImageCaptionDataset(path, tmp_path / "images", image_size=8)
    assert len(record) == 3  # one warning per kind
    assert ds.skipped == {"caption_empty": 2, "unknown_image": 1, "no_caption": 2}  # images 2 and 3
    assert len(ds) == 1 and ds[0]["captions"] == ["ok"]


TSV_BAD_LINES = {
    "missing tab": (b"images/b.png gray", "tsv_malformed", "expected 'image_path<TAB>caption'"),
    "missing path": (b"\tgray", "tsv_malformed", "expected 'image_path<TAB>caption'"),
    "empty caption": (b"images/b.png\t  ", "caption_empty", "empty caption"),
    "bad utf-8": (b"images/b.png\tgr\xffy", "tsv_malformed", "not valid UTF-8"),
}


@pytest.mark.parametrize("case", sorted(TSV_BAD_LINES))
def test_bad_tsv_line(tmp_path, case):
    line, kind, words = TSV_BAD_LINES[case]
    make_instances(tmp_path)
    path = tmp_path / "pairs.tsv"
    path.write_bytes(b"images/a.png\tred\n" + line + b"\nimages/c.png\tgreen\n")
    with pytest.raises(ValueError, match=rf"pairs.tsv: line 2: {words}"):
        ImageCaptionDataset(path, strict=True)
    with pytest.warns(UserWarning, match=rf"skipped 1 x {kind}; first: .*line 2"):
        ds = ImageCaptionDataset(path, image_size=8)
    assert ds.skipped == {kind: 1} and [ds[i]["captions"] for i in range(len(ds))] == [["red"], ["green"]]
    assert f"2 images, 2 captions; skipped {kind}=1" in ds.summary()


def test_category_splits_choose_what_a_detector_trains_on(toy_world):
    from regionclip_min.splits import detection_datasets, novel_base_ids

    ovd, val = detection_datasets("json", toy_world["instances_train_all"], toy_world["instances_val_all"])
    supervised, _ = detection_datasets("all", toy_world["instances_train_all"], toy_world["instances_val_all"])
    novel, base = novel_base_ids("all", val)
    assert len(ovd.category_names) == 9 and supervised.category_names == val.category_names  # all 12
    names = dict(zip(val.category_ids, val.category_names))
    assert sorted(names[c] for c in novel) == ["arrow", "heart", "hexagon"] and len(base) == 9  # still reported
