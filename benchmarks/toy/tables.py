"""The toy benchmark's tables, written from whatever run folders and result files exist (docs/RESULTS.md).

    results/toy/summary.{md,json}      CLIP vs RegionCLIP, mean ± std over seeds (summary-<row>.* for an ablation
                                       row run for every seed), the Fig. 1(b) check, step times
    results/toy/ablations.{md,json}    one row per ablation against the full model (seed 0)
    (the studies' tables, transfers.md and summary-worlds.md, are in study_tables.py)

benchmark.py runs the steps and then calls these; `python -m benchmarks.toy.benchmark summary` only rebuilds
summary.md. Where a RegionCLIP row writes is named here (`row_names`, `rc_dir`), so the steps and the tables agree on
it. A run that did not happen reads as NaN in the JSON and as — in the markdown, never as a number.
"""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from regionclip_min.checkpoint import write_json

if TYPE_CHECKING:
    from benchmarks.toy.benchmark import Bench


# ---- where each RegionCLIP row writes ---------------------------------------------------------------------------
def row_names(tag: str, seed: int) -> tuple[str, str]:
    """(zero-shot result name, transfer name) of RegionCLIP row `tag` ("full" or an ABLATIONS tag) and seed."""
    return (f"regionclip-s{seed}", "regionclip") if tag == "full" else (f"regionclip-{tag}-s{seed}",
                                                                           f"regionclip-{tag}")


def rc_dir(b: Bench, tag: str, seed: int) -> Path:
    """The run folder of RegionCLIP row `tag` and seed."""
    return b.runs / f"regionclip-{tag}-s{seed}"


# ---- summary.md: CLIP vs RegionCLIP over seeds ------------------------------------------------------------------
def _nan_for_null(obj):
    """Result files are strict JSON, with null for a NaN metric: back to NaN, which the tables print as n/a."""
    if obj is None:
        return float("nan")
    if isinstance(obj, dict):
        return {k: _nan_for_null(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_for_null(v) for v in obj]
    return obj


def _load(path: Path) -> dict | None:
    return _nan_for_null(json.loads(path.read_text())) if path.is_file() else None


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


def mean_std(vals: list[float]) -> dict:
    """Mean, sample std (n >= 2) and n of `vals` (NaN where undefined)."""
    return {"mean": statistics.fmean(vals) if vals else float("nan"),
            "std": statistics.stdev(vals) if len(vals) > 1 else float("nan"), "n": len(vals)}


def fmt_mean_std(s: dict) -> str:
    """A `mean_std` as a table cell: "m ± s", "m" for one value, "—" for none."""
    if s["n"] == 0:
        return "—"
    return f"{s['mean']:.1f}" + (f" ± {s['std']:.1f}" if s["n"] > 1 else "")


def _stats(rows: list[dict], columns: list[tuple] = COLUMNS) -> dict:
    """Per column: `mean_std` over the rows where the value exists."""
    return {f"{group}.{key}": mean_std([r[group][key] for r in rows if not math.isnan(r[group][key])])
            for group, key in columns}


def summarize(b: Bench, tag: str = "full", what: str = "") -> dict:
    """results/toy/summary.{json,md} (summary-<tag>.* for an ablation row run for several seeds, `what` saying what
    the row is) from whatever runs exist; prints the markdown."""
    zs = b.results / "zeroshot"
    zs_name, det_name = (lambda s: row_names(tag, s)[0]), (lambda s: f"det-{row_names(tag, s)[1]}-s{s}")
    what = "" if tag == "full" else f", RegionCLIP row '{tag}': {what}"
    clip_gt, clip_rpn = _load(zs / "clip-gt.json"), _load(zs / "clip-rpn.json")
    if clip_gt is None:
        raise SystemExit(f"no {zs / 'clip-gt.json'} yet: run `make toy` first")
    whole, region = 100 * clip_gt["whole_image_top1"]["accuracy"], 100 * clip_gt["gt_box_top1"]["all"]
    fig1b = {"whole_image_top1": whole, "gt_box_top1": region, "gap": whole - region,
             "whole_image_target_met": whole >= 70.0, "gap_target_met": whole - region >= 20.0}
    seeds = [s for s in b.seeds if (b.runs / det_name(s) / "results.json").is_file()
             and (zs / f"{zs_name(s)}-gt.json").is_file()]
    clip_rows = [_row(clip_gt, clip_rpn, _load(b.runs / f"det-clip-s{s}" / "results.json")) for s in seeds]
    rc_rows = [_row(_load(zs / f"{zs_name(s)}-gt.json"), _load(zs / f"{zs_name(s)}-rpn.json"),
                    _load(b.runs / det_name(s) / "results.json")) for s in seeds]
    clip_s, rc_s = _stats(clip_rows), _stats(rc_rows)
    verdict = {}
    for col in clip_s:
        diff = rc_s[col]["mean"] - clip_s[col]["mean"]
        spread = max([v for v in (rc_s[col]["std"], clip_s[col]["std"]) if not math.isnan(v)], default=float("nan"))
        verdict[col] = {"regionclip_minus_clip": diff, "seed_std": spread,
                        "beats_by_more_than_std": bool(diff > spread) if not math.isnan(spread) else None}
    timings = _load(b.results / "timings.json") or {}
    amp = {"stage0": _amp_used(b.runs / "clip"), "regionclip": _amp_used(rc_dir(b, tag, seeds[0])) if seeds else "?"}
    summary = {"world": b.world, "budget": b.budget, "seeds": seeds, "row": tag, "amp": amp, "fig1b": fig1b,
               "clip": clip_s, "regionclip": rc_s, "per_seed": {"clip": clip_rows, "regionclip": rc_rows},
               "verdict": verdict, "timings": timings, "machine": machine()}
    stem = "summary" if tag == "full" else f"summary-{tag}"
    write_json(b.results / f"{stem}.json", summary)
    md = [f"# Toy benchmark: CLIP vs RegionCLIP ({len(seeds)} seed{'s' if len(seeds) != 1 else ''}: "
          f"{', '.join(map(str, seeds)) or 'none finished'}{what})", "",
          "## Stage 0 reproduces Fig. 1(b)?", "",
          "| stage-0 CLIP | top-1 | target |", "|---|---|---|",
          f"| whole object-centric val images | {whole:.1f} | ≥ 70: "
          f"{'met' if fig1b['whole_image_target_met'] else 'NOT met'} |",
          f"| GT boxes in val scenes (regions, 2×) | {region:.1f} | ≥ 20 points lower: gap {whole - region:.1f}, "
          f"{'met' if fig1b['gap_target_met'] else 'NOT met'} |", "",
          "## CLIP vs RegionCLIP (Tables 1 and 4)", "", HEADER,
          "| CLIP (stage 0) | " + " | ".join(fmt_mean_std(clip_s[f"{g}.{k}"]) for g, k in COLUMNS) + " |",
          "| RegionCLIP | " + " | ".join(fmt_mean_std(rc_s[f"{g}.{k}"]) for g, k in COLUMNS) + " |",
          "| RegionCLIP − CLIP | " + " | ".join(f"{verdict[f'{g}.{k}']['regionclip_minus_clip']:+.1f}"
                                            for g, k in COLUMNS) + " |", "",
          f"Mean ± sample std over seeds {seeds} of the RegionCLIP pretraining and of both transfers. The stage-0 "
          "CLIP is one model shared by every seed (as OpenAI's CLIP is one fixed model in the paper), so its "
          "zero-shot columns have no spread; its transfer does (the detector's seed).", "",
          "Where RegionCLIP beats CLIP by more than the larger seed std: " + ((", ".join(
              f"{g.replace('_', ' ')} {k}" for g, k in COLUMNS if verdict[f"{g}.{k}"]["beats_by_more_than_std"])
              or "nowhere") if len(seeds) > 1 else "not known from one seed (make toy-seeds)") + ".", "",
          f"Budget: {b.budget}; world: {b.world}; pretraining precision (train_pretrain.py --amp): stage 0 "
          f"{amp['stage0']}, RegionCLIP {amp['regionclip']}.",
          ""]
    md += _literal_tau_section(b, seeds, zs_name)
    md += _closed_vocabulary_section(b, seeds, det_name)
    md += _named_as_section(b, clip_gt, _load(zs / f"{zs_name(seeds[0])}-gt.json") if seeds else None)
    md += ["## Step times", "", "| step | seconds |", "|---|---|"]
    md += [f"| {k} | {v['seconds']} |" for k, v in timings.items() if not k.startswith("_")]
    for call in timings.get("_calls", [])[-3:]:
        md.append(f"\nA call at {call['finished']} ran {len(call['steps_run'])} steps in {call['wall_seconds']} s wall "
                  f"({call['jobs']} side by side); peak memory of the pipeline {call['peak_memory_mb']} MB (sum of "
                  f"PSS over its processes), largest process {call['peak_process_rss_mb']} MB RSS.")
    md += ["", f"Machine: {summary['machine']}"]
    text = "\n".join(md) + "\n"
    (b.results / f"{stem}.md").write_text(text)
    print(text)
    return summary


def _literal_tau_section(b: Bench, seeds: list[int], rc_zs_name) -> list[str]:
    """Markdown: zero-shot RPN AP50 at tau = 0.01 (OpenAI CLIP's value) beside the table's (the model's own
    temperature); [] if the tau-0.01 evaluations did not run."""
    zs = b.results / "zeroshot"
    rows = []
    for label, name in (("CLIP (stage 0)", lambda s: "clip"), ("RegionCLIP", rc_zs_name)):
        own = [_load(zs / f"{name(s)}-rpn.json") for s in seeds]
        lit = [_load(zs / f"{name(s)}-rpn-tau0.01.json") for s in seeds]
        if not seeds or None in own or None in lit:
            return []
        cells = [fmt_mean_std(mean_std([100 * r["rpn_ap50"][k] for r in res if not math.isnan(r["rpn_ap50"][k])]))
                 for res in (own, lit) for k in ("novel", "base", "all")]
        rows.append(f"| {label} | {own[0]['tau']:.4f} | " + " | ".join(cells) + " |")
    return ["## Zero-shot RPN AP50 at the model's own temperature and at 0.01", "",
            "| model | own tau | own: novel | base | all | tau 0.01: novel | base | all |",
            "|---|---|---|---|---|---|---|---|", *rows, "",
            "The table above reads class probabilities at the loaded model's own 1/exp(logit_scale), as the "
            "detector's classifier does (0.01 for OpenAI's CLIP, the paper's value; the toy CLIP learned its own). "
            "The tau = 0.01 columns are the same proposals and embeddings at the literal 0.01. GT-box top-1 does not "
            "depend on tau.", ""]


def _closed_vocabulary_section(b: Bench, seeds: list[int], rc_det_name) -> list[str]:
    """Markdown: each transfer's base AP50 with the whole vocabulary (the table's) and with the base names only
    (train_detect.py's base_vocabulary): how much the novel names take from base objects; [] if not recorded.
    rc_det_name(seed): the run folder of the RegionCLIP transfer."""
    rows = []
    for det_name, label in ((lambda s: f"det-clip-s{s}", "CLIP (stage 0)"), (rc_det_name, "RegionCLIP")):
        res = [_load(b.runs / det_name(s) / "results.json") or {} for s in seeds]
        if not res or not all("base_vocabulary" in r for r in res):
            return []
        stat = _stats([{"open": {"b": 100 * r["ap50"]["base"]}, "closed": {"b": 100 * r["base_vocabulary"]["ap50"]}}
                       for r in res], [("open", "b"), ("closed", "b")])
        rows.append(f"| {label} | {fmt_mean_std(stat['open.b'])} | {fmt_mean_std(stat['closed.b'])} |")
    return ["## OVD transfer: base AP50 with and without the novel names", "",
            "| transfer from | base AP50, base + novel names (the table's) | base AP50, base names only |",
            "|---|---|---|", *rows, "",
            "The same detectors, evaluated once with all names and once with the base names only (no novel name to "
            "take a box). The difference is what the novel names take from base objects and background.", ""]


def _named_as_section(b: Bench, clip_gt: dict, rc_gt: dict | None, top: int = 3) -> list[str]:
    """Markdown: how the val GT boxes of each category were named by CLIP and by RegionCLIP (eval_zeroshot's
    gt_box_named_as, the `top` most frequent names), novel categories first; [] if either result lacks it."""
    clip_t, rc_t = clip_gt.get("gt_box_named_as"), (rc_gt or {}).get("gt_box_named_as")
    if not clip_t or not rc_t:
        return []
    cats = (_load(b.data / "instances_val_all.json") or {}).get("categories", [])
    novel = {c["name"] for c in cats if c.get("split") == "novel"}
    names = sorted(clip_t, key=lambda c: c not in novel)  # novel first, dataset order within each

    def cell(row: dict | None) -> str:
        return ", ".join(f"{n} {k}" for n, k in list((row or {}).get("named_as", {}).items())[:top]) or "—"
    md = ["## What each category's GT boxes were named (val scenes, seed 0)", "",
          "| category | boxes | CLIP named them | RegionCLIP named them |", "|---|---|---|---|"]
    md += [f"| {c}{' (novel)' if c in novel else ''} | {clip_t[c]['boxes']} | {cell(clip_t[c])} | "
           f"{cell(rc_t.get(c))} |" for c in names]
    return md + ["", f"The {top} most frequent names over the class-name vocabulary, with counts "
                 "(`eval_zeroshot.py`'s `gt_box_named_as`, in results/toy/zeroshot/).", ""]


def _amp_used(run: Path) -> str:
    cfg = _load(run / "config.json") or {}
    return {"bf16": "bf16 autocast", "none": "float32"}.get(cfg.get("amp", "none"), "?") if cfg else "?"


# ---- ablations.md: one row each ---------------------------------------------------------------------------------
def write_ablations(b: Bench, ablations: list[tuple]) -> None:
    """results/toy/ablations.{md,json}: the teacher rows, the full model, each of `ablations` ((tag, what, args) as
    in rows.ABLATIONS) and the transfer-only rows, from whatever runs exist (— where one did not happen)."""
    zs = b.results / "zeroshot"
    full = _row(_load(zs / "regionclip-s0-gt.json"), _load(zs / "regionclip-s0-rpn.json"),
                _load(b.runs / "det-regionclip-s0" / "results.json"))
    rows = [("CLIP (stage 0, the teacher)", _row(_load(zs / "clip-gt.json"), _load(zs / "clip-rpn.json"),
                                               _load(b.runs / "det-clip-s0" / "results.json"))),
            ("CLIP, regions pooled at the native 128 px (`--region_scale 1`)",
             _row(_load(zs / "clip-native-128-gt.json"), _load(zs / "clip-native-128-rpn.json"), None)),
            ("CLIP, each box cropped (1.25x context) and encoded as a whole image (`--region_encoder crop`, "
             "ViLD-style, not the paper's)", _row(_load(zs / "clip-crop-gt.json"), _load(zs / "clip-crop-rpn.json"),
                                                  None)),
            ("**RegionCLIP, full model**", full)]
    for tag, what, _ in ablations:
        rows.append((what, _row(_load(zs / f"regionclip-{tag}-s0-gt.json"), _load(zs / f"regionclip-{tag}-s0-rpn.json"),
                                _load(b.runs / f"det-regionclip-{tag}-s0" / "results.json"))))
    rows.append(("transfer without focal scaling (γ 0, background weight 1)",
                 _row(None, None, _load(b.runs / "det-regionclip-nofocal-s0" / "results.json"))))
    for name, who in (("clip", "CLIP"), ("regionclip", "RegionCLIP")):
        rows.append((f"transfer from {who} with the classifier at tau = 0.01 (the paper's number: OpenAI CLIP's own "
                     "temperature) instead of the toy CLIP's own",
                     _row(None, None, _load(b.runs / f"det-{name}-tau0.01-s0" / "results.json"))))
    fmt = lambda v: "—" if math.isnan(v) else f"{v:.1f}"  # noqa: E731
    md = ["# Toy ablations (seed 0, one row each against the full model)", "", HEADER]
    md += [f"| {name} | " + " | ".join(fmt(row[g][k]) for g, k in COLUMNS) + " |" for name, row in rows]
    md += ["", f"Every RegionCLIP row: {b.budget['regionclip_steps']} steps at lr 1e-4 from the same stage 0 with RPN "
           "proposals, unless the row says otherwise, evaluated by the same protocol (regions pooled at 2×). OVD "
           "transfer (— where not run) only for the full model, the crop-teacher rows and the focal and tau rows, to "
           "keep the run short; every transfer's classifier runs at the toy CLIP's own temperature unless the row "
           "says otherwise."]
    (b.results / "ablations.md").write_text("\n".join(md) + "\n")
    write_json(b.results / "ablations.json", dict(rows))
    print("\n".join(md))


def machine() -> str:
    """The machine in one line, with the CPU model and the instruction set torch's kernels use: float rounding, and
    so every trained number here, depends on them (the same seed and thread count on another CPU trains another
    stage 0)."""
    model = next((line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines() if line.startswith("model name")),
                 platform.processor() or "?")
    return (f"{platform.machine()} {model}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads, CPU kernels {torch.backends.cpu.get_cpu_capability()}), "
            f"Python {platform.python_version()}")


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
