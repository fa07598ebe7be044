"""CPU threads that a pipeline can raise while a step runs.

`ThreadShare`: `pipeline.Runner` runs two steps side by side with one thread each on a 2-core machine; when one
ends and nothing is left to start beside the other, it writes the new thread count to a file named by
$REGIONCLIP_THREADS_FILE, and the running step takes it up at its next `poll()` (once per training step or
evaluation batch, at most once a second). Without the variable `poll()` does nothing.
"""
from __future__ import annotations

import os
import time

import torch

THREADS_FILE_ENV = "REGIONCLIP_THREADS_FILE"


class ThreadShare:
    """Reads this process's CPU thread count from $REGIONCLIP_THREADS_FILE (see the module docstring), at most once
    every `every` seconds."""

    def __init__(self, path: str | None = None, every: float = 1.0):
        self.path = path if path is not None else os.environ.get(THREADS_FILE_ENV)
        self.every, self._last = every, float("-inf")

    def poll(self) -> int | None:
        """Applies a changed thread count; returns the count applied, else None."""
        if not self.path or time.monotonic() - self._last < self.every:
            return None
        self._last = time.monotonic()
        try:
            with open(self.path) as f:
                threads = int(f.read().strip())
        except (OSError, ValueError):  # not written (yet): keep the threads this process has
            return None
        if threads < 1 or threads == torch.get_num_threads():
            return None
        torch.set_num_threads(threads)
        return threads


def write_threads(path, threads: int) -> None:
    """Writes a thread count for a `ThreadShare` to read (atomically: write, then rename)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{int(threads)}\n")
    os.replace(tmp, path)


_share: ThreadShare | None = None


def poll_threads() -> int | None:
    """`ThreadShare.poll` on this process's $REGIONCLIP_THREADS_FILE: call it once per training step or batch."""
    global _share
    if _share is None:
        _share = ThreadShare()
    return _share.poll()
