"""Checkpoints that are never half-written and never run code when loaded.

- `save_checkpoint` writes to a temporary file in the same folder, flushes it to disk, then renames it over the
  target (`os.replace` is atomic on POSIX): a run killed at any instant leaves either the old file or the new one.
- `load_checkpoint` uses `torch.load(weights_only=True)`, which refuses pickled objects other than tensors and
  plain containers, so a crafted file cannot execute code. Everything we save is such plain data: state dicts,
  numbers, strings, lists, dicts (RNG states are stored as tensors / lists, never as numpy objects).
- `rng_state` / `set_rng_state` capture and restore the Python, torch (and CUDA) generators, for exact resume.
"""
from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import torch

CKPT_PATTERN = re.compile(r"ckpt_(\d+)\.pt$")


def save_checkpoint(path, state: dict) -> Path:
    """Atomically writes `state` (plain data and tensors only) to `path`; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def link_checkpoint(src, dst) -> Path:
    """Publishes checkpoint `src` also as `dst` (e.g. final.pt) without writing it again: an atomic hard link
    (a copy where the filesystem has none). Pruning `src` later leaves `dst` intact."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return dst


def load_checkpoint(path, map_location="cpu") -> dict:
    """Loads a checkpoint safely (weights_only=True); raises a clear error naming the file on any problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt, truncated, or holding objects that weights_only refuses to unpickle
        raise ValueError(f"cannot load checkpoint {path}: it is corrupt, truncated, or holds objects other than "
                         f"tensors and plain containers (refused for safety). Cause: {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}") from None
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    return state


def checkpoint_path(out_dir, step: int) -> Path:
    return Path(out_dir) / f"ckpt_{step:07d}.pt"


def latest_checkpoint(out_dir) -> Path | None:
    """The checkpoint with the highest step in `out_dir` (ckpt_NNNNNNN.pt), or None."""
    out_dir = Path(out_dir)
    found = [(int(m.group(1)), p) for p in out_dir.glob("ckpt_*.pt") if (m := CKPT_PATTERN.search(p.name))]
    return max(found)[1] if found else None


def prune_checkpoints(out_dir, keep: int) -> None:
    """Deletes all but the `keep` newest step checkpoints (keep <= 0 keeps everything)."""
    if keep <= 0:
        return
    found = sorted((int(m.group(1)), p) for p in Path(out_dir).glob("ckpt_*.pt")
                   if (m := CKPT_PATTERN.search(p.name)))
    for _, p in found[:-keep]:
        p.unlink(missing_ok=True)


def rng_state() -> dict:
    """Python and torch RNG states as plain data (loadable with weights_only=True)."""
    version, internal, gauss = random.getstate()
    state = {"python": [version, list(internal), gauss], "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
