"""Shared test set-up: offline, CPU, two threads, and a small toy world generated once per session."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may download weights or data in tests

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def toy_world(tmp_path_factory):
    """A small toy world (40 train / 20 val images), shared by the tests that need real files."""
    from regionclip_min import toyworld

    return toyworld.generate(tmp_path_factory.mktemp("toy"), seed=0, num_train=40, num_val=20)
