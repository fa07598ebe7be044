"""A running process takes up a thread count written to its file."""
import torch

from regionclip_min.runtime import ThreadShare, write_threads


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
