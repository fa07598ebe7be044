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


@pytest.fixture(scope="session")
def stage0_run(toy_world, tmp_path_factory):
    """A short stage-0 CLIP run (60 steps, batch 8) on the small toy world: its output folder."""
    import train_pretrain

    out = tmp_path_factory.mktemp("stage0")
    train_pretrain.main(["--preset", "toy-clip", "--captions", toy_world["captions_train"], "--out_dir", str(out),
                         "--max_steps", "60", "--batch_size", "8", "--warmup_steps", "5", "--log_every", "1",
                         "--num_workers", "0", "--ckpt_every", "30"])
    return out


@pytest.fixture(scope="session")
def rpn_ckpt(toy_world, stage0_run, tmp_path_factory):
    """A 3-step toy RPN: enough to give proposals (the tests check the plumbing, not its recall)."""
    import train_detect

    out = tmp_path_factory.mktemp("zs-rpn")
    train_detect.main(["--preset", "toy-rpn", "--init", str(stage0_run / "final.pt"), "--train_json",
                       toy_world["instances_train_base"], "--val_json", toy_world["instances_val_all"],
                       "--out_dir", str(out), "--batch_size", "2", "--num_workers", "0", "--warmup_steps", "1",
                       "--max_steps", "3", "--eval_max_images", "2"])
    return out / "final.pt"
