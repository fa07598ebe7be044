"""Region proposals and region embeddings from a CLIP ResNet (RegionCLIP, Sec. 3.1 and Sec. 3.3).

Paper: "Visual region representation" (Sec. 3.1): proposals come from an RPN trained on base-category boxes
(or, as the authors report nearly as good, random boxes); the image goes through the CLIP ResNet up to res4,
each region is cut out of that map by RoIAlign and finished by the rest of CLIP's image encoder (res5 and the
attention pool), which gives its embedding v_i. The same pooler and head make the detector's box head in
transfer (Sec. 3.3, "RoIAlign on res4, res5 as the box head"). In formulas, with x an image and b a box:

    fmap = layer3(layer2(layer1(stem(x))))                         # res4, stride 16
    v_b  = attnpool(layer4(RoIAlign(fmap, b, P x P, scale 1/16, aligned=True)))

P is twice the attention pool's grid (RN50 at 224 px: grid 7, P 14; the toy RN-toy at 128 px: grid 4, P 8), so
layer4 (stride 2) brings a region back to exactly the grid the pool's positional embedding was trained for.
Why the whole-image box then reproduces `encode_image` exactly: with aligned=True the box [0, 0, W, H] becomes
[-0.5, W/16 - 0.5] in map coordinates, so each of the P = W/16 bins is exactly one res4 cell wide, and
sampling_ratio=0 (adaptive: ceil(bin size) = 1 sample per bin) samples each bin at its centre, i.e. at the
integer position of a cell, where bilinear interpolation returns that cell unchanged. sampling_ratio=1 is
exact too; 2 or more average 2x2 off-centre samples and blur the map (tests/test_regions.py checks both).

Boxes everywhere: float, xyxy, absolute pixels of the image tensor the encoder sees.

Left out: the RPN itself (the detector module trains torchvision's), FPN / multi-scale features, and any
resizing of the attention pool's positional embedding (regions are always pooled to P x P).
"""
from __future__ import annotations

import json
import math
import os

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

STRIDE = 16  # res4 (output of layer3) stride of CLIP's ModifiedResNet: stem 4, layer2 2, layer3 2


class RegionEncoder(nn.Module):
    """Region embeddings from an open_clip ModifiedResNet: res4 map -> RoIAlign -> layer4 -> attnpool.

    BatchNorm is frozen, as in the paper: every BatchNorm layer stays in eval mode whatever `train()` is told,
    and its affine parameters get requires_grad=False at construction. The encoder shares (does not copy)
    the modules of `visual`; calling `.train()` on the CLIP model that owns `visual` bypasses this override.

    Args:
        visual: `model.visual` of an open_clip CLIP model with a ModifiedResNet image tower (RN50, RN-toy, ...).
        sampling_ratio: RoIAlign samples per bin side; 0 = adaptive (exact for the whole-image box).
    """

    def __init__(self, visual: nn.Module, *, sampling_ratio: int = 0):
        super().__init__()
        if not all(hasattr(visual, n) for n in ("stem", "layer3", "layer4", "attnpool")):
            raise TypeError(f"RegionEncoder needs an open_clip ModifiedResNet, got {type(visual).__name__}")
        self.visual = visual
        self.sampling_ratio = sampling_ratio
        tokens = visual.attnpool.positional_embedding.shape[0]  # grid * grid + 1 (the mean token)
        grid = math.isqrt(tokens - 1)
        if grid * grid != tokens - 1:
            raise ValueError(f"attnpool positional embedding has {tokens} rows, not grid**2 + 1")
        self.pooler_size = 2 * grid  # P: layer4 halves it back to the attnpool grid
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.requires_grad_(False)
        self.train(visual.training)  # adopt the tower's mode; BatchNorm goes to eval here, once

    def train(self, mode: bool = True) -> "RegionEncoder":
        """Set train/eval mode, but keep every BatchNorm in eval mode (frozen statistics)."""
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """Res4 feature map: CLIP's stem (3 convs + 2x2 avgpool, stride 4) then layer1..layer3, exactly as
        open_clip's ModifiedResNet.forward runs them.

        Args:
            images: (B, 3, H, W) float, CLIP-normalised; H and W multiples of 16 (32 for `encode_image` parity).

        Returns:
            (B, C4, H/16, W/16) float (C4 = 1024 for RN50, 256 for RN-toy).
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        v = self.visual
        x = v.stem(images)  # (B, C1/4, H/4, W/4)
        x = v.layer1(x)  # (B, C1, H/4, W/4)
        x = v.layer2(x)  # (B, C2, H/8, W/8)
        return v.layer3(x)  # (B, C4, H/16, W/16)

    def pool(self, fmap: torch.Tensor, boxes_list: list[torch.Tensor]) -> torch.Tensor:
        """RoIAlign (aligned=True, scale 1/16) of every box on its own image's res4 map.

        Args:
            fmap: (B, C4, H/16, W/16) from `feature_map`.
            boxes_list: B tensors, the i-th (R_i, 4) float xyxy in absolute pixels of image i (R_i may be 0).

        Returns:
            (R, C4, P, P), R = sum_i R_i, regions in the order of boxes_list.
        """
        if fmap.ndim != 4:
            raise ValueError(f"fmap must be (B, C4, H/16, W/16), got {tuple(fmap.shape)}")
        check_boxes(boxes_list, fmap.shape[0])
        rois = torch.cat([torch.cat([b.new_full((len(b), 1), i), b], dim=1)  # (R_i, 5): image index, xyxy
                          for i, b in enumerate(boxes_list)]).to(fmap)  # (R, 5)
        P = self.pooler_size
        return roi_align(fmap, rois, (P, P), 1.0 / STRIDE, self.sampling_ratio, True)  # (R, C4, P, P)

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        """CLIP's res5 (layer4) and attention pool on pooled regions: the region embedding v_i (Sec. 3.1).

        Args:
            pooled: (R, C4, P, P) from `pool`.

        Returns:
            (R, D) float, NOT normalised (as `encode_image`).
        """
        P = self.pooler_size
        if pooled.ndim != 4 or tuple(pooled.shape[-2:]) != (P, P):
            raise ValueError(f"pooled regions must be (R, C4, {P}, {P}), got {tuple(pooled.shape)}")
        return in_chunks(lambda x: attention_pool(self.visual.attnpool, self.visual.layer4(x)), pooled)  # (R, D)

    def forward(self, images: torch.Tensor, boxes_list: list[torch.Tensor]) -> torch.Tensor:
        """Region embeddings of `boxes_list` on `images`: head(pool(feature_map(images), boxes_list)).

        Args:
            images: (B, 3, H, W) float, CLIP-normalised.
            boxes_list: B tensors (R_i, 4), float xyxy absolute pixels of `images`.

        Returns:
            (R, D) float, R = sum_i R_i, not normalised.
        """
        check_boxes(boxes_list, images.shape[0])  # before the expensive trunk
        return self.head(self.pool(self.feature_map(images), boxes_list))  # (R, D)


class CropEncoder(nn.Module):
    """ViLD-style region embeddings, NOT the paper's: each box is cut out of the image and encoded as a whole image.

    An extra teacher for the toy benchmark (train_pretrain.py --teacher crop; eval_zeroshot.py --region_encoder
    crop), to test whether RegionCLIP is held back by its teacher's pooled-region labels. Each box becomes a square
    around its centre, `context` times its longer side (some background, as the object-centric images CLIP learned
    from have), resampled to the tower's input size by RoIAlign (bilinear; adaptive sampling averages several
    samples per output pixel when it shrinks a large box), and goes through `visual` whole: stem to attention pool.
    It costs one full image-tower pass per box.

    Args:
        visual: an open_clip image tower whose `image_size` is its input side.
        context: side of the square crop over the box's longer side (1.25 was the best of 1.0-1.5 for the toy
            stage-0 CLIP on GT boxes of 400 training scenes).
    Call: (images (B, 3, H, W) CLIP-normalised, boxes_list B x (R_i, 4) xyxy pixels) -> (R, D), not normalised.
    """

    def __init__(self, visual: nn.Module, *, context: float = 1.25):
        super().__init__()
        if context <= 0:
            raise ValueError(f"context must be > 0, got {context}")
        self.visual, self.context = visual, context
        size = visual.image_size
        self.size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)

    def crop_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """(R, 4) xyxy -> (R, 4) squares of side context * longer side, same centres."""
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2  # (R, 2)
        half = (boxes[:, 2:] - boxes[:, :2]).amax(-1, keepdim=True) * (self.context / 2)  # (R, 1)
        return torch.cat([centre - half, centre + half], dim=-1)

    def forward(self, images: torch.Tensor, boxes_list: list[torch.Tensor]) -> torch.Tensor:
        check_boxes(boxes_list, images.shape[0])
        squares = [self.crop_boxes(b.to(images.dtype)) for b in boxes_list]
        crops = roi_align(images, squares, output_size=self.size, spatial_scale=1.0, sampling_ratio=0,
                          aligned=True)  # (R, 3, S, S)
        return in_chunks(self.visual, crops)  # (R, D)


def region_encoder(kind: str, visual: nn.Module, *, crop_context: float = 1.25) -> nn.Module:
    """`kind` "pooled": RegionEncoder (the paper's); "crop": CropEncoder (ViLD-style)."""
    if kind == "pooled":
        return RegionEncoder(visual)
    if kind == "crop":
        return CropEncoder(visual, context=crop_context)
    raise ValueError(f"region encoder must be 'pooled' or 'crop', got {kind!r}")


INFERENCE_CHUNK = 256  # regions per layer4 + attention-pool call when no gradient is recorded


def in_chunks(fn, x: torch.Tensor, chunk: int = INFERENCE_CHUNK) -> torch.Tensor:
    """fn(x), computed over slices of `chunk` rows when no gradient is recorded (inference), else in one call.

    Same outputs up to float rounding. Why: glibc's malloc gives every block above its mmap threshold (at most
    32 MB) fresh pages from the kernel and returns them on free, so an evaluation batch of 16 images x 300
    proposals (RN-toy: 315 MB per layer4 activation) page-faulted all of its memory in again on every batch: a
    third of the wall time of zero-shot and detector evaluation on this project's CPU (system time 38 of 68 s).
    Slices of 256 regions keep every block small enough for malloc to reuse.
    """
    if torch.is_grad_enabled() or len(x) <= chunk:
        return fn(x)
    return torch.cat([fn(part) for part in x.split(chunk)])


def attention_pool(attnpool: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """open_clip's `AttentionPool2d` forward, computing only the token it returns.

    CLIP's attention pool prepends the mean of the grid as a token, adds positional embeddings, runs multi-head
    attention over all G*G + 1 tokens and returns token 0. Keys and values need every token; the query projection,
    the attention rows and the output projection are needed for token 0 alone. Asking only that one query gives
    the same output (tests/test_regions.py checks it against `attnpool(x)`) at about 40% less compute per region
    (RN50: 1.47 -> ~0.85 GFLOP). The parameters are the module's own (open_clip names: q_proj, k_proj, v_proj,
    c_proj, positional_embedding), so checkpoints are unchanged.

    Args:
        attnpool: an open_clip AttentionPool2d. x: (N, C, G, G) layer4 output.
    Returns:
        (N, D) as `attnpool(x)`.
    """
    x = x.flatten(2).permute(2, 0, 1)  # (G*G, N, C)
    x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)  # (G*G + 1, N, C)
    x = x + attnpool.positional_embedding[:, None, :].to(x.dtype)  # (G*G + 1, N, C)
    out, _ = F.multi_head_attention_forward(
        query=x[:1], key=x, value=x, embed_dim_to_check=x.shape[-1], num_heads=attnpool.num_heads,
        q_proj_weight=attnpool.q_proj.weight, k_proj_weight=attnpool.k_proj.weight,
        v_proj_weight=attnpool.v_proj.weight, in_proj_weight=None,
        in_proj_bias=torch.cat([attnpool.q_proj.bias, attnpool.k_proj.bias, attnpool.v_proj.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0, out_proj_weight=attnpool.c_proj.weight,
        out_proj_bias=attnpool.c_proj.bias, use_separate_proj_weight=True, training=attnpool.training,
        need_weights=False)  # (1, N, D)
    return out[0]  # (N, D)


def check_boxes(boxes_list: list[torch.Tensor], batch_size: int) -> None:
    """Raise ValueError unless boxes_list holds `batch_size` finite float (R_i, 4) tensors.

    torchvision's roi_align on CPU does not check the number of box lists against the batch: one list too
    many reads (forward) and writes (backward) past the feature map (docs/DESIGN.md §3). So we check first.
    """
    if not isinstance(boxes_list, (list, tuple)):
        raise ValueError(f"boxes_list must be a list of (R_i, 4) tensors, got {type(boxes_list).__name__}")
    if len(boxes_list) != batch_size:
        raise ValueError(f"got {len(boxes_list)} box lists for a batch of {batch_size} images; need one per image")
    for i, b in enumerate(boxes_list):
        if not torch.is_tensor(b) or b.ndim != 2 or b.shape[1] != 4:
            shape = tuple(b.shape) if torch.is_tensor(b) else type(b).__name__
            raise ValueError(f"boxes_list[{i}] must be an (R_i, 4) tensor of xyxy boxes, got {shape}")
        if not b.is_floating_point():
            raise ValueError(f"boxes_list[{i}] must be float (xyxy pixels), got {b.dtype}")
        if not torch.isfinite(b).all():
            raise ValueError(f"boxes_list[{i}] holds non-finite coordinates")


def whole_image_boxes(images: torch.Tensor) -> list[torch.Tensor]:
    """One box [0, 0, W, H] per image (the image-level region, e.g. for L_image_contrastive).

    Args:
        images: (B, 3, H, W).

    Returns:
        B tensors (1, 4), float32 xyxy absolute pixels, on the images' device.
    """
    B, _, H, W = images.shape
    box = torch.tensor([[0.0, 0.0, float(W), float(H)]], device=images.device)  # (1, 4)
    return [box.clone() for _ in range(B)]


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
