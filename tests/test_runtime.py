"""Process settings: malloc keeps freed memory; a running process takes up a thread count written to its file."""
import subprocess
import sys

import pytest
import torch

from regionclip_min.runtime import ThreadShare, keep_freed_memory, write_threads

_RSS_AFTER_FREE = """
import sys, torch
from regionclip_min.runtime import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "1" else False
x = torch.ones(50_000_000)  # 200 MB, far above malloc's mmap threshold
del x
rss_kb = int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1])
print(applied, rss_kb)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_keep_freed_memory_keeps_a_freed_block_mapped():
    def run(flag):
        out = subprocess.run([sys.executable, "-c", _RSS_AFTER_FREE, flag], capture_output=True, text=True, check=True)
        applied, rss_kb = out.stdout.split()
        return applied == "True", int(rss_kb)
    applied, kept = run("1")
    if not applied:
        pytest.skip("no glibc mallopt here")
    _, returned = run("0")
    assert kept > returned + 150_000  # default malloc unmaps the 200 MB block on free; ours keeps it for reuse


def test_thread_share_applies_a_new_count_once(tmp_path):
    before = torch.get_num_threads()
    path = tmp_path / "threads"
    share = ThreadShare(str(path), every=0.0)
    try:
        assert share.poll() is None  # no file yet: nothing changes
        write_threads(path, before + 1)
        assert share.poll() == before + 1 and torch.get_num_threads() == before + 1
        assert share.poll() is None  # unchanged count: nothing to do
        path.write_text("many\n")
        assert share.poll() is None and torch.get_num_threads() == before + 1  # unreadable: keep what it has
    finally:
        torch.set_num_threads(before)


def test_thread_share_without_a_file_is_a_no_op(monkeypatch):
    monkeypatch.delenv("REGIONCLIP_THREADS_FILE", raising=False)
    before = torch.get_num_threads()
    assert ThreadShare().poll() is None and torch.get_num_threads() == before
