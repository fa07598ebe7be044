"""torchrun for train_detect.py and eval_zeroshot.py: two gloo processes on the CPU, against one process.

2 ranks x 4 images against 1 process x 8. DDP averages the ranks' gradients, so the two runs take the same step
only where each rank's losses are means over equally many terms. The test therefore trains on the toy world's
object-centric images (one box each) with the frozen offline RPN (20 proposals per image, no RPN loss), every RoI
sampled (--box_batch_size_per_image above the RoIs an image has) and no flips. The gradients then differ only in
the order of float32 sums. With SGD that difference stays at rounding size: after 3 steps the weights agree to
within 1e-6 (measured: 9e-8, while one step moves them by up to 1.4e-2). AdamW is not used here: its first steps
are about lr x sign(gradient), so a parameter whose gradient is float noise around 0 moves by a whole lr one way or
the other (measured: 6e-6 apart). The ranks' own weights are bitwise identical (DDP's all-reduce), and a run
whose rank is killed resumes to the uninterrupted run's weights bit for bit.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import eval_zeroshot
from regionclip_min.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _torchrun(script: str, args: list, port: int, *, wait: bool = True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(ROOT / script), *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    res = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    return res.stdout + res.stderr


def _objects_only(src: str, out: Path) -> str:
    """The train json with only its object-centric images (one base box each)."""
    data = json.loads(Path(src).read_text())
    count: dict[int, int] = {}
    for a in data["annotations"]:
        count[a["image_id"]] = count.get(a["image_id"], 0) + 1
    keep = {im["id"] for im in data["images"] if im.get("kind") == "object" and count.get(im["id"]) == 1}
    data["images"] = [im for im in data["images"] if im["id"] in keep]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    out.write_text(json.dumps(data))
    return str(out)


@pytest.fixture(scope="module")
def detect_args(toy_world, stage0_run, rpn_ckpt, tmp_path_factory):
    train = _objects_only(toy_world["instances_train_base"], tmp_path_factory.mktemp("ddp") / "objects.json")
    assert len(json.loads(Path(train).read_text())["images"]) >= 8

    def args(out, *extra):
        return ["--preset", "toy", "--init", str(stage0_run / "final.pt"), "--train_json", train,
                "--val_json", toy_world["instances_val_all"], "--image_root", toy_world["images"],
                "--out_dir", str(out), "--rpn", "offline", "--rpn_checkpoint", str(rpn_ckpt),
                "--rpn_post_nms_top_n_train", "20", "--box_batch_size_per_image", "1000", "--hflip", "false",
                "--batch_size", "8", "--num_workers", "0", "--warmup_steps", "1", "--templates", "single",
                "--eval_max_images", "6", "--draw_images", "0", "--threads", "1", "--optimizer", "sgd", "--lr", "0.02",
                *extra]
    return args


def _weights(path):
    return {k: v for k, v in load_checkpoint(path)["model"].items() if v.is_floating_point()}


def test_two_ranks_train_as_one_process_with_the_global_batch(detect_args, tmp_path):
    import train_detect
    one, two = tmp_path / "one", tmp_path / "two"
    train_detect.main(detect_args(one, "--max_steps", "3", "--ckpt_every", "1", "--keep_ckpts", "3"))
    log = _torchrun("train_detect.py", detect_args(two, "--max_steps", "3"), 29531)
    assert "all 2 ranks hold identical weights" in log and "2 processes, 4 images each" in log
    a, b, before = _weights(one / "final.pt"), _weights(two / "final.pt"), _weights(one / "ckpt_0000002.pt")
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    moved = max((a[k] - before[k]).abs().max().item() for k in a)  # what the third step changed
    print(f"2 x 4 vs 1 x 8: largest weight difference {diff:.3g}; the last step moved weights by up to {moved:.3g}")
    assert diff < 1e-6 and moved > 1000 * diff, f"2 x 4 and 1 x 8 differ by {diff}; the last step moved {moved}"
    results = json.loads((two / "results.json").read_text())  # scored by rank 0 over both ranks' shares
    assert results["n_images"] == 6 and results["step"] == 3


def test_a_killed_rank_resumes_to_the_uninterrupted_weights(detect_args, tmp_path):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    _torchrun("train_detect.py", detect_args(whole, "--max_steps", "8", "--ckpt_every", "2", "--eval_at_end",
                                             "false"), 29533)
    proc = _torchrun("train_detect.py", detect_args(cut, "--max_steps", "8", "--ckpt_every", "2", "--eval_at_end",
                                                    "false"), 29535, wait=False)
    deadline = time.time() + 300
    while not (cut / "ckpt_0000002.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    rank1 = [pid for pid in _children(proc.pid) if "RANK=1" in _environ(pid)]
    assert rank1, "rank 1 not found"
    os.kill(rank1[0], signal.SIGKILL)
    proc.wait(timeout=120)
    assert proc.returncode != 0 and not (cut / "final.pt").exists()  # it died mid-run
    log = _torchrun("train_detect.py", detect_args(cut, "--max_steps", "8", "--ckpt_every", "2", "--eval_at_end",
                                                   "false", "--resume", "true"), 29537)
    assert "resumed from" in log
    a, b = _weights(whole / "final.pt"), _weights(cut / "final.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_rank_zero_shot_evaluation_equals_one_process(toy_world, stage0_run, rpn_ckpt, tmp_path):
    for boxes in ("gt", "rpn"):
        args = ["--checkpoint", str(stage0_run / "final.pt"), "--instances", toy_world["instances_val_all"],
                "--templates", "single", "--boxes", boxes, "--rpn_checkpoint", str(rpn_ckpt), "--rpn_top_k", "10",
                "--eval_max_images", "9", "--eval_batch_size", "1"]
        eval_zeroshot.main([*args, "--out", str(tmp_path / f"one-{boxes}.json")])
        _torchrun("eval_zeroshot.py", [*args, "--out", str(tmp_path / f"two-{boxes}.json")], 29539)
        one, two = (json.loads((tmp_path / f"{n}-{boxes}.json").read_text()) for n in ("one", "two"))
        keys = ["gt_box_top1", "gt_box_ap50", "whole_image_top1", "per_category_ap50"] if boxes == "gt" else \
            ["rpn_ap50", "rpn_ap", "per_category_ap50"]
        for k in ["n_images", *keys]:
            assert two[k] == one[k], k  # the same numbers: every image's regions are encoded alone


def _children(pid: int) -> list[int]:
    """Every descendant of `pid` (from /proc)."""
    out, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                if ppid == parent:
                    out.append(int(d.name))
                    frontier.append(int(d.name))
    return out


def _environ(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "environ").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
