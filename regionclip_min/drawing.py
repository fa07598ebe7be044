"""Pictures of boxes on images (torchvision.utils.draw_bounding_boxes): predictions of the detectors and the
zero-shot demo, and the toy benchmark's regions / detections grids."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.transforms.functional import to_pil_image
from torchvision.utils import draw_bounding_boxes, make_grid, save_image

from regionclip_min.clip_model import TEMPLATES, encode_texts, load_clip
from regionclip_min.data import DetectionDataset
from regionclip_min.detector import load_detector
from regionclip_min.evaluation import region_embeddings
from regionclip_min.regions import RegionEncoder


def render_boxes(image: torch.Tensor, boxes_xyxy: torch.Tensor, labels: list[str], colors: list[str], *,
                 scale: int = 3) -> torch.Tensor:
    """`image` (3, H, W) float RGB in [0, 1], enlarged `scale` times (nearest), with labelled boxes (pixels of
    `image`) drawn by torchvision.utils.draw_bounding_boxes: (3, sH, sW) uint8."""
    big = F.interpolate(image[None].float(), scale_factor=scale, mode="nearest")[0]  # (3, sH, sW)
    drawn = (big * 255).round().clamp(0, 255).to(torch.uint8)  # (3, sH, sW)
    if len(labels):
        drawn = draw_bounding_boxes(drawn, boxes_xyxy.reshape(-1, 4).float() * scale, labels=labels, colors=colors,
                                    width=2, label_colors="black", label_background_colors=colors, fill_labels=True)
    return drawn


def draw_detections(image: torch.Tensor, boxes_xyxy: torch.Tensor, names: list[str], scores: torch.Tensor, path, *,
                    is_novel: list[bool] | None = None, score_thresh: float = 0.5, max_boxes: int = 10,
                    scale: int = 3) -> torch.Tensor:
    """Save `image` with its detections drawn (torchvision.utils.draw_bounding_boxes) as a PNG (path None: only
    return the drawing).

    Args:
        image: (3, H, W) float RGB in [0, 1]. boxes_xyxy: (N, 4) pixels of `image`. names: N class names.
        scores: (N,). is_novel: N flags; novel classes are drawn red and marked "*", base ones cyan.
        score_thresh, max_boxes: only the `max_boxes` best detections scoring at least `score_thresh` are drawn.
        scale: enlargement for legible labels on small images.
    Returns:
        the drawing, (3, scale H, scale W) uint8.
    """
    order = scores.argsort(descending=True)[:max_boxes]  # (<= max_boxes,)
    keep = order[scores[order] >= score_thresh].tolist()
    is_novel = is_novel or [False] * len(names)
    labels = [f"{names[i]}{'*' if is_novel[i] else ''} {scores[i]:.2f}" for i in keep]
    colors = ["red" if is_novel[i] else "cyan" for i in keep]
    drawn = render_boxes(image, boxes_xyxy[keep] if keep else boxes_xyxy[:0], labels, colors, scale=scale)
    if path is not None:
        to_pil_image(drawn).save(path)
    return drawn


def _val_scenes(instances, image_root, n_images: int):
    """The detection dataset and the indices of its first `n_images` multi-object scenes."""
    ds = DetectionDataset(instances, image_root)
    return ds, [i for i in range(len(ds)) if ds.kinds[i] == "scene"][:n_images]


def _save_grid(panels: list[torch.Tensor], ncol: int, path) -> None:
    save_image(make_grid([p.float() / 255 for p in panels], nrow=ncol, padding=6, pad_value=1.0), path)


def region_grid(instances, image_root, clip_checkpoints: list, path, *, n_images: int = 6, scale: float = 2.0) -> None:
    """One row per CLIP checkpoint: the GT boxes of the first `n_images` scenes, each named by zero-shot region
    recognition over the dataset's class names (green right, red wrong, * novel). Regions are pooled from images
    enlarged `scale` times, as in evaluation.py."""
    ds, picks = _val_scenes(instances, image_root, n_images)
    novel = [s == "novel" for s in ds.category_splits]
    panels = []
    for ckpt in clip_checkpoints:
        model, tok = load_clip("RN-toy", str(ckpt))
        emb = encode_texts(model, tok, ds.category_names, TEMPLATES)  # (K, D)
        enc = RegionEncoder(model.visual).eval()
        for i in picks:
            image, target = ds[i]
            v = region_embeddings(enc, [image], [target["boxes"]], scale=scale)[0]  # (N, D)
            pred = (v @ emb.t()).argmax(-1).tolist()
            truth = (target["labels"] - 1).tolist()
            labels = [f"{ds.category_names[p]}{'*' if novel[p] else ''}" for p in pred]
            colors = ["lime" if p == t else "red" for p, t in zip(pred, truth)]
            panels.append(render_boxes(image, target["boxes"], labels, colors, scale=3))
    _save_grid(panels, len(picks), path)


def detection_grid(instances, image_root, detector_checkpoints: list, path, *, n_images: int = 6) -> None:
    """One row per detector checkpoint: its top 5 detections (score >= 0.3) on the first `n_images` scenes, novel
    classes red and *."""
    ds, picks = _val_scenes(instances, image_root, n_images)
    novel = [s == "novel" for s in ds.category_splits]
    panels = []
    for ckpt in detector_checkpoints:
        det = load_detector(ckpt)
        for i in picks:
            image, _ = ds[i]
            with torch.no_grad():
                out = det([image])[0]
            labels = (out["labels"] - 1).tolist()
            panels.append(draw_detections(image, out["boxes"], [ds.category_names[k] for k in labels],
                                          out["scores"], None, is_novel=[novel[k] for k in labels], score_thresh=0.3,
                                          max_boxes=5, scale=3))
    _save_grid(panels, len(picks), path)


@torch.no_grad()
def draw_predictions(model, val: DetectionDataset, n: int, out_dir, novel_ids: list[int], device) -> None:
    """The detector's predictions on the first `n` val images, drawn to out_dir/<image id>.png (novel names
    marked)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    novel = set(novel_ids)
    for i in range(min(n, len(val))):
        if (item := val[i]) is None:
            continue
        image, target = item
        pred = model([image.to(device)])[0]
        labels = (pred["labels"] - 1).tolist()
        draw_detections(image, pred["boxes"].cpu(), [val.category_names[k] for k in labels], pred["scores"].cpu(),
                        out_dir / f"{target['image_id']}.png", is_novel=[val.category_ids[k] in novel for k in labels])
