"""Pixels and boxes: CLIP's pixel statistics, reading an image file as people see it, whole-image preprocessing,
the box arithmetic that follows a resize or crop, and the training augmentation (horizontal flips).

Boxes are xyxy float in absolute pixels (docs/DESIGN.md §3). The flips are the data pipeline's augmentation: the
training loop (engine.py) calls `random_hflip_captioned` or `random_hflip_detection` on each batch with the step's
generator, before the model sees it.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision import transforms as T
from torchvision.transforms import functional as TF

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """CLIP pixel normalisation x' = (x - CLIP_MEAN[c]) / CLIP_STD[c] of (3, H, W) or (B, 3, H, W) float RGB
    in [0, 1]; returns the same shape and dtype."""
    if images.dim() not in (3, 4) or images.shape[-3] != 3:
        raise ValueError(f"normalize expects (3, H, W) or (B, 3, H, W) RGB, got {tuple(images.shape)}")
    mean = images.new_tensor(CLIP_MEAN).view(3, 1, 1)  # (3, 1, 1)
    std = images.new_tensor(CLIP_STD).view(3, 1, 1)  # (3, 1, 1)
    return (images - mean) / std  # (B, 3, H, W) or (3, H, W)


def open_rgb(path) -> Image.Image:
    """An image file as the RGB picture a person sees: EXIF orientation applied (a phone photo stored sideways is
    turned upright), and every PIL mode converted without clipping:
    - 8-bit modes (L, P, 1, RGBA, LA, PA, CMYK, YCbCr, ...): PIL's own conversion (alpha dropped);
    - 16-bit grayscale (I;16, I;16B, I;16L): value / 257, so 65535 is white;
    - 32-bit integer (I): / 257 when its values lie in [0, 65535] (a 16-bit PNG as PIL may open it), else
      stretched from its minimum to its maximum;
    - 32-bit float (F): x 255 when its values lie in [0, 1], else stretched likewise.
    Raises what PIL raises for a missing or unreadable file."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)  # a copy, upright; no-op without an orientation tag
        if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
            a = np.asarray(im, dtype=np.float64)  # (H, W)
            lo, hi = float(a.min(initial=0.0)), float(a.max(initial=0.0))
            if im.mode.startswith("I;16") or (im.mode == "I" and lo >= 0 and hi <= 65535):
                a = a / 257.0
            elif im.mode == "F" and lo >= 0 and hi <= 1:
                a = a * 255.0
            else:
                a = (a - lo) / max(hi - lo, 1e-12) * 255.0
            im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")
        return im.convert("RGB")


def _to_rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")  # grayscale, palette, RGBA (alpha dropped) -> RGB


def geometry(image_size: int, max_size: int | None = None) -> list:
    if max_size is not None:  # detectron2's ResizeShortestEdge: short side S, long side at most max_size, no crop
        return [_to_rgb, T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC, max_size=max_size,
                                  antialias=True)]
    return [_to_rgb, T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC, antialias=True),
            T.CenterCrop(image_size)]


def image_transform(image_size: int, *, train: bool = False, max_size: int | None = None) -> T.Compose:
    """CLIP's whole-image preprocessing, PIL image (any mode) -> (3, S, S) float32 CLIP-normalised: resize the short
    side to S = image_size (bicubic, as CLIP), center crop; ``train`` adds a horizontal flip (p = 0.5). To pool
    regions from enlarged images (docs/DESIGN.md §5.1), pass the enlarged S, e.g. 256 for a 128-px CLIP. With
    `max_size`: no crop, the aspect kept, the long side at most max_size (the official pretraining's 800 / 1333):
    (3, h, w)."""
    flip = [T.RandomHorizontalFlip(0.5)] if train else []
    return T.Compose(geometry(image_size, max_size) + flip + [T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])


def uint8_to_input(image: torch.Tensor) -> torch.Tensor:
    """(3, S, S) uint8 -> float32 CLIP-normalised, the same arithmetic as ToTensor + Normalize."""
    return TF.normalize(image.float().div(255), CLIP_MEAN, CLIP_STD)


def hflip(image: torch.Tensor, boxes_xyxy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror image (3, H, W) and its boxes (N, 4) float xyxy absolute pixels left-right: x1' = W - x2,
    x2' = W - x1. Returns the flipped (3, H, W) image and (N, 4) boxes (still x1 < x2)."""
    width = image.shape[-1]
    x1, y1, x2, y2 = boxes_xyxy.unbind(-1)  # (N,) each
    return image.flip(-1), torch.stack([width - x2, y1, width - x1, y2], dim=-1)  # (3, H, W), (N, 4)


def boxes_to_transformed(boxes: torch.Tensor, orig_size: tuple[int, int], image_size: int) -> torch.Tensor:
    """Boxes (N, 4+) xyxy in the pixels of a (width, height) file -> the pixels of `image_transform(image_size)`'s
    output (short side resized to S, centre crop S x S, as torchvision computes them), clipped to the crop; rows
    that leave no area inside the crop are dropped. Extra columns (e.g. a score) are kept."""
    w, h = orig_size
    new_w, new_h = (image_size, int(image_size * h / w)) if w <= h else (int(image_size * w / h), image_size)
    left, top = int(round((new_w - image_size) / 2.0)), int(round((new_h - image_size) / 2.0))
    out = boxes.clone().float()
    out[:, 0:4] = (out[:, 0:4] * boxes.new_tensor([new_w / w, new_h / h] * 2).float()
                   - torch.tensor([left, top, left, top], dtype=torch.float32)).clamp(0, image_size)
    keep = (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])
    return out[keep]


def boxes_to_resized(boxes: torch.Tensor, orig_size: tuple[int, int], new_size: tuple[int, int]) -> torch.Tensor:
    """Boxes (N, 4+) xyxy in the pixels of a (width, height) file -> the pixels of the same image resized, without
    a crop, to new_size (height, width); clipped, rows with no area dropped, extra columns kept."""
    (w, h), (new_h, new_w) = orig_size, new_size
    out = boxes.clone().float()
    out[:, 0:4] = out[:, 0:4] * torch.tensor([new_w / w, new_h / h] * 2)
    out[:, 0:4] = torch.minimum(out[:, 0:4].clamp(min=0), torch.tensor([new_w, new_h] * 2, dtype=torch.float32))
    return out[(out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])]


def flip_valid(images: torch.Tensor, sizes: torch.Tensor, flip: torch.Tensor) -> None:
    """Mirrors, in place, the images of a padded batch (B, 3, H, W) where `flip` (B,) is True, each within its own
    (height, width) of `sizes` (B, 2), so that padding stays at the right."""
    for i in torch.where(flip)[0].tolist():
        h, w = sizes[i].tolist()
        images[i, :, :h, :w] = images[i, :, :h, :w].flip(-1)


def random_hflip_captioned(batch: dict, g: torch.Generator) -> dict:
    """Training augmentation of an image-caption batch: each image mirrored with probability 0.5 (B draws from `g`),
    in place, within its own size."""
    flip_valid(batch["images"], batch["sizes"], torch.rand(len(batch["images"]), generator=g) < 0.5)
    return batch


def random_hflip_detection(batch: tuple[list, list], g: torch.Generator) -> tuple[list, list]:
    """Training augmentation of a detection batch (images, targets): each image and its boxes mirrored with
    probability 0.5 (B draws from `g`)."""
    images, targets = batch
    out_images, out_targets = [], []
    for image, target, flip in zip(images, targets, (torch.rand(len(images), generator=g) < 0.5).tolist()):
        if flip:
            image, boxes = hflip(image, target["boxes"])
            target = {**target, "boxes": boxes}
        out_images.append(image)
        out_targets.append(target)
    return out_images, out_targets
