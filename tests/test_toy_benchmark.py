"""The toy benchmark orchestrator (make toy) end to end on a tiny world and budget: every step runs once, the
summary and pictures are written, a second call redoes nothing, and pictures older than their checkpoints are
redrawn."""
import json
import os

import pytest

from benchmarks.toy import benchmark as toy_benchmark
from benchmarks.toy import study_tables
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
    assert set(timings) == {"generate", "stage0", "rpn", "zs-clip-gt", "zs-clip-rpn", "zs-clip-rpn-tau0.01",
                            "regionclip-full-s0", "zs-regionclip-s0-gt", "zs-regionclip-s0-rpn",
                            "zs-regionclip-s0-rpn-tau0.01", "det-clip-s0", "det-regionclip-s0"}
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
    assert "base names only |" in md and md.count("| CLIP (stage 0) |") == 3  # + closed vocabulary, tau 0.01
    # zero-shot at the model's own temperature, and once more at the literal 0.01
    own, lit = (json.loads((res / "zeroshot" / f"clip-{k}.json").read_text()) for k in ("rpn", "rpn-tau0.01"))
    assert own["tau"] == pytest.approx(taus_of(tmp_path / "runs")) and lit["tau"] == 0.01
    assert "at the model's own temperature and at 0.01" in md
    for png in ("regions", "detections", "region_map", "concept_heatmaps", "loss_curves"):
        assert (res / f"{png}.png").read_bytes()[:4] == b"\x89PNG", png
    # both transfers classify at the stage-0 CLIP's own temperature, not the literal 0.01 of OpenAI's CLIP
    assert taus_of(tmp_path / "runs") != pytest.approx(0.01)
    capsys.readouterr()
    toy_benchmark.main(["run", *args])  # everything exists: nothing is redone
    printed = capsys.readouterr().out
    assert printed.count("skipped") == len(timings)
    assert json.loads((res / "timings.json").read_text()) == {**timings, "_calls": calls}  # nothing ran, nothing added
    drawn = (res / "regions.png").stat().st_mtime
    ckpt = tmp_path / "runs" / "det-regionclip-s0" / "final.pt"
    os.utime(ckpt, (drawn + 10, drawn + 10))  # as after a fresh clone: runs newer than the committed pictures
    toy_benchmark.main(["run", *args])
    assert all((res / f"{png}.png").stat().st_mtime > drawn for png in ("regions", "detections", "region_map",
                                                                        "concept_heatmaps", "loss_curves"))
    # a transfer study beside the same runs: only its own transfers run, from both inits
    toy_benchmark.main(["transfers", "--studies", "supervised", "--seeds", "0", *args])
    cfg = json.loads((tmp_path / "runs" / "det-regionclip-supervised-s0" / "config.json").read_text())
    assert cfg["category_split"] == "all" and cfg["train_json"].endswith("instances_train_all.json")
    sup = json.loads((tmp_path / "runs" / "det-clip-supervised-s0" / "results.json").read_text())
    assert "base_vocabulary" not in sup and set(sup["ap50"]) == {"novel", "base", "all"}
    rows = json.loads((res / "transfers.json").read_text())
    assert set(rows) == {"preset/clip", "preset/regionclip", "supervised/clip", "supervised/regionclip"}
    assert rows["supervised/clip"]["ap50.all"]["n"] == 1 and "fully supervised" in (res / "transfers.md").read_text()
    with pytest.raises(SystemExit, match="--studies"):
        toy_benchmark.main(["transfers", "--studies", "nope", "--seeds", "0", *args])


def taus_of(runs) -> float:
    """The classifier temperature both toy transfers used (each reads its init's own; RegionCLIP keeps the
    stage-0 CLIP's logit_scale)."""
    taus = {json.loads((runs / f"det-{m}-s0" / "config.json").read_text())["tau"] for m in ("clip", "regionclip")}
    assert len(taus) == 1
    return taus.pop()


def test_world_instances_each_get_their_own_world_stage0_and_summary(tmp_path):
    args = ["--data", str(tmp_path / "data" / "toy"), "--runs", str(tmp_path / "runs"), "--results",
            str(tmp_path / "res"), "--world", "num_train=72,num_val=16", "--seeds", "0",
            "--budget", "stage0_steps=2,rpn_steps=2,regionclip_steps=2,detector_steps=2"]
    toy_benchmark.main(["seeds", "--worlds", "default,w1", *args])
    res, runs = tmp_path / "res", tmp_path / "runs"
    cats = json.loads((tmp_path / "data" / "toy-w1" / "instances_val_all.json").read_text())["categories"]
    assert [c["name"] for c in cats if c["split"] == "novel"] == toy_benchmark.WORLDS["w1"]["novel"].split(":")
    info = json.loads((tmp_path / "data" / "toy-w1" / "captions_train.json").read_text())["info"]
    assert info["seed"] == 1 and info["stats"]["novel"] == ["star", "pentagon", "crescent"]
    assert (runs / "worlds" / "w1" / "clip" / "final.pt").is_file()  # its own stage 0
    assert (runs / "worlds" / "w1" / "det-regionclip-s0" / "results.json").is_file()
    timings = json.loads((res / "timings.json").read_text())
    assert "stage0" in timings and "w1.stage0" in timings  # one runner, the other world's steps prefixed
    assert "stage0" in json.loads((res / "worlds" / "w1" / "timings.json").read_text())
    w1 = json.loads((res / "worlds" / "w1" / "summary.json").read_text())
    assert w1["world"]["seed"] == 1 and w1["world"]["novel"] == "star:pentagon:crescent"
    both = json.loads((res / "summary-worlds.json").read_text())
    assert [r["world"] for r in both["worlds"]] == ["default", "w1"]
    assert all(r["gt_top1.novel"]["reading"] == "one seed: not known" for r in both["worlds"])
    md = (res / "summary-worlds.md").read_text()
    assert "| w1 | 1 | star, pentagon, crescent | 1 |" in md and "of 2" in md
    with pytest.raises(SystemExit, match="--worlds"):
        toy_benchmark.main(["run", "--worlds", "w1", *args])
    with pytest.raises(SystemExit, match="--worlds"):
        toy_benchmark.main(["seeds", "--worlds", "nope", *args])


def test_claim_readings():
    assert study_tables.claim_reading(4.4, 1.1) == "holds, stable (std < 1/3 of it)"
    assert study_tables.claim_reading(4.4, 2.0) == "holds"
    assert study_tables.claim_reading(-10.9, 3.7) == "opposite"
    assert study_tables.claim_reading(-10.9, 3.5) == "opposite, stable (std < 1/3 of it)"
    assert study_tables.claim_reading(1.0, 2.0) == "within the std"
    assert study_tables.claim_reading(1.0, float("nan")) == "one seed: not known"


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
