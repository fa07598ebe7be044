"""The open-vocabulary category splits (paper Sec. 4.1): which categories a detector trains on (base) and which it
meets only at test (novel), and the train / val datasets they give.

    json      each category's "split" field: "base" or "novel" (the toy world's)
    coco-ovd  OVR-CNN's COCO split: 48 base / 17 novel names (the other 15 COCO classes are unused)
    lvis      LVIS v1 by each category's "frequency": base = frequent + common (866), novel = rare (337)
    all       fully supervised (paper Table 5): trains on every category's boxes; the scores still name each
              category's "split" field where the json has one, so novel / base AP read as in the json split
"""
from __future__ import annotations

import json

from regionclip_min.data import DetectionDataset, image_root_beside

SPLITS = ("json", "coco-ovd", "lvis", "all")

# The open-vocabulary COCO split of OVR-CNN (48 base / 17 novel of the 80 COCO classes; the other 15 are unused).
COCO_OVD_BASE = (
    "person", "bicycle", "car", "motorcycle", "train", "truck", "boat", "bench", "bird", "horse", "sheep", "bear",
    "zebra", "giraffe", "backpack", "handbag", "suitcase", "frisbee", "skis", "kite", "surfboard", "bottle", "fork",
    "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "pizza", "donut", "chair", "bed",
    "toilet", "tv", "laptop", "mouse", "remote", "microwave", "oven", "toaster", "refrigerator", "book", "clock",
    "vase", "toothbrush")
COCO_OVD_NOVEL = ("airplane", "bus", "cat", "dog", "cow", "elephant", "umbrella", "tie", "snowboard", "skateboard",
                  "cup", "knife", "cake", "couch", "keyboard", "sink", "scissors")


def coco_ovd_names(json_path: str, wanted: tuple[str, ...], which: str) -> list[str]:
    """The names of `wanted` (OVR-CNN's base, or base + novel) that the json's categories have; the others are
    named in a message, and so are the json's categories outside the split, which are left out."""
    with open(json_path, encoding="utf-8") as f:
        have = [c.get("name") for c in json.load(f).get("categories", [])]
    kept = [n for n in wanted if n in have]
    if not kept:
        raise SystemExit(f"{json_path}: none of OVR-CNN's COCO names ({', '.join(wanted[:5])}, ...) among its "
                         f"categories ({have[:5]}...): --category_split coco-ovd is for COCO; use --category_split "
                         f"json with a \"split\" field per category")
    missing, outside = [n for n in wanted if n not in have], [n for n in have if n not in wanted]
    if missing or outside:
        print(f"{which} json {json_path}: {len(kept)} of the split's {len(wanted)} names; "
              + (f"absent: {', '.join(missing)}; " if missing else "")
              + (f"left out ({'not a base name' if which == 'train' else 'not in the 48/17 split'}): "
                 f"{', '.join(outside)}" if outside else ""))
    return kept


def is_lvis_base(category: dict) -> bool:
    """An LVIS base category: frequent or common (the rare ones are novel). SystemExit for a category without an
    LVIS frequency (r, c or f)."""
    if category.get("frequency") not in ("r", "c", "f"):
        raise SystemExit(f"category {category.get('id')} ({category.get('name')!r}) has no 'frequency' of r, c or f: "
                         f"--category_split lvis needs LVIS v1's; use --category_split json with a \"split\" field "
                         f"per category otherwise")
    return category["frequency"] in ("c", "f")


def novel_base_ids(split: str, val) -> tuple[list[int], list[int]]:
    """(novel category ids, base category ids) of the val DetectionDataset `val` by `split` (one of SPLITS)."""
    if split == "lvis":
        base = {c for c, f in zip(val.category_ids, val.category_frequencies)
                if is_lvis_base({"id": c, "frequency": f})}
        return [c for c in val.category_ids if c not in base], [c for c in val.category_ids if c in base]
    if split == "coco-ovd":
        ids = dict(zip(val.category_names, val.category_ids))
        return [ids[n] for n in COCO_OVD_NOVEL if n in ids], [ids[n] for n in COCO_OVD_BASE if n in ids]
    novel = [c for c, s in zip(val.category_ids, val.category_splits) if s == "novel"]
    return novel, [c for c in val.category_ids if c not in set(novel)]


def detection_datasets(split: str, train_json, val_json, *, image_root=None, val_image_root=None,
                       drop_empty: bool = False, train: bool = True
                       ) -> tuple[DetectionDataset | None, DetectionDataset]:
    """(train set with the base categories of `split`, or None when not `train`; val set with every evaluated
    category). Images stay in [0, 1] at their own size: the detector's transform resizes and normalises them."""
    train_cats, val_cats = "base", None  # json: the "split" field; val keeps every category
    if split == "coco-ovd":  # the 48 / 17 names each json has (a COCO subset keeps its own share)
        train_cats = coco_ovd_names(train_json, COCO_OVD_BASE, "train")
        val_cats = coco_ovd_names(val_json, COCO_OVD_BASE + COCO_OVD_NOVEL, "val")
    if split == "lvis":  # base = frequent + common; val keeps all 1,203
        train_cats = is_lvis_base
    if split == "all":  # fully supervised: every category's boxes
        train_cats = None
    root = image_root_beside(train_json, image_root)
    try:
        train_set = DetectionDataset(train_json, root, categories=train_cats, drop_empty=drop_empty) if train else None
    except ValueError as e:
        if "no category has split" not in str(e):
            raise
        raise SystemExit(f"{e}. --category_split json reads each category's \"split\" field: mark the categories "
                         f"of {train_json} with \"split\": \"base\" (trained on) or \"novel\" (held out), or "
                         f"use --category_split coco-ovd (COCO) or lvis (LVIS)") from None
    val = DetectionDataset(val_json, image_root_beside(val_json, val_image_root or image_root), categories=val_cats)
    return train_set, val
