"""make bench, section 5's long part (`python benchmarks/run.py detector-ap`): the toy detector trained with each
RoI-sampling setting over seeds and scored, read back and tabled."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path


from benchmarks.toy.tables import fmt_mean_std, mean_std

ROOT = Path(__file__).resolve().parents[1]
DETECTOR_AP_CKPT_EVERY = 25  # detector-ap checkpoints often: a torchvision-defaults run took 41 min on 2 idle cores
DETECTOR_SAMPLING = {  # RoIs sampled per image, RoIAlign sampling_ratio, proposals kept per image in training
    "ours": dict(box_batch_size_per_image=32, sampling_ratio=0, rpn_post_nms_top_n_train=200,
                 rpn_pre_nms_top_n_train=1000),
    "ours, sampling_ratio 2": dict(box_batch_size_per_image=32, sampling_ratio=2, rpn_post_nms_top_n_train=200,
                                   rpn_pre_nms_top_n_train=1000),
    "128 RoIs/image": dict(box_batch_size_per_image=128, sampling_ratio=0, rpn_post_nms_top_n_train=200,
                           rpn_pre_nms_top_n_train=1000),
    "torchvision defaults": dict(box_batch_size_per_image=512, sampling_ratio=2, rpn_post_nms_top_n_train=2000,
                                 rpn_pre_nms_top_n_train=2000),
}


def detector_ap(args) -> None:
    """The long half of section 5: train the toy detector from the stage-0 CLIP with each RoI sampling setting and
    each seed (same steps and data as make toy's transfer) and record the AP50 each reaches in
    results/bench-detector-ap.json, per seed. A finished run of the same setting and seed is read, not redone; a
    killed one goes on from its last checkpoint."""
    init = Path(args.init)
    if not init.is_file():
        raise SystemExit(f"{init} not found: run `make toy` first (it trains the stage-0 CLIP), or pass --init")
    names = [n.strip() for n in args.settings.split(";") if n.strip()]
    unknown = [n for n in names if n not in DETECTOR_SAMPLING]
    if unknown:
        raise SystemExit(f"--settings: unknown {unknown}; choose from {list(DETECTOR_SAMPLING)} (';'-separated)")
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--seeds takes integers like 0,1,2, got {args.seeds!r}") from None
    path = Path(args.out) / "bench-detector-ap.json"
    out = read_detector_ap(path)
    if out.get("init") != str(init) or out.get("steps") != args.steps:
        out = {"init": str(init), "steps": args.steps, "runs": {}}
    for name in names:
        kw = DETECTOR_SAMPLING[name]
        slug = "".join(c if c.isalnum() else "-" for c in name)
        for seed in seeds:
            run = Path(args.runs) / (f"det-sampling-{slug}" + (f"-s{seed}" if seed else ""))
            ours = Path(args.ours_run.format(seed=seed))
            if name == "ours" and same_run(ours, init, args.steps, kw, seed):
                run = ours  # make toy's CLIP transfer of this seed is this very run: read it, do not redo it
            if same_run(run, init, args.steps, kw, seed):
                print(f"{name}, seed {seed}: read from {run}")
            else:
                cmd = [sys.executable, "train_detect.py", "--preset", "toy", "--init", str(init), "--train_json",
                       str(Path(args.data) / "instances_train_base.json"), "--val_json",
                       str(Path(args.data) / "instances_val_all.json"), "--out_dir", str(run), "--max_steps",
                       str(args.steps), "--warmup_steps", "30", "--seed", str(seed), "--box_batch_size_per_image",
                       str(kw["box_batch_size_per_image"]), "--roi_sampling_ratio", str(kw["sampling_ratio"]),
                       "--rpn_post_nms_top_n_train", str(kw["rpn_post_nms_top_n_train"]), "--rpn_pre_nms_top_n_train",
                       str(kw["rpn_pre_nms_top_n_train"]), "--ckpt_every", str(DETECTOR_AP_CKPT_EVERY),
                       # a killed run of the same setting and seed goes on from its last checkpoint; others start again
                       *(["--resume", "true"] if same_run(run, init, args.steps, kw, seed, finished=False)
                         else ["--overwrite", "true"])]
                print("$", " ".join(cmd[1:]), flush=True)
                subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            summary = json.loads((run / "run_summary.json").read_text())
            results = json.loads((run / "results.json").read_text())
            row = out["runs"].setdefault(name, {**kw, "seeds": {}})
            row["seeds"][str(seed)] = {"run": str(run), "train_seconds": summary["seconds"], "ap50": results["ap50"],
                                       "base_vocabulary_ap50": results.get("base_vocabulary", {}).get("ap50"),
                                       "ap": results["ap"]}
            # the same setting read again may name other seeds: keep them in seed order
            row["seeds"] = dict(sorted(row["seeds"].items(), key=lambda kv: int(kv[0])))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(out, indent=2))
    print(detector_ap_table(out))


def read_detector_ap(path: Path) -> dict:
    """results/bench-detector-ap.json, with a record from before seeds (one run per setting, seed 0) read as seed 0."""
    if not path.is_file():
        return {}
    try:
        out = json.loads(path.read_text())
    except ValueError as e:
        raise SystemExit(f"{path}: not valid JSON ({e}); move it away to start the AP50 record again") from None
    for name, row in out.get("runs", {}).items():
        if "seeds" not in row:
            keep = ("run", "train_seconds", "ap50", "base_vocabulary_ap50", "ap")
            out["runs"][name] = {**{k: v for k, v in row.items() if k not in keep},
                                 "seeds": {"0": {k: row[k] for k in keep if k in row}}}
    return out


def detector_ap_table(a: dict) -> str:
    """Section 5's AP50 table: mean ± sample std over the seeds recorded for each setting (n beside it)."""
    def cell(vals):
        return fmt_mean_std(mean_std([100 * v for v in vals if v is not None]))
    md = [f"AP50 each reaches (`python benchmarks/run.py detector-ap`: {a['steps']} steps from {a['init']}; mean ± "
          "std over the seeds listed):", "", "| RoI sampling | seeds | train s | AP50 novel | base | all | base AP50, "
          "base names only |", "|---|---|---|---|---|---|---|"]
    for name, row in a["runs"].items():
        s = list(row["seeds"].values())
        md.append(f"| {name} | {','.join(row['seeds'])} | {statistics.fmean(r['train_seconds'] for r in s):.0f} | "
                  + " | ".join(cell([r["ap50"][k] for r in s]) for k in ("novel", "base", "all"))
                  + f" | {cell([r.get('base_vocabulary_ap50') for r in s])} |")
    return "\n".join(md)


def same_run(run: Path, init: Path, steps: int, kw: dict, seed: int = 0, finished: bool = True) -> bool:
    """Whether `run` (a train_detect.py run, finished unless `finished` is False) is the toy transfer from `init`
    with these sampling settings and this seed."""
    try:
        cfg = json.loads((run / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return (Path(str(cfg.get("init"))) == init and cfg.get("max_steps") == steps and cfg.get("seed") == seed
            and cfg.get("box_batch_size_per_image") == kw["box_batch_size_per_image"]
            and cfg.get("roi_sampling_ratio", 0) == kw["sampling_ratio"]
            and cfg.get("rpn_post_nms_top_n_train") == kw["rpn_post_nms_top_n_train"]
            and cfg.get("rpn_pre_nms_top_n_train") == kw["rpn_pre_nms_top_n_train"]
            and (not finished or (run / "results.json").is_file()))


