"""Region proposals: where the regions of a pretraining step come from (paper Sec. 3.1), behind one interface.

A proposer is called as `proposer(images, sizes, batch, g)` and returns one (R_i, 4) float xyxy box tensor per
image, in the pixels of `images` (B, 3, H, W), each inside its unpadded image (`sizes`: [h, w] per image); `batch`
is the collated batch (image ids and original sizes, for boxes read from a file) and `g` the step's generator
(everything random comes from it). R_i may be 0. `PROPOSERS` names them for `--proposals`; a new method is a class
here and a row there.

    rpn     an RPN trained on base-category boxes (train_detect.py --task rpn): NMS 0.5, top `rpn_top_k`, then a
            random subset (the paper's)
    random  boxes with log-uniform sides (the paper's RPN-free alternative)
    grid    a multi-scale grid (1x1, 2x2, 4x4 cells)
    file    precomputed boxes per image id (`load_proposals_file`), mapped through the image's resize

`window_boxes` (sliding windows) are the demo's proposals when it has no RPN.
"""
from __future__ import annotations

import json
import math
import os

import torch
from torchvision.ops import boxes as box_ops

from regionclip_min.rpn import propose
from regionclip_min.transforms import boxes_to_resized, boxes_to_transformed


class RPNProposer:
    """RPN boxes after an extra NMS at `nms_thresh`, the top `top_k`, then `per_image` of them drawn at random."""

    def __init__(self, rpn, *, top_k: int, per_image: int, nms_thresh: float = 0.5):
        self.rpn, self.top_k, self.per_image, self.nms_thresh = rpn, top_k, per_image, nms_thresh

    def __call__(self, images, sizes, batch, g) -> list[torch.Tensor]:
        boxes = propose(self.rpn, images, self.top_k, clip_normalized=True, nms_thresh=self.nms_thresh)
        boxes = [inside(b, h, w) for b, (h, w) in zip(boxes, sizes)]
        return [b[torch.randperm(len(b), generator=g)[: self.per_image].sort().values.to(b.device)] for b in boxes]


class RandomProposer:
    """`per_image` random boxes per image (`random_boxes`)."""

    def __init__(self, *, per_image: int):
        self.per_image = per_image

    def __call__(self, images, sizes, batch, g) -> list[torch.Tensor]:
        return [random_boxes(self.per_image, h, w, generator=g) for h, w in sizes]


class GridProposer:
    """The first `per_image` cells of `grid_boxes`."""

    def __init__(self, *, per_image: int):
        self.per_image = per_image

    def __call__(self, images, sizes, batch, g) -> list[torch.Tensor]:
        return [grid_boxes(h, w)[: self.per_image] for h, w in sizes]


class FileProposer:
    """The first `per_image` rows of each image's entry in a proposals file, in the pixels of the image file:
    mapped through the resize (and centre crop, when `max_size` is None) and the enlargement by `scale`."""

    def __init__(self, table: dict, *, per_image: int, image_size: int, max_size: int | None, scale: float):
        self.table, self.per_image, self.image_size, self.max_size, self.scale = (table, per_image, image_size,
                                                                                  max_size, scale)

    def __call__(self, images, sizes, batch, g) -> list[torch.Tensor]:
        boxes = []
        for i, size, new in zip(batch["image_ids"].tolist(), batch["orig_sizes"].tolist(), batch["sizes"].tolist()):
            table = self.table[i]  # checked at start: present
            rows = (boxes_to_transformed(table, tuple(size), self.image_size) if self.max_size is None
                    else boxes_to_resized(table, tuple(size), tuple(new)))
            boxes.append(rows[: self.per_image, :4] * self.scale)
        return boxes


PROPOSERS = {"rpn": RPNProposer, "random": RandomProposer, "grid": GridProposer, "file": FileProposer}


def inside(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, 4) xyxy clipped to an h x w image; boxes left without area are dropped."""
    boxes = box_ops.clip_boxes_to_image(boxes, (h, w))
    return boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]


def random_boxes(num: int, height: int, width: int, *, generator: torch.Generator | None = None,
                 min_size: float = 16.0, device: str | torch.device = "cpu") -> torch.Tensor:
    """Random proposals inside the image (the paper's RPN-free alternative, Sec. 4 ablation).

    Side lengths are log-uniform in [min_size, image side] (small boxes as likely per octave as large ones),
    positions uniform so that the box lies inside the image.

    Args:
        num: number of boxes (>= 0).
        height, width: image size in pixels.
        generator: seeded torch.Generator (on CPU) for reproducible boxes.
        min_size: smallest box side in pixels (default one res4 cell); must fit in the image.
        device: device of the returned tensor.

    Returns:
        (num, 4) float32 xyxy absolute pixels with 0 <= x1 < x2 <= width, 0 <= y1 < y2 <= height.
    """
    if num < 0 or not 0 < min_size <= min(height, width):
        raise ValueError(f"need num >= 0 and 0 < min_size <= min(height, width); got {num}, {min_size}, "
                         f"{height}x{width}")
    u = torch.rand(num, 4, generator=generator)  # (num, 4) in [0, 1)
    lo = math.log(min_size)
    w = torch.exp(lo + u[:, 0] * (math.log(width) - lo))  # (num,)
    h = torch.exp(lo + u[:, 1] * (math.log(height) - lo))  # (num,)
    x1 = u[:, 2] * (width - w)  # (num,)
    y1 = u[:, 3] * (height - h)  # (num,)
    boxes = torch.stack([x1, y1, x1 + w, y1 + h], dim=1)  # (num, 4)
    return boxes.clamp_(min=0).clamp_(max=torch.tensor([width, height, width, height])).to(device)


def grid_boxes(height: int, width: int, *, levels: tuple[int, ...] = (1, 2, 4),
               device: str | torch.device = "cpu") -> torch.Tensor:
    """A multi-scale grid of proposals: for each n in `levels`, the image cut into n x n equal cells.

    Args:
        height, width: image size in pixels.
        levels: cells per side at each scale (1 = the whole image).
        device: device of the returned tensor.

    Returns:
        (sum n^2, 4) float32 xyxy absolute pixels, coarse levels first, row-major within a level.
    """
    out = []
    for n in levels:
        xs = torch.linspace(0, width, n + 1)  # (n+1,)
        ys = torch.linspace(0, height, n + 1)  # (n+1,)
        y1, x1 = torch.meshgrid(ys[:-1], xs[:-1], indexing="ij")  # (n, n) each
        y2, x2 = torch.meshgrid(ys[1:], xs[1:], indexing="ij")  # (n, n) each
        out.append(torch.stack([x1, y1, x2, y2], dim=-1).reshape(-1, 4))  # (n*n, 4)
    return torch.cat(out).to(device)  # (sum n^2, 4)


def window_boxes(height: int, width: int, *, fractions: tuple[float, ...] = (1.0, 0.7, 0.5, 0.35, 0.25),
                 ratios: tuple[float, ...] = (1.0, 2.0, 0.5), min_size: float = 16.0,
                 device: str | torch.device = "cpu") -> torch.Tensor:
    """Multi-scale sliding windows, proposals that need no training (the demo's fallback without an RPN): for
    each fraction f of the short side and aspect ratio r (width / height), windows of area (f * short)^2 and shape
    r, stepped by half their side across the image (the last one flush with the far edge), clipped to the image.

    Returns:
        (N, 4) float32 xyxy absolute pixels, large windows first; duplicates removed.
    """
    short, out = min(height, width), []
    for f in fractions:
        for r in ratios:
            w, h = min(width, f * short * r ** 0.5), min(height, f * short / r ** 0.5)
            if min(w, h) < min_size:
                continue
            xs = torch.arange(0, max(width - w, 0) + 1e-6, w / 2).tolist()
            ys = torch.arange(0, max(height - h, 0) + 1e-6, h / 2).tolist()
            xs += [width - w] if xs[-1] < width - w - 1 else []
            ys += [height - h] if ys[-1] < height - h - 1 else []
            out += [(round(x, 1), round(y, 1), round(x + w, 1), round(y + h, 1)) for y in ys for x in xs]
    return torch.tensor(list(dict.fromkeys(out)), dtype=torch.float32, device=device).reshape(-1, 4)  # (N, 4)


def load_proposals_file(path: str | os.PathLike) -> dict[int, torch.Tensor]:
    """Read precomputed proposals: a json object {image id: [[x1, y1, x2, y2, score], ...]}.

    Args:
        path: json file; ids are COCO image ids (json keys are strings, so "12" means image 12), boxes xyxy
            absolute pixels of the original image.

    Returns:
        {image id: (N, 5) float32 [x1, y1, x2, y2, score]}; an image with no proposals gives (0, 5).
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid json ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a json object {{image id: [[x1, y1, x2, y2, score], ...]}}")
    out = {}
    for key, rows in data.items():
        try:
            image_id = int(key)
        except ValueError:
            raise ValueError(f"{path}: image id {key!r} is not an integer") from None
        if image_id in out:
            raise ValueError(f"{path}: image id {image_id} appears twice")
        if not isinstance(rows, list):
            raise ValueError(f"{path}: image {image_id}: expected a list of [x1, y1, x2, y2, score] rows")
        for j, row in enumerate(rows):
            ok = isinstance(row, list) and len(row) == 5
            ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row)
            if not ok:
                raise ValueError(f"{path}: image {image_id}, row {j}: expected [x1, y1, x2, y2, score], got {row!r}")
            if not all(math.isfinite(v) for v in row):
                raise ValueError(f"{path}: image {image_id}, row {j}: non-finite value in {row!r}")
            if not (row[2] > row[0] and row[3] > row[1]):
                raise ValueError(f"{path}: image {image_id}, row {j}: need x2 > x1 and y2 > y1, got {row!r}")
        out[image_id] = torch.tensor(rows, dtype=torch.float32).reshape(-1, 5)  # (N, 5)
    return out
