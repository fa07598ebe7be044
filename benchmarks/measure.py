"""make bench's measuring tools: CUDA-synchronised timers, FLOP counts, and `StepBench`, a RegionCLIP step on
random weights whose parts are timed from outside the method."""
from __future__ import annotations

import contextlib
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from regionclip_min.clip_model import load_clip
from regionclip_min.configs.pretrain import PRESETS, PretrainConfig, loss_weights
from regionclip_min.proposals import RandomProposer
from regionclip_min.regionclip import RegionCLIP, student_and_teacher
from regionclip_min.regions import RegionEncoder
from regionclip_min.steps import build_optimizer, clip_gradients, parameter_groups

PAPER_POOL = 4764  # concepts parsed from CC3M captions in the paper (Sec. 4.1)
CORE_PARTS = ("teacher forward", "student forward", "student backward", "optimizer")


# ---- measuring ------------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def timed(fn, device, reps: int) -> float:
    """Median seconds of `reps` calls of fn (after one untimed call)."""
    fn()
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class PartTimer:
    """timer(name) context manager accumulating wall seconds per name (synchronising CUDA at each edge)."""

    def __init__(self, device):
        self.device, self.seconds = device, {}

    @contextlib.contextmanager
    def __call__(self, name):
        sync(self.device)
        t0 = time.perf_counter()
        yield
        sync(self.device)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


def random_model(name: str, device) -> torch.nn.Module:
    model, tok = load_clip(name, None, device=device)  # random weights: speed does not depend on them
    model.eval().requires_grad_(False)
    model.visual.to(memory_format=torch.channels_last)
    return model, tok


def pretrain_cfg(**kw):
    base = dict(PRESETS["toy"])
    base.pop("_doc")
    base.update(kw)
    cfg = PretrainConfig(**{k: v for k, v in base.items() if k != "init"})
    cfg.init = None  # random weights
    cfg.concept_cache = None
    return cfg


class StepBench:
    """A RegionCLIP objective on random weights (random boxes, random concept embeddings) and its optimizer.

    `step(batch, timer)` times the parts from outside the method: the proposer, the teacher's region encoder and
    text tower, and the student are wrapped in timers here (regionclip.py knows nothing of them); the rest of the
    forward (enlargement, pseudo-labels, losses) is the forward's time less theirs."""

    INNER = ("proposals", "teacher forward", "student forward")

    def __init__(self, cfg, device, concepts: int):
        self.device, self.timer = device, None
        clip, tok = load_clip(cfg.model_name, None, device=device, quick_gelu=cfg.quick_gelu)
        if cfg.channels_last:
            clip.visual.to(memory_format=torch.channels_last)
        student, teacher = student_and_teacher(clip)
        g = torch.Generator().manual_seed(0)
        dim = teacher.text_projection.shape[1]
        concept_emb = F.normalize(torch.randn(concepts, dim, generator=g), dim=-1).to(device)  # (C, D)
        self.model = RegionCLIP(student.visual, teacher, RegionEncoder(teacher.visual), tok, concept_emb,
                                RandomProposer(per_image=cfg.proposals_per_image), tau=cfg.tau,
                                weights=loss_weights(cfg),
                                region_scale=cfg.region_scale, pseudo_threshold=cfg.pseudo_threshold,
                                amp=cfg.amp, channels_last=cfg.channels_last).train()
        m = self.model
        m.proposer = self._timed("proposals", m.proposer)
        m.teacher_regions.forward = self._timed("teacher forward", m.teacher_regions.forward)
        m.text_clip.encode_text = self._timed("teacher forward", m.text_clip.encode_text)
        m.student.forward = self._timed("student forward", m.student.forward)
        self.params = [p for p in m.student.parameters() if p.requires_grad]
        self.opt = build_optimizer(cfg.optimizer, parameter_groups(m.student, cfg.weight_decay, rule="detectron2",
                                                                   lr=cfg.lr), cfg.lr, cfg.momentum)
        self.grad_clip = cfg.grad_clip

    def _timed(self, name, fn):
        def call(*args, **kwargs):
            if self.timer is None:
                return fn(*args, **kwargs)
            with self.timer(name):
                return fn(*args, **kwargs)
        return call

    def step(self, batch, timer=None, step: int = 0):
        g = torch.Generator().manual_seed(step)
        self.timer = timer
        try:
            with timer("forward") if timer else contextlib.nullcontext():
                out = self.model(batch, g)
            with timer("student backward") if timer else contextlib.nullcontext():
                sum(self.model.weight_dict[k] * v for k, v in out.items() if k.startswith("loss_")).backward()
            with timer("optimizer") if timer else contextlib.nullcontext():
                clip_gradients(self.params, self.grad_clip, per_tensor=True)
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
        finally:
            self.timer = None

    @classmethod
    def parts(cls, seconds: dict) -> dict:
        """The timer's seconds with the forward split into its wrapped parts and the rest."""
        parts = dict(seconds)
        forward = parts.pop("forward", 0.0)
        parts["enlarge, pseudo-labels, losses"] = max(0.0, forward - sum(parts.get(k, 0.0) for k in cls.INNER))
        return parts

    def flops(self, batch) -> int:
        return count_flops(lambda: self.step(batch))


def synthetic_batch(n: int, size: int, device) -> dict:
    g = torch.Generator().manual_seed(n * 1000 + size)
    return {"images": torch.randn(n, 3, size, size, generator=g), "captions": [["a photo of a red circle"]] * n,
            "image_ids": torch.arange(n), "orig_sizes": torch.full((n, 2), size), "sizes": torch.full((n, 2), size)}


def say(text: str) -> None:
    print(text, flush=True)
