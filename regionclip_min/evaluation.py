"""Zero-shot recognition metrics (paper Sec. 4.2 / Table 4 protocol, and the Fig. 1(b) gap).

- `gt_box_accuracy`: region recognition with ground-truth boxes. Each annotated box goes through the region path
  (res4 map -> RoIAlign -> layer4 -> attention pool) of a CLIP or RegionCLIP visual encoder, and is classified as the
  class whose text embedding has the highest cosine. Top-1 accuracy over all, base and novel categories. Images may
  be enlarged by `scale` before pooling (DESIGN.md §5.1: a 128-px toy CLIP needs 2-3x, as the paper's 224-px CLIP
  meets objects in 800-px detection images).
- `whole_image_accuracy`: image-level recognition of object-centric images (one object): `encode_image` at the
  size CLIP learned at, classified against the class names. Together with the GT-box accuracy on scenes this is the
  paper's Fig. 1(b): CLIP recognises whole images far better than regions.

Left out here: COCO AP metrics (they come with detection).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm import tqdm

from regionclip_min.data import CLIP_MEAN, CLIP_STD, DetectionDataset, collate_detection


def _normalise(images: list[torch.Tensor], scale: float) -> tuple[torch.Tensor, float]:
    """Stacks [0, 1] images (equal sizes), enlarges by `scale`, CLIP-normalises: (B, 3, H', W') and the factor."""
    x = torch.stack(images)  # (B, 3, H, W)
    if scale != 1.0:
        x = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
    mean = x.new_tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std, scale


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
        x, s = _normalise(images, scale)
        boxes = [t["boxes"].to(device) * s for t in targets]  # list of (N_i, 4) in the enlarged frame
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
        x, _ = _normalise(images, 1.0)
        emb = F.normalize(clip_model.encode_image(x.to(device)), dim=-1)  # (B, D)
        labels = torch.stack([t["labels"][0] for t in targets]).to(device) - 1  # (B,)
        hits += ((emb @ cls.t()).argmax(-1) == labels).sum().item()
        n += len(labels)
    return {"accuracy": hits / n if n else float("nan"), "n_images": n}
