"""Zero-shot recognition metrics (paper Sec. 4.2 / Table 4 protocol, and the Fig. 1(b) gap).

- `gt_box_accuracy`: region recognition with ground-truth boxes. Each annotated box goes through the region path
  (res4 map -> RoIAlign -> layer4 -> attention pool) of a CLIP or RegionCLIP visual encoder, and is classified as the
  class whose text embedding has the highest cosine. Top-1 accuracy over all, base and novel categories. Images may
  be enlarged by `scale` before pooling (docs/DESIGN.md §5.1: a 128-px toy CLIP needs 2-3x, as the paper's 224-px CLIP
  meets objects in 800-px detection images).
- `whole_image_accuracy`: image-level recognition of object-centric images (one object): `encode_image` at the
  size CLIP learned at, classified against the class names. Together with the GT-box accuracy on scenes this is the
  paper's Fig. 1(b): CLIP recognises whole images far better than regions.
- `detect`, `detection_ap`, `ovd_ap`: open-vocabulary detection scored with pycocotools (Sec. 4.1): AP50 over novel,
  base and all categories (the OVR-CNN protocol), COCO AP, and LVIS-style APr/APc/APf when categories carry a
  "frequency"; `proposal_recall` for class-agnostic proposals. Drawing lives in `drawing.py`.
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
from tqdm import tqdm

from regionclip_min.data import CLIP_MEAN, CLIP_STD, DetectionDataset, collate_detection
from regionclip_min.detector import propose
from regionclip_min.postprocess import select_detections
from regionclip_min.runtime import poll_threads


def _normalise(images: list[torch.Tensor], scale: float) -> torch.Tensor:
    """Stacks [0, 1] images (equal sizes), enlarges by `scale`, CLIP-normalises: (B, 3, H', W')."""
    x = torch.stack(images)  # (B, 3, H, W)
    if scale != 1.0:
        x = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
    mean = x.new_tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _pad_to(x: torch.Tensor, multiple: int = 32) -> torch.Tensor:
    """Zero-pads (B, 3, H, W) CLIP-normalised images at the bottom and right to multiples of `multiple` (zero is
    the mean colour after normalisation); boxes keep their pixel coordinates."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, -w % multiple, 0, -h % multiple))


@torch.no_grad()
def region_embeddings(region_encoder, images: list[torch.Tensor], boxes: list[torch.Tensor], *, scale: float = 1.0,
                      device="cpu") -> list[torch.Tensor]:
    """L2-normalised region embeddings of boxes in images of any sizes (equal sizes are batched).

    Args:
        region_encoder: a `RegionEncoder` (its mode is left as it is).
        images: B tensors (3, H_i, W_i) float RGB in [0, 1]. boxes: B tensors (N_i, 4) xyxy pixels of those images.
        scale: enlargement of images and boxes before pooling (docs/DESIGN.md §5.1).
    Returns:
        B tensors (N_i, D) on `device`.
    """
    if not images:
        return []
    groups = [list(range(len(images)))] if len({im.shape for im in images}) == 1 else [[i] for i in range(len(images))]
    out = [None] * len(images)
    for idx in groups:
        x = _pad_to(_normalise([images[i] for i in idx], scale)).to(device)  # (b, 3, H', W')
        emb = F.normalize(region_encoder(x, [boxes[i].to(device).float() * scale for i in idx]), dim=-1)  # (n, D)
        for i, e in zip(idx, emb.split([len(boxes[i]) for i in idx])):
            out[i] = e
    return out


@torch.no_grad()
def encode_regions(region_encoder, dataset: DetectionDataset, *, rpn=None, top_k: int = 100, scale: float = 1.0,
                   batch_size: int = 32, kinds: tuple[str, ...] | None = None, max_images: int | None = None,
                   progress: bool = False, device="cpu") -> list[dict]:
    """Region embeddings of every image's ground-truth boxes (rpn None) or of its `top_k` RPN proposals.

    Args:
        region_encoder: a `RegionEncoder` (eval mode is set here).
        dataset: DetectionDataset; images may have any size (`min_size` too: boxes come back in json pixels).
        rpn: None for the ground-truth boxes, or a `detector.ProposalNetwork` (from `detector.load_rpn`).
        top_k: proposals per image, highest objectness first.
        scale: enlargement of images and boxes before pooling.
        kinds: only images whose "kind" is in this tuple (None: all). max_images: only the first this many.
    Returns:
        one dict per image: {"image_id": int, "boxes": (N, 4) xyxy pixels of the json's image, "embeddings": (N, D)
        L2-normalised, "labels": (N,) dataset class index 0..K-1 (-1 for proposals), "objectness": (N,) in [0, 1]
        (1 for ground-truth boxes)}, all on the CPU.
    """
    region_encoder.eval()
    keep = [i for i in range(len(dataset)) if kinds is None or dataset.kinds[i] in kinds][:max_images]
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, keep), batch_size=batch_size,
                                         collate_fn=collate_detection)
    records = []
    bar = tqdm(total=len(keep), desc="RPN boxes + regions" if rpn else "GT-box regions", unit="img",
               disable=not progress)
    for start, (images, targets) in zip(range(0, len(keep), batch_size), loader):
        bar.update(min(batch_size, len(keep) - start))  # bad images (skipped by the collate) count as seen
        poll_threads()
        if not images:
            continue
        if rpn is None:
            boxes = [t["boxes"] for t in targets]  # B x (N_i, 4)
            labels = [t["labels"] - 1 for t in targets]
            objectness = [torch.ones(len(b)) for b in boxes]
        else:
            props = [p.cpu() for p in propose(rpn, [im.to(device) for im in images], top_k, with_scores=True)]
            boxes, objectness = [p[:, :4] for p in props], [p[:, 4] for p in props]
            labels = [torch.full((len(b),), -1, dtype=torch.int64) for b in boxes]
        embs = region_embeddings(region_encoder, images, boxes, scale=scale, device=device)
        for image, target, b, e, lab, obj in zip(images, targets, boxes, embs, labels, objectness):
            h, w = target["orig_size"].tolist()  # json size; the dataset may have resized the image
            to_json = torch.tensor([w / image.shape[-1], h / image.shape[-2]] * 2)  # (4,)
            records.append({"image_id": target["image_id"], "boxes": b.float() * to_json, "embeddings": e.cpu(),
                            "labels": lab, "objectness": obj.float()})
    bar.close()
    return records


def vocabulary_index(dataset_names: list[str], vocabulary: list[str], source: str = "the vocabulary") -> list[int]:
    """For each dataset category name, its row in `vocabulary` (names compared case-insensitively, as CLIP's
    tokenizer lower-cases). A category the vocabulary lacks cannot be scored: ValueError naming them."""
    rows = {v.strip().lower(): k for k, v in enumerate(vocabulary)}
    missing = [n for n in dataset_names if n.strip().lower() not in rows]
    if missing:
        raise ValueError(f"{source} lacks {len(missing)} of the dataset's categories, which could not be scored: "
                         f"{missing[:10]}{' ...' if len(missing) > 10 else ''}; extra names are fine (they compete "
                         f"as distractors), missing ones are not")
    return [rows[n.strip().lower()] for n in dataset_names]


def top1_accuracy(records: list[dict], class_emb: torch.Tensor, splits: list[str | None],
                  vocab_index: list[int] | None = None) -> dict:
    """Top-1 accuracy of ground-truth regions classified by cosine to the class embeddings.

    Args:
        records: `encode_regions` output for ground-truth boxes. class_emb: (V, D) vocabulary embeddings.
        splits: the dataset's category splits ("novel" / "base" / None) by class index.
        vocab_index: each dataset class's row in class_emb (default: the identity; V = K).
    Returns:
        {"all", "base", "novel"} accuracies in [0, 1] (nan where a group has no box) and "n_boxes".
    """
    rows = torch.as_tensor(vocab_index if vocab_index is not None else range(len(splits)), dtype=torch.int64)  # (K,)
    predicted, labels = _named_rows(records, class_emb)
    correct = predicted == rows[labels]  # (N,)
    novel = torch.tensor([s == "novel" for s in splits], dtype=torch.bool)[labels]  # (N,)

    def acc(mask):
        return correct[mask].float().mean().item() if mask.any() else float("nan")
    return {"all": acc(torch.ones_like(novel)), "base": acc(~novel), "novel": acc(novel), "n_boxes": len(labels)}


def _named_rows(records: list[dict], class_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The vocabulary row each ground-truth region is named by (highest cosine) and its dataset class, each (N,)."""
    cls = F.normalize(class_emb.float().cpu(), dim=-1)  # (V, D)
    emb = torch.cat([r["embeddings"] for r in records]) if records else torch.zeros(0, cls.shape[1])  # (N, D)
    labels = torch.cat([r["labels"] for r in records]) if records else torch.zeros(0, dtype=torch.int64)  # (N,)
    return (emb @ cls.t()).argmax(-1), labels


def named_as(records: list[dict], class_emb: torch.Tensor, vocabulary: list[str], category_names: list[str],
             top: int = 5) -> dict[str, dict]:
    """How the ground-truth boxes of each dataset category were named: a confusion table by rows.

    Args:
        records / class_emb: as `top1_accuracy`; vocabulary: the name of each row of class_emb (V);
        category_names: the dataset's category names by class index (K). top: names kept per category.
    Returns:
        {category name: {"boxes": n, "named_as": {vocabulary name: count, ...}}}, at most `top` names per category,
        the most frequent first (ties in vocabulary order); categories without boxes are left out.
    """
    predicted, labels = _named_rows(records, class_emb)
    counts = torch.zeros(len(category_names), len(vocabulary), dtype=torch.int64)
    counts.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    out = {}
    for k, name in enumerate(category_names):
        n = int(counts[k].sum())
        if n:
            order = sorted(range(len(vocabulary)), key=lambda v: (-int(counts[k, v]), v))[:top]
            out[name] = {"boxes": n, "named_as": {vocabulary[v]: int(counts[k, v]) for v in order if counts[k, v]}}
    return out


def region_detections(records: list[dict], class_emb: torch.Tensor, category_ids: list[int | None], *,
                      tau: float = 0.01, nms_thresh: float | None = 0.5, score_thresh: float = 1e-4,
                      max_dets: int = 100, objectness_power: float = 0.0) -> list[dict]:
    """COCO-format detections from classified regions (zero-shot detection, paper Table 4 / Sec. 4.2).

    Every region is scored for every vocabulary entry by p = softmax(cos(v, e) / tau) over the vocabulary (times
    objectness ** objectness_power: 0 = class probability only, 0.5 = geometric mean with the RPN's objectness);
    the box is kept as it is (no regression). With nms_thresh, NMS per class at that IoU; then the max_dets best
    detections of each image.

    Args:
        records: `encode_regions` output. class_emb: (V, D). category_ids: each vocabulary row's dataset category id,
            None for an entry that is not a dataset category (a distractor: it takes probability, is never reported).
    Returns:
        [{"image_id", "category_id", "bbox": [x, y, w, h] json pixels, "score"}].
    """
    cls = F.normalize(class_emb.float().cpu(), dim=-1)  # (V, D)
    scored = torch.tensor([c is not None for c in category_ids], dtype=torch.bool)  # (V,)
    ids = torch.tensor([c if c is not None else -1 for c in category_ids], dtype=torch.int64)  # (V,)
    results = []
    for r in records:
        if len(r["boxes"]) == 0:
            continue
        prob = torch.softmax(r["embeddings"].float() @ cls.t() / tau, dim=-1)  # (N, V)
        prob = prob * r["objectness"][:, None].clamp_min(0) ** objectness_power
        prob[:, ~scored] = 0
        box_i, cls_i = torch.nonzero(prob > score_thresh, as_tuple=True)  # candidate (box, class) pairs
        boxes, scores = r["boxes"][box_i], prob[box_i, cls_i]  # (M, 4), (M,)
        if nms_thresh is not None:  # per-class NMS, then the best max_dets, as the detector's hard-NMS test
            boxes, scores, cls_i = select_detections(boxes, scores, cls_i, score_thresh=score_thresh, nms="hard",
                                                     nms_thresh=nms_thresh, max_out=max_dets)
        else:
            keep = scores.argsort(descending=True)[:max_dets]
            boxes, scores, cls_i = boxes[keep], scores[keep], cls_i[keep]
        for (x1, y1, x2, y2), c, s in zip(boxes.tolist(), ids[cls_i].tolist(), scores.tolist()):
            results.append({"image_id": r["image_id"], "category_id": c, "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": s})
    return results


@torch.no_grad()
def gt_box_accuracy(region_encoder, dataset: DetectionDataset, class_emb: torch.Tensor, *, scale: float = 1.0,
                    batch_size: int = 32, kinds: tuple[str, ...] | None = ("scene",), progress: bool = False,
                    device="cpu") -> dict:
    """Top-1 accuracy of classifying ground-truth boxes by cosine to the class embeddings (`encode_regions` +
    `top1_accuracy`; class_emb rows in the order of `dataset.category_names`). Returns {"all", "base", "novel",
    "n_boxes"}."""
    records = encode_regions(region_encoder, dataset, scale=scale, batch_size=batch_size, kinds=kinds,
                             progress=progress, device=device)
    return top1_accuracy(records, class_emb, dataset.category_splits)


@torch.no_grad()
def whole_image_accuracy(clip_model, dataset: DetectionDataset, class_emb: torch.Tensor, *, batch_size: int = 64,
                         vocab_index: list[int] | None = None, device="cpu") -> dict:
    """Top-1 accuracy of `encode_image` on object-centric images (kind "object", one box): the image-level number.
    vocab_index: each dataset class's row in class_emb (default: the identity)."""
    clip_model.eval()
    keep = [i for i in range(len(dataset)) if dataset.kinds[i] == "object"]
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, keep), batch_size=batch_size,
                                         collate_fn=collate_detection)
    cls = F.normalize(class_emb.to(device), dim=-1)  # (V, D)
    rows = torch.as_tensor(vocab_index if vocab_index is not None else range(len(dataset.category_names)),
                           dtype=torch.int64, device=device)  # (K,)
    hits, n = 0, 0
    for images, targets in loader:
        if not images:
            continue
        x = _normalise(images, 1.0)
        emb = F.normalize(clip_model.encode_image(x.to(device)), dim=-1)  # (B, D)
        labels = torch.stack([t["labels"][0] for t in targets]).to(device) - 1  # (B,)
        hits += ((emb @ cls.t()).argmax(-1) == rows[labels]).sum().item()
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
           device="cpu", progress: bool = False, category_ids: list[int] | None = None) -> tuple[list[dict], list[int]]:
    """COCO-format detections of a torchvision detector whose vocabulary is `dataset.category_names`.

    Args:
        detector: eval-mode outputs [{"boxes" (N, 4) xyxy pixels of the input image, "labels" (N,) in 1..K,
            "scores" (N,)}] (eval mode is set here).
        dataset: DetectionDataset (label k <-> category id dataset.category_ids[k - 1]).
        max_images: only the first this many images (None: all).
        category_ids: the category id of each label 1..K when the detector's vocabulary is not the dataset's
            (e.g. its base categories only); default dataset.category_ids.
    Returns:
        (results [{"image_id", "category_id", "bbox": [x, y, w, h] pixels of the json's image, "score"}],
         ids of the images that were run).
    """
    detector.eval()
    category_ids = dataset.category_ids if category_ids is None else category_ids
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, range(n)), batch_size=batch_size,
                                         collate_fn=collate_detection)
    results, image_ids = [], []
    for images, targets in tqdm(loader, desc="detect", disable=not progress):
        poll_threads()
        if not images:
            continue
        outputs = detector([im.to(device) for im in images])
        for image, target, out in zip(images, targets, outputs):
            h, w = target["orig_size"].tolist()  # json size; the dataset may have enlarged the image
            scale = torch.tensor([w / image.shape[-1], h / image.shape[-2]] * 2)  # (4,)
            boxes = out["boxes"].cpu() * scale  # (N, 4) xyxy, json pixels
            for (x1, y1, x2, y2), label, score in zip(boxes.tolist(), out["labels"].tolist(), out["scores"].tolist()):
                results.append({"image_id": target["image_id"], "category_id": category_ids[label - 1],
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
