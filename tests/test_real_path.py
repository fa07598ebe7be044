"""The real-data path as a new user walks it: photos of mixed sizes and PIL modes (an EXIF-rotated JPEG, a 16-bit
grayscale PNG, a palette PNG, an RGBA PNG), COCO-format jsons with real COCO ids and names and none of the toy
world's fields, and a local CLIP weights file. Each documented real-data command of the three scripts runs with a
small random model; what each writes is checked."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import eval_zeroshot
import train_detect
import train_pretrain
from regionclip_min.checkpoint import load_checkpoint
from regionclip_min.clip_model import load_clip
from regionclip_min.demo import detect

# real COCO 2017 ids and names: 3 of OVR-CNN's base classes, 2 novel ones, and one outside the 48/17 split
CATS = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 10, "name": "traffic light"},
        {"id": 17, "name": "cat"}, {"id": 47, "name": "cup"}, {"id": 62, "name": "chair"}]
PHOTOS = [  # file, stored size (w, h), how it is stored
    ("street.jpg", (320, 240), "RGB"), ("phone.jpg", (240, 320), "EXIF-rotated"), ("xray.png", (256, 256), "I;16"),
    ("poster.png", (300, 200), "P"), ("sticker.png", (200, 200), "RGBA"), ("kitchen.jpg", (288, 224), "RGB")]


def _photo(path, size, how, seed):
    rng = np.random.default_rng(seed)
    w, h = size
    a = (rng.random((h, w, 3)) * 60 + 40).astype(np.uint8)
    a[h // 4: h // 2, w // 4: w // 2] = (220, 40, 40)  # an "object" the boxes point at
    image = Image.fromarray(a)
    if how == "EXIF-rotated":  # stored sideways (320 x 240); EXIF orientation 6 turns it upright, as annotated
        exif = Image.Exif()
        exif[0x0112] = 6
        image.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif)
    if how == "I;16":
        Image.fromarray((a[..., 0].astype(np.uint16) * 257)).save(path)
    elif how in ("P", "RGBA"):
        image.convert(how).save(path)
    else:
        image.save(path, quality=92)
    return size


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    (root / "photos").mkdir()
    images, anns, caps = [], [], []
    for i, (name, size, how) in enumerate(PHOTOS):
        w, h = _photo(root / "photos" / name, size, how, i)
        images.append({"id": 100 + i, "file_name": name, "width": w, "height": h})
        for k, cat in enumerate((1, 17, 47, 3, 62)[: 2 + i % 3]):
            anns.append({"id": 1000 + 10 * i + k, "image_id": 100 + i, "category_id": cat, "iscrowd": 0,
                         "bbox": [w / 4 + 6 * k, h / 4 + 4 * k, w / 4, h / 4], "area": w * h / 16})
        caps += [{"id": 500 + 2 * i, "image_id": 100 + i, "caption": "a person with a cat and a cup"},
                 {"id": 501 + 2 * i, "image_id": 100 + i, "caption": "a car parked next to a chair"}]
    instances = {"images": images, "annotations": anns, "categories": CATS}
    (root / "instances.json").write_text(json.dumps(instances))
    (root / "captions.json").write_text(json.dumps({"images": images, "annotations": caps}))
    torch.manual_seed(0)
    torch.save(load_clip("RN-toy", verbose=False)[0].state_dict(), root / "clip_weights.pt")  # a local weights file
    return root


def _common(real):
    return ["--model_name", "RN-toy", "--num_workers", "0", "--threads", "1"]


def test_every_documented_real_data_command_runs(real, tmp_path, capsys):
    weights, inst, photos = str(real / "clip_weights.pt"), str(real / "instances.json"), str(real / "photos")
    # 1. pretraining on image-caption pairs from a local CLIP weights file
    pre = tmp_path / "pretrain"
    train_pretrain.main(["--captions", str(real / "captions.json"), "--image_root", photos, "--pretrained", weights,
                         *_common(real), "--out_dir", str(pre), "--max_steps", "2", "--batch_size", "3",
                         "--proposals_per_image", "4", "--templates", "single", "--concept_cache", str(tmp_path / "c"),
                         "--warmup_steps", "1"])
    printed = capsys.readouterr().out
    assert "next: python eval_zeroshot.py" in printed and "--instances" in printed
    assert load_checkpoint(pre / "final.pt")["step"] == 2
    # 2. a class-agnostic RPN on the base boxes of the 48/17 split: --pretrained is used, not the toy default init
    rpn = tmp_path / "rpn"
    det_data = ["--train_json", inst, "--val_json", inst, "--image_root", photos, "--category_split", "coco-ovd",
                "--min_sizes", "160", "--max_size", "224", "--batch_size", "2", "--templates", "single",
                "--eval_max_images", "6", "--draw_images", "1", "--warmup_steps", "1"]
    train_detect.main(["--task", "rpn", "--pretrained", weights, *_common(real), *det_data, "--out_dir", str(rpn),
                       "--max_steps", "2"])
    printed = capsys.readouterr().out
    assert "used instead of the default / preset init" in printed
    assert "left out (not in the 48/17 split): traffic light" in printed
    assert f"--rpn_checkpoint {rpn / 'final.pt'}" in printed and "--train_json" in printed  # a next: that works
    # 3. detector transfer from the pretrained checkpoint, evaluated at the end; strict JSON out
    det = tmp_path / "det"
    train_detect.main(["--init", str(pre / "final.pt"), *_common(real), *det_data, "--out_dir", str(det),
                       "--max_steps", "2", "--rpn_post_nms_top_n_train", "30", "--box_batch_size_per_image", "8"])
    text = (det / "results.json").read_text()
    results = json.loads(text, parse_constant=lambda c: pytest.fail(f"results.json holds {c}"))
    assert results["inputs"]["val_json_sha256"] and set(results["ap50"]) >= {"novel", "base", "all"}
    assert "NaN" not in text and all(math.isfinite(v) for v in json.loads((det / "metrics.jsonl").read_text()
                                                                         .splitlines()[-1]).values())
    # 4. --eval_only with a wrong val image root stops before scoring and keeps results.json
    with pytest.raises(SystemExit, match="--val_image_root"):
        train_detect.main(["--eval_only", "true", *_common(real), *det_data, "--out_dir", str(det),
                           "--val_image_root", str(tmp_path / "nowhere")])
    assert (det / "results.json").read_text() == text
    # 5. zero-shot evaluation on the COCO json: no "kind" field, every image scored
    out = tmp_path / "zs.json"
    res = eval_zeroshot.main(["--checkpoint", str(pre / "final.pt"), "--instances", inst, "--image_root", photos,
                              "--region_scale", "1", "--templates", "single", "--out", str(out)])
    assert res["n_images"] == len(PHOTOS) and res["kinds"] == "all" and res["gt_box_top1"]["n_boxes"] > 0
    with pytest.raises(SystemExit, match="other inputs"):  # other weights, same results file: refused
        eval_zeroshot.main(["--model_name", "RN-toy", "--pretrained", weights, "--instances", inst, "--image_root",
                            photos, "--templates", "single", "--out", str(out)])
    with pytest.raises(SystemExit, match="--image_root"):  # a wrong image root is named as such
        eval_zeroshot.main(["--checkpoint", str(pre / "final.pt"), "--instances", inst, "--image_root",
                            str(tmp_path), "--out", str(tmp_path / "zs2.json")])
    # 6. the demo with only CLIP weights and a photo (sliding windows), and a trained detector on a photo
    png = tmp_path / "demo.png"
    demo = eval_zeroshot.main(["--model_name", "RN-toy", "--pretrained", weights, "--image",
                               str(real / "photos" / "phone.jpg"), "--vocabulary", "cat,cup,person",
                               "--region_scale", "1",
                               "--rpn_checkpoint", str(tmp_path / "no-rpn-trained.pt"),
                               "--templates", "single", "--score_thresh", "0", "--out_image", str(png)])
    assert "sliding windows" in capsys.readouterr().out and Image.open(png).size == (240, 320)  # upright
    assert demo["detections"] and all(d["name"] in ("cat", "cup", "person") for d in demo["detections"])
    eval_zeroshot.main(["--checkpoint", str(det / "final.pt"), "--image", str(real / "photos" / "street.jpg"),
                        "--vocabulary", "person,cat", "--templates", "single", "--score_thresh", "0",
                        "--out_image", str(tmp_path / "det.png")])
    assert "the detector's own RPN" in capsys.readouterr().out
    eval_zeroshot.main(["--model_name", "RN-toy", "--pretrained", weights, "--image",
                        str(real / "photos" / "street.jpg"), "--vocabulary", "cat", "--region_scale", "1",
                        "--templates", "single", "--out_image", str(tmp_path / "one.png")])
    assert "names one class" in capsys.readouterr().out


def test_demo_is_a_short_python_call(real):
    found = detect(real / "photos" / "street.jpg", ["cat", "cup", "person"], "RN-toy", real / "clip_weights.pt",
                   max_boxes=3)
    assert 0 < len(found) <= 3 and [d["score"] for d in found] == sorted((d["score"] for d in found), reverse=True)
    for d in found:
        x1, y1, x2, y2 = d["box"]
        assert d["name"] in ("cat", "cup", "person") and 0 <= x1 < x2 <= 320 and 0 <= y1 < y2 <= 240
    with pytest.raises(ValueError, match="at least one name"):
        detect(real / "photos" / "street.jpg", [], "RN-toy")
    # the model's own temperature unless tau is given, as eval_zeroshot.py reads it
    from regionclip_min.clip_model import load_clip, logit_scale
    own = 1 / logit_scale(load_clip("RN-toy", str(real / "clip_weights.pt"), verbose=False)[0])
    args = (real / "photos" / "street.jpg", ["cat", "cup", "person"], "RN-toy", real / "clip_weights.pt")
    assert detect(*args, tau=own, max_boxes=3) == found != detect(*args, tau=own / 4, max_boxes=3)


def test_split_marks_and_devices_get_one_line_messages(real, tmp_path):
    inst = str(real / "instances.json")
    with pytest.raises(SystemExit, match='"split"'):  # --category_split json on a json without split fields
        train_detect.main(["--train_json", inst, "--val_json", inst, "--image_root", str(real / "photos"),
                           "--init", "none", "--out_dir", str(tmp_path / "a"), *_common(real)])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="no CUDA GPU"):
            train_detect.main(["--device", "cuda", "--out_dir", str(tmp_path / "b")])
