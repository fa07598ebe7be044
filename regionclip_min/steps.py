"""Data order and per-step randomness as pure functions of (seed, step), and the optimisation pieces (parameter
groups, optimizer, learning-rate schedule, gradient clipping), shared by the training scripts.

Because a step's batch indices and its torch.Generator depend only on (seed, step, rank), a run resumed from a
checkpoint at step k draws exactly what an uninterrupted run draws from step k on: no sampler or RNG state of the
data pipeline has to be saved. Epochs are seeded permutations; the last partial global batch is dropped.
"""
from __future__ import annotations

import bisect
import math

import torch
from torch import nn

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def step_indices(step: int, n: int, batch: int, rank: int, world: int, seed: int) -> list[int]:
    """The dataset indices of this rank's batch at `step`: epochs are seeded permutations, last partial dropped."""
    per_epoch = n // (batch * world)
    if per_epoch == 0:
        raise ValueError(f"dataset has {n} images, fewer than one global batch of {batch * world}")
    epoch, pos = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    start = (pos * world + rank) * batch
    return perm[start:start + batch].tolist()


class StepSampler(torch.utils.data.Sampler):
    """A DataLoader batch_sampler yielding `step_indices` for steps start..stop-1 (resume: start = saved step)."""

    def __init__(self, n, batch, rank, world, seed, start, stop):
        self.args, self.start, self.stop = (n, batch, rank, world, seed), start, stop

    def __iter__(self):
        for step in range(self.start, self.stop):
            yield step_indices(step, *self.args)

    def __len__(self):
        return self.stop - self.start


def repeat_factors(image_labels: list, threshold: float) -> torch.Tensor:
    """LVIS's repeat-factor sampling (Gupta et al., CVPR 2019, Sec. 5; the official code's
    RepeatFactorTrainingSampler): with f_c the fraction of images that hold category c,

        r_c = max(1, sqrt(threshold / f_c)),        r_i = max over the categories c of image i of r_c

    so an image with a rare category is seen about r_i times per epoch (1 for an image without boxes).

    Args:
        image_labels: one collection of category labels per image (repeats allowed).
        threshold: t (the LVIS recipe: 0.001).
    Returns:
        (N,) float64 repeat factors, each >= 1.
    """
    sets = [set(int(c) for c in labels) for labels in image_labels]
    counts: dict[int, int] = {}
    for cats in sets:
        for c in cats:
            counts[c] = counts.get(c, 0) + 1
    r_cat = {c: max(1.0, math.sqrt(threshold / (k / len(sets)))) for c, k in counts.items()}
    return torch.tensor([max((r_cat[c] for c in cats), default=1.0) for cats in sets], dtype=torch.float64)


class RepeatFactorSampler(torch.utils.data.Sampler):
    """StepSampler over repeat-factor epochs: in epoch e image i appears floor(r_i) times, once more with probability
    frac(r_i) (stochastic rounding, as the official sampler), the list shuffled; both draws come from a generator
    seeded by (seed, e), so a step's batch stays a function of (seed, step) and --resume draws what an uninterrupted
    run draws. The last partial global batch of an epoch is dropped."""

    def __init__(self, factors: torch.Tensor, batch, rank, world, seed, start, stop):
        self.factors, self.batch, self.rank, self.world, self.seed = factors, batch, rank, world, seed
        self.start, self.stop = start, stop

    def epoch(self, e: int) -> list[int]:
        """Epoch e's shuffled index list (each image repeated by its stochastically rounded factor)."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + e)
        whole = self.factors.floor()
        reps = (whole + (torch.rand(len(self.factors), generator=g, dtype=torch.float64) < self.factors - whole))
        indices = torch.repeat_interleave(torch.arange(len(self.factors)), reps.long())
        return indices[torch.randperm(len(indices), generator=g)].tolist()

    def __iter__(self):
        per_step = self.batch * self.world
        step, e = 0, 0
        while step < self.stop:
            order = self.epoch(e)
            steps = len(order) // per_step
            if steps == 0:
                raise ValueError(f"an epoch of {len(order)} samples is less than one global batch of {per_step}")
            for pos in range(max(0, self.start - step), min(steps, self.stop - step)):
                first = (pos * self.world + self.rank) * self.batch
                yield order[first:first + self.batch]
            step, e = step + steps, e + 1

    def __len__(self):
        return self.stop - self.start


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The generator for everything random in one step of one rank (flips, caption choice, random boxes)."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 101 + rank) % (2 ** 63))


def parameter_groups(model: nn.Module, weight_decay: float, *, rule: str, lr: float,
                     lr_mult=lambda name: 1.0) -> list[dict]:
    """The trainable parameters of `model` in optimizer groups, by the weight-decay rule of the recipe:

        rule "detectron2" (the official RegionCLIP's, solver/build.py `get_default_optimizer_params`): decay on every
            parameter, biases included, except those of normalisation layers (WEIGHT_DECAY_NORM = 0);
        rule "clip" (CLIP / open_clip's, for stage 0): no decay on parameters of fewer than 2 dims (biases, norm
            gains, logit_scale).

    `lr_mult(name)` scales a parameter's learning rate (the detector's randomly initialised layers).
    """
    if rule not in ("detectron2", "clip"):
        raise ValueError(f"rule must be 'detectron2' or 'clip', got {rule!r}")
    norm_params = {id(p) for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)}
    groups: dict[tuple, list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = id(p) not in norm_params if rule == "detectron2" else p.ndim >= 2 and "logit_scale" not in name
        groups.setdefault((lr_mult(name), decay), []).append(p)
    return [{"params": ps, "lr": lr * mult, "weight_decay": weight_decay if decay else 0.0}
            for (mult, decay), ps in sorted(groups.items())]


def lr_factor(step: int, *, schedule: str, warmup_steps: int, max_steps: int, milestones=()) -> float:
    """The learning-rate factor of optimizer step `step` (0-based).

        "multistep" (detectron2's WarmupMultiStepLR, the official recipe): linear warm-up from 0.001 to 1 over
            warmup_steps, then x0.1 at each milestone reached (step >= m);
        "cosine" (CLIP's, for stage 0): warm-up (step + 1) / warmup_steps, then a half cosine to 0 at max_steps.
    """
    if schedule == "multistep":
        warm = 0.001 + (1 - 0.001) * step / warmup_steps if step < warmup_steps else 1.0
        return warm * 0.1 ** bisect.bisect_right(sorted(milestones), step)
    if schedule == "cosine":
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    raise ValueError(f"schedule must be 'multistep' or 'cosine', got {schedule!r}")


def milestones(text: str, max_steps: int) -> tuple[int, ...]:
    """'300000,525000' or fractions of max_steps '0.5,0.875' -> absolute steps (a value below 1 is a fraction)."""
    values = [float(v) for v in text.split(",") if v.strip()]
    return tuple(int(round(v * max_steps)) if v < 1 else int(v) for v in values)


def make_scheduler(optimizer, *, schedule: str, warmup_steps: int, max_steps: int, lr_steps: str = ""):
    """A LambdaLR stepping `lr_factor` once per optimizer step."""
    steps = milestones(lr_steps, max_steps)
    lr_factor(0, schedule=schedule, warmup_steps=warmup_steps, max_steps=max_steps, milestones=steps)  # checks name
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(
        s, schedule=schedule, warmup_steps=warmup_steps, max_steps=max_steps, milestones=steps))


def clip_gradients(params: list[torch.Tensor], max_norm: float, *, per_tensor: bool) -> None:
    """Gradient clipping by L2 norm. per_tensor=True: each parameter tensor's gradient is clipped to max_norm on its
    own (detectron2's CLIP_TYPE "norm", the official pretraining's 5.0); False: one global norm over all (open_clip's,
    for stage 0). max_norm <= 0 does nothing."""
    if max_norm <= 0:
        return
    if not per_tensor:
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        return
    for p in params:
        if p.grad is not None:
            torch.nn.utils.clip_grad_norm_(p, max_norm)


def build_optimizer(name: str, groups: list[dict], lr: float, momentum: float = 0.9) -> torch.optim.Optimizer:
    """AdamW or SGD over parameter groups, using torch's fused kernels when every parameter is a float tensor on CPU
    or CUDA: the same update up to float rounding, one kernel per step instead of ~10 per parameter (AdamW on the
    toy CLIP's 8 M parameters: 35 ms -> 6 ms a step on 2 CPU cores; `make bench` measures the step)."""
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, fused=fused)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, fused=fused)
    raise ValueError(f"optimizer must be adamw or sgd, got {name!r}")


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' where a CUDA GPU is visible, else 'cpu' (said in one line); 'cuda' (or 'cuda:N') without
    one -> SystemExit in one line instead of a driver traceback; anything else as it is."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
        print(f"--device auto: {device}" + ("" if device == "cuda" else " (no CUDA GPU visible; slow at paper scale)"))
    elif device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {device}: no CUDA GPU is visible on this machine; pass --device cpu (or auto)")
    return device


def resolve_amp(amp: str, device) -> str:
    """'none' | 'bf16' | 'auto' -> 'none' or 'bf16'. 'auto' picks bf16 where the hardware computes it natively: a
    CUDA GPU with bf16 support, or a CPU with AVX512-BF16 / AMX-BF16 (elsewhere bf16 on CPU is emulated, slower)."""
    if amp not in ("none", "bf16", "auto"):
        raise ValueError(f"amp must be none, bf16 or auto, got {amp!r}")
    if amp != "auto":
        return amp
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "none"
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return "none"
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    return "bf16" if native and torch.ops.mkldnn._is_mkldnn_bf16_supported() else "none"
