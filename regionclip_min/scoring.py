"""Detection scores (paper Sec. 4.1): a detector run over a dataset, and its detections scored with pycocotools
(COCO) or faster-coco-eval (LVIS's federated protocol).

- `detect`: a torchvision-style detector's detections on every image, as COCO result rows.
- `detection_ap`, `ovd_ap`: AP50 over novel, base and all categories (the OVR-CNN protocol), COCO AP, and
  APr/APc/APf when categories carry a "frequency" (LVIS's federated protocol for an LVIS-format json).
- `open_vocabulary_ap`: a detector's AP over every val category, and over the base ones offered alone.
- `proposal_recall`, `rpn_recall`: recall of class-agnostic proposals on base and novel boxes.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json

import faster_coco_eval as fast_coco
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_iou
from tqdm import tqdm

from regionclip_min.data import DetectionDataset, collate_detection
from regionclip_min.detector import set_vocabulary
from regionclip_min.engine import gather_to_main, rank_and_world, shard
from regionclip_min.rpn import propose

# ---- COCO AP50 novel/base/all (OVR-CNN protocol), COCO AP, LVIS's federated APr/APc/APf -------------------------
# Paper Sec. 4.1: open-vocabulary COCO is scored by AP50 (IoU 0.5, maxDets 100) over the novel, base and all
# categories, detections from one detector over the whole (base + novel) vocabulary; LVIS by AP over its rare /
# common / frequent groups. Each category is scored independently, so a group's number is the mean of its
# categories' APs. Convention for empty groups: a category with no ground-truth box in the evaluated images has an
# undefined AP (nan) and is left out of its group's mean (a group of only such categories is nan); a category with
# ground truth but no detection scores 0.
# COCO is scored with pycocotools (the reference). An LVIS-format json (every image lists `neg_category_ids` and
# `not_exhaustive_category_ids`) is scored by LVIS's federated protocol (Gupta et al., CVPR 2019, Sec. 4), with
# faster-coco-eval's LVIS mode: an image is judged only for its positive categories (those with a box) and its
# negative ones; a detection of any other category is dropped; an unmatched detection of a category the image
# marks not exhaustively annotated is ignored, not a false positive; at most `max_dets` (LVIS: 300) detections
# per image over all categories, the highest-scoring ones.


def is_federated(data: dict) -> bool:
    """True for an LVIS-format instances dict: every image carries the federated fields."""
    return bool(data["images"]) and all("neg_category_ids" in im and "not_exhaustive_category_ids" in im
                                        for im in data["images"])


def top_per_image(results: list[dict], max_dets: int) -> list[dict]:
    """The `max_dets` highest-scoring results of each image, over all categories (LVIS's per-image limit)."""
    by_image: dict[int, list[dict]] = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    return [r for rows in by_image.values() for r in sorted(rows, key=lambda r: -r["score"])[:max_dets]]


@torch.no_grad()
def detect(detector, dataset: DetectionDataset, *, batch_size: int = 8, max_images: int | None = None,
           device="cpu", progress: bool = False, category_ids: list[int] | None = None,
           also: dict[str, list[int]] | None = None) -> tuple:
    """COCO-format detections of a torchvision detector whose vocabulary is `dataset.category_names`. Under
    torchrun each rank detects its share of the images (`engine.shard`) and rank 0 gets them all, in image order.

    Args:
        detector: eval-mode outputs [{"boxes" (N, 4) xyxy pixels of the input image, "labels" (N,) in 1..K,
            "scores" (N,)}] (eval mode is set here).
        dataset: DetectionDataset (label k <-> category id dataset.category_ids[k - 1]).
        max_images: only the first this many images (None: all).
        category_ids: the category id of each label 1..K when the detector's vocabulary is not the dataset's
            (e.g. its base categories only); default dataset.category_ids.
        also: {key: category ids} of the other vocabularies the detector scores in the same pass (`set_vocabulary`
            also=), each output holding their detections under its key.
    Returns:
        (results [{"image_id", "category_id", "bbox": [x, y, w, h] pixels of the json's image, "score"}],
         ids of the images that were run), and with `also` a third element {key: its results}; Nones on a rank
        other than 0.
    """
    detector.eval()
    category_ids = dataset.category_ids if category_ids is None else category_ids
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    rank, world = rank_and_world()
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, shard(range(n), rank, world)),
                                         batch_size=batch_size, collate_fn=collate_detection)
    position = {image_id: i for i, image_id in enumerate(dataset.image_ids)}
    also = also or {}
    per_image = []  # (position in the dataset, image id, its result rows, {key of `also`: its rows})
    for images, targets in tqdm(loader, desc="detect", disable=not progress or rank != 0):
        if not images:
            continue
        outputs = detector([im.to(device) for im in images])
        for image, target, out in zip(images, targets, outputs):
            h, w = target["orig_size"].tolist()  # json size; the dataset may have enlarged the image
            scale = torch.tensor([w / image.shape[-1], h / image.shape[-2]] * 2)  # (4,)
            per_image.append((position[target["image_id"]], target["image_id"],
                              _rows(out, target["image_id"], scale, category_ids),
                              {key: _rows(out[key], target["image_id"], scale, ids) for key, ids in also.items()}))
    per_image = gather_to_main(per_image)
    if per_image is None:
        return (None, None, None) if also else (None, None)
    per_image.sort(key=lambda t: t[0])
    results, image_ids = [r for _, _, rows, _ in per_image for r in rows], [t[1] for t in per_image]
    if not also:
        return results, image_ids
    return results, image_ids, {key: [r for *_, more in per_image for r in more[key]] for key in also}


def _rows(out: dict, image_id, scale: torch.Tensor, category_ids: list[int]) -> list[dict]:
    """One image's detections {"boxes", "labels", "scores"} as COCO result rows in json pixels."""
    boxes = out["boxes"].cpu() * scale  # (N, 4) xyxy, json pixels
    return [{"image_id": image_id, "category_id": category_ids[label - 1], "bbox": [x1, y1, x2 - x1, y2 - y1],
             "score": score}
            for (x1, y1, x2, y2), label, score in zip(boxes.tolist(), out["labels"].tolist(), out["scores"].tolist())]


def _coco_gt(gt) -> COCO:
    """A pycocotools COCO from a json path or dict; fills "area" (w*h) and "iscrowd" (0) where missing."""
    if isinstance(gt, dict):
        data = copy.deepcopy(gt)
    else:
        with open(gt, encoding="utf-8") as f:
            data = json.load(f)
    for ann in data["annotations"]:
        ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
        ann.setdefault("iscrowd", 0)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def detection_ap(gt, results: list[dict], *, groups: dict[str, list[int]] | None = None,
                 image_ids: list[int] | None = None, max_dets: int = 100) -> dict:
    """Per-category AP50 and AP (IoU 0.50:0.95) (bbox, all areas, `max_dets` per image), and their means over each
    group of category ids: pycocotools' COCOeval, or LVIS's federated protocol for an LVIS-format json (above).

    Args:
        gt: COCO or LVIS instances json (path or dict). results: COCO-format detections (see `detect`).
        groups: {name: category ids}; default {"all": every category of `gt`}.
        image_ids: evaluate on these images only (default: all images of `gt`).
    Returns:
        {"ap50": {group: float}, "ap": {group: float}, "per_category": {category id: {"ap50", "ap"}},
         "protocol": "coco" | "lvis-federated"}, values in [0, 1], nan where undefined (see the convention above).
    """
    coco = _coco_gt(gt)
    federated = is_federated(coco.dataset)
    groups = groups or {"all": sorted(coco.getCatIds())}
    cat_ids = sorted({c for ids in groups.values() for c in ids})
    image_ids = sorted(coco.getImgIds()) if image_ids is None else sorted(set(image_ids))
    per_cat = {}
    results = [r for r in results if r["category_id"] in set(cat_ids) and r["image_id"] in set(image_ids)]
    if results:
        with contextlib.redirect_stdout(io.StringIO()):
            if federated:
                lvis = fast_coco.COCO(coco.dataset)
                ev = fast_coco.COCOeval_faster(lvis, lvis.loadRes(top_per_image(results, max_dets)), "bbox",
                                               lvis_style=True, print_function=lambda *a: None)
                ev.params.maxDets = [max_dets]
            else:
                ev = COCOeval(coco, coco.loadRes(results), "bbox")
                ev.params.maxDets = [1, 10, max_dets]
            ev.params.catIds, ev.params.imgIds = cat_ids, image_ids
            ev.evaluate()
            ev.accumulate()
        precision = torch.as_tensor(ev.eval["precision"])  # (T IoUs, R recalls, K cats, A areas, M maxDets)
        for k, cid in enumerate(cat_ids):
            p = precision[:, :, k, 0, -1]  # (T, R): area "all", maxDets max_dets; -1 = no ground truth
            valid = p > -1
            per_cat[cid] = {"ap50": p[0][valid[0]].mean().item() if valid[0].any() else float("nan"),
                            "ap": p[valid].mean().item() if valid.any() else float("nan")}
    else:  # no detection at all: 0 where there is ground truth, else undefined
        n_gt = {c: len(coco.getAnnIds(imgIds=image_ids, catIds=[c], iscrowd=False)) for c in cat_ids}
        per_cat = {c: {"ap50": 0.0, "ap": 0.0} if n_gt[c] else {"ap50": float("nan"), "ap": float("nan")}
                   for c in cat_ids}

    def mean(ids, key):
        vals = [per_cat[c][key] for c in ids if per_cat[c][key] == per_cat[c][key]]  # drop nan
        return sum(vals) / len(vals) if vals else float("nan")
    return {"ap50": {g: mean(ids, "ap50") for g, ids in groups.items()},
            "ap": {g: mean(ids, "ap") for g, ids in groups.items()}, "per_category": per_cat,
            "protocol": "lvis-federated" if federated else "coco"}


def ovd_ap(gt, results: list[dict], *, novel_ids: list[int] | None = None, base_ids: list[int] | None = None,
           image_ids: list[int] | None = None, max_dets: int = 100) -> dict:
    """Open-vocabulary detection metrics (OVR-CNN / RegionCLIP protocol): AP50 and AP over novel, base and all.

    Args:
        gt: COCO instances json (path or dict) with ground truth of every category.
        novel_ids, base_ids: category ids of each split; default from each category's "split" field
            ("novel" / "base"). "all" = base + novel (COCO: the 65 of the 48/17 split, not all 80).
        image_ids, max_dets: as `detection_ap`.
    Returns:
        {"ap50": {"novel", "base", "all"}, "ap": {"novel", "base", "all"}, "per_category": {name: {"ap50", "ap"}},
         "n_images", "n_detections", "protocol"}, plus "lvis": {"APr", "APc", "APf", "AP"} (IoU 0.50:0.95) when
        categories carry "frequency" r/c/f. nan = undefined (no ground truth in that group; see above).
    """
    coco = _coco_gt(gt)
    cats = coco.loadCats(coco.getCatIds())
    if novel_ids is None:
        novel_ids = [c["id"] for c in cats if c.get("split") == "novel"]
    if base_ids is None:
        base_ids = [c["id"] for c in cats if c.get("split") == "base"] or \
            [c["id"] for c in cats if c["id"] not in set(novel_ids)]
    groups = {"novel": list(novel_ids), "base": list(base_ids), "all": sorted(set(novel_ids) | set(base_ids))}
    freq = {g: [c["id"] for c in cats if c.get("frequency") == g] for g in "rcf"}
    if any(freq.values()):
        groups.update({f"lvis_{g}": ids for g, ids in freq.items()})
    out = detection_ap(coco.dataset, results, groups=groups, image_ids=image_ids, max_dets=max_dets)
    names = {c["id"]: c["name"] for c in cats}
    metrics = {"ap50": {g: out["ap50"][g] for g in ("novel", "base", "all")},
               "ap": {g: out["ap"][g] for g in ("novel", "base", "all")},
               "per_category": {names[c]: v for c, v in out["per_category"].items()},
               "n_images": len(coco.getImgIds() if image_ids is None else set(image_ids)),
               "n_detections": len(results), "protocol": out["protocol"]}
    if any(freq.values()):
        metrics["lvis"] = {"APr": out["ap"]["lvis_r"], "APc": out["ap"]["lvis_c"], "APf": out["ap"]["lvis_f"],
                           "AP": out["ap"]["all"]}
    return metrics


def proposal_recall(proposals: list[torch.Tensor], gt_boxes: list[torch.Tensor], gt_novel: list[torch.Tensor], *,
                    iou: float = 0.5) -> dict:
    """Fraction of ground-truth boxes covered (IoU >= `iou`) by some proposal, over all / base / novel boxes.

    Args:
        proposals: per image (R_i, 4) xyxy; gt_boxes: per image (N_i, 4) xyxy in the same pixels;
        gt_novel: per image (N_i,) bool, True for a novel-category box.
    Returns:
        {"all", "base", "novel"} recalls in [0, 1] (nan for a group without boxes) and "n_boxes".
    """
    hit, novel = [], []
    for props, gts, nov in zip(proposals, gt_boxes, gt_novel):
        if len(gts) == 0:
            continue
        best = box_iou(gts.float(), props.float()).amax(dim=1) if len(props) else gts.new_zeros(len(gts))  # (N_i,)
        hit.append(best >= iou)
        novel.append(nov.bool())
    hit = torch.cat(hit) if hit else torch.zeros(0, dtype=torch.bool)
    novel = torch.cat(novel) if novel else torch.zeros(0, dtype=torch.bool)

    def rate(mask):
        return hit[mask].float().mean().item() if mask.any() else float("nan")
    return {"all": rate(torch.ones_like(novel)), "base": rate(~novel), "novel": rate(novel), "n_boxes": len(hit)}


def open_vocabulary_ap(model, val: DetectionDataset, emb_test: torch.Tensor, novel: list[int], base: list[int], *,
                       batch_size: int, max_images: int | None, max_dets: int, device,
                       closed_vocabulary: bool = True) -> dict | None:
    """The transfer's test: every val category (base + novel, `emb_test` (K_val, D)) swapped in, detect, score
    AP50 novel / base / all and AP (`ovd_ap`). With novel categories, also "base_vocabulary": the base AP50 / AP
    when only the base names are offered (the closed-vocabulary detector the training produced; `closed_vocabulary`
    False skips it, as for a fully supervised detector, which trained on every name); the gap to the
    open-vocabulary base AP50 is what the novel names take. The model keeps the whole vocabulary afterwards.
    Under torchrun every rank detects its share and rank 0 scores: the other ranks return None."""
    emb_test = emb_test.to(device)
    closed = bool(novel and base and closed_vocabulary)  # the base names alone, scored on the same RoIs
    set_vocabulary(model, emb_test, also={"base_vocabulary": emb_test[[val.category_ids.index(c) for c in base]]}
                   if closed else None)
    out = detect(model, val, batch_size=batch_size, max_images=max_images, device=device, progress=True,
                 also={"base_vocabulary": base} if closed else None)
    set_vocabulary(model, emb_test)
    results, image_ids, also = out if closed else (*out, None)
    if results is None:
        return None
    if not image_ids:  # every image unreadable: an AP of 0 would be a silent lie
        raise SystemExit(f"{val.path}: no val image could be read (skipped: {dict(val.skipped)}); nothing scored")
    print(f"scoring {len(results)} detections on {len(image_ids)} images ...")
    metrics = ovd_ap(val.coco_json_path, results, novel_ids=novel, base_ids=base, image_ids=image_ids,
                     max_dets=max_dets)
    if closed:
        m = ovd_ap(val.coco_json_path, also["base_vocabulary"], novel_ids=[], base_ids=base, image_ids=image_ids,
                   max_dets=max_dets)
        metrics["base_vocabulary"] = {"ap50": m["ap50"]["base"], "ap": m["ap"]["base"]}
    return metrics


@torch.no_grad()
def rpn_recall(model, val: DetectionDataset, *, batch_size: int, max_images: int | None, device,
               top_ks=(10, 100)) -> dict | None:
    """Recall@k (IoU 0.5) of a ProposalNetwork's proposals on base and novel val boxes, for each k in top_ks. Under
    torchrun each rank proposes for its share of the images and rank 0 scores (the others return None)."""
    n = len(val) if max_images is None else min(max_images, len(val))
    rank, world = rank_and_world()
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(val, shard(range(n), rank, world)),
                                         batch_size=batch_size, collate_fn=collate_detection)
    novel_k = torch.tensor([s == "novel" for s in val.category_splits])  # (K,)
    rows = []  # (proposals, GT boxes, GT novel flags) per image
    for images, targets in tqdm(loader, desc="proposals", disable=rank != 0):
        props = [p.cpu() for p in propose(model, [im.to(device) for im in images], max(top_ks))]
        rows += [(p, t["boxes"], novel_k[t["labels"] - 1]) for p, t in zip(props, targets)]
    rows = gather_to_main(rows)
    if rows is None:
        return None
    props, gts, novel = (list(x) for x in zip(*rows)) if rows else ([], [], [])
    return {**{f"recall@{k}": proposal_recall([p[:k] for p in props], gts, novel) for k in top_ks}, "n_images": n}
