"""The toy benchmark orchestrator (make toy) end to end on a tiny world and budget: every step runs once, the
summary and pictures are written, a second call redoes nothing, and pictures older than their checkpoints are
redrawn."""
import json
import os

import pytest

from benchmarks.toy import benchmark as toy_benchmark
from benchmarks.toy import tables as toy_tables


def test_pipeline_runs_every_step_once_and_writes_summary_and_pictures(tmp_path, capsys):
    args = ["--data", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "res"),
            "--world", "num_train=72,num_val=16",
            "--budget", "stage0_steps=3,rpn_steps=2,regionclip_steps=2,detector_steps=2"]
    toy_benchmark.main(["run", *args])
    res = tmp_path / "res"
    timings = json.loads((res / "timings.json").read_text())
    calls = timings.pop("_calls")
    assert len(calls) == 1 and calls[0]["jobs"] == 2 and calls[0]["peak_memory_mb"] > 100
    assert calls[0]["command"] == "benchmarks.toy.benchmark run"
    assert sorted(calls[0]["steps_run"]) == sorted(timings)
    assert set(timings) == {"generate", "stage0", "rpn", "zs-clip-gt", "zs-clip-rpn", "regionclip-full-s0",
                            "zs-regionclip-s0-gt", "zs-regionclip-s0-rpn", "det-clip-s0", "det-regionclip-s0"}
    summary = json.loads((res / "summary.json").read_text())
    assert set(summary["amp"].values()) <= {"bf16 autocast", "float32"}
    assert summary["seeds"] == [0] and set(summary["fig1b"]) >= {"whole_image_top1", "gt_box_top1", "gap"}
    for model in ("clip", "regionclip"):
        assert summary[model]["gt_top1.all"]["n"] == 1 and summary[model]["ovd_ap50.novel"]["n"] <= 1
    md = (res / "summary.md").read_text()
    assert "| CLIP (stage 0) |" in md and "| RegionCLIP |" in md and "Fig. 1(b)" in md
    named = json.loads((res / "zeroshot" / "clip-gt.json").read_text())["gt_box_named_as"]
    assert "GT boxes were named" in md and all(f"| {c}" in md for c in named)  # one row per category with boxes
    assert md.index("(novel) |") < md.index("| circle |")  # novel categories come first
    assert "base names only |" in md and md.count("| CLIP (stage 0) |") == 2  # the closed-vocabulary table
    assert (res / "regions.png").stat().st_size > 0 and (res / "detections.png").stat().st_size > 0
    # both transfers classify at the stage-0 CLIP's own temperature, not the literal 0.01 of OpenAI's CLIP
    taus = {json.loads((tmp_path / "runs" / f"det-{m}-s0" / "config.json").read_text())["tau"]
            for m in ("clip", "regionclip")}
    assert len(taus) == 1 and taus.pop() != pytest.approx(0.01)
    capsys.readouterr()
    toy_benchmark.main(["run", *args])  # everything exists: nothing is redone
    printed = capsys.readouterr().out
    assert printed.count("skipped") == len(timings)
    assert json.loads((res / "timings.json").read_text()) == {**timings, "_calls": calls}  # nothing ran, nothing added
    drawn = (res / "regions.png").stat().st_mtime
    ckpt = tmp_path / "runs" / "det-regionclip-s0" / "final.pt"
    os.utime(ckpt, (drawn + 10, drawn + 10))  # as after a fresh clone: runs newer than the committed pictures
    toy_benchmark.main(["run", *args])
    assert (res / "regions.png").stat().st_mtime > drawn and (res / "detections.png").stat().st_mtime > drawn


def test_an_ablation_row_runs_for_several_seeds_with_its_own_summary(tmp_path):
    args = ["--data", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "res"),
            "--world", "num_train=72,num_val=16",
            "--budget", "stage0_steps=2,rpn_steps=2,regionclip_steps=2,detector_steps=2", "--seeds", "0,1"]
    toy_benchmark.main(["seeds", "--row", "random-boxes", *args])
    res, runs = tmp_path / "res", tmp_path / "runs"
    cfg = json.loads((runs / "regionclip-random-boxes-s1" / "config.json").read_text())
    assert cfg["proposals"] == "random" and cfg["seed"] == 1  # the row's own arguments, each seed
    assert (runs / "det-regionclip-random-boxes-s1" / "results.json").is_file()
    assert not (runs / "regionclip-full-s0").exists()  # the full model is not trained for this row
    summary = json.loads((res / "summary-random-boxes.json").read_text())
    assert summary["row"] == "random-boxes" and summary["seeds"] == [0, 1]
    assert summary["regionclip"]["gt_top1.all"]["n"] == 2
    assert "random boxes instead of RPN proposals" in (res / "summary-random-boxes.md").read_text()
    assert not (res / "summary.md").exists()
    with pytest.raises(SystemExit, match="only for"):
        toy_benchmark.main(["run", "--row", "random-boxes", *args])


def test_ablations_table_holds_every_row_and_the_transfer_tau_rows(tmp_path):
    b = toy_benchmark.Bench(runs=tmp_path / "runs", results=tmp_path / "res")
    ap = {"ap50": {"novel": 0.5, "base": 0.8, "all": 0.75}}
    for name in ("det-clip-tau0.01-s0", "det-regionclip-tau0.01-s0"):
        (b.runs / name).mkdir(parents=True)
        (b.runs / name / "results.json").write_text(json.dumps(ap))
    toy_tables.write_ablations(b, toy_benchmark.ABLATIONS)
    md = (b.results / "ablations.md").read_text()
    assert all(what in md for _, what, _ in toy_benchmark.ABLATIONS)
    tau_rows = [line for line in md.splitlines() if "tau = 0.01 (the paper's number" in line]
    assert len(tau_rows) == 2 and all(line.endswith("| 50.0 | 80.0 | 75.0 |") for line in tau_rows)
    assert "| **RegionCLIP, full model** | — |" in md  # runs that did not happen read as —, not as numbers


# where the benchmark's data and runs live: paths, not settings
PATH_OPTIONS = {"captions", "init", "rpn_checkpoint", "out_dir", "concept_cache", "train_json", "val_json", "seed"}


def test_the_toy_presets_are_the_settings_the_benchmark_runs(tmp_path):
    """`--preset toy` (and toy-clip, toy-rpn) gives the numbers the docs quote: every option the benchmark passes
    beside the paths equals the preset's own value."""
    from regionclip_min.cli import parse_config
    from regionclip_min.configs import detect, pretrain

    b = toy_benchmark.Bench(runs=tmp_path / "runs", results=tmp_path / "res")
    configs = {"train_pretrain.py": (pretrain.PretrainConfig, pretrain.PRESETS),
               "train_detect.py": (detect.DetectConfig, detect.PRESETS)}
    steps = [toy_benchmark.stage0(b), toy_benchmark.rpn(b), toy_benchmark.regionclip(b, 0),
             toy_benchmark.transfer(b, "regionclip-full-s0", "regionclip", 0)]
    for step in steps:
        script, *args = [str(a) for a in step.cmd]
        cls, presets = configs[script]
        flags = dict(zip(args[::2], args[1::2]))
        preset_cfg, _ = parse_config(cls, ["--preset", flags.pop("--preset")], presets)
        passed, _ = parse_config(cls, args, presets)
        settings = {k.lstrip("-") for k in flags} - PATH_OPTIONS
        assert settings, step.name
        assert {k: getattr(passed, k) for k in settings} == {k: getattr(preset_cfg, k) for k in settings}, step.name
