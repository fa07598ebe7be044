"""Zero-shot recognition metrics (paper Sec. 4.2 / Table 4 protocol, and the Fig. 1(b) gap).

- `gt_box_accuracy`: region recognition with ground-truth boxes. Each annotated box goes through the region path
  (res4 map -> RoIAlign -> layer4 -> attention pool) of a CLIP or RegionCLIP visual encoder, and is classified as the
  class whose text embedding has the highest cosine. Top-1 accuracy over all, base and novel categories. Images may
  be enlarged by `scale` before pooling (DESIGN.md §5.1: a 128-px toy CLIP needs 2-3x, as the paper's 224-px CLIP
  meets objects in 800-px detection images).
- `whole_image_accuracy`: image-level recognition of object-centric images (one object): `encode_image` at the
  size CLIP learned at, classified against the class names. Together with the GT-box accuracy on scenes this is the
  paper's Fig. 1(b): CLIP recognises whole images far better than regions.
- `detect`, `detection_ap`, `ovd_ap`: open-vocabulary detection scored with pycocotools (Sec. 4.1): AP50 over novel,
  base and all categories (the OVR-CNN protocol), COCO AP, and LVIS-style APr/APc/APf when categories carry a
  "frequency"; `proposal_recall` for class-agnostic proposals; `draw_detections` writes predictions to PNGs.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json

import torch
import torch.nn.functional as F
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_iou
from torchvision.transforms.functional import to_pil_image
from torchvision.utils import draw_bounding_boxes
from tqdm import tqdm

from regionclip_min.data import CLIP_MEAN, CLIP_STD, DetectionDataset, collate_detection


def _normalise(images: list[torch.Tensor], scale: float) -> torch.Tensor:
    """Stacks [0, 1] images (equal sizes), enlarges by `scale`, CLIP-normalises: (B, 3, H', W')."""
    x = torch.stack(images)  # (B, 3, H, W)
    if scale != 1.0:
        x = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
    mean = x.new_tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def gt_box_accuracy(region_encoder, dataset: DetectionDataset, class_emb: torch.Tensor, *, scale: float = 1.0,
                    batch_size: int = 32, kinds: tuple[str, ...] | None = ("scene",), progress: bool = False,
                    device="cpu") -> dict:
    """Top-1 accuracy of classifying ground-truth boxes by cosine to the class embeddings.

    Args:
        region_encoder: a `RegionEncoder` (eval mode is set here).
        dataset: DetectionDataset whose `category_names` order matches the rows of `class_emb`.
        class_emb: (K, D) class-name text embeddings.
        scale: enlargement of images (and boxes) before pooling.
        kinds: only images whose "kind" is in this tuple (None: all images).
    Returns:
        {"all", "base", "novel"} accuracies in [0, 1] (nan where a group has no box) and "n_boxes".
    """
    region_encoder.eval()
    keep = [i for i in range(len(dataset)) if kinds is None or dataset.kinds[i] in kinds]
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, keep), batch_size=batch_size,
                                         collate_fn=collate_detection)
    cls = F.normalize(class_emb.to(device), dim=-1)  # (K, D)
    correct, labels_all = [], []
    for images, targets in tqdm(loader, desc="GT-box accuracy", disable=not progress):
        if not images:
            continue
        x = _normalise(images, scale)
        boxes = [t["boxes"].to(device) * scale for t in targets]  # list of (N_i, 4) in the enlarged frame
        emb = F.normalize(region_encoder(x.to(device), boxes), dim=-1)  # (N, D)
        labels = torch.cat([t["labels"] for t in targets]).to(device) - 1  # (N,) class index 0..K-1
        correct.append((emb @ cls.t()).argmax(-1) == labels)
        labels_all.append(labels)
    correct = torch.cat(correct) if correct else torch.zeros(0, dtype=torch.bool)
    labels = torch.cat(labels_all) if labels_all else torch.zeros(0, dtype=torch.long)
    splits = dataset.category_splits
    novel = torch.tensor([splits[k] == "novel" for k in range(len(splits))], dtype=torch.bool)[labels.cpu()]
    def acc(mask):
        return correct[mask.to(correct.device)].float().mean().item() if mask.any() else float("nan")
    return {"all": acc(torch.ones_like(novel)), "base": acc(~novel), "novel": acc(novel), "n_boxes": len(labels)}


@torch.no_grad()
def whole_image_accuracy(clip_model, dataset: DetectionDataset, class_emb: torch.Tensor, *, batch_size: int = 64,
                         device="cpu") -> dict:
    """Top-1 accuracy of `encode_image` on object-centric images (kind "object", one box): the image-level number."""
    clip_model.eval()
    keep = [i for i in range(len(dataset)) if dataset.kinds[i] == "object"]
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, keep), batch_size=batch_size,
                                         collate_fn=collate_detection)
    cls = F.normalize(class_emb.to(device), dim=-1)  # (K, D)
    hits, n = 0, 0
    for images, targets in loader:
        x = _normalise(images, 1.0)
        emb = F.normalize(clip_model.encode_image(x.to(device)), dim=-1)  # (B, D)
        labels = torch.stack([t["labels"][0] for t in targets]).to(device) - 1  # (B,)
        hits += ((emb @ cls.t()).argmax(-1) == labels).sum().item()
        n += len(labels)
    return {"accuracy": hits / n if n else float("nan"), "n_images": n}


# ---- detection: COCO AP50 novel/base/all (OVR-CNN protocol), COCO AP, LVIS-style APr/APc/APf, drawings ---------
# Paper Sec. 4.1: open-vocabulary COCO is scored by AP50 (IoU 0.5, maxDets 100) over the novel, base and all
# categories, detections from one detector over the whole (base + novel) vocabulary; LVIS by AP over its rare /
# common / frequent groups. pycocotools scores each category independently, so a group's number is the mean of its
# categories' APs. Convention for empty groups: a category with no ground-truth box in the evaluated images has an
# undefined AP (nan) and is left out of its group's mean (a group of only such categories is nan); a category with
# ground truth but no detection scores 0. LVIS-style here means COCOeval per category grouped by "frequency" (the
# LVIS API's federated handling of unannotated categories is left out).


@torch.no_grad()
def detect(detector, dataset: DetectionDataset, *, batch_size: int = 8, max_images: int | None = None,
           device="cpu", progress: bool = False) -> tuple[list[dict], list[int]]:
    """COCO-format detections of a torchvision detector whose vocabulary is `dataset.category_names`.

    Args:
        detector: eval-mode outputs [{"boxes" (N, 4) xyxy pixels of the input image, "labels" (N,) in 1..K,
            "scores" (N,)}] (eval mode is set here).
        dataset: DetectionDataset (label k <-> category id dataset.category_ids[k - 1]).
        max_images: only the first this many images (None: all).
    Returns:
        (results [{"image_id", "category_id", "bbox": [x, y, w, h] pixels of the json's image, "score"}],
         ids of the images that were run).
    """
    detector.eval()
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, range(n)), batch_size=batch_size,
                                         collate_fn=collate_detection)
    results, image_ids = [], []
    for images, targets in tqdm(loader, desc="detect", disable=not progress):
        if not images:
            continue
        outputs = detector([im.to(device) for im in images])
        for image, target, out in zip(images, targets, outputs):
            h, w = target["orig_size"].tolist()  # json size; the dataset may have enlarged the image
            scale = torch.tensor([w / image.shape[-1], h / image.shape[-2]] * 2)  # (4,)
            boxes = out["boxes"].cpu() * scale  # (N, 4) xyxy, json pixels
            for (x1, y1, x2, y2), label, score in zip(boxes.tolist(), out["labels"].tolist(), out["scores"].tolist()):
                results.append({"image_id": target["image_id"], "category_id": dataset.category_ids[label - 1],
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
            image_ids.append(target["image_id"])
    return results, image_ids


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
    """Per-category AP50 and AP (IoU 0.50:0.95) with pycocotools' COCOeval (bbox, all areas, `max_dets` per
    image), and their means over each group of category ids.

    Args:
        gt: COCO instances json (path or dict). results: COCO-format detections (see `detect`).
        groups: {name: category ids}; default {"all": every category of `gt`}.
        image_ids: evaluate on these images only (default: all images of `gt`).
    Returns:
        {"ap50": {group: float}, "ap": {group: float}, "per_category": {category id: {"ap50", "ap"}}}, values in
        [0, 1], nan where undefined (see the convention above).
    """
    coco = _coco_gt(gt)
    groups = groups or {"all": sorted(coco.getCatIds())}
    cat_ids = sorted({c for ids in groups.values() for c in ids})
    image_ids = sorted(coco.getImgIds()) if image_ids is None else sorted(set(image_ids))
    per_cat = {}
    results = [r for r in results if r["category_id"] in set(cat_ids) and r["image_id"] in set(image_ids)]
    if results:
        with contextlib.redirect_stdout(io.StringIO()):
            ev = COCOeval(coco, coco.loadRes(results), "bbox")
            ev.params.catIds, ev.params.imgIds, ev.params.maxDets = cat_ids, image_ids, [1, 10, max_dets]
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
            "ap": {g: mean(ids, "ap") for g, ids in groups.items()}, "per_category": per_cat}


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
         "n_images", "n_detections"}, plus "lvis": {"APr", "APc", "APf", "AP"} (IoU 0.50:0.95) when categories
        carry "frequency" r/c/f. nan = undefined (no ground truth in that group; see above).
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
               "n_detections": len(results)}
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


def draw_detections(image: torch.Tensor, boxes_xyxy: torch.Tensor, names: list[str], scores: torch.Tensor, path, *,
                    is_novel: list[bool] | None = None, score_thresh: float = 0.5, max_boxes: int = 10,
                    scale: int = 3) -> None:
    """Save `image` with its detections drawn (torchvision.utils.draw_bounding_boxes) as a PNG.

    Args:
        image: (3, H, W) float RGB in [0, 1]. boxes_xyxy: (N, 4) pixels of `image`. names: N class names.
        scores: (N,). is_novel: N flags; novel classes are drawn red and marked "*", base ones cyan.
        score_thresh, max_boxes: only the `max_boxes` best detections scoring at least `score_thresh` are drawn.
        scale: enlargement for legible labels on small images.
    """
    order = scores.argsort(descending=True)[:max_boxes]  # (<= max_boxes,)
    keep = order[scores[order] >= score_thresh].tolist()
    is_novel = is_novel or [False] * len(names)
    big = F.interpolate(image[None].float(), scale_factor=scale, mode="nearest")[0]  # (3, sH, sW)
    labels = [f"{names[i]}{'*' if is_novel[i] else ''} {scores[i]:.2f}" for i in keep]
    colors = ["red" if is_novel[i] else "cyan" for i in keep]
    drawn = (big * 255).round().to(torch.uint8)  # (3, sH, sW)
    if keep:
        drawn = draw_bounding_boxes(drawn, boxes_xyxy[keep].float() * scale, labels=labels, colors=colors, width=2)
    to_pil_image(drawn).save(path)
