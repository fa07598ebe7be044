"""Region embeddings from a CLIP ResNet (RegionCLIP, Sec. 3.1 and Sec. 3.3); proposals are in proposals.py.

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

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

STRIDE = 16  # res4 (output of layer3) stride of CLIP's ModifiedResNet: stem 4, layer2 2, layer3 2


class FrozenBatchNorm(nn.Module):
    """Base of every module that runs CLIP ResNet parts (RegionEncoder, the detector's backbone and box head):
    BatchNorm is frozen, as in the paper. `freeze_batchnorm()` (call it at the end of __init__) sets its affine
    parameters to requires_grad=False, and every BatchNorm stays in eval mode whatever `train()` is told."""

    def freeze_batchnorm(self, mode: bool | None = None) -> None:
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.requires_grad_(False)
        self.train(self.training if mode is None else mode)

    def train(self, mode: bool = True):
        """Set train/eval mode, but keep every BatchNorm in eval mode (frozen statistics)."""
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self


def pooler_size(attnpool: nn.Module) -> int:
    """P = twice the attention pool's grid: layer4 (stride 2) brings a P x P region back to that grid."""
    tokens = attnpool.positional_embedding.shape[0]  # grid * grid + 1 (the mean token)
    grid = math.isqrt(tokens - 1)
    if grid * grid != tokens - 1:
        raise ValueError(f"attnpool positional embedding has {tokens} rows, not grid**2 + 1")
    return 2 * grid


def res4(m: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The res4 map of a ModifiedResNet's parts (`m` has its conv1..avgpool and layer1..layer3, under open_clip's
    names): CLIP's stem (3 convs + 2x2 avgpool, stride 4) then layer1..layer3, in open_clip's order.

    Args:
        images: (B, 3, H, W) float, CLIP-normalised; H and W multiples of 16 (32 for `encode_image` parity).
    Returns:
        (B, C4, H/16, W/16) float (C4 = 1024 for RN50, 256 for RN-toy).
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    x = m.act1(m.bn1(m.conv1(images)))  # (B, w/2, H/2, W/2), w = stem width
    x = m.act2(m.bn2(m.conv2(x)))  # (B, w/2, H/2, W/2)
    x = m.avgpool(m.act3(m.bn3(m.conv3(x))))  # (B, w, H/4, W/4)
    x = m.layer1(x)  # (B, C1, H/4, W/4)
    x = m.layer2(x)  # (B, C2, H/8, W/8)
    return m.layer3(x)  # (B, C4, H/16, W/16)


def roi_pool(fmap: torch.Tensor, boxes_list: list[torch.Tensor], size: int, sampling_ratio: int = 0) -> torch.Tensor:
    """RoIAlign (aligned=True, scale 1/16) of every box on its own image's res4 map.

    Args:
        fmap: (B, C4, H/16, W/16) from `res4`.
        boxes_list: B tensors, the i-th (R_i, 4) float xyxy in absolute pixels of image i (R_i may be 0).
        size: P, the pooled side (`pooler_size`); sampling_ratio: samples per bin side, 0 = adaptive.
    Returns:
        (R, C4, P, P), R = sum_i R_i, regions in the order of boxes_list.
    """
    if fmap.ndim != 4:
        raise ValueError(f"fmap must be (B, C4, H/16, W/16), got {tuple(fmap.shape)}")
    check_boxes(boxes_list, fmap.shape[0])
    rois = torch.cat([torch.cat([b.new_full((len(b), 1), i), b], dim=1)  # (R_i, 5): image index, xyxy
                      for i, b in enumerate(boxes_list)]).to(fmap)  # (R, 5)
    return roi_align(fmap, rois, (size, size), 1.0 / STRIDE, sampling_ratio, True)  # (R, C4, P, P)


def res5_head(layer4: nn.Module, attnpool: nn.Module, pooled: torch.Tensor) -> torch.Tensor:
    """CLIP's res5 (layer4) and attention pool on pooled regions (R, C4, P, P): the region embeddings v_i (Sec.
    3.1), (R, D), NOT normalised (as `encode_image`)."""
    return in_chunks(lambda x: attention_pool(attnpool, layer4(x)), pooled)  # (R, D)


class RegionEncoder(FrozenBatchNorm):
    """Region embeddings from an open_clip ModifiedResNet: res4 map -> RoIAlign -> layer4 -> attnpool.

    BatchNorm is frozen (FrozenBatchNorm). The encoder shares (does not copy) the modules of `visual`; calling
    `.train()` on the CLIP model that owns `visual` bypasses this override. The detector (detector.py) is built
    from the same parts: `res4`, `roi_pool`, `res5_head`.

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
        self.pooler_size = pooler_size(visual.attnpool)
        self.freeze_batchnorm(visual.training)  # adopt the tower's mode; BatchNorm goes to eval here, once

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """Res4 feature map (B, C4, H/16, W/16) of CLIP-normalised images (B, 3, H, W): `res4`."""
        return res4(self.visual, images)

    def pool(self, fmap: torch.Tensor, boxes_list: list[torch.Tensor]) -> torch.Tensor:
        """(R, C4, P, P) regions of `boxes_list` on `fmap`: `roi_pool`."""
        return roi_pool(fmap, boxes_list, self.pooler_size, self.sampling_ratio)

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        """(R, D) region embeddings of pooled regions (R, C4, P, P): `res5_head`."""
        P = self.pooler_size
        if pooled.ndim != 4 or tuple(pooled.shape[-2:]) != (P, P):
            raise ValueError(f"pooled regions must be (R, C4, {P}, {P}), got {tuple(pooled.shape)}")
        return res5_head(self.visual.layer4, self.visual.attnpool, pooled)

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


class CLIPBackbone(FrozenBatchNorm):
    """CLIP ModifiedResNet stem..layer3 as a one-level torchvision backbone: (B, 3, H, W) CLIP-normalised ->
    (B, C4, H/16, W/16) (`regions.res4`). Shares (does not copy) the modules of `visual` and keeps their upstream
    names, so `backbone.state_dict()` keys are `visual`'s (conv1.weight, layer3.0.bn1...). Stem and layer1 are
    frozen (`freeze_stem_and_layer1`, the paper's student convention); BatchNorm is always frozen."""

    def __init__(self, visual: nn.Module, *, freeze_stem_and_layer1: bool = True):
        super().__init__()
        for name in ("conv1", "bn1", "act1", "conv2", "bn2", "act2", "conv3", "bn3", "act3", "avgpool",
                     "layer1", "layer2", "layer3"):
            setattr(self, name, getattr(visual, name))
        self.out_channels = visual.layer3[-1].bn3.num_features  # C4 (torchvision reads this attribute)
        if freeze_stem_and_layer1:
            for name in ("conv1", "conv2", "conv3", "layer1"):
                getattr(self, name).requires_grad_(False)
        self.freeze_batchnorm()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return res4(self, images)  # (B, C4, H/16, W/16)


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
