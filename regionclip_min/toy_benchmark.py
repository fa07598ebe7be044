"""The toy benchmark: the paper's claims, end to end on the toy world, by one command (README "Toy benchmark").

    python -m regionclip_min.toy_benchmark run          # make toy:           one seed, the whole pipeline
    python -m regionclip_min.toy_benchmark seeds        # make toy-seeds:     RegionCLIP + transfer for seeds 0, 1, 2
    python -m regionclip_min.toy_benchmark ablations    # make toy-ablations: the paper's ablations, one row each
    python -m regionclip_min.toy_benchmark summary      # only rebuild results/toy/summary.{md,json} from the runs

The pipeline (every step is one of the project's own commands, run as a subprocess; its log goes to
results/toy/logs/<step>.log and its progress bar to the terminal):

    generate the toy world (data/toy)
    -> stage 0: a tiny CLIP on the captions (train_pretrain.py --preset toy-clip): the teacher and the "CLIP" row
    -> a class-agnostic RPN on the base boxes (train_detect.py --preset toy-rpn)
    -> RegionCLIP pretraining from stage 0 with RPN proposals (train_pretrain.py --preset toy --proposals rpn)
    -> detector transfer from the CLIP and from the RegionCLIP checkpoints (train_detect.py --preset toy)
    -> zero-shot GT-box and RPN evaluation of both (eval_zeroshot.py)
    -> results/toy/summary.md / .json (Fig. 1(b) check, the CLIP vs RegionCLIP table), regions.png, detections.png

A step whose output exists is not redone (--force redoes them); a step whose run folder holds a killed run resumes
it. Step counts are the BUDGET below, chosen so that `make toy` fits in 30 minutes on a 2-core CPU; every row of
every table uses the same world, the same budget and the same evaluation.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = Path("data/toy")
RUNS = Path("runs/toy-bench")
RESULTS = Path("results/toy")
WORLD = dict(seed=0, num_train=8000, num_val=500)  # DESIGN.md §5.1 world C size
BUDGET = dict(stage0_steps=2500, rpn_steps=600, regionclip_steps=300, detector_steps=300)
SEEDS = (0, 1, 2)


# ---- running steps ------------------------------------------------------------------------------------------
class Runner:
    """Runs pipeline steps as subprocesses, skipping those whose output exists, and records their wall times."""

    def __init__(self, force: bool = False, *, data: Path = DATA, runs: Path = RUNS, results: Path = RESULTS,
                 world: dict | None = None, budget: dict | None = None, seeds: tuple = SEEDS):
        self.force, self.data, self.runs, self.results = force, Path(data), Path(runs), Path(results)
        self.world, self.budget, self.seeds = {**WORLD, **(world or {})}, {**BUDGET, **(budget or {})}, tuple(seeds)
        self.results.mkdir(parents=True, exist_ok=True)
        self.timings_path = self.results / "timings.json"
        self.timings = json.loads(self.timings_path.read_text()) if self.timings_path.is_file() else {}
        (self.results / "logs").mkdir(parents=True, exist_ok=True)

    def step(self, name: str, what: str, output: Path, cmd: list[str], run_dir: Path | None = None) -> bool:
        """Run `cmd` (python args) unless `output` exists; returns True if it ran. A training step's `run_dir` that
        holds checkpoints of an unfinished run is resumed; with --force it is started again (--overwrite)."""
        if output.exists() and not self.force:
            print(f"[{name}] {what}: done before ({output}; {self.timings.get(name, {}).get('seconds', '?')} s "
                  f"then), skipped")
            return False
        args = list(cmd)
        if run_dir is not None:
            args += ["--overwrite", "true"] if self.force else (
                ["--resume", "true"] if any(run_dir.glob("ckpt_*.pt")) else [])
        log = self.results / "logs" / f"{name}.log"
        print(f"[{name}] {what}\n  $ python {' '.join(args)}\n  log: {log}", flush=True)
        t0 = time.time()
        env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "PYTHONPATH": str(ROOT)}
        with open(log, "w") as f:
            proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, stdout=f, stderr=None)
        seconds = round(time.time() - t0, 1)
        if proc.returncode != 0:
            tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
            raise SystemExit(f"[{name}] failed (exit {proc.returncode}) after {seconds} s; the end of {log}:\n{tail}")
        self.timings[name] = {"seconds": seconds, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.timings_path.write_text(json.dumps(self.timings, indent=2))
        print(f"[{name}] done in {seconds} s", flush=True)
        return True


def _rc_dir(r: Runner, tag: str, seed: int) -> Path:
    return r.runs / f"regionclip-{tag}-s{seed}"


def generate(r: Runner) -> None:
    r.step("generate", f"generate the toy world ({r.world['num_train']} train / {r.world['num_val']} val images)",
           r.data / "instances_val_all.json",
           ["-m", "regionclip_min.toyworld", "--out", str(r.data), "--seed", str(r.world["seed"]), "--num-train",
            str(r.world["num_train"]), "--num-val", str(r.world["num_val"])])


def stage0(r: Runner) -> Path:
    out = r.runs / "clip"
    r.step("stage0", f"stage 0: the toy CLIP, {r.budget['stage0_steps']} steps", out / "final.pt",
           ["train_pretrain.py", "--preset", "toy-clip", "--captions", str(r.data / "captions_train.json"),
            "--out_dir", str(out), "--max_steps", str(r.budget["stage0_steps"])], run_dir=out)
    return out / "final.pt"


def rpn(r: Runner, clip: Path) -> Path:
    out = r.runs / "rpn"
    r.step("rpn", f"class-agnostic RPN on the base boxes, {r.budget['rpn_steps']} steps", out / "final.pt",
           ["train_detect.py", "--preset", "toy-rpn", "--init", str(clip), "--train_json",
            str(r.data / "instances_train_base.json"), "--val_json", str(r.data / "instances_val_all.json"),
            "--out_dir", str(out), "--max_steps", str(r.budget["rpn_steps"])], run_dir=out)
    return out / "final.pt"


def regionclip(r: Runner, clip: Path, rpn_ckpt: Path, seed: int, tag: str = "full", extra: tuple = ()) -> Path:
    out = _rc_dir(r, tag, seed)
    r.step(f"regionclip-{tag}-s{seed}", f"RegionCLIP pretraining ({tag}), seed {seed}, {r.budget['regionclip_steps']} "
           f"steps", out / "final.pt",
           ["train_pretrain.py", "--preset", "toy", "--captions", str(r.data / "captions_train.json"), "--init", str(clip),
            "--proposals", "rpn", "--rpn_checkpoint", str(rpn_ckpt), "--out_dir", str(out), "--seed", str(seed),
            "--max_steps", str(r.budget["regionclip_steps"]), "--warmup_steps", "30", "--concept_cache",
            str(r.runs / "concept-cache"), *extra], run_dir=out)
    return out / "final.pt"


def transfer(r: Runner, init: Path, name: str, seed: int, extra: tuple = ()) -> Path:
    out = r.runs / f"det-{name}-s{seed}"
    r.step(f"det-{name}-s{seed}", f"detector transfer from {name}, seed {seed}, {r.budget['detector_steps']} steps",
           out / "results.json",
           ["train_detect.py", "--preset", "toy", "--init", str(init), "--train_json",
            str(r.data / "instances_train_base.json"), "--val_json", str(r.data / "instances_val_all.json"),
            "--out_dir", str(out), "--seed", str(seed), "--max_steps", str(r.budget["detector_steps"]),
            "--warmup_steps", "30", *extra], run_dir=out)
    return out / "results.json"


def zeroshot(r: Runner, ckpt: Path, rpn_ckpt: Path, name: str, extra: tuple = ()) -> dict[str, Path]:
    outs = {}
    for boxes in ("gt", "rpn"):
        out = r.results / "zeroshot" / f"{name}-{boxes}.json"
        r.step(f"zs-{name}-{boxes}", f"zero-shot {'GT-box recognition' if boxes == 'gt' else 'RPN detection'} of "
               f"{name}", out,
               ["eval_zeroshot.py", "--checkpoint", str(ckpt), "--boxes", boxes, "--rpn_checkpoint", str(rpn_ckpt),
                "--instances", str(r.data / "instances_val_all.json"), "--out", str(out), *extra])
        outs[boxes] = out
    return outs


# ---- the stages of the benchmark --------------------------------------------------------------------------------
def run_pipeline(r: Runner, seeds: tuple = (0,)) -> None:
    generate(r)
    clip = stage0(r)
    rpn_ckpt = rpn(r, clip)
    zeroshot(r, clip, rpn_ckpt, "clip")
    for seed in seeds:
        rc = regionclip(r, clip, rpn_ckpt, seed)
        zeroshot(r, rc, rpn_ckpt, f"regionclip-s{seed}")
        transfer(r, clip, "clip", seed)
        transfer(r, rc, "regionclip", seed)
    pictures(r, clip, _rc_dir(r, "full", seeds[0]) / "final.pt", seeds[0])


ABLATIONS = [  # (tag, what, extra train_pretrain.py args); the full model is regionclip-full-s0
    ("no-distill", "without L_distill", ("--w_distill", "0")),
    ("no-region", "without L_region_contrastive", ("--w_region", "0")),
    ("no-image", "without L_image_contrastive", ("--w_image", "0")),
    ("image-only", "only L_image_contrastive, same steps (control: continued CLIP training)",
     ("--w_region", "0", "--w_distill", "0")),
    ("random-boxes", "random boxes instead of RPN proposals", ("--proposals", "random")),
    ("class-names", "concept pool = the 12 class names instead of caption nouns", ("--concepts", "CLASS_NAMES")),
    ("neg-pool", "negatives: every concept of the pool instead of the batch's", ("--negatives", "pool")),
    ("tau-teacher", "tau = the teacher's own 1/logit_scale instead of 0.01", ("--tau_from_teacher", "true")),
    ("native-128", "regions pooled at the native 128 px instead of 2x enlarged images", ("--region_scale", "1.0")),
]


def run_ablations(r: Runner) -> None:
    run_pipeline(r, seeds=(0,))
    clip, rpn_ckpt = r.runs / "clip" / "final.pt", r.runs / "rpn" / "final.pt"
    names = ",".join(c["name"] for c in json.loads((r.data / "instances_val_all.json").read_text())["categories"])
    for tag, _, extra in ABLATIONS:
        extra = tuple(names if a == "CLASS_NAMES" else a for a in extra)
        ckpt = regionclip(r, clip, rpn_ckpt, 0, tag, extra)
        zeroshot(r, ckpt, rpn_ckpt, f"regionclip-{tag}-s0")
    transfer(r, _rc_dir(r, "full", 0) / "final.pt", "regionclip-nofocal", 0,
             ("--focal_gamma", "0", "--background_weight", "1.0"))
    zeroshot(r, clip, rpn_ckpt, "clip-native-128", ("--scale", "1.0"))
    write_ablations(r)


# ---- tables ---------------------------------------------------------------------------------------------------
def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _row(gt: dict | None, rpn_res: dict | None, det: dict | None) -> dict:
    nan = float("nan")
    g = (gt or {}).get("gt_box_top1", {})
    p = (rpn_res or {}).get("rpn_ap50", {})
    d = (det or {}).get("ap50", {})
    return {"gt_top1": {k: 100 * g.get(k, nan) for k in ("all", "base", "novel")},
            "rpn_ap50": {k: 100 * p.get(k, nan) for k in ("novel", "base", "all")},
            "ovd_ap50": {k: 100 * d.get(k, nan) for k in ("novel", "base", "all")}}


COLUMNS = [("gt_top1", "all"), ("gt_top1", "base"), ("gt_top1", "novel"), ("rpn_ap50", "novel"),
           ("rpn_ap50", "base"), ("rpn_ap50", "all"), ("ovd_ap50", "novel"), ("ovd_ap50", "base"),
           ("ovd_ap50", "all")]
HEADER = ("| model | GT-box top-1 all | base | novel | zero-shot RPN AP50 novel | base | all | OVD transfer AP50 novel "
          "| base | all |\n|---|---|---|---|---|---|---|---|---|---|")


def _stats(rows: list[dict]) -> dict:
    """Per column: mean, std (sample, n >= 2) and n over the rows where the value exists."""
    out = {}
    for group, key in COLUMNS:
        vals = [r[group][key] for r in rows if not math.isnan(r[group][key])]
        out[f"{group}.{key}"] = {"mean": statistics.fmean(vals) if vals else float("nan"),
                                 "std": statistics.stdev(vals) if len(vals) > 1 else float("nan"), "n": len(vals)}
    return out


def _fmt(s: dict) -> str:
    if s["n"] == 0:
        return "—"
    return f"{s['mean']:.1f}" + (f" ± {s['std']:.1f}" if s["n"] > 1 else "")


def summarize(r: Runner) -> dict:
    """results/toy/summary.{json,md} from whatever runs exist; prints the markdown."""
    zs = r.results / "zeroshot"
    clip_gt, clip_rpn = _load(zs / "clip-gt.json"), _load(zs / "clip-rpn.json")
    if clip_gt is None:
        raise SystemExit(f"no {zs / 'clip-gt.json'} yet: run `make toy` first")
    whole, region = 100 * clip_gt["whole_image_top1"]["accuracy"], 100 * clip_gt["gt_box_top1"]["all"]
    fig1b = {"whole_image_top1": whole, "gt_box_top1": region, "gap": whole - region,
             "whole_image_target_met": whole >= 70.0, "gap_target_met": whole - region >= 20.0}
    seeds = [s for s in r.seeds if (r.runs / f"det-regionclip-s{s}" / "results.json").is_file()
             and (zs / f"regionclip-s{s}-gt.json").is_file()]
    clip_rows = [_row(clip_gt, clip_rpn, _load(r.runs / f"det-clip-s{s}" / "results.json")) for s in seeds]
    rc_rows = [_row(_load(zs / f"regionclip-s{s}-gt.json"), _load(zs / f"regionclip-s{s}-rpn.json"),
                    _load(r.runs / f"det-regionclip-s{s}" / "results.json")) for s in seeds]
    clip_s, rc_s = _stats(clip_rows), _stats(rc_rows)
    verdict = {}
    for col in clip_s:
        diff = rc_s[col]["mean"] - clip_s[col]["mean"]
        spread = max([v for v in (rc_s[col]["std"], clip_s[col]["std"]) if not math.isnan(v)], default=float("nan"))
        verdict[col] = {"regionclip_minus_clip": diff, "seed_std": spread,
                        "beats_by_more_than_std": bool(diff > spread) if not math.isnan(spread) else None}
    timings = _load(r.results / "timings.json") or {}
    summary = {"world": r.world, "budget": r.budget, "seeds": seeds, "fig1b": fig1b, "clip": clip_s, "regionclip": rc_s,
               "per_seed": {"clip": clip_rows, "regionclip": rc_rows}, "verdict": verdict, "timings": timings,
               "machine": machine()}
    (r.results / "summary.json").write_text(json.dumps(summary, indent=2))
    md = [f"# Toy benchmark: CLIP vs RegionCLIP ({len(seeds)} seed{'s' if len(seeds) != 1 else ''}: "
          f"{', '.join(map(str, seeds)) or 'none finished'})", "",
          "## Stage 0 reproduces Fig. 1(b)?", "",
          "| stage-0 CLIP | top-1 | target |", "|---|---|---|",
          f"| whole object-centric val images | {whole:.1f} | ≥ 70: {'met' if fig1b['whole_image_target_met'] else 'NOT met'} |",
          f"| GT boxes in val scenes (regions, 2×) | {region:.1f} | ≥ 20 points lower: gap {whole - region:.1f}, "
          f"{'met' if fig1b['gap_target_met'] else 'NOT met'} |", "",
          "## CLIP vs RegionCLIP (Tables 1 and 4)", "", HEADER,
          "| CLIP (stage 0) | " + " | ".join(_fmt(clip_s[f"{g}.{k}"]) for g, k in COLUMNS) + " |",
          "| RegionCLIP | " + " | ".join(_fmt(rc_s[f"{g}.{k}"]) for g, k in COLUMNS) + " |",
          "| RegionCLIP − CLIP | " + " | ".join(f"{verdict[f'{g}.{k}']['regionclip_minus_clip']:+.1f}"
                                            for g, k in COLUMNS) + " |", "",
          f"Mean ± sample std over seeds {seeds} of the RegionCLIP pretraining and of both transfers. The stage-0 "
          "CLIP is one model shared by every seed (as OpenAI's CLIP is one fixed model in the paper), so its "
          "zero-shot columns have no spread; its transfer does (the detector's seed).", "",
          "Where RegionCLIP beats CLIP by more than the larger seed std: " + ((", ".join(
              f"{g.replace('_', ' ')} {k}" for g, k in COLUMNS if verdict[f"{g}.{k}"]["beats_by_more_than_std"])
              or "nowhere") if len(seeds) > 1 else "not known from one seed (make toy-seeds)") + ".", "",
          f"Budget: {r.budget}; world: {r.world}.", "", "## Step times", "", "| step | seconds |", "|---|---|"]
    md += [f"| {k} | {v['seconds']} |" for k, v in timings.items()]
    md += ["", f"Machine: {summary['machine']}"]
    text = "\n".join(md) + "\n"
    (r.results / "summary.md").write_text(text)
    print(text)
    return summary


def write_ablations(r: Runner) -> None:
    zs = r.results / "zeroshot"
    full = _row(_load(zs / "regionclip-s0-gt.json"), _load(zs / "regionclip-s0-rpn.json"),
                _load(r.runs / "det-regionclip-s0" / "results.json"))
    rows = [("CLIP (stage 0, the teacher)", _row(_load(zs / "clip-gt.json"), _load(zs / "clip-rpn.json"),
                                               _load(r.runs / "det-clip-s0" / "results.json"))),
            ("CLIP, regions pooled at the native 128 px (`--scale 1`)",
             _row(_load(zs / "clip-native-128-gt.json"), _load(zs / "clip-native-128-rpn.json"), None)),
            ("**RegionCLIP, full model**", full)]
    for tag, what, _ in ABLATIONS:
        rows.append((what, _row(_load(zs / f"regionclip-{tag}-s0-gt.json"), _load(zs / f"regionclip-{tag}-s0-rpn.json"),
                                None)))
    rows.append(("transfer without focal scaling (γ 0, background weight 1)",
                 _row(None, None, _load(r.runs / "det-regionclip-nofocal-s0" / "results.json"))))
    fmt = lambda v: "—" if math.isnan(v) else f"{v:.1f}"  # noqa: E731
    md = ["# Toy ablations (seed 0, one row each against the full model)", "", HEADER]
    md += [f"| {name} | " + " | ".join(fmt(row[g][k]) for g, k in COLUMNS) + " |" for name, row in rows]
    md += ["", f"Every RegionCLIP row: {r.budget['regionclip_steps']} steps from the same stage 0, RPN proposals unless "
           "the row says otherwise, evaluated by the same protocol (regions pooled at 2×). OVD transfer (— where not "
           "run) only for the full model and the focal row, to keep the run short."]
    (r.results / "ablations.md").write_text("\n".join(md) + "\n")
    (r.results / "ablations.json").write_text(json.dumps(dict(rows), indent=2))
    print("\n".join(md))


def machine() -> str:
    return (f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} "
            f"threads), {platform.python_version()}, "
            f"peak child RSS {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:.0f} MB this call")


# ---- pictures -------------------------------------------------------------------------------------------------
def pictures(r: Runner, clip_ckpt: Path, rc_ckpt: Path, seed: int, n_images: int = 6) -> None:
    """regions.png (GT boxes named by CLIP and by RegionCLIP, green right / red wrong) and detections.png (the two
    transferred detectors' top detections, novel classes marked *)."""
    from torchvision.utils import make_grid, save_image

    from regionclip_min.clip_model import TEMPLATES, encode_texts, load_clip
    from regionclip_min.data import DetectionDataset
    from regionclip_min.detector import load_detector
    from regionclip_min.drawing import draw_detections, render_boxes
    from regionclip_min.evaluation import region_embeddings
    from regionclip_min.regions import RegionEncoder

    out_regions, out_dets = r.results / "regions.png", r.results / "detections.png"
    if out_regions.is_file() and out_dets.is_file() and not r.force:
        return
    ds = DetectionDataset(r.data / "instances_val_all.json", r.data / "images")
    novel = [s == "novel" for s in ds.category_splits]
    picks = [i for i in range(len(ds)) if ds.kinds[i] == "scene"][:n_images]
    panels = []
    for ckpt in (clip_ckpt, rc_ckpt):
        model, tok = load_clip("RN-toy", str(ckpt))
        emb = encode_texts(model, tok, ds.category_names, TEMPLATES)  # (K, D)
        enc = RegionEncoder(model.visual).eval()
        row = []
        for i in picks:
            image, target = ds[i]
            v = region_embeddings(enc, [image], [target["boxes"]], scale=2.0)[0]  # (N, D)
            pred = (v @ emb.t()).argmax(-1).tolist()
            truth = (target["labels"] - 1).tolist()
            labels = [f"{ds.category_names[p]}{'*' if novel[p] else ''}" for p in pred]
            colors = ["lime" if p == t else "red" for p, t in zip(pred, truth)]
            row.append(render_boxes(image, target["boxes"], labels, colors, scale=3))
        panels += row
    grid = make_grid([p.float() / 255 for p in panels], nrow=len(picks), padding=6, pad_value=1.0)
    save_image(grid, out_regions)
    print(f"{out_regions}: top row CLIP, bottom row RegionCLIP; green right, red wrong; * novel")
    dets = []
    for name in ("clip", "regionclip"):
        ckpt = r.runs / f"det-{name}-s{seed}" / "final.pt"
        det = load_detector(ckpt)
        for i in picks:
            image, _ = ds[i]
            with torch.no_grad():
                out = det([image])[0]
            labels = (out["labels"] - 1).tolist()
            dets.append(draw_detections(image, out["boxes"], [ds.category_names[k] for k in labels], out["scores"],
                                        None, is_novel=[novel[k] for k in labels], score_thresh=0.3, max_boxes=5,
                                        scale=3))
    grid = make_grid([p.float() / 255 for p in dets], nrow=len(picks), padding=6, pad_value=1.0)
    save_image(grid, out_dets)
    print(f"{out_dets}: top row transfer from CLIP, bottom row from RegionCLIP; novel classes red and *")


def _key_values(text: str, defaults: dict) -> dict:
    """'a=1,b=2' -> {"a": 1, "b": 2} for keys of `defaults` (integers)."""
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, _, value = item.partition("=")
        if key not in defaults or not value.strip().isdigit():
            raise SystemExit(f"expected key=integer with keys {sorted(defaults)}, got {item!r}")
        out[key] = int(value)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("what", choices=("run", "seeds", "ablations", "summary"))
    p.add_argument("--force", action="store_true", help="redo steps whose outputs exist (make ... FORCE=1)")
    p.add_argument("--data", default=str(DATA), help="toy world folder (default %(default)s)")
    p.add_argument("--runs", default=str(RUNS), help="run folders (default %(default)s)")
    p.add_argument("--results", default=str(RESULTS), help="tables, pictures, logs (default %(default)s)")
    p.add_argument("--world", default="", help=f"override the world, e.g. num_train=2000 (default {WORLD})")
    p.add_argument("--budget", default="", help=f"override step counts, e.g. regionclip_steps=600 (default {BUDGET})")
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="seeds of `seeds` (default %(default)s)")
    args = p.parse_args(argv)
    t0 = time.time()
    r = Runner(force=args.force, data=Path(args.data), runs=Path(args.runs), results=Path(args.results),
               world=_key_values(args.world, WORLD), budget=_key_values(args.budget, BUDGET),
               seeds=tuple(int(x) for x in args.seeds.split(",") if x.strip()))
    if args.what == "run":
        run_pipeline(r)
    elif args.what == "seeds":
        run_pipeline(r, seeds=r.seeds)
    elif args.what == "ablations":
        run_ablations(r)
    summarize(r)
    print(f"{args.what}: {time.time() - t0:.0f} s in this call")


if __name__ == "__main__":
    main()
