"""make bench: where the time goes, each speed figure next to the bound that arithmetic sets for it.

    python benchmarks/run.py                 # CPU, every section, ~6 minutes on 2 cores
    python benchmarks/run.py --device cuda   # the same on a GPU, plus section 7 (RN50 at 800 px, bf16 or not)
    python benchmarks/run.py --only 1,4      # some sections
    python benchmarks/run.py detector-ap     # the long part of section 5: train the toy detector with each RoI
                                             # sampling setting, seeds 0,1,2, and evaluate (not in make bench: ~5
                                             # min per run on 2 idle cores; the 'ours' runs are read from make
                                             # toy-seeds' CLIP transfers); the table gives mean +- std over seeds
    python benchmarks/run.py detector-ap --settings "torchvision defaults" --seeds 0   # one slow row, one seed
    python benchmarks/run.py render          # bench.md again from bench.json, measuring nothing (e.g. to add
                                             # the AP50 table once detector-ap has finished)

Writes results/bench.md and results/bench.json (with the machine: cores, threads, torch, device). Every speed
figure is a ratio of two times measured in this one run, beside the ratio the FLOP counts allow, because absolute
times on a shared machine drift. FLOPs are counted by torch.utils.flop_counter.FlopCounterMode on the very calls
that are timed (convolutions, matmuls, attention; RoIAlign, resizes and elementwise ops count as zero).

Sections:
  1. Region embeddings: ours (res4 map once -> RoIAlign -> layer4 -> attention pool) vs crop-resize-encode each box
     with the whole image tower, R = 16, 64, 256 boxes per image, toy model and RN50 at 224 px (random weights:
     the speed does not depend on them). The whole-image box must reproduce encode_image, or the run stops.
  2. A RegionCLIP pretraining step, part by part (train_pretrain.regionclip_step's own timers).
  3. Step time and FLOPs vs regions per image and vs image size (toy model).
  4. Text tower: prompts/s; what a paper-sized concept pool costs; the on-disk cache read back.
  5. The detector step: torchvision's RoI sampling defaults vs ours.
  6. Memory: peak of `make toy` (from results/toy/timings.json) and of this run.
  7. GPU only: RN50 pretraining images/s at 800 px, 100 regions/image, batch 3, fp32 vs bf16 autocast.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from torchvision.ops import roi_align

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import train_pretrain  # noqa: E402
from regionclip_min import toyworld  # noqa: E402
from regionclip_min.clip_model import TEMPLATES, load_clip  # noqa: E402
from regionclip_min.concepts import concept_embeddings  # noqa: E402
from regionclip_min.data import DetectionDataset, ImageCaptionDataset, collate_image_caption  # noqa: E402
from regionclip_min.detector import build_detector  # noqa: E402
from regionclip_min.regions import RegionEncoder, random_boxes  # noqa: E402
from regionclip_min.steps import clip_gradients  # noqa: E402
from regionclip_min.steps import build_optimizer  # noqa: E402
from regionclip_min.toy_tables import fmt_mean_std, mean_std  # noqa: E402

PAPER_POOL = 4764  # concepts parsed from CC3M captions in the paper (Sec. 4.1)
CORE_PARTS = ("teacher forward", "student forward", "student backward", "optimizer")


# ---- measuring ------------------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def timed(fn, device, reps: int) -> float:
    """Median seconds of `reps` calls of fn (after one untimed call)."""
    fn()
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class PartTimer:
    """timer(name) context manager accumulating wall seconds per name (synchronising CUDA at each edge)."""

    def __init__(self, device):
        self.device, self.seconds = device, {}

    @contextlib.contextmanager
    def __call__(self, name):
        sync(self.device)
        t0 = time.perf_counter()
        yield
        sync(self.device)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


def _model(name: str, device) -> torch.nn.Module:
    model, tok = load_clip(name, None, device=device)  # random weights: speed does not depend on them
    model.eval().requires_grad_(False)
    model.visual.to(memory_format=torch.channels_last)
    return model, tok


# ---- 1. region embeddings ---------------------------------------------------------------------------------------
def crop_encode(model, images: torch.Tensor, boxes: torch.Tensor, size: int, chunk: int = 64) -> torch.Tensor:
    """The baseline: each box cut out and resized to the tower's input size (one batched RoIAlign, bilinear, 2x2
    samples per output pixel), then the whole image tower on the crops, `chunk` crops per call."""
    rois = torch.cat([boxes.new_zeros(len(boxes), 1), boxes], dim=1)  # (R, 5), all on image 0
    crops = roi_align(images, rois, (size, size), 1.0, 2, True).contiguous(memory_format=torch.channels_last)
    return torch.cat([model.encode_image(crops[i:i + chunk]) for i in range(0, len(crops), chunk)])  # (R, D)


def bench_regions(device, quick: bool) -> list[dict]:
    settings = [("toy (RN-toy)", "RN-toy", 128, 2.0), ("RN50 at 224 px", "RN50", 224, 1.0)]
    counts = (4, 16) if quick else (16, 64, 256)
    if quick:
        settings = settings[:1]
    rows = []
    for label, name, size, scale in settings:
        model, _ = _model(name, device)
        enc = RegionEncoder(model.visual).eval()
        g = torch.Generator().manual_seed(0)
        native = torch.randn(1, 3, size, size, generator=g).to(device).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():  # correctness first: the whole-image box is encode_image
            whole = enc(native, [torch.tensor([[0.0, 0.0, size, size]], device=device)])
            ref = model.encode_image(native)
        err = float((whole - ref).abs().max() / ref.abs().max())
        if err > 1e-4:
            raise SystemExit(f"{label}: whole-image region embedding differs from encode_image (rel. max err {err:.2e})"
                             ": the fast path is wrong, no speed figure is worth reporting")
        side = int(size * scale)  # ours pools from the image enlarged by `scale` (docs/DESIGN.md §5.1)
        image = F.interpolate(native, size=(side, side), mode="bilinear").contiguous(memory_format=torch.channels_last)
        for R in counts:
            boxes = random_boxes(R, side, side, generator=g).to(device)  # (R, 4)
            ours = lambda: enc(image, [boxes])  # noqa: E731
            crop = lambda: crop_encode(model, image, boxes, size)  # noqa: E731
            with torch.no_grad():
                f_ours, f_crop = count_flops(ours), count_flops(crop)
                reps = 1 if quick else (3 if R <= 64 else 2)
                t_ours, t_crop = timed(ours, device, reps), timed(crop, device, reps)
            bound = f_crop / f_ours
            rows.append({"model": label, "image_px": side, "crop_px": size, "regions": R,
                         "ours_regions_per_s": R / t_ours, "crop_regions_per_s": R / t_crop,
                         "speedup": t_crop / t_ours, "flops_ours_g": f_ours / 1e9, "flops_crop_g": f_crop / 1e9,
                         "bound": bound, "speedup_over_bound": t_crop / t_ours / bound,
                         "whole_box_rel_err": err})
            _say(f"  regions {label} R={R}: ours {R / t_ours:.1f}/s, crops {R / t_crop:.1f}/s, x{t_crop / t_ours:.2f} "
                 f"(bound x{bound:.2f})")
    return rows


# ---- 2. and 3. the pretraining step -----------------------------------------------------------------------------
def _pretrain_cfg(**kw):
    base = dict(train_pretrain.PRESETS["toy"])
    base.pop("_doc")
    base.update(kw)
    cfg = train_pretrain.PretrainConfig(**{k: v for k, v in base.items() if k != "init"})
    cfg.init = None  # random weights
    cfg.concept_cache = None
    return cfg


class StepBench:
    """A RegionCLIP student/teacher pair and its optimizer, stepping on given batches with part timers."""

    def __init__(self, cfg, device, concepts: int):
        self.cfg, self.device = cfg, device
        self.student, self.teacher, self.tok = train_pretrain.build_models(cfg, device)
        self.teacher_enc = RegionEncoder(self.teacher.visual).eval()
        self.enc = RegionEncoder(self.student.visual).train()
        dim = self.teacher.text_projection.shape[1]
        g = torch.Generator().manual_seed(0)
        self.concept_emb = F.normalize(torch.randn(concepts, dim, generator=g), dim=-1).to(device)  # (C, D)
        self.params = [p for p in self.enc.parameters() if p.requires_grad]
        self.opt = train_pretrain.make_optimizer(cfg, self.enc)

    def step(self, batch, timer, step: int = 0):
        g = torch.Generator().manual_seed(step)
        losses, _ = train_pretrain.regionclip_step(self.cfg, self.enc, self.teacher_enc, self.teacher, self.tok,
                                                   self.concept_emb, batch, {}, None, g, self.device, self.cfg.tau,
                                                   timer=timer)
        with timer("losses"):
            total = sum(losses.values())
        with timer("student backward"):
            total.backward()
        with timer("optimizer"):
            clip_gradients(self.params, self.cfg.grad_clip, per_tensor=True)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)

    def flops(self, batch) -> int:
        return count_flops(lambda: self.step(batch, train_pretrain._untimed))


def synthetic_batch(n: int, size: int, device) -> dict:
    g = torch.Generator().manual_seed(n * 1000 + size)
    return {"images": torch.randn(n, 3, size, size, generator=g), "captions": [["a photo of a red circle"]] * n,
            "image_ids": torch.arange(n), "orig_sizes": torch.full((n, 2), size), "sizes": torch.full((n, 2), size)}


def bench_step_parts(device, quick: bool, world: Path) -> list[dict]:
    """Section 2: one row per setting with seconds per step and each part's share."""
    toy = dict(model_name="RN-toy", image_size=128, region_scale=2.0, batch_size=16, proposals_per_image=16)
    settings = [("toy preset (RN-toy, 128 px x2, batch 16, 16 random boxes/image)", toy, 17, 8),
                ("the same, --amp bf16", {**toy, "amp": "bf16"}, 17, 8),
                ("RN50 at 224 px, batch 2, 100 random boxes/image, 4,764 concepts",
                 dict(model_name="RN50", image_size=224, region_scale=1.0, batch_size=2, proposals_per_image=100,
                      channels_last=True), PAPER_POOL, 3)]
    if quick:
        settings = [(label, {**kw, "batch_size": 4}, c, 2) for label, kw, c, _ in settings[:2]]
    rows = []
    for label, kw, concepts, steps in settings:
        cfg = _pretrain_cfg(proposals="random", device=device.type, num_workers=1, **kw)
        sb = StepBench(cfg, device, concepts)
        ds = ImageCaptionDataset(str(world / "captions_train.json"), str(world / "images"), image_size=cfg.image_size,
                                 train=False)
        loader = torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, num_workers=1,
                                             collate_fn=collate_image_caption, drop_last=True)
        it = iter(loader)
        sb.step(next(it), train_pretrain._untimed)  # warm-up
        timer = PartTimer(device)
        sync(device)
        t0 = time.perf_counter()
        for i in range(steps):
            with timer("data loading (wait)"):
                batch = next(it)
            sb.step(batch, timer, i)
        sync(device)
        total = (time.perf_counter() - t0) / steps
        parts = {k: v / steps for k, v in timer.seconds.items()}
        parts["rest of the loop"] = max(0.0, total - sum(parts.values()))
        other = sum(v for k, v in parts.items() if k not in CORE_PARTS)
        rows.append({"setting": label, "step_s": total, "parts_s": parts,
                     "shares": {k: v / total for k, v in parts.items()}, "other_share": other / total})
        _say(f"  step {label}: {total:.3f} s/step, other {100 * other / total:.1f}%")
    return rows


def bench_scaling(device, quick: bool) -> list[dict]:
    """Section 3: toy model, synthetic batches of 8; regions per image at 256 px, image size at 16 regions."""
    grid = [("regions", R, 256) for R in ((4, 16) if quick else (16, 64, 256))]
    grid += [("image px", s, s) for s in ((128,) if quick else (128, 256, 512))]
    rows = []
    for what, value, side in grid:
        R = value if what == "regions" else 16
        cfg = _pretrain_cfg(model_name="RN-toy", image_size=side, region_scale=1.0, batch_size=8,
                            proposals="random", proposals_per_image=R, device=device.type)
        sb = StepBench(cfg, device, 17)
        batch = synthetic_batch(8, side, device)
        flops = sb.flops(batch)
        seconds = timed(lambda: sb.step(batch, train_pretrain._untimed), device, 2 if quick else 3)
        rows.append({"vary": what, "value": value, "image_px": side, "regions_per_image": R, "step_s": seconds,
                     "gflops": flops / 1e9, "gflops_per_s": flops / 1e9 / seconds})
        _say(f"  scaling {what}={value}: {seconds:.3f} s, {flops / 1e9:.1f} GFLOP, {flops / 1e9 / seconds:.1f} GFLOP/s")
    return rows


# ---- 4. text tower ------------------------------------------------------------------------------------------------
def bench_text(device, quick: bool) -> dict:
    out = {"models": [], "templates": len(TEMPLATES), "paper_pool": PAPER_POOL}
    for name, n in (("RN-toy", 512), ("RN50", 256)) if not quick else (("RN-toy", 64),):
        model, tok = _model(name, device)
        prompts = [TEMPLATES[i % len(TEMPLATES)].format(f"thing{i}") for i in range(n)]
        with torch.no_grad():
            text = tok(prompts).to(device)
            seconds = timed(lambda: model.encode_text(text), device, 1 if quick else 2)
        rate = n / seconds
        out["models"].append({"model": name, "prompts_per_s": rate, "paper_pool_minutes":
                              PAPER_POOL * len(TEMPLATES) / rate / 60})
        _say(f"  text {name}: {rate:.0f} prompts/s; paper pool {PAPER_POOL * len(TEMPLATES) / rate / 60:.1f} min")
    model, tok = _model("RN-toy", device)
    concepts = [f"concept{i}" for i in range(16 if quick else 200)]
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        a = concept_embeddings(model, tok, concepts, TEMPLATES, cache_dir=cache, model_key="bench")
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        b = concept_embeddings(model, tok, concepts, TEMPLATES, cache_dir=cache, model_key="bench")
        second = time.perf_counter() - t0
        files = len(list(Path(cache).glob("concepts-*.pt")))
    if not torch.equal(a, b) or files != 1:
        raise SystemExit("concept cache: the second call did not read back the first call's embeddings")
    out["cache"] = {"concepts": len(concepts), "first_call_s": first, "second_call_s": second, "files": files}
    _say(f"  concept cache ({len(concepts)} concepts): {first:.2f} s computed, {second:.3f} s read back")
    return out


# ---- 5. detector step -------------------------------------------------------------------------------------------
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


def bench_detector(device, quick: bool, world: Path) -> list[dict]:
    ds = DetectionDataset(str(world / "instances_train_base.json"), str(world / "images"))
    batch = [ds[i] for i in range(2 if quick else 8)]
    images = [im.to(device) for im, _ in batch]
    targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for _, t in batch]
    rows = []
    for name, kw in DETECTOR_SAMPLING.items():
        clip, _ = load_clip("RN-toy", None, device=device)
        emb = F.normalize(torch.randn(len(ds.category_names), clip.text_projection.shape[1]), dim=-1).to(device)
        det = build_detector(clip.visual, emb, min_size=256, max_size=256, anchor_sizes=(32, 64, 128, 256), **kw)
        det.to(device).train()
        params = [p for p in det.parameters() if p.requires_grad]
        opt = build_optimizer("adamw", [{"params": params, "weight_decay": 1e-4}], lr=1e-4)
        timer = PartTimer(device)

        def step():
            with timer("forward"):
                loss = sum(det(images, targets).values())
            with timer("backward"):
                loss.backward()
            with timer("optimizer"):
                opt.step()
                opt.zero_grad(set_to_none=True)
        seconds = timed(step, device, 1 if quick else 2)
        rows.append({"sampling": name, **kw, "images_per_step": len(images), "step_s": seconds})
        _say(f"  detector step, {name} RoI sampling: {seconds:.3f} s")
    for r in rows:
        r["relative_step_time"] = r["step_s"] / rows[0]["step_s"]
    return rows


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
    out = _read_detector_ap(path)
    if out.get("init") != str(init) or out.get("steps") != args.steps:
        out = {"init": str(init), "steps": args.steps, "runs": {}}
    for name in names:
        kw = DETECTOR_SAMPLING[name]
        slug = "".join(c if c.isalnum() else "-" for c in name)
        for seed in seeds:
            run = Path(args.runs) / (f"det-sampling-{slug}" + (f"-s{seed}" if seed else ""))
            ours = Path(args.ours_run.format(seed=seed))
            if name == "ours" and _same_run(ours, init, args.steps, kw, seed):
                run = ours  # make toy's CLIP transfer of this seed is this very run: read it, do not redo it
            if _same_run(run, init, args.steps, kw, seed):
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
                       *(["--resume", "true"] if _same_run(run, init, args.steps, kw, seed, finished=False)
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


def _read_detector_ap(path: Path) -> dict:
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


def _same_run(run: Path, init: Path, steps: int, kw: dict, seed: int = 0, finished: bool = True) -> bool:
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


# ---- 6. memory, 7. GPU ------------------------------------------------------------------------------------------
def bench_memory() -> dict:
    out = {"this_run_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    path = ROOT / "results" / "toy" / "timings.json"
    calls = json.loads(path.read_text()).get("_calls", []) if path.is_file() else []
    if calls:
        big = max(calls, key=lambda c: c["peak_memory_mb"])
        out["make_toy"] = big
    return out


def bench_gpu(device, quick: bool) -> list[dict]:
    rows = []
    cfg = _pretrain_cfg(model_name="RN50", image_size=800, region_scale=1.0, batch_size=3, proposals="random",
                        proposals_per_image=100, device="cuda", channels_last=True)
    sb = StepBench(cfg, device, PAPER_POOL)
    batch = synthetic_batch(3, 800, device)
    for autocast in (False, True):
        torch.cuda.reset_peak_memory_stats(device)
        sb.cfg.amp = "bf16" if autocast else "none"
        seconds = timed(lambda: sb.step(batch, train_pretrain._untimed), device, 3 if quick else 10)
        rows.append({"autocast_bf16": autocast, "step_s": seconds, "images_per_s": 3 / seconds,
                     "peak_gpu_mem_gb": torch.cuda.max_memory_allocated(device) / 2 ** 30})
        _say(f"  GPU RN50 800 px, bf16 {autocast}: {3 / seconds:.2f} images/s")
    return rows


# ---- report -----------------------------------------------------------------------------------------------------
def _say(text: str) -> None:
    print(text, flush=True)


def machine(device) -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "device": str(device), "date": time.strftime("%Y-%m-%d %H:%M")}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def markdown(res: dict) -> str:
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
        ap = ROOT / "results" / "bench-detector-ap.json"
        if ap.is_file():
            md += ["", detector_ap_table(_read_detector_ap(ap))]
        else:
            md += ["", "AP50 of each: not measured yet (`python benchmarks/run.py detector-ap`)."]
        md += [""]
    if "memory" in res:
        mem = res["memory"]
        md += ["## 6. Memory", ""]
        if "make_toy" in mem:
            c = mem["make_toy"]
            md += [f"Peak of the toy benchmark (`{c.get('command', 'make toy / toy-seeds / toy-ablations')}`, the "
                   f"largest recorded in results/toy/timings.json; call finished {c['finished']}, {c['jobs']} steps "
                   f"side by side): "
                   f"{c['peak_memory_mb']} MB (sum of PSS over its processes; largest process "
                   f"{c['peak_process_rss_mb']} MB RSS). Target ≤ 4096 MB: "
                   f"{'met' if c['peak_memory_mb'] <= 4096 else 'NOT met'}."]
        else:
            md += ["Peak of `make toy`: not known (run `make toy`; it records it in results/toy/timings.json)."]
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
    current results/bench-detector-ap.json; measures nothing."""
    try:
        res = json.loads((out / "bench.json").read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"{out / 'bench.json'}: cannot read it ({e}); run `make bench` first") from None
    text = markdown(res)
    (out / "bench.md").write_text(text + "\n")
    print(text)
    return res


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", nargs="?", default="bench", choices=("bench", "detector-ap", "render"),
                   help="bench: measure; detector-ap: section 5's AP50 runs; render: bench.md from bench.json")
    p.add_argument("--device", default="cpu", help="cpu | cuda (default %(default)s)")
    p.add_argument("--only", default="1,2,3,4,5,6,7", help="sections to run (default all)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for the tests (figures mean nothing)")
    p.add_argument("--out", default="results", help="folder for bench.md / bench.json (default %(default)s)")
    p.add_argument("--init", default="runs/toy-bench/clip/final.pt", help="detector-ap: the stage-0 CLIP")
    p.add_argument("--data", default="data/toy", help="detector-ap: the toy world")
    p.add_argument("--runs", default="runs/bench", help="detector-ap: run folders")
    p.add_argument("--ours_run", default="runs/toy-bench/det-clip-s{seed}", help="detector-ap: make toy's (and make "
                   "toy-seeds') CLIP transfer of each seed, read as the 'ours' row when it is that same run "
                   "(default %(default)s)")
    p.add_argument("--seeds", default="0,1,2", help="detector-ap: ','-separated training seeds of every setting "
                   "(default %(default)s: one seed misled here, README section 5; make toy-seeds already trained "
                   "'ours' for 0,1,2)")
    p.add_argument("--steps", type=int, default=300, help="detector-ap: training steps of each run (default "
                   "%(default)s, make toy's transfer)")
    p.add_argument("--settings", default="ours;ours, sampling_ratio 2", help="detector-ap: ';'-separated rows of "
                   "DETECTOR_SAMPLING (default %(default)s; '128 RoIs/image' and 'torchvision defaults' cost several "
                   "times ours per step, see section 5)")
    args = p.parse_args(argv)
    if args.what == "detector-ap":
        return detector_ap(args)
    if args.what == "render":
        return render(Path(args.out))
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no GPU here")
    try:
        only = {int(x) for x in args.only.split(",") if x.strip()}
    except ValueError:
        raise SystemExit(f"--only takes section numbers like 1,4, got {args.only!r}") from None
    torch.manual_seed(0)
    t0 = time.time()
    res = {"machine": machine(device)}
    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp) / "world"
        if only & {2, 5}:
            toyworld.generate(world, seed=0, num_train=64 if args.quick else 256, num_val=4)
        sections = [(1, "regions", lambda: bench_regions(device, args.quick)),
                    (2, "step_parts", lambda: bench_step_parts(device, args.quick, world)),
                    (3, "scaling", lambda: bench_scaling(device, args.quick)),
                    (4, "text", lambda: bench_text(device, args.quick)),
                    (5, "detector", lambda: bench_detector(device, args.quick, world))]
        for number, key, fn in sections:
            if number in only:
                _say(f"section {number}: {key}")
                res[key] = fn()
    if 7 in only and device.type == "cuda":
        res["gpu"] = bench_gpu(device, args.quick)
    if 6 in only:
        res["memory"] = bench_memory()
    res["wall_seconds"] = time.time() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(res, indent=2))
    text = markdown(res)
    (out / "bench.md").write_text(text + "\n")
    print(text)
    return res


if __name__ == "__main__":
    main()
