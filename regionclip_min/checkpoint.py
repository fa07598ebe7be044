"""Checkpoints that are never half-written and never run code when loaded.

- `save_checkpoint` writes to a temporary file in the same folder, flushes it to disk, then renames it over the
  target (`os.replace` is atomic on POSIX): a run killed at any instant leaves either the old file or the new one.
- `load_checkpoint` uses `torch.load(weights_only=True)`, which refuses pickled objects other than tensors and
  plain containers, so a crafted file cannot execute code. Everything we save is such plain data: state dicts,
  numbers, strings, lists, dicts (RNG states are stored as tensors / lists, never as numpy objects).
- `rng_state` / `set_rng_state` capture and restore the Python, torch (and CUDA) generators, for exact resume.
- `claim_out_dir`: one training run per output folder (a lock file with the writer's pid), explained stale locks of
  killed runs, and no accidental overwrite of a finished run; `truncate_metrics` for resume.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shutil
import socket
import time
from pathlib import Path

import torch

CKPT_PATTERN = re.compile(r"ckpt_(\d+)\.pt$")


def save_checkpoint(path, state: dict) -> Path:
    """Atomically writes `state` (plain data and tensors only) to `path`; returns the path."""
    return _write_atomically(path, lambda f: torch.save(state, f))


def _write_atomically(path, write) -> Path:
    """`write(f)` into a temporary file beside `path`, flushed to disk, then renamed over `path` (os.replace is
    atomic on POSIX): a run killed at any instant leaves the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _finite_or_none(obj):
    """`obj` with every non-finite float (NaN, inf) replaced by None, recursively through dicts, lists and tuples."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def strict_json(obj, **kwargs) -> str:
    """json.dumps that writes strict JSON: NaN and inf (an AP with no ground truth, say) become null."""
    return json.dumps(_finite_or_none(obj), allow_nan=False, **kwargs)


def write_json(path, obj) -> Path:
    """Writes `obj` as strict, indented JSON (see `strict_json`) atomically (see `save_checkpoint`)."""
    text = strict_json(obj, indent=2).encode("utf-8")
    return _write_atomically(path, lambda f: f.write(text))


def file_digest(path) -> str | None:
    """The first 16 hex digits of the sha256 of a file's content (None if it is not a file): names the weights or
    the data a result came from, whatever the file is called."""
    path = Path(path) if path is not None else None
    if path is None or not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()[:16]


def claim_result(path, inputs: dict, *, overwrite: bool, option: str = "--out") -> None:
    """Before any work: SystemExit if `path` holds results of other inputs (its "inputs" entry differs from
    `inputs`) and not `overwrite`. Results of the same inputs are replaced (a rerun)."""
    path = Path(path)
    if overwrite or not path.is_file():
        return
    try:
        held = json.loads(path.read_text()).get("inputs")
    except (OSError, ValueError, AttributeError):
        held = None
    if held is None:  # written before results recorded their inputs: replaced, and said
        print(f"note: {path} records no inputs (an older result); replacing it")
    elif held != inputs:
        raise SystemExit(f"{path} holds results of other inputs ({held}; this run: {inputs}). "
                         f"Pass another {option}, or --overwrite true to replace them")


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


def safe_load(path, map_location="cpu"):
    """torch.load(weights_only=True) of any file (a state dict, a bare tensor, ...); FileNotFoundError or ValueError
    naming the file on any problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt, truncated, or holding objects that weights_only refuses to unpickle
        raise ValueError(f"cannot load checkpoint {path}: it is corrupt, truncated, or holds objects other than "
                         f"tensors and plain containers (refused for safety). Cause: {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}") from None


def load_checkpoint(path, map_location="cpu") -> dict:
    """Loads a checkpoint safely (weights_only=True); raises a clear error naming the file on any problem."""
    state = safe_load(path, map_location)
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    return state


def recorded_model_name(state: dict) -> str | None:
    """The open_clip model name one of our checkpoints records (top level, or in its config), or None."""
    return state.get("model_name") or state.get("config", {}).get("model_name")


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


# ---- the output folder: one writer at a time, nothing lost ------------------------------------------------------
RUN_FILES = ("final.pt", "metrics.jsonl", "results.json", "run_summary.json")  # besides ckpt_*.pt


def run_files(out_dir) -> list[Path]:
    """The files of a run in `out_dir` (its step checkpoints and RUN_FILES): empty for a folder no run wrote to."""
    out = Path(out_dir)
    return sorted(out.glob("ckpt_*.pt")) + [out / n for n in RUN_FILES if (out / n).exists()]


def _process_start(pid: int) -> str | None:
    """The start time of process `pid` (Linux /proc, in clock ticks since boot), or None where it cannot be read;
    it tells a live lock holder from an unrelated process that was given the same pid later."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(info: dict) -> bool:
    """Whether the process that wrote a lock on this host still runs (same pid and, where known, start time)."""
    pid = info.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    start = _process_start(pid)
    return info.get("start") is None or start is None or start == info["start"]


class OutDirLock:
    """`out_dir/.lock` while a training run writes into `out_dir` (see `claim_out_dir`). `release()` removes it if
    it is still this process's."""

    def __init__(self, path: Path):
        self.path = path

    def release(self) -> None:
        try:
            info = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return
        if info.get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)


def claim_out_dir(out_dir, *, resume: bool, overwrite: bool, command: str = "") -> OutDirLock:
    """Makes `out_dir` this run's, or stops with a message that says why and what to do.

    - Another live run holds `out_dir/.lock` (pid + process start time on this host; any lock from another host):
      SystemExit, unless `overwrite` (then the lock is taken over, with a warning).
    - A lock whose process is gone (a killed or crashed run): explained, and taken over. Its checkpoints are
      whole files (written atomically); half-written temporaries (`.*.tmp`) are removed.
    - The folder already holds a run (ckpt_*.pt, final.pt or metrics.jsonl) and neither `resume` nor `overwrite`:
      SystemExit (nothing is overwritten by accident). With `overwrite` (and no `resume`) those files are deleted.
    Returns the lock; call `release()` when the run ends (the scripts do, in a `finally`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lock = out / ".lock"
    host = socket.gethostname()
    info = {"pid": os.getpid(), "start": _process_start(os.getpid()), "host": host, "command": command,
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(3):  # O_EXCL creation is atomic: of two runs starting together, one wins
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                held = json.loads(lock.read_text())
            except (OSError, ValueError):
                held = {}
            who = (f"pid {held.get('pid')} on {held.get('host')}, since {held.get('since')}, running "
                   f"{held.get('command') or '?'}")
            live = held.get("host") != host or _alive(held) if held else False
            if live and held.get("pid") != os.getpid():
                if not overwrite:
                    raise SystemExit(
                        f"{out} is in use by another run ({who}). Wait for it to finish, choose another --out_dir, "
                        f"or pass --overwrite true to take the folder over (if that run is still alive it will keep "
                        f"writing into it). If that process is dead (e.g. on another machine), remove {lock}.")
                print(f"warning: --overwrite: taking {out} over from a live run ({who})")
            elif held:
                print(f"note: {lock} was left by a run that did not finish ({who}; killed or crashed): taking the "
                      f"folder over. Its checkpoints are whole files (written atomically).")
            else:
                print(f"note: {lock} is unreadable (a run killed while creating it?): taking the folder over")
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(info))
        break
    else:
        raise SystemExit(f"{out}: could not take {lock} (another run keeps recreating it)")
    claimed = OutDirLock(lock)
    for tmp in out.glob(".*.tmp"):  # temporaries of a run killed in the middle of a write
        tmp.unlink(missing_ok=True)
        print(f"removed {tmp}, a half-written file of a killed run")
    existing = run_files(out)
    if existing and not resume:
        if not overwrite:
            claimed.release()
            last = latest_checkpoint(out)
            raise SystemExit(f"{out} already holds a run ({len(existing)} files: {', '.join(p.name for p in existing[:4])}"
                             f"{' ...' if len(existing) > 4 else ''}; newest checkpoint {last}). Pass --resume true "
                             f"to continue it, --overwrite true to start again (its checkpoints and metrics are "
                             f"deleted), or another --out_dir.")
        for p in existing:
            p.unlink()
        print(f"--overwrite: deleted {len(existing)} files of the previous run in {out}")
    return claimed


def truncate_metrics(path, step: int) -> None:
    """On resume, drops the log lines a killed run wrote after its last checkpoint (they are redone); a line cut
    off by the kill is dropped too."""
    path = Path(path)
    if not path.is_file():
        return
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a partial last line
        if row.get("step", 0) <= step:
            rows.append(line)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(r + "\n" for r in rows))
    os.replace(tmp, path)
