"""Zero-shot recognition metrics (paper Sec. 4.2 / Table 4 protocol, and the Fig. 1(b) gap).

- `gt_box_accuracy`: region recognition with ground-truth boxes. Each annotated box goes through the region path
  (res4 map -> RoIAlign -> layer4 -> attention pool) of a CLIP or RegionCLIP visual encoder, and is classified as the
  class whose text embedding has the highest cosine. Top-1 accuracy over all, base and novel categories. Images may
  be enlarged by `scale` before pooling (docs/DESIGN.md §5.1: a 128-px toy CLIP needs 2-3x, as the paper's 224-px CLIP
  meets objects in 800-px detection images).
- `whole_image_accuracy`: image-level recognition of object-centric images (one object): `encode_image` at the
  size CLIP learned at, classified against the class names. Together with the GT-box accuracy on scenes this is the
  paper's Fig. 1(b): CLIP recognises whole images far better than regions.
- `region_detections`: zero-shot detection, RPN boxes named by the vocabulary.
Detection is scored in scoring.py (COCO AP50 novel / base / all), drawing lives in drawing.py.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm import tqdm

from regionclip_min.checkpoint import save_checkpoint
from regionclip_min.data import DetectionDataset, collate_detection
from regionclip_min.engine import gather_to_main, rank_and_world, shard
from regionclip_min.postprocess import select_detections
from regionclip_min.transforms import CLIP_MEAN, CLIP_STD


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
def encode_regions(region_encoder, dataset: DetectionDataset, *, proposer=None, scale: float = 1.0,
                   batch_size: int = 32, kinds: tuple[str, ...] | None = None, max_images: int | None = None,
                   progress: bool = False, device="cpu") -> list[dict]:
    """Region embeddings of every image's ground-truth boxes (proposer None) or of its proposals.

    Args:
        region_encoder: a `RegionEncoder` (eval mode is set here).
        dataset: DetectionDataset; images may have any size (`min_size` too: boxes come back in json pixels).
        proposer: None for the ground-truth boxes, or a `proposals.PROPOSERS` proposer built for [0, 1] images
            (`proposals.build_proposer(..., clip_normalized=False)`); random ones draw from a generator seeded at 0.
        scale: enlargement of images and boxes before pooling (after proposing: proposals are found at the
            dataset's image size).
        kinds: only images whose "kind" is in this tuple (None: all). max_images: only the first this many.
    Returns:
        one dict per image: {"image_id": int, "boxes": (N, 4) xyxy pixels of the json's image, "embeddings": (N, D)
        L2-normalised, "labels": (N,) dataset class index 0..K-1 (-1 for proposals), "objectness": (N,) the
        proposals' scores (1 for ground-truth boxes)}, all on the CPU, in dataset order. Under torchrun each rank
        encodes its share of the images (`engine.shard`) and rank 0 gets every record; the other ranks get None.
    """
    region_encoder.eval()
    rank, world = rank_and_world()
    keep = shard(eval_indices(dataset, kinds, max_images), rank, world)  # all of them in one process
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, keep), batch_size=batch_size,
                                         collate_fn=collate_detection)
    records, g = [], torch.Generator().manual_seed(0)
    position = {image_id: i for i, image_id in enumerate(dataset.image_ids)}
    bar = tqdm(total=len(keep), desc="GT-box regions" if proposer is None else "proposals + regions", unit="img",
               disable=not progress or rank != 0)
    for start, (images, targets) in zip(range(0, len(keep), batch_size), loader):
        bar.update(min(batch_size, len(keep) - start))  # bad images (skipped by the collate) count as seen
        if not images:
            continue
        if proposer is None:
            boxes = [t["boxes"] for t in targets]  # B x (N_i, 4)
            labels = [t["labels"] - 1 for t in targets]
            objectness = [torch.ones(len(b)) for b in boxes]
        else:
            sizes = [list(im.shape[-2:]) for im in images]  # [h, w] of each image as the dataset gives it
            batch = {"image_ids": torch.tensor([t["image_id"] for t in targets]), "sizes": torch.tensor(sizes),
                     "orig_sizes": torch.stack([t["orig_size"].flip(0) for t in targets])}  # [w, h] of the files
            props = [p.cpu() for p in proposer([im.to(device) for im in images], sizes, batch, g)]  # B x (N_i, 5)
            boxes, objectness = [p[:, :4] for p in props], [p[:, 4] for p in props]
            labels = [torch.full((len(b),), -1, dtype=torch.int64) for b in boxes]
        embs = region_embeddings(region_encoder, images, boxes, scale=scale, device=device)
        for image, target, b, e, lab, obj in zip(images, targets, boxes, embs, labels, objectness):
            h, w = target["orig_size"].tolist()  # json size; the dataset may have resized the image
            to_json = torch.tensor([w / image.shape[-1], h / image.shape[-2]] * 2)  # (4,)
            records.append({"image_id": target["image_id"], "boxes": b.float() * to_json, "embeddings": e.cpu(),
                            "labels": lab, "objectness": obj.float()})
    bar.close()
    records = gather_to_main(records)  # under torchrun: every rank's share, on rank 0
    return None if records is None else sorted(records, key=lambda r: position[r["image_id"]])


def eval_indices(dataset: DetectionDataset, kinds: tuple[str, ...] | None = None,
                 max_images: int | None = None) -> list[int]:
    """The dataset indices `encode_regions` evaluates: images whose kind is in `kinds` (None: all), the first
    `max_images` of them."""
    return [i for i in range(len(dataset)) if kinds is None or dataset.kinds[i] in kinds][:max_images]


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


FEATURE_KEYS = ("boxes", "embeddings", "image_ids", "category_ids", "objectness", "box_source", "model", "scale")


def save_region_features(path, records: list[dict], category_ids: list[int], box_source: str, desc: str,
                  scale: float) -> None:
    """Region features as plain tensors and strings (loadable with torch.load(weights_only=True)):
    boxes (N, 4) float32 xyxy json pixels; embeddings (N, D) float32, L2-normalised; image_ids (N,) int64;
    category_ids (N,) int64 (the GT box's category, -1 for proposals); objectness (N,) float32 (1 for GT);
    box_source "gt" | "rpn" | "image"; model (description); scale (pooling enlargement)."""
    ids = torch.tensor(list(category_ids) + [-1], dtype=torch.int64)  # label -1 -> the last entry, -1
    cat = (lambda key: torch.cat([r[key] for r in records])) if records else None
    state = {"boxes": cat("boxes").float() if records else torch.zeros(0, 4),
             "embeddings": cat("embeddings").float() if records else torch.zeros(0, 0),
             "image_ids": torch.cat([torch.full((len(r["boxes"]),), r["image_id"], dtype=torch.int64)
                                     for r in records]) if records else torch.zeros(0, dtype=torch.int64),
             "category_ids": ids[cat("labels")] if records else torch.zeros(0, dtype=torch.int64),
             "objectness": cat("objectness").float() if records else torch.zeros(0),
             "box_source": box_source, "model": desc, "scale": float(scale)}
    save_checkpoint(path, state)
    print(f"region features of {len(state['boxes'])} boxes written to {path} (keys: {', '.join(FEATURE_KEYS)})")


MAX_NAMED_AS_LINES = 20  # categories printed in the GT-box confusion list (LVIS has 1,203)


def print_named_as(table: dict, dataset: DetectionDataset, most: int = MAX_NAMED_AS_LINES) -> None:
    """Prints how each category's GT boxes were named (novel categories first), at most `most` categories."""
    split = dict(zip(dataset.category_names, dataset.category_splits))
    cats = sorted(table, key=lambda c: split.get(c) != "novel")  # stable: dataset order within novel / the rest
    print(f"\nGT boxes named as (the {min(most, len(cats))} of {len(cats)} categories listed here, novel first and "
          f"marked *; all in the json's gt_box_named_as):")
    for c in cats[:most]:
        row = table[c]
        names = ", ".join(f"{n} {k}" for n, k in row["named_as"].items())
        print(f"  {c}{'*' if split.get(c) == 'novel' else ''} ({row['boxes']} boxes): {names}")


def pct(v: float) -> str:
    """A fraction as a percentage for a table ("  n/a" for nan)."""
    return f"{100 * v:5.1f}" if v == v else "  n/a"


def print_zero_shot(results: dict, desc: str, dataset: DetectionDataset) -> None:
    """eval_zeroshot.py's tables from its results dict: GT-box top-1, AP50 and whole-image top-1 (with how the
    boxes were named), or the proposals' AP50 / AP; and APr / APc / APf / AP when the json is LVIS's."""
    boxes = results["boxes"]
    what = "recognition with ground-truth boxes" if boxes == "gt" else f"detection, {boxes} proposals"
    print(f"\nzero-shot {what}, {desc}, {results['n_images']} images of kind {results['kinds']!r}, regions pooled "
          f"at {results['region_scale']:g}x")
    if boxes == "gt":
        acc, a50, whole = results["gt_box_top1"], results["gt_box_ap50"], results["whole_image_top1"]
        print("| GT-box top-1 all | base | novel | boxes | AP50 novel | base | all | whole-image top-1 | images |")
        print("|---|---|---|---|---|---|---|---|---|")
        print(f"| {pct(acc['all'])} | {pct(acc['base'])} | {pct(acc['novel'])} | {acc['n_boxes']} | "
              f"{pct(a50['novel'])} | {pct(a50['base'])} | {pct(a50['all'])} | {pct(whole['accuracy'])} | "
              f"{whole['n_images']} |")
        print_named_as(results["gt_box_named_as"], dataset)
    else:
        a50, a = results[f"{boxes}_ap50"], results[f"{boxes}_ap"]
        print(f"| {'RPN' if boxes == 'rpn' else boxes} AP50 novel | base | all | AP all | proposals / image | images "
              f"|\n|---|---|---|---|---|---|")
        print(f"| {pct(a50['novel'])} | {pct(a50['base'])} | {pct(a50['all'])} | {pct(a['all'])} | "
              f"{results['proposals_per_image']} | {results['n_images']} |")
    if "lvis_ap" in results:
        print(f"| APr | APc | APf | AP ({results['protocol']}) |\n|---|---|---|---|\n| "
              + " | ".join(pct(results["lvis_ap"][k]) for k in ("APr", "APc", "APf", "AP")) + " |")
