"""eval_zeroshot.py: GT-box region recognition and whole-image recognition on the toy world."""
import json

import torch
import torch.nn.functional as F

import eval_zeroshot
from regionclip_min.clip_model import load_clip
from regionclip_min.data import DetectionDataset
from regionclip_min.evaluation import gt_box_accuracy
from regionclip_min.regions import RegionEncoder


def test_gt_mode_runs_on_a_checkpoint_and_writes_results(toy_world, stage0_run, tmp_path, capsys):
    out = tmp_path / "zs.json"
    res = eval_zeroshot.main(["--checkpoint", str(stage0_run / "final.pt"), "--instances",
                              toy_world["instances_val_all"], "--templates", "single", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["gt_box_top1"]["n_boxes"] > 0 and saved["whole_image_top1"]["n_images"] > 0
    for k in ("all", "base", "novel"):
        assert 0.0 <= saved["gt_box_top1"][k] <= 1.0
    assert res["gt_box_top1"] == saved["gt_box_top1"]
    assert "GT-box top-1" in capsys.readouterr().out


def test_oracle_vocabulary_gives_perfect_gt_box_accuracy(toy_world):
    """Class embeddings set to the regions' own embeddings: each box must be classified as its own class."""
    model, _ = load_clip("RN-toy")
    ds = DetectionDataset(toy_world["instances_val_all"], toy_world["images"])
    enc = RegionEncoder(model.visual)
    # one box per class: a single-image subset where each class occurs once, embeddings as the vocabulary
    image, target = next(ds[i] for i in range(len(ds)) if len(ds[i][1]["labels"]) >= 2
                         and len(set(ds[i][1]["labels"].tolist())) == len(ds[i][1]["labels"]))
    from regionclip_min.evaluation import _normalise
    x = _normalise([image], 2.0)
    emb = F.normalize(enc(x, [target["boxes"] * 2.0]), dim=-1)  # (N, D)
    class_emb = torch.randn(len(ds.category_names), emb.shape[1])
    class_emb[target["labels"] - 1] = emb
    sub = torch.utils.data.Subset(ds, [ds.image_ids.index(target["image_id"])])
    sub.kinds, sub.category_splits = [None], ds.category_splits
    res = gt_box_accuracy(enc, sub, class_emb, scale=2.0, kinds=None)
    assert res["all"] == 1.0 and res["n_boxes"] == len(target["labels"])
