"""Region proposals: where the regions come from (paper Sec. 3.1), behind one interface that serves RegionCLIP
pretraining (`RegionCLIP.forward`) and zero-shot evaluation (`evaluation.encode_regions`).

A proposer is called as `proposer(images, sizes, batch, g)` and returns one (R_i, 5) float tensor per image:
[x1, y1, x2, y2, score], xyxy in the pixels of `images`, each box inside its unpadded image (`sizes`: [h, w] per
image). `images` are as the caller holds them: pretraining's CLIP-normalised, enlarged, padded batch (B, 3, H, W),
evaluation's list of [0, 1] images (a proposer that reads pixels is told which: `RPNProposer.clip_normalized`).
`batch` holds "image_ids" (B,), "orig_sizes" (B, 2) [width, height] of the files and "sizes" (B, 2) [height,
width] of the images before any enlargement, for boxes read from a file; `g` is the generator everything random
comes from (the step's in pretraining, one seeded at 0 in evaluation). R_i may be 0. The score is the RPN's
objectness, a proposals file's fifth column, or 1. `PROPOSERS` names them for `train_pretrain.py
--proposals` and `eval_zeroshot.py --boxes`, and `build_proposer` builds one from its inputs: a new method is a
class here and a row in `PROPOSERS` (and its inputs in `build_proposer`, if it needs new ones).

    rpn     an RPN trained on base-category boxes (train_detect.py --task rpn): an optional NMS, the top `top_k`,
            then a random subset of `per_image` (the paper's pretraining: NMS 0.5, 300, 100)
    random  boxes with log-uniform sides (the paper's RPN-free alternative)
    grid    a multi-scale grid (1x1, 2x2, 4x4 cells)
    file    precomputed boxes per image id (`load_proposals_file`), mapped through the image's resize
    windows multi-scale sliding windows (`window_boxes`), large first: the demo's proposals when it has no RPN

The detector takes its proposals through torchvision's RPN interface instead (`rpn(images, features, targets)`):
its offline RPN is the same ProposalNetwork behind that interface (`rpn.FrozenRPN`).
"""
from __future__ import annotations

import json
import math
import os

import torch
from torchvision.ops import boxes as box_ops

from regionclip_min.rpn import load_rpn, propose
from regionclip_min.transforms import boxes_to_resized, boxes_to_transformed


def _scored(boxes: torch.Tensor) -> torch.Tensor:
    """(N, 4) boxes -> (N, 5) with score 1."""
    return torch.cat([boxes, boxes.new_ones(len(boxes), 1)], dim=1)


class RPNProposer:
    """RPN boxes with their objectness: an NMS at `nms_thresh` (None: only the RPN's own), the top `top_k`, then
    `per_image` of them drawn at random (None: all, in objectness order). `clip_normalized`: the images it is given
    are CLIP-normalised (pretraining's batches) rather than in [0, 1] (evaluation's)."""
    label = "RPN"

    def __init__(self, rpn, *, top_k: int, per_image: int | None, nms_thresh: float | None = 0.5,
                 clip_normalized: bool = True):
        self.rpn, self.top_k, self.per_image, self.nms_thresh = rpn, top_k, per_image, nms_thresh
        self.clip_normalized = clip_normalized

    def __call__(self, images, sizes, batch, g) -> list[torch.Tensor]:
        boxes = propose(self.rpn, images, self.top_k, clip_normalized=self.clip_normalized,
                        nms_thresh=self.nms_thresh, with_scores=True)  # B x (N_i, 5)
        boxes = [inside(b, h, w) for b, (h, w) in zip(boxes, sizes)]
        if self.per_image is None:
            return boxes
        return [b[torch.randperm(len(b), generator=g)[: self.per_image].sort().values.to(b.device)] for b in boxes]


class RandomProposer:
    """`per_image` random boxes per image (`random_boxes`)."""
    label = "random boxes"

    def __init__(self, *, per_image: int):
        self.per_image = per_image

    def __call__(self, images, sizes, batch, g) -> list[torch.Tensor]:
        return [_scored(random_boxes(self.per_image, h, w, generator=g)) for h, w in sizes]


class GridProposer:
    """The first `per_image` cells of `grid_boxes`."""
    label = "grid cells"

    def __init__(self, *, per_image: int):
        self.per_image = per_image

    def __call__(self, images, sizes, batch, g) -> list[torch.Tensor]:
        return [_scored(grid_boxes(h, w)[: self.per_image]) for h, w in sizes]


class FileProposer:
    """The first `per_image` rows of each image's entry in a proposals file (boxes in the pixels of the image
    file), mapped to the images passed in: through the resize to `batch["sizes"]`, or, when `crop_size` is set,
    through the resize and square centre crop of `transforms.image_transform(crop_size)`; then enlarged by
    `scale`."""
    label = "proposals file"

    def __init__(self, table: dict, *, per_image: int, scale: float = 1.0, crop_size: int | None = None):
        self.table, self.per_image, self.scale, self.crop_size = table, per_image, scale, crop_size

    def __call__(self, images, sizes, batch, g) -> list[torch.Tensor]:
        out = []
        for i, size, new in zip(batch["image_ids"].tolist(), batch["orig_sizes"].tolist(), batch["sizes"].tolist()):
            table = self.table[i]  # checked at start (`check_proposals_file`): present
            rows = (boxes_to_transformed(table, tuple(size), self.crop_size) if self.crop_size is not None
                    else boxes_to_resized(table, tuple(size), tuple(new)))[: self.per_image]
            out.append(torch.cat([rows[:, :4] * self.scale, rows[:, 4:5]], dim=1))
        return out


class WindowProposer:
    """The first `per_image` of `window_boxes` (large windows first; None: all): proposals that need no training."""
    label = "sliding windows"

    def __init__(self, *, per_image: int | None = None):
        self.per_image = per_image

    def __call__(self, images, sizes, batch, g) -> list[torch.Tensor]:
        return [_scored(window_boxes(h, w)[: self.per_image]) for h, w in sizes]


PROPOSERS = {"rpn": RPNProposer, "random": RandomProposer, "grid": GridProposer, "file": FileProposer,
             "windows": WindowProposer}


def build_proposer(name: str, *, per_image: int | None, image_ids, rpn_checkpoint=None, rpn_top_k: int = 300,
                   nms_thresh: float | None = 0.5, clip_normalized: bool = True, proposals_file=None,
                   scale: float = 1.0, crop_size: int | None = None, device="cpu"):
    """(the `PROPOSERS[name]` proposer, counts for the run summary) from its inputs. Options are named as the
    scripts name them; a missing RPN checkpoint or a proposals file that lacks some of `image_ids` (the images it
    will be asked about) stops with SystemExit naming the file."""
    problems = proposer_problems(name, rpn_checkpoint, proposals_file)
    if problems:
        raise SystemExit("; ".join(problems))
    if name == "rpn":
        return PROPOSERS["rpn"](load_rpn(rpn_checkpoint, device), top_k=rpn_top_k, per_image=per_image,
                                nms_thresh=nms_thresh, clip_normalized=clip_normalized), {}
    if name == "file":
        try:
            table = load_proposals_file(proposals_file)
        except (OSError, ValueError) as e:
            raise SystemExit(f"--proposals_file: {e}") from None
        return (PROPOSERS["file"](table, per_image=per_image, scale=scale, crop_size=crop_size),
                check_proposals_file(proposals_file, table, list(image_ids)))
    return PROPOSERS[name](per_image=per_image), {}


def proposer_problems(name: str, rpn_checkpoint=None, proposals_file=None) -> list[str]:
    """What stops `build_proposer(name, ...)` from building, as option mistakes (empty: none), checked before a
    run starts."""
    if name not in PROPOSERS:
        return [f"unknown proposal method {name!r}; choose from {', '.join(PROPOSERS)}"]
    if name == "rpn" and not (rpn_checkpoint and os.path.isfile(rpn_checkpoint)):
        return [f"--rpn_checkpoint {rpn_checkpoint} does not exist: rpn proposals need an RPN checkpoint (train "
                f"one: python train_detect.py --preset toy-rpn)"]
    if name == "file" and proposals_file is None:
        return ["file proposals need --proposals_file (json: image id -> [[x1, y1, x2, y2, score], ...])"]
    return []


def check_proposals_file(path, table: dict, ids: list[int]) -> dict:
    """Every image of `ids` must have a row in the proposals file (else SystemExit naming the file and the ids);
    ids not in `ids` are ignored and images with no proposal only add the image-text loss: both counted."""
    missing = [i for i in ids if i not in table]
    if missing:
        raise SystemExit(f"{path}: no proposals for {len(missing)} of the {len(ids)} images (image ids "
                         f"{missing[:8]}{' ...' if len(missing) > 8 else ''}); give every image a row (an empty "
                         f"list is allowed)")
    known = set(ids)
    counts = {"proposal_ids_not_in_dataset": sum(1 for i in table if i not in known),
              "images_without_proposals": sum(1 for i in ids if len(table[i]) == 0)}
    if any(counts.values()):
        print(f"{path}: {counts['proposal_ids_not_in_dataset']} image ids that the dataset lacks (ignored), "
              f"{counts['images_without_proposals']} images with no proposal")
    return counts


def inside(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, 4+) xyxy (extra columns, e.g. a score, kept) clipped to an h x w image; boxes left without area are
    dropped."""
    boxes = torch.cat([box_ops.clip_boxes_to_image(boxes[:, :4], (h, w)), boxes[:, 4:]], dim=1)
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
