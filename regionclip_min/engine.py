"""The training loop that both training scripts share, and what runs it on several processes.

A model's forward takes (batch, generator) and returns a dict: entries named `loss_*` are losses, the others are
numbers to log. The loop sums the losses weighted by `weight_dict` (a loss it does not name weighs 1), steps the
optimizer and scheduler, and around that does what every run needs: resume from the newest checkpoint, atomic
checkpoints every `ckpt_every` steps, a stop on a non-finite loss that keeps the last good checkpoint, one
`metrics.jsonl` line every `log_every` steps, and a count of batches whose images could not be read.

Everything random in a step comes from `steps.step_generator(seed, step, rank)`, and the batch indices from
`steps.StepSampler`, so a resumed run ends with the same weights as an uninterrupted one.
"""
from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from tqdm import tqdm

from regionclip_min import checkpoint as ckpt
from regionclip_min.steps import RepeatFactorSampler, StepSampler, clip_gradients, step_generator


# ---- several processes (torchrun) -------------------------------------------------------------------------
def init_distributed(device: str) -> tuple[int, int]:
    """Starts torch.distributed when launched by torchrun (WORLD_SIZE > 1): nccl on CUDA, gloo on CPU; returns
    (rank, world_size)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if device.startswith("cuda"):  # one GPU per process; collectives of Python objects use the current one
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return rank_and_world()


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) without torch.distributed."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def shard(indices: list, rank: int, world: int) -> list:
    """This rank's share of `indices` for sharded evaluation: every world-th one, from position `rank`."""
    return list(indices)[rank::world]


def gather_to_main(items: list) -> list | None:
    """Every rank's list, concatenated in rank order, on rank 0 (None on the other ranks): the merge of a sharded
    evaluation. In one process, `items` itself."""
    rank, world = rank_and_world()
    if world == 1:
        return items
    parts = [None] * world if rank == 0 else None
    dist.gather_object(items, parts, dst=0)
    return [x for part in parts for x in part] if rank == 0 else None


def barrier() -> None:
    """Waits for every rank (nothing to wait for in one process)."""
    if dist.is_initialized():
        dist.barrier()


def check_in_sync(model) -> None:
    """Under torchrun, `check_replicas_in_sync`, printed by rank 0; nothing in one process."""
    if dist.is_initialized():
        msg = check_replicas_in_sync(model)
        if dist.get_rank() == 0:
            print(msg)


def finish_distributed(model=None) -> None:
    """At the end of a torchrun run: checks that the ranks' weights agree (`model` given), then leaves the group."""
    if not dist.is_initialized():
        return
    if model is not None:
        check_in_sync(model)
    dist.barrier()
    dist.destroy_process_group()


def process_device(device: str) -> torch.device:
    """This process's device: "cuda" becomes cuda:<LOCAL_RANK> under torchrun."""
    return torch.device(device if device != "cuda" else f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gathers (N, D) from every rank into (world * N, D), keeping the gradient path to every rank's input."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    import torch.distributed.nn.functional as dist_fn  # autograd-aware collectives
    return torch.cat(dist_fn.all_gather(x), dim=0)  # (world * N, D)


def check_replicas_in_sync(model) -> str:
    """Under DDP, compares a hash of every rank's parameters with rank 0's; raises if any rank drifted."""
    flat = torch.cat([p.detach().cpu().flatten().float() for p in model.parameters()])  # (num_params,)
    digest = hashlib.sha256(flat.numpy().tobytes()).hexdigest()
    digests = [None] * dist.get_world_size()
    dist.all_gather_object(digests, digest)
    if len(set(digests)) != 1:
        raise RuntimeError(f"DDP ranks hold different weights after training: {digests}")
    return f"all {len(digests)} ranks hold identical weights (sha256 {digest[:12]})"


# ---- the loop ---------------------------------------------------------------------------------------------
@dataclass
class Run:
    """Where a run writes and how often; `rank` 0 writes, the others only train."""
    out: Path
    seed: int
    max_steps: int
    log_every: int = 10
    ckpt_every: int = 100
    keep_ckpts: int = 2
    grad_clip: float = 0.0  # 0: no clipping
    per_tensor_clip: bool = True  # clip each parameter tensor's norm (Detectron2) or the global norm (CLIP)
    reseed_global: bool = False  # seed torch's global RNG from the step's generator first (torchvision samples from it)
    rank: int = 0
    world: int = 1
    desc: str = "train"
    counts: dict = field(default_factory=dict)  # filled by train(): skipped batches and images

    @property
    def main(self) -> bool:
        return self.rank == 0


def resume(run: Run, module, optimizer, scheduler, *, device, check: Callable[[dict], None] | None = None) -> int:
    """Loads the newest checkpoint in run.out (if any) into module, optimizer and scheduler, restores the RNG, and
    drops the metrics lines written after it; returns the step to start from. `check(state)` may refuse it."""
    start = 0
    if (last := ckpt.latest_checkpoint(run.out)) is not None:
        state = ckpt.load_checkpoint(last, map_location=device)
        if check is not None:
            check(state)
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(state["rng"])
        start = state["step"]
        if run.main:
            print(f"resumed from {last} at step {start}")
    if run.main:  # lines after the checkpoint resumed from are redone (all of them, if there was none)
        ckpt.truncate_metrics(run.out / "metrics.jsonl", start)
    return start


def train(run: Run, model, params, optimizer, scheduler, dataset, *, collate, batch_size: int, start: int,
          save: Callable[[], dict], weight_dict: dict | None = None, augment=None, after_step=None,
          num_workers: int = 0, repeat: torch.Tensor | None = None) -> int:
    """Trains `model` from step `start` to run.max_steps; returns the last step. `params`: the trained tensors (for
    clipping), `batch_size` images per process and step; `augment(batch, g)` (the data pipeline's flips) runs
    before the forward, `after_step()` after the optimizer step. `save()` returns what a checkpoint holds besides
    the optimizer, scheduler, step and RNG. `repeat`: (N,) repeat factors (steps.repeat_factors), or None for
    every image once per epoch."""
    weight_dict = weight_dict or {}

    def write(step):
        if run.main:
            ckpt.save_checkpoint(ckpt.checkpoint_path(run.out, step), {
                **save(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                "rng": ckpt.rng_state()})
            ckpt.prune_checkpoints(run.out, run.keep_ckpts)

    sampler = (StepSampler(len(dataset), batch_size, run.rank, run.world, run.seed, start, run.max_steps)
               if repeat is None else
               RepeatFactorSampler(repeat, batch_size, run.rank, run.world, run.seed, start, run.max_steps))
    if repeat is not None and run.main:
        print(f"repeat-factor sampling: {int((repeat > 1).sum())} of {len(repeat)} images repeated, factors up to "
              f"{float(repeat.max()):.2f}, about {float(repeat.sum()):.0f} samples per epoch")
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers)
    metrics = open(run.out / "metrics.jsonl", "a") if run.main else None
    bar = tqdm(total=run.max_steps, initial=start, desc=run.desc, disable=not run.main, dynamic_ncols=True)
    counts = run.counts
    counts.update(images_skipped_unreadable=0, batches_skipped_unreadable=0)
    step, t0 = start, time.time()
    for batch in loader:
        g = step_generator(run.seed, step, run.rank)
        if run.reseed_global:
            torch.manual_seed(int(torch.randint(2 ** 62, (1,), generator=g)))
        n = _num_images(batch)
        counts["images_skipped_unreadable"] += batch_size - n  # unreadable images, dropped by the collate
        if n == 0:  # the whole batch was unreadable (the dataset summary names the files)
            step += 1
            scheduler.step()
            counts["batches_skipped_unreadable"] += 1
            continue
        if augment is not None:
            batch = augment(batch, g)
        out = model(batch, g)
        losses = {k: v for k, v in out.items() if k.startswith("loss_")}
        info = {k: v for k, v in out.items() if not k.startswith("loss_")}
        total = sum(weight_dict.get(k, 1.0) * v for k, v in losses.items())
        values = {k: v.item() for k, v in losses.items()}
        if not all(math.isfinite(v) for v in [*values.values(), total.item()]):
            bad = [k for k, v in values.items() if not math.isfinite(v)] or ["total"]
            raise SystemExit(f"non-finite loss at step {step}: {bad} in {values}. Stopped; the last good checkpoint "
                             f"is {ckpt.latest_checkpoint(run.out)} (resume with --resume true, perhaps with a "
                             f"lower --lr)")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        clip_gradients(params, run.grad_clip, per_tensor=run.per_tensor_clip)
        optimizer.step()
        scheduler.step()
        if after_step is not None:
            after_step()
        step += 1
        bar.update(1)
        bar.set_postfix({k.replace("loss_", ""): f"{v:.3f}" for k, v in values.items()} |
                        {k: f"{v:.2f}" for k, v in info.items()})
        if run.main and (step % run.log_every == 0 or step == run.max_steps):
            metrics.write(ckpt.strict_json({"step": step, "lr": scheduler.get_last_lr()[0], "total": total.item(),
                                            **values, **info, "elapsed_s": round(time.time() - t0, 1)}) + "\n")
            metrics.flush()
        if step % run.ckpt_every == 0 and step < run.max_steps:
            write(step)
    bar.close()
    write(step)
    if run.main:
        metrics.close()
        ckpt.link_checkpoint(ckpt.checkpoint_path(run.out, step), run.out / "final.pt")
        counts.update(steps=step - start, first_step=start, seconds=round(time.time() - t0, 1))
    return step


def _num_images(batch) -> int:
    """Images in a collated batch: an image-caption dict (None when empty) or a detection (images, targets) pair."""
    if batch is None:
        return 0
    return len(batch["images"]) if isinstance(batch, dict) else len(batch[0])
