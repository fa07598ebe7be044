"""Process-level settings of the scripts: how the C allocator keeps freed memory, and CPU threads that a pipeline
can raise while a step runs.

`keep_freed_memory`: glibc's malloc serves every block above 32 MB (its largest mmap threshold) with a fresh mmap
and hands it back to the kernel on free, so each batch of an evaluation page-faults its big activations in again.
On this project's 2-core CPU that was a third of the wall time of zero-shot and detector evaluation (RPN-box
evaluation of the toy CLIP: 68 s with 38 s of system time, 37 s with 1 s after this call). Telling malloc to serve
everything from its heap and not to trim it keeps the pages mapped for the next batch. The cost is that a process
keeps its peak memory until it exits (measured here: +0.05 to +0.15 GB resident), as CUDA's caching allocator does.

`ThreadShare`: `pipeline.Runner` runs two steps side by side with one thread each on a 2-core machine; when one
ends and nothing is left to start beside the other, it writes the new thread count to a file named by
$REGIONCLIP_THREADS_FILE, and the running step takes it up at its next `poll()` (once per training step or
evaluation batch, at most once a second). Without the variable `poll()` does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import time

import torch

THREADS_FILE_ENV = "REGIONCLIP_THREADS_FILE"
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters (glibc malloc.h)


def keep_freed_memory() -> bool:
    """Makes glibc malloc keep freed memory for reuse (no mmap per large block, no trimming). Returns whether the
    settings were applied: False off Linux/glibc, where nothing changes."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))


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
