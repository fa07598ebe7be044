"""Reliability and security (issue 9): runs killed with SIGKILL resume to the same weights, one writer per output
folder, bad inputs give clear messages, hostile checkpoints are refused by every loader and run nothing.

The bad-input matrix (docs/USAGE.md, "Failure modes") is tested here and in tests/test_data.py, test_regions.py,
test_eval_zeroshot.py, test_train_pretrain.py and test_train_detect.py; each row names its test."""
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import eval_zeroshot
import train_detect
import train_pretrain
from regionclip_min import official
from regionclip_min.checkpoint import _process_start, claim_out_dir, load_checkpoint, save_checkpoint
from regionclip_min.clip_model import SINGLE_TEMPLATE, encode_texts, load_clip
from regionclip_min.concepts import concept_embeddings, read_names
from regionclip_min.data import DetectionDataset, ImageCaptionDataset
from regionclip_min.detector import load_detector
from regionclip_min.rpn import load_rpn
from regionclip_min.transforms import boxes_to_transformed

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def _pretrain_args(toy_world, stage0_run, cache):
    return lambda out: ["train_pretrain.py", "--preset", "toy", "--captions", toy_world["captions_train"], "--init",
                        str(stage0_run / "final.pt"), "--out_dir", str(out), "--batch_size", "4",
                        "--proposals_per_image", "4", "--num_workers", "0", "--concept_cache", str(cache),
                        "--templates", "single", "--warmup_steps", "2", "--max_steps", "10", "--ckpt_every", "1",
                        "--log_every", "1", "--threads", "1", "--proposals", "random"]


def _detect_args(toy_world, stage0_run):
    return lambda out: ["train_detect.py", "--preset", "toy", "--init", str(stage0_run / "final.pt"), "--train_json",
                        toy_world["instances_train_base"], "--val_json", toy_world["instances_val_all"], "--out_dir",
                        str(out), "--batch_size", "2", "--num_workers", "0", "--templates", "single",
                        "--warmup_steps", "2", "--rpn_post_nms_top_n_train", "30", "--box_batch_size_per_image", "8",
                        "--max_steps", "10", "--ckpt_every", "1", "--log_every", "1", "--threads", "1",
                        "--eval_at_end", "false"]


def _last_logged_step(out: Path) -> int:
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
        return json.loads(lines[-1])["step"] if lines else 0
    except (OSError, ValueError, IndexError):
        return 0


def _kill_and_resume(args, root: Path, seed: int, trials: int = 3, max_steps: int = 10):
    """An uninterrupted run, then `trials` runs SIGKILLed at a random step (and a random instant after it), each
    resumed with --resume; every checkpoint on disk must load after the kill, and the resumed run must end with the
    uninterrupted run's weights and metrics."""
    run = lambda out, *extra: subprocess.run([sys.executable, *args(out), *extra], cwd=ROOT, env=ENV,  # noqa: E731
                                             capture_output=True, text=True, timeout=600)
    ref = root / "ref"
    r = run(ref)
    assert r.returncode == 0, r.stderr[-3000:]
    ref_w, ref_rows = load_checkpoint(ref / "final.pt")["model"], _metrics(ref)
    rng = random.Random(seed)
    for trial in range(trials):
        out = root / f"killed{trial}"
        kill_at = rng.randint(1, max_steps - 4)
        proc = subprocess.Popen([sys.executable, *args(out)], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while _last_logged_step(out) < kill_at and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.1))  # anywhere in the next step: forward, backward, a checkpoint write
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL and not (out / "final.pt").exists(), "the run ended before the kill"
        assert (out / ".lock").exists()  # left behind, as by any killed run
        saved = sorted(out.glob("ckpt_*.pt"))
        for p in saved:
            load_checkpoint(p)  # never half-written: each file on disk is a whole checkpoint
        r = run(out, "--resume", "true")
        assert r.returncode == 0, r.stderr[-3000:]
        assert "left by a run that did not finish" in r.stdout
        assert ("resumed from" in r.stdout) == bool(saved)  # killed before its first checkpoint: starts again
        w = load_checkpoint(out / "final.pt")["model"]
        assert w.keys() == ref_w.keys() and all(torch.equal(ref_w[k], w[k]) for k in ref_w), f"trial {trial}"
        rows = _metrics(out)
        strip = lambda rs: [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rs]  # noqa: E731
        assert strip(rows) == strip(ref_rows)  # every step logged once, with the same losses
        assert not (out / ".lock").exists() and not list(out.glob(".*.tmp"))


def test_train_pretrain_killed_at_random_steps_resumes_to_the_same_weights(toy_world, stage0_run, tmp_path):
    _kill_and_resume(_pretrain_args(toy_world, stage0_run, tmp_path / "cache"), tmp_path, seed=1)


def test_train_detect_killed_at_random_steps_resumes_to_the_same_weights(toy_world, stage0_run, tmp_path):
    _kill_and_resume(_detect_args(toy_world, stage0_run), tmp_path, seed=2)


# ---- one output folder, one writer ------------------------------------------------------------------------------
def _write_lock(out: Path, pid: int, start, host=None):
    out.mkdir(parents=True, exist_ok=True)
    (out / ".lock").write_text(json.dumps({"pid": pid, "start": start, "host": host or socket.gethostname(),
                                           "command": "train_detect.py --preset toy", "since": "2026-01-01"}))


def test_a_folder_in_use_is_refused_unless_overwrite(toy_world, stage0_run, tmp_path, capsys):
    other = subprocess.Popen(["sleep", "60"])
    try:
        out = tmp_path / "busy"
        _write_lock(out, other.pid, _process_start(other.pid))
        with pytest.raises(SystemExit, match=rf"busy is in use by another run \(pid {other.pid} on .*--overwrite"):
            train_detect.main(_detect_args(toy_world, stage0_run)(out)[1:])
        with pytest.raises(SystemExit, match="in use by another run"):
            train_pretrain.main(_pretrain_args(toy_world, stage0_run, tmp_path / "c")(out)[1:])
        lock = claim_out_dir(out, resume=False, overwrite=True)
        assert "taking" in capsys.readouterr().out and json.loads((out / ".lock").read_text())["pid"] == os.getpid()
        lock.release()
        assert not (out / ".lock").exists()
        # the same pid with another start time is another process (pid reuse): a stale lock
        _write_lock(out, other.pid, "1")
        claim_out_dir(out, resume=False, overwrite=False).release()
        assert "did not finish" in capsys.readouterr().out
    finally:
        other.kill()
        other.wait()
    # a lock from another machine cannot be checked: refused, with what to do
    _write_lock(out, 12345, None, host="some-other-host")
    with pytest.raises(SystemExit, match="remove .*lock"):
        claim_out_dir(out, resume=False, overwrite=False)


def test_a_stale_or_unreadable_lock_is_explained_and_taken_over(tmp_path, capsys):
    out = tmp_path / "stale"
    dead = subprocess.Popen(["true"])
    dead.wait()
    _write_lock(out, dead.pid, None)
    (out / ".ckpt_0000003.pt.999.tmp").write_bytes(b"half")
    claim_out_dir(out, resume=True, overwrite=False).release()
    printed = capsys.readouterr().out
    assert f"left by a run that did not finish (pid {dead.pid}" in printed and "killed or crashed" in printed
    assert "half-written" in printed and not list(out.glob(".*.tmp"))
    (out / ".lock").write_text("{trunc")
    claim_out_dir(out, resume=True, overwrite=False).release()
    assert "unreadable" in capsys.readouterr().out


def test_a_finished_run_is_not_overwritten_by_accident(toy_world, stage0_run, tmp_path, capsys):
    out = tmp_path / "done"
    out.mkdir()
    save_checkpoint(out / "ckpt_0000010.pt", {"step": 10})
    (out / "metrics.jsonl").write_text('{"step": 10}\n')
    with pytest.raises(SystemExit, match=r"already holds a run .*ckpt_0000010.pt.*--resume true.*--overwrite true"):
        train_detect.main(_detect_args(toy_world, stage0_run)(out)[1:])
    assert (out / "ckpt_0000010.pt").exists() and not (out / ".lock").exists()  # nothing lost, lock released
    claim_out_dir(out, resume=False, overwrite=True).release()
    assert not (out / "ckpt_0000010.pt").exists() and not (out / "metrics.jsonl").exists()
    assert "deleted 2 files" in capsys.readouterr().out


# ---- bad inputs: the rows not covered by test_data.py --------------------------------------------------------
def _instances(tmp_path, images, anns=()):
    (tmp_path / "images").mkdir(exist_ok=True)
    path = tmp_path / "inst.json"
    path.write_text(json.dumps({"images": images, "annotations": list(anns),
                                "categories": [{"id": 1, "name": "circle"}]}))
    return path


def test_zero_size_images(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": 0, "height": 30}, {"id": 2, "file_name": "b.png",
                                                                           "width": 20, "height": 20}]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]}]
    path = _instances(tmp_path, images, anns)
    with pytest.raises(ValueError, match=r"inst.json: images\[0\] \(id 1\): width x height 0 x 30 is not a positive"):
        DetectionDataset(path, strict=True)
    with pytest.warns(UserWarning, match="image_zero_size"):
        ds = DetectionDataset(path)
    assert ds.image_ids == [2] and ds.skipped == {"image_zero_size": 1}  # its box is not counted a second time
    (tmp_path / "images" / "b.png").write_bytes(b"")  # a zero-byte file
    with pytest.warns(UserWarning, match="image_zero_size"):
        ds = DetectionDataset(path, tmp_path / "images")
    with pytest.warns(UserWarning, match=r"b.png \(images\[1\] \(id 2\) of .*inst.json\): cannot read image"):
        assert ds[0] is None
    assert ds.skipped["image_unreadable"] == 1


def test_grayscale_and_rgba_images_are_converted_to_rgb(tmp_path):
    gray = Image.new("L", (20, 20), 128)
    rgba = Image.new("RGBA", (20, 20), (255, 0, 0, 0))  # fully transparent red: alpha is dropped, red stays
    path = _instances(tmp_path, [{"id": 1, "file_name": "g.png", "width": 20, "height": 20},
                                 {"id": 2, "file_name": "r.png", "width": 20, "height": 20}])
    gray.save(tmp_path / "images" / "g.png")
    rgba.save(tmp_path / "images" / "r.png")
    ds = DetectionDataset(path, tmp_path / "images", strict=True)
    (g, _), (r, _) = ds[0], ds[1]
    assert g.shape == r.shape == (3, 20, 20)
    assert torch.allclose(g, torch.full_like(g, 128 / 255)) and r[0].eq(1).all() and r[1:].eq(0).all()
    caps = tmp_path / "caps.json"
    caps.write_text(json.dumps({"images": [{"id": 1, "file_name": "g.png"}, {"id": 2, "file_name": "r.png"}],
                                "annotations": [{"id": 1, "image_id": 1, "caption": "a grey circle"},
                                                {"id": 2, "image_id": 2, "caption": "a red circle"}]}))
    ic = ImageCaptionDataset(caps, tmp_path / "images", image_size=16, strict=True)
    assert ic[0]["image"].shape == ic[1]["image"].shape == (3, 16, 16)


def test_unicode_and_duplicate_vocabulary_encodes(toy_world):
    model, tok = load_clip("RN-toy")
    names, _ = read_names("café sign, étoile, 星, ÉTOILE, 🚲 bike")
    assert names == ["café sign", "étoile", "星", "🚲 bike"]
    emb = encode_texts(model, tok, names, SINGLE_TEMPLATE)
    assert emb.shape == (4, 64) and torch.isfinite(emb).all()


def test_empty_concept_pool_stops_with_a_clear_message(toy_world, stage0_run, tmp_path):
    args = _pretrain_args(toy_world, stage0_run, tmp_path / "c")(tmp_path / "o")[1:]
    with pytest.raises(SystemExit, match=r"captions_train.json: the concept pool is empty.*--concept_min_count"):
        train_pretrain.main([*args, "--concept_min_count", "1000000"])


def test_proposals_file_checked_against_the_dataset(toy_world, stage0_run, tmp_path):
    ids = [im["id"] for im in json.loads(Path(toy_world["captions_train"]).read_text())["images"]]
    args = _pretrain_args(toy_world, stage0_run, tmp_path / "c")
    props = tmp_path / "props.json"
    props.write_text(json.dumps({str(i): [[10, 10, 60, 60, 0.9]] for i in ids[1:]}))  # the first image missing
    with pytest.raises(SystemExit, match=rf"props.json: no proposals for 1 of the {len(ids)} images "
                                         rf"\(image ids \[{ids[0]}\]"):
        train_pretrain.main([*args(tmp_path / "a")[1:], "--proposals", "file", "--proposals_file", str(props)])
    table = {str(i): [[10, 10, 60, 60, 0.9], [0, 0, 128, 128, 0.5]] for i in ids}
    table.update({str(ids[0]): [], str(ids[1]): [], "999999": [[1, 1, 5, 5, 1.0]]})  # 2 empty, 1 unknown id
    props.write_text(json.dumps(table))
    out = tmp_path / "b"
    train_pretrain.main([*args(out)[1:], "--proposals", "file", "--proposals_file", str(props), "--max_steps", "12",
                         "--ckpt_every", "100"])
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["proposal_ids_not_in_dataset"] == 1 and summary["images_without_proposals"] == 2
    assert summary["images_without_proposals_seen"] >= 1  # 12 steps x 4 images cover the 40 images
    assert all(r["total"] == r["total"] for r in _metrics(out))


def test_file_proposals_follow_the_resize_and_crop():
    # a 64 x 32 file resized to short side 32 (64 x 32) and centre-cropped to 32 x 32: x shifts by 16
    rows = boxes_to_transformed(torch.tensor([[16.0, 0, 48, 32, 0.9], [0, 0, 10, 10, 0.5]]), (64, 32), 32)
    assert torch.equal(rows, torch.tensor([[0.0, 0, 32, 32, 0.9]]))  # the second box fell outside the crop
    assert torch.equal(boxes_to_transformed(torch.tensor([[0.0, 0, 64, 64]]), (128, 128), 64),
                       torch.tensor([[0.0, 0, 32, 32]]))


def test_batches_where_no_region_passes_the_threshold_keep_every_region(toy_world, stage0_run, tmp_path):
    """The official fallback: a batch in which no region is confident keeps all its regions (counted)."""
    out = tmp_path / "none_kept"
    train_pretrain.main([*_pretrain_args(toy_world, stage0_run, tmp_path / "c")(out)[1:], "--pseudo_threshold",
                         "1.0", "--max_steps", "3", "--ckpt_every", "100"])
    rows = _metrics(out)
    assert all(r["kept"] == 1.0 and math.isfinite(r["loss_region_contrastive"]) for r in rows)  # not 0 kept
    assert json.loads((out / "run_summary.json").read_text())["batches_all_kept_no_region_confident"] == 3


# ---- hostile checkpoints: every loader refuses, nothing runs ----------------------------------------------------
class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['EVIL_MARKER']}",))


@pytest.fixture
def evil(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("EVIL_MARKER", str(marker))
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "kind": "detector", "step": 1, "payload": _Evil()}, path)
    assert not marker.exists()
    yield path
    assert not marker.exists(), "a hostile checkpoint ran code"


def _loaders(evil, toy_world, stage0_run, tmp_path):
    pre = _pretrain_args(toy_world, stage0_run, tmp_path / "c")
    det = _detect_args(toy_world, stage0_run)
    resume_dir = tmp_path / "resume"
    resume_dir.mkdir()
    (resume_dir / "ckpt_0000005.pt").write_bytes(evil.read_bytes())
    return {
        "load_checkpoint": lambda: load_checkpoint(evil),
        "load_clip (local weights file)": lambda: load_clip("RN-toy", str(evil)),
        "load_rpn": lambda: load_rpn(evil),
        "load_detector": lambda: load_detector(evil),
        "eval_zeroshot --checkpoint": lambda: eval_zeroshot.main(["--checkpoint", str(evil), "--instances",
                                                                  toy_world["instances_val_all"]]),
        "eval_zeroshot --model_name --pretrained": lambda: eval_zeroshot.main(
            ["--pretrained", str(evil), "--instances", toy_world["instances_val_all"]]),
        "train_pretrain --init": lambda: train_pretrain.main([*pre(tmp_path / "p")[1:], "--init", str(evil)]),
        "train_pretrain --resume": lambda: train_pretrain.main([*pre(resume_dir)[1:], "--resume", "true"]),
        "train_detect --init": lambda: train_detect.main([*det(tmp_path / "d")[1:], "--init", str(evil)]),
        "train_detect --rpn_checkpoint": lambda: train_detect.main([*det(tmp_path / "e")[1:], "--rpn", "offline",
                                                                    "--rpn_checkpoint", str(evil)]),
        "official.read_embeddings": lambda: official.read_embeddings(evil, ["a"]),
        "train_detect --eval_only --checkpoint": lambda: train_detect.main(
            [*det(tmp_path / "f")[1:], "--eval_only", "true", "--checkpoint", str(evil)]),
        "eval_zeroshot --class_embeddings": lambda: eval_zeroshot.main(
            ["--checkpoint", str(stage0_run / "final.pt"), "--instances", toy_world["instances_val_all"],
             "--class_embeddings", str(evil)]),
        "train_detect --class_embeddings": lambda: train_detect.main([*det(tmp_path / "g")[1:], "--class_embeddings",
                                                                      str(evil)]),
        "train_pretrain --concept_embeddings": lambda: train_pretrain.main(
            [*pre(tmp_path / "h")[1:], "--concepts", "circle,star", "--concept_embeddings", str(evil)]),
    }


LOADERS = ["load_checkpoint", "load_clip (local weights file)", "load_rpn", "load_detector",
           "eval_zeroshot --checkpoint", "eval_zeroshot --model_name --pretrained", "train_pretrain --init",
           "train_pretrain --resume", "train_detect --init", "train_detect --rpn_checkpoint",
           "official.read_embeddings", "train_detect --eval_only --checkpoint", "eval_zeroshot --class_embeddings",
           "train_detect --class_embeddings", "train_pretrain --concept_embeddings"]


@pytest.mark.parametrize("loader", LOADERS)
def test_hostile_checkpoint_is_refused_by_every_loader(loader, evil, toy_world, stage0_run, tmp_path):
    call = _loaders(evil, toy_world, stage0_run, tmp_path)[loader]
    with pytest.raises((ValueError, SystemExit)) as info:
        call()
    assert "evil.pt" in str(info.value) or "ckpt_0000005.pt" in str(info.value)


def test_hostile_concept_cache_is_refused_and_recomputed(evil, tmp_path, caplog):
    model, tok = load_clip("RN-toy")
    cache = tmp_path / "cache"
    first = concept_embeddings(model, tok, ["circle", "star"], SINGLE_TEMPLATE, cache_dir=cache, model_key="k")
    (entry,) = cache.glob("concepts-*.pt")
    entry.write_bytes(evil.read_bytes())  # a crafted file where the cache entry was
    again = concept_embeddings(model, tok, ["circle", "star"], SINGLE_TEMPLATE, cache_dir=cache, model_key="k")
    assert torch.equal(first, again) and "refused" in caplog.text
    assert load_checkpoint(entry)["concepts"] == ["circle", "star"]  # rewritten as a safe entry
