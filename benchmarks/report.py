"""make bench's report: the machine it ran on, and bench.md written from bench.json."""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from benchmarks.detector_ap import detector_ap_table, read_detector_ap

ROOT = Path(__file__).resolve().parents[1]


def machine(device) -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "device": str(device), "date": time.strftime("%Y-%m-%d %H:%M")}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def markdown(res: dict, out: Path | None = None) -> str:
    m = res["machine"]
    md = [f"# make bench ({m['date']})", "",
          f"Machine: {m['processor']}, {m['cores']} cores, torch {m['torch']} with {m['torch_threads']} threads, "
          f"device {m['device']}{', ' + m['gpu'] if 'gpu' in m else ''}. Wall time of this run: "
          f"{res['wall_seconds']:.0f} s.", ""]
    if "regions" in res:
        md += ["## 1. Region embeddings: ours vs crop-resize-encode", "",
               "| model | image px | R | ours regions/s | crops regions/s | speed-up | FLOP bound | speed-up ÷ bound |",
               "|---|---|---|---|---|---|---|---|"]
        md += [f"| {r['model']} | {r['image_px']} | {r['regions']} | {r['ours_regions_per_s']:.1f} | "
               f"{r['crop_regions_per_s']:.1f} | {r['speedup']:.2f}× | {r['bound']:.2f}× | "
               f"{r['speedup_over_bound']:.2f} |" for r in res["regions"]]
        rn50 = [r for r in res["regions"] if r["model"].startswith("RN50") and r["regions"] == 64]
        if rn50:
            r = rn50[0]
            md += ["", f"Target (RN50, R = 64): speed-up ≥ 0.85 × bound: {r['speedup_over_bound']:.2f} × bound, "
                   f"{'met' if r['speedup_over_bound'] >= 0.85 else 'NOT met'}."]
        md += ["", "The bound is FLOPs(crops) ÷ FLOPs(ours), both counted on the timed calls (ours with the "
               "first-token attention pool). Crops: one batched RoIAlign to the tower's input size, then "
               "`encode_image` 64 crops at a time. The whole-image box reproduced `encode_image` (relative error "
               + ", ".join(f"{r['whole_box_rel_err']:.1e}" for r in res["regions"][:1]) + ").", ""]
    if "step_parts" in res:
        parts = list(dict.fromkeys(k for r in res["step_parts"] for k in r["shares"]))
        md += ["## 2. Where a pretraining step goes", "", "| part | " + " | ".join(
            r["setting"] for r in res["step_parts"]) + " |", "|---|" + "---|" * len(res["step_parts"])]
        md += [f"| {p} | " + " | ".join(f"{100 * r['shares'].get(p, 0):.1f}%" for r in res["step_parts"]) + " |"
               for p in parts]
        md += ["| **seconds per step** | " + " | ".join(f"{r['step_s']:.3f}" for r in res["step_parts"]) + " |",
               "| **everything but teacher/student/optimizer** (target ≤ 10%) | " + " | ".join(
                   f"{100 * r['other_share']:.1f}% ({'met' if r['other_share'] <= 0.10 else 'NOT met'})"
                   for r in res["step_parts"]) + " |", "",
               "Concept embeddings are computed once per run and cached on disk (section 4), never per step; "
               "teacher forward includes its text tower on the captions. Proposals here are random boxes; with "
               "`--proposals rpn` the RPN's forward is added to every step (precompute them with "
               "`--proposals file` to avoid it).", ""]
    if "scaling" in res:
        md += ["## 3. How the step cost grows (toy model, batch 8, forward + backward + optimizer)", "",
               "| vary | image px | regions/image | s/step | GFLOP/step | GFLOP/s |", "|---|---|---|---|---|---|"]
        md += [f"| {r['vary']} | {r['image_px']} | {r['regions_per_image']} | {r['step_s']:.3f} | {r['gflops']:.1f} | "
               f"{r['gflops_per_s']:.1f} |" for r in res["scaling"]]
        md += [""]
        for vary in dict.fromkeys(r["vary"] for r in res["scaling"]):
            rows = [r for r in res["scaling"] if r["vary"] == vary]
            a, z = rows[0], rows[-1]
            md.append(f"- {vary} {a['value']} → {z['value']}: FLOPs ×{z['gflops'] / a['gflops']:.2f}, time "
                      f"×{z['step_s'] / a['step_s']:.2f}; GFLOP/s " + " → ".join(f"{r['gflops_per_s']:.0f}" for r in rows)
                      + ".")
        md += ["", "Time follows FLOPs where GFLOP/s stays level; where it falls, something other than counted "
               "arithmetic (RoIAlign, memory traffic, per-op overhead) is the cost; where it rises, larger "
               "operations use the cores better.", ""]
    if "text" in res:
        t = res["text"]
        md += ["## 4. Concept pool encoding", "", f"| text tower | prompts/s | paper pool ({t['paper_pool']} "
               f"concepts × {t['templates']} templates) |", "|---|---|---|"]
        md += [f"| {r['model']} | {r['prompts_per_s']:.0f} | {r['paper_pool_minutes']:.1f} min |" for r in t["models"]]
        c = t["cache"]
        md += ["", f"Cache: {c['concepts']} concepts × {t['templates']} templates took {c['first_call_s']:.2f} s; "
               f"the second call read the cache file in {c['second_call_s']:.3f} s and returned identical "
               "embeddings.", ""]
    if "detector" in res:
        md += ["## 5. The detector step (toy, batch 8 at 256 px, forward + backward + optimizer)", "", "| RoI sampling | RoIs/image | sampling_ratio | "
               "proposals/image | s/step | relative |", "|---|---|---|---|---|---|"]
        md += [f"| {r['sampling']} | {r['box_batch_size_per_image']} | {r['sampling_ratio']} | "
               f"{r['rpn_post_nms_top_n_train']} | {r['step_s']:.3f} | {r['relative_step_time']:.2f}× |"
               for r in res["detector"]]
        ap = Path(out) / "bench-detector-ap.json" if out is not None else None  # this run's, else the reference
        ap = ap if ap is not None and ap.is_file() else ROOT / "results" / "bench-detector-ap.json"
        if ap.is_file():
            md += ["", detector_ap_table(read_detector_ap(ap))]
        else:
            md += ["", "AP50 of each: not measured yet (`python benchmarks/run.py detector-ap`)."]
        md += [""]
    if "memory" in res:
        mem = res["memory"]
        md += ["## 6. Memory", ""]
        if "make_toy" in mem:
            c = mem["make_toy"]
            md += [f"Peak of the toy benchmark (`{c.get('command', 'make toy / toy-seeds / toy-ablations')}`, the "
                   f"largest recorded in runs/toy-bench/results/timings.json; call finished {c['finished']}, {c['jobs']} steps "
                   f"side by side): "
                   f"{c['peak_memory_mb']} MB (sum of PSS over its processes; largest process "
                   f"{c['peak_process_rss_mb']} MB RSS). Target ≤ 4096 MB: "
                   f"{'met' if c['peak_memory_mb'] <= 4096 else 'NOT met'}."]
        else:
            md += ["Peak of `make toy`: not known (run `make toy`; it records it in runs/toy-bench/results/timings.json)."]
        md += [f"This benchmark's own peak RSS: {mem['this_run_peak_rss_mb']:.0f} MB.", ""]
    if "gpu" in res:
        md += ["## 7. GPU: RN50 pretraining at 800 px, 100 regions/image, batch 3", "",
               "| bf16 autocast | images/s | peak GPU memory |", "|---|---|---|"]
        md += [f"| {'on' if r['autocast_bf16'] else 'off'} | {r['images_per_s']:.2f} | {r['peak_gpu_mem_gb']:.1f} GB |"
               for r in res["gpu"]]
        md += ["", "The paper's run implies about 3.5 images/s per V100 (600k iterations × 96 images in ~6 days on "
               "32 V100s).", ""]
    elif res["machine"]["device"] == "cpu":
        md += ["## 7. GPU", "", "Not run: no GPU in this run (`--device cuda` on a machine with one).", ""]
    return "\n".join(md)


def render(out: Path) -> dict:
    """Rewrites <out>/bench.md from <out>/bench.json (the figures of the run that wrote it, with its date) and the
    AP table of <out>/bench-detector-ap.json (else the committed results/bench-detector-ap.json); measures nothing."""
    try:
        res = json.loads((out / "bench.json").read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"{out / 'bench.json'}: cannot read it ({e}); run `make bench` first") from None
    text = markdown(res, out)
    (out / "bench.md").write_text(text + "\n")
    print(text)
    return res


