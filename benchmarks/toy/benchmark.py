"""The toy benchmark: the paper's claims, end to end on the toy world, by one command (docs/RESULTS.md).

    python -m benchmarks.toy.benchmark run          # make toy:           one seed, the whole pipeline
    python -m benchmarks.toy.benchmark seeds        # make toy-seeds:     RegionCLIP + transfer for seeds 0, 1, 2
    python -m benchmarks.toy.benchmark seeds --row crop-teacher   # the same for an ablation row (summary-<row>.md)
    python -m benchmarks.toy.benchmark ablations    # make toy-ablations: the paper's ablations, one row each
    python -m benchmarks.toy.benchmark transfers    # make toy-transfers: fully supervised, RoI sampling, seeds 0-2
    python -m benchmarks.toy.benchmark seeds --worlds default,w1,w2   # make toy-seeds-worlds: other world instances
    python -m benchmarks.toy.benchmark summary      # only rebuild the tables from the runs

Tables, pictures and logs go to --results, by default runs/toy-bench/results/, which git does not track; the
committed reference results are in results/toy/ (a maintainer refreshes them with --results results/toy, or
`make toy-seeds RESULTS=results/toy`). The pipeline (every step is one of the project's own commands, run as a
subprocess; its log goes to <results>/logs/<step>.log):

    generate the toy world (data/toy)
    -> stage 0: a tiny CLIP on the captions (train_pretrain.py --preset toy-clip): the teacher and the "CLIP" row
    -> a class-agnostic RPN on the base boxes (train_detect.py --preset toy-rpn)
    -> RegionCLIP pretraining from stage 0 with RPN proposals (train_pretrain.py --preset toy)
    -> detector transfer from the CLIP and from the RegionCLIP checkpoints (train_detect.py --preset toy)
    -> zero-shot GT-box and RPN evaluation of both (eval_zeroshot.py)
    -> <results>/summary.md / .json (Fig. 1(b) check, the CLIP vs RegionCLIP table), regions.png, detections.png

Steps run two at a time once stage 0 is done (--jobs, benchmarks/toy/pipeline.py: two 1-thread processes get more
out of 2 cores than one 2-thread process). Thread counts are fixed (stage 0 at STAGE0_THREADS, every other step at
THREADS), so a run gives the committed numbers to the last digit on any machine with at least 2 cores. A step
whose output exists is not redone (--force redoes them); a step whose run folder holds a killed run resumes it.
Step counts are the BUDGET below; every row of every table uses the same world, the same budget and the same
evaluation.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.toy.pictures import pictures
from benchmarks.toy.pipeline import Runner, Step, prefixed
from benchmarks.toy.rows import ABLATIONS, LONG_ABLATIONS, TRANSFER_ABLATIONS, TRANSFER_STUDIES
from benchmarks.toy.study_tables import write_transfers, write_worlds
from benchmarks.toy.tables import rc_dir, row_names, summarize, write_ablations
from regionclip_min.toyworld import NOVEL_SHAPES, SHAPES

DATA = Path("data/toy")
RUNS = Path("runs/toy-bench")
RESULTS = Path("runs/toy-bench/results")  # untracked; the committed reference tables are in results/toy/
WORLD = dict(seed=0, num_train=8000, num_val=500, novel=":".join(NOVEL_SHAPES))  # docs/DESIGN.md §5.1 world C size
WORLDS = {  # world instances of `seeds --worlds`: the world seed and the novel split change, the rest is WORLD's
    "default": {k: WORLD[k] for k in ("seed", "novel")},  # the benchmark's own world (data/toy, runs/toy-bench)
    "w1": dict(seed=1, novel="star:pentagon:crescent"),
    "w2": dict(seed=2, novel="triangle:diamond:ring"),
}
BUDGET = dict(stage0_steps=2500, rpn_steps=600, regionclip_steps=300, detector_steps=300)
SEEDS = (0, 1, 2)
AMP = "none"  # float32: bf16 autocast made stage 0 1.3x faster here but it then learned no novel shape
JOBS = 2  # steps side by side (benchmarks/toy/pipeline.py: two 1-thread lanes beat one 2-thread lane)
THREADS, STAGE0_THREADS = 1, 2  # fixed per step: float rounding depends on them (stage 0 runs alone, on both cores)


# ---- the steps ------------------------------------------------------------------------------------------------
class Bench:
    """Where the benchmark reads and writes, the world and budget, and the pipeline runner."""

    def __init__(self, force: bool = False, *, data: Path = DATA, runs: Path = RUNS, results: Path = RESULTS,
                 world: dict | None = None, budget: dict | None = None, seeds: tuple = SEEDS, jobs: int = JOBS):
        self.force, self.data, self.runs, self.results = force, Path(data), Path(runs), Path(results)
        self.world, self.budget, self.seeds = {**WORLD, **(world or {})}, {**BUDGET, **(budget or {})}, tuple(seeds)
        self.runner = Runner(self.results, force=force, jobs=jobs, threads=THREADS)
        self.what = "run"  # which command (run | seeds | ablations), recorded with each call's wall time and memory

    def run(self, steps: list[Step]) -> None:
        t0 = time.time()
        self.runner.run(steps)
        mem = self.runner.memory
        if self.runner.ran:  # keep this call's wall time and memory peak
            calls = self.runner.timings.setdefault("_calls", [])
            calls.append({"command": f"benchmarks.toy.benchmark {self.what}", "steps_run": self.runner.ran,
                          "wall_seconds": round(time.time() - t0, 1), "jobs": self.runner.jobs,
                          "peak_memory_mb": round(mem.peak_pss_kb / 1024), "peak_process_rss_mb":
                          round(mem.peak_rss_kb / 1024), "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
            self.runner.timings_path.write_text(json.dumps(self.runner.timings, indent=2))


def _ckpt(b: Bench, step: str) -> Path:
    """The checkpoint that pipeline step `step` writes (stage 0 writes runs/clip, the others runs/<step>)."""
    return b.runs / ("clip" if step == "stage0" else step) / "final.pt"


def generate(b: Bench) -> Step:
    return Step("generate", f"generate the toy world ({b.world['num_train']} train / {b.world['num_val']} val images)",
                b.data / "instances_val_all.json",
                ["-m", "regionclip_min.toyworld", "--out", b.data, "--seed", b.world["seed"], "--num-train",
                 b.world["num_train"], "--num-val", b.world["num_val"], "--stats", f"novel={b.world['novel']}"],
                threads=STAGE0_THREADS)


def stage0(b: Bench, large: bool = False) -> Step:
    """Stage 0: the toy CLIP (RN-toy), or with `large` the larger teacher of the teacher / student row (RN-toy-L,
    runs/clip-L), trained by the same command."""
    out, name, model = (b.runs / "clip-L", "stage0-L", "RN-toy-L") if large else (b.runs / "clip", "stage0", "RN-toy")
    return Step(name, f"stage 0: the toy CLIP ({model}), {b.budget['stage0_steps']} steps", out / "final.pt",
                ["train_pretrain.py", "--preset", "toy-clip", "--captions", b.data / "captions_train.json",
                 "--out_dir", out, "--max_steps", b.budget["stage0_steps"], "--amp", AMP,
                 *(("--model_name", model) if large else ())], run_dir=out,
                after=("generate",), threads=STAGE0_THREADS)


def rpn(b: Bench) -> Step:
    out = b.runs / "rpn"
    return Step("rpn", f"class-agnostic RPN on the base boxes, {b.budget['rpn_steps']} steps", out / "final.pt",
                ["train_detect.py", "--preset", "toy-rpn", "--init", b.runs / "clip" / "final.pt", "--train_json",
                 b.data / "instances_train_base.json", "--val_json", b.data / "instances_val_all.json",
                 "--out_dir", out, "--max_steps", b.budget["rpn_steps"]], run_dir=out, after=("stage0",))


def regionclip(b: Bench, seed: int, tag: str = "full", extra: tuple = ()) -> Step:
    out = rc_dir(b, tag, seed)
    steps = extra[extra.index("--max_steps") + 1] if "--max_steps" in extra else b.budget["regionclip_steps"]
    return Step(f"regionclip-{tag}-s{seed}", f"RegionCLIP pretraining ({tag}), seed {seed}, {steps} steps",
                out / "final.pt",
                ["train_pretrain.py", "--preset", "toy", "--captions", b.data / "captions_train.json", "--init",
                 b.runs / "clip" / "final.pt", "--rpn_checkpoint", b.runs / "rpn" / "final.pt",
                 "--out_dir", out, "--seed", seed, "--max_steps", b.budget["regionclip_steps"],
                 "--concept_cache", b.runs / "concept-cache", "--amp", AMP, *extra], run_dir=out,
                after=("stage0", "rpn") + (("stage0-L",) if "--teacher_init" in extra else ()))


def transfer(b: Bench, init_step: str, name: str, seed: int, extra: tuple = ()) -> Step:
    """Detector transfer from the checkpoint that step `init_step` wrote; `extra` options come last, so they
    override the defaults given here (ALL_BOXES stands for the train json with every category's boxes)."""
    init = _ckpt(b, init_step)
    out = b.runs / f"det-{name}-s{seed}"
    extra = tuple(b.data / "instances_train_all.json" if a == "ALL_BOXES" else a for a in extra)
    return Step(f"det-{name}-s{seed}", f"detector transfer from {name}, seed {seed}, {b.budget['detector_steps']} "
                f"steps", out / "results.json",
                ["train_detect.py", "--preset", "toy", "--init", init, "--train_json",
                 b.data / "instances_train_base.json", "--val_json", b.data / "instances_val_all.json",
                 "--out_dir", out, "--seed", seed, "--max_steps", b.budget["detector_steps"], *extra], run_dir=out,
                after=(init_step,))


def zeroshot(b: Bench, ckpt_step: str, name: str, extra: tuple = (), literal_tau: bool = False) -> list[Step]:
    """Zero-shot GT-box and RPN evaluation of the checkpoint that step `ckpt_step` wrote, at the model's own
    temperature (eval_zeroshot.py's protocol); `literal_tau`: the RPN evaluation again at tau = 0.01, OpenAI CLIP's
    value (GT-box top-1 does not depend on tau)."""
    ckpt = _ckpt(b, ckpt_step)
    runs = [("gt", "gt", ()), ("rpn", "rpn", ())] + ([("rpn", "rpn-tau0.01", ("--tau", "0.01"))] if literal_tau
                                                     else [])
    return [Step(f"zs-{name}-{key}", f"zero-shot {'GT-box recognition' if boxes == 'gt' else 'RPN detection'} of "
                 f"{name}{' at tau 0.01' if tau else ''}", b.results / "zeroshot" / f"{name}-{key}.json",
                 ["eval_zeroshot.py", "--checkpoint", ckpt, "--boxes", boxes, "--rpn_checkpoint",
                  b.runs / "rpn" / "final.pt", "--instances", b.data / "instances_val_all.json", "--out",
                  b.results / "zeroshot" / f"{name}-{key}.json", "--overwrite", "true", *extra, *tau],
                 after=(ckpt_step,) if boxes == "gt" else (ckpt_step, "rpn")) for boxes, key, tau in runs]


# ---- the stages of the benchmark --------------------------------------------------------------------------------
def _extra(b: Bench, tag: str) -> tuple:
    """The train_pretrain.py arguments of ABLATIONS row `tag` (none for the full model)."""
    names = {"CLASS_NAMES": ",".join(SHAPES), "TEACHER_L": b.runs / "clip-L" / "final.pt"}
    return tuple(names.get(a, a) for a in _raw(tag))


def _large_teacher(b: Bench, tags) -> list[Step]:
    """[the RN-toy-L stage 0] when a row of `tags` is taught by it, else []."""
    return [stage0(b, large=True)] if any("TEACHER_L" in _raw(t) for t in tags) else []


def _raw(tag: str) -> tuple:
    return {t: e for t, _, e in ABLATIONS}.get(tag, ())


def pipeline_steps(b: Bench, seeds: tuple = (0,), tag: str = "full") -> list[Step]:
    """The pipeline, critical path first (the runner starts ready steps in this order); `tag` picks the RegionCLIP
    row (the full model, or an ABLATIONS row run for several seeds)."""
    steps = [generate(b), stage0(b), *_large_teacher(b, [tag]), rpn(b)]
    steps += [regionclip(b, seed, tag, _extra(b, tag)) for seed in seeds]
    steps += [transfer(b, f"regionclip-{tag}-s{seed}", row_names(tag, seed)[1], seed) for seed in seeds]
    steps += [transfer(b, "stage0", "clip", seed) for seed in seeds]
    steps += zeroshot(b, "stage0", "clip", literal_tau=True)
    steps += [s for seed in seeds for s in zeroshot(b, f"regionclip-{tag}-s{seed}", row_names(tag, seed)[0],
                                                    literal_tau=tag == "full")]
    return steps


def world_bench(b: Bench, name: str) -> Bench:
    """The Bench of world instance `name` of WORLDS: `b` itself for "default"; otherwise its own data, runs and
    results folders beside b's (data/toy-<name>, <runs>/worlds/<name>, <results>/worlds/<name>), with b's world
    size, budget and seeds, and the world seed and novel split of WORLDS[name]."""
    if name == "default":
        return b
    return Bench(b.force, data=b.data.with_name(f"{b.data.name}-{name}"), runs=b.runs / "worlds" / name,
                 results=b.results / "worlds" / name, world={**b.world, **WORLDS[name]}, budget=b.budget,
                 seeds=b.seeds, jobs=b.runner.jobs)


def run_worlds(b: Bench, names: list[str], tag: str = "full") -> None:
    """`seeds` on several world instances: every world's pipeline in one step list (other worlds' step names
    prefixed '<name>.'), so both lanes stay busy; each world's step times go to its own results folder."""
    benches = {n: world_bench(b, n) for n in names}
    steps = []
    for n, bw in benches.items():
        own = pipeline_steps(bw, bw.seeds, tag)
        steps += own if n == "default" else prefixed(own, f"{n}.")
    # every world's 2-thread steps (generate, stage 0) first: they take both cores, so they run one after the other
    # before the 1-thread steps fill both lanes
    b.run(sorted(steps, key=lambda s: s.threads != STAGE0_THREADS))
    for n, bw in benches.items():
        if n != "default":  # its steps' timings, under their own names, for its summary's step-time table
            own = {k[len(n) + 1:]: v for k, v in b.runner.timings.items() if k.startswith(f"{n}.")}
            bw.results.mkdir(parents=True, exist_ok=True)
            (bw.results / "timings.json").write_text(json.dumps(own, indent=2))
    if "default" in benches and tag == "full":
        draw_pictures(b, b.seeds[0])


def draw_pictures(b: Bench, seed: int) -> None:
    """The pictures (benchmarks/toy/pictures.py) of the stage-0 CLIP and the full RegionCLIP model of `seed`."""
    pictures(b, b.runs / "clip" / "final.pt", rc_dir(b, "full", seed) / "final.pt", seed)


def _what(tag: str) -> str:
    return "" if tag == "full" else dict((t, w) for t, w, _ in ABLATIONS)[tag]


def run_pipeline(b: Bench, seeds: tuple = (0,), tag: str = "full") -> None:
    b.run(pipeline_steps(b, seeds, tag))
    if tag == "full":  # the pictures show the paper's model
        draw_pictures(b, seeds[0])


def run_transfers(b: Bench, tags: list[str]) -> None:
    """The TRANSFER_STUDIES rows `tags`, each from CLIP and from RegionCLIP for every seed, beside the headline
    pipeline whose checkpoints they start from; then <results>/transfers.md."""
    studies = [t for t in TRANSFER_STUDIES if t[0] in tags]
    steps = pipeline_steps(b, b.seeds)
    for tag, _, extra in studies:
        for seed in b.seeds:
            steps += [transfer(b, "stage0", f"clip-{tag}", seed, extra),
                      transfer(b, f"regionclip-full-s{seed}", f"regionclip-{tag}", seed, extra)]
    b.run(steps)
    write_transfers(b, studies)


def run_ablations(b: Bench) -> None:
    steps = pipeline_steps(b, seeds=(0,)) + _large_teacher(b, [t for t, _, _ in ABLATIONS])
    rows = sorted(ABLATIONS, key=lambda r: r[0] not in LONG_ABLATIONS)  # the long ones first: a shorter tail
    for tag, _, _ in rows:
        steps += [regionclip(b, 0, tag, _extra(b, tag)), *zeroshot(b, f"regionclip-{tag}-s0",
                                                                   f"regionclip-{tag}-s0")]
        if tag in TRANSFER_ABLATIONS:
            steps.append(transfer(b, f"regionclip-{tag}-s0", f"regionclip-{tag}", 0))
    steps += [transfer(b, "regionclip-full-s0", "regionclip-nofocal", 0, ("--focal_gamma", "0", "--background_weight",
                                                                           "1.0")),
              # the classifier at the paper's literal tau = 0.01 (OpenAI CLIP's own) instead of the toy CLIP's own
              *(transfer(b, init, f"{name}-tau0.01", 0, ("--tau_from_init", "false", "--tau", "0.01"))
                for init, name in (("stage0", "clip"), ("regionclip-full-s0", "regionclip"))),
              *zeroshot(b, "stage0", "clip-native-128", ("--region_scale", "1.0")),
              *zeroshot(b, "stage0", "clip-crop", ("--region_encoder", "crop"))]
    b.run(steps)
    draw_pictures(b, 0)
    write_ablations(b, ABLATIONS)


def _key_values(text: str, defaults: dict) -> dict:
    """'a=1,b=x' -> {"a": 1, "b": "x"} for keys of `defaults` (integers, or text where the default is text)."""
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, _, value = item.partition("=")
        text_value = isinstance(defaults.get(key), str)
        if key not in defaults or not (value.strip() if text_value else value.strip().isdigit()):
            raise SystemExit(f"expected key=value with keys {sorted(defaults)} (integers; novel=a:b:c), got {item!r}")
        out[key] = value.strip() if text_value else int(value)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("what", choices=("run", "seeds", "ablations", "transfers", "summary"))
    p.add_argument("--force", action="store_true", help="redo steps whose outputs exist (make ... FORCE=1)")
    p.add_argument("--data", default=str(DATA), help="toy world folder (default %(default)s)")
    p.add_argument("--runs", default=str(RUNS), help="run folders (default %(default)s)")
    p.add_argument("--results", default=str(RESULTS), help="tables, pictures, logs (default %(default)s)")
    p.add_argument("--world", default="", help=f"override the world, e.g. num_train=2000 (default {WORLD})")
    p.add_argument("--budget", default="", help=f"override step counts, e.g. regionclip_steps=600 (default {BUDGET})")
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="seeds of `seeds` (default %(default)s)")
    p.add_argument("--jobs", type=int, default=JOBS, help="steps run side by side (default %(default)s; 1: one "
                   "after the other, each progress bar on the terminal); thread counts stay fixed")
    p.add_argument("--studies", default=",".join(t for t, _, _ in TRANSFER_STUDIES),
                   help="transfers: the TRANSFER_STUDIES rows to run (default: all, %(default)s)")
    p.add_argument("--worlds", default="", help="seeds / summary: these world instances (comma list of "
                   f"{', '.join(WORLDS)}), each with its own stage 0, and <results>/summary-worlds.md (default: "
                   "the default world alone)")
    p.add_argument("--row", default="full", choices=("full", *(t for t, _, _ in ABLATIONS)),
                   help="seeds / summary: the RegionCLIP row run for every seed, 'full' (the paper's model, "
                   "summary.md) or an ablation row (summary-<row>.md) (default %(default)s)")
    args = p.parse_args(argv)
    t0 = time.time()
    if args.jobs < 1:
        raise SystemExit(f"--jobs must be >= 1, got {args.jobs}")
    if args.row != "full" and args.what not in ("seeds", "summary"):
        raise SystemExit(f"--row {args.row}: only for `seeds` and `summary` (run and ablations use the full model)")
    worlds = [w.strip() for w in args.worlds.split(",") if w.strip()]
    if worlds and (args.what not in ("seeds", "summary") or set(worlds) - set(WORLDS)):
        raise SystemExit(f"--worlds: only for `seeds` and `summary`, with names of {', '.join(WORLDS)}; got "
                         f"{args.worlds!r} for `{args.what}`")
    b = Bench(force=args.force, data=Path(args.data), runs=Path(args.runs), results=Path(args.results),
              world=_key_values(args.world, WORLD), budget=_key_values(args.budget, BUDGET),
              seeds=tuple(int(x) for x in args.seeds.split(",") if x.strip()), jobs=args.jobs)
    b.what = args.what + (f" --worlds {','.join(worlds)}" if worlds else "")
    row = args.row if args.what in ("seeds", "summary") else "full"
    if worlds:  # seeds or summary on several world instances: each world's summary.md, then summary-worlds.md
        if args.what == "seeds":
            run_worlds(b, worlds, row)
        benches = {w: world_bench(b, w) for w in worlds}
        for bw in benches.values():
            summarize(bw, row, _what(row))
        write_worlds(b, benches, row)
        print(f"{b.what}: {time.time() - t0:.0f} s in this call")
        return
    if args.what == "run":
        run_pipeline(b)
    elif args.what == "seeds":
        run_pipeline(b, seeds=b.seeds, tag=args.row)
    elif args.what == "ablations":
        run_ablations(b)
    elif args.what == "transfers":
        tags = [t.strip() for t in args.studies.split(",") if t.strip()]
        unknown = sorted(set(tags) - {t for t, _, _ in TRANSFER_STUDIES})
        if unknown or not tags:
            raise SystemExit(f"--studies: unknown {unknown or 'none given'}; known: "
                             f"{', '.join(t for t, _, _ in TRANSFER_STUDIES)}")
        run_transfers(b, tags)
    summarize(b, row, _what(row))
    print(f"{args.what}: {time.time() - t0:.0f} s in this call")


if __name__ == "__main__":
    main()
