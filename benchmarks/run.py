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

Writes runs/bench/results/bench.md and bench.json (untracked; the reference tables are committed in results/), with
the machine (cores, threads, torch, device). Every speed figure is a ratio of two times measured in this one run,
beside the ratio the FLOP counts allow, because absolute times on a shared machine drift. FLOPs are counted by torch.utils.flop_counter.FlopCounterMode on the very calls
that are timed (convolutions, matmuls, attention; RoIAlign, resizes and elementwise ops count as zero).

Sections:
  1. Region embeddings: ours (res4 map once -> RoIAlign -> layer4 -> attention pool) vs crop-resize-encode each box
     with the whole image tower, R = 16, 64, 256 boxes per image, toy model and RN50 at 224 px (random weights:
     the speed does not depend on them). The whole-image box must reproduce encode_image, or the run stops.
  2. A RegionCLIP pretraining step, part by part (the method's parts wrapped in timers from outside).
  3. Step time and FLOPs vs regions per image and vs image size (toy model).
  4. Text tower: prompts/s; what a paper-sized concept pool costs; the on-disk cache read back.
  5. The detector step: torchvision's RoI sampling defaults vs ours.
  6. Memory: peak of `make toy` (from runs/toy-bench/results/timings.json) and of this run.
  7. GPU only: RN50 pretraining images/s at 800 px, 100 regions/image, batch 3, fp32 vs bf16 autocast.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.detector_ap import DETECTOR_SAMPLING, detector_ap  # noqa: E402
from benchmarks.measure import (CORE_PARTS, PAPER_POOL, PartTimer, StepBench, count_flops,  # noqa: E402
                                pretrain_cfg, random_model, say, sync, synthetic_batch, timed)
from benchmarks.report import machine, markdown, render  # noqa: E402
from regionclip_min import toyworld  # noqa: E402
from regionclip_min.clip_model import TEMPLATES, load_clip  # noqa: E402
from regionclip_min.concepts import concept_embeddings  # noqa: E402
from regionclip_min.data import DetectionDataset, ImageCaptionDataset, collate_image_caption  # noqa: E402
from regionclip_min.detector import build_detector  # noqa: E402
from regionclip_min.proposals import random_boxes  # noqa: E402
from regionclip_min.regions import RegionEncoder  # noqa: E402
from regionclip_min.steps import build_optimizer  # noqa: E402



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
        model, _ = random_model(name, device)
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
            say(f"  regions {label} R={R}: ours {R / t_ours:.1f}/s, crops {R / t_crop:.1f}/s, x{t_crop / t_ours:.2f} "
                 f"(bound x{bound:.2f})")
    return rows


# ---- 2. and 3. the pretraining step -----------------------------------------------------------------------------
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
        cfg = pretrain_cfg(proposals="random", device=device.type, num_workers=1, **kw)
        sb = StepBench(cfg, device, concepts)
        ds = ImageCaptionDataset(str(world / "captions_train.json"), str(world / "images"), image_size=cfg.image_size,
                                 train=False)
        loader = torch.utils.data.DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, num_workers=1,
                                             collate_fn=collate_image_caption, drop_last=True)
        it = iter(loader)
        sb.step(next(it))  # warm-up
        timer = PartTimer(device)
        sync(device)
        t0 = time.perf_counter()
        for i in range(steps):
            with timer("data loading (wait)"):
                batch = next(it)
            sb.step(batch, timer, i)
        sync(device)
        total = (time.perf_counter() - t0) / steps
        parts = {k: v / steps for k, v in StepBench.parts(timer.seconds).items()}
        parts["rest of the loop"] = max(0.0, total - sum(parts.values()))
        other = sum(v for k, v in parts.items() if k not in CORE_PARTS)
        rows.append({"setting": label, "step_s": total, "parts_s": parts,
                     "shares": {k: v / total for k, v in parts.items()}, "other_share": other / total})
        say(f"  step {label}: {total:.3f} s/step, other {100 * other / total:.1f}%")
    return rows


def bench_scaling(device, quick: bool) -> list[dict]:
    """Section 3: toy model, synthetic batches of 8; regions per image at 256 px, image size at 16 regions."""
    grid = [("regions", R, 256) for R in ((4, 16) if quick else (16, 64, 256))]
    grid += [("image px", s, s) for s in ((128,) if quick else (128, 256, 512))]
    rows = []
    for what, value, side in grid:
        R = value if what == "regions" else 16
        cfg = pretrain_cfg(model_name="RN-toy", image_size=side, region_scale=1.0, batch_size=8,
                            proposals="random", proposals_per_image=R, device=device.type)
        sb = StepBench(cfg, device, 17)
        batch = synthetic_batch(8, side, device)
        flops = sb.flops(batch)
        seconds = timed(lambda: sb.step(batch), device, 2 if quick else 3)
        rows.append({"vary": what, "value": value, "image_px": side, "regions_per_image": R, "step_s": seconds,
                     "gflops": flops / 1e9, "gflops_per_s": flops / 1e9 / seconds})
        say(f"  scaling {what}={value}: {seconds:.3f} s, {flops / 1e9:.1f} GFLOP, {flops / 1e9 / seconds:.1f} GFLOP/s")
    return rows


# ---- 4. text tower ------------------------------------------------------------------------------------------------
def bench_text(device, quick: bool) -> dict:
    out = {"models": [], "templates": len(TEMPLATES), "paper_pool": PAPER_POOL}
    for name, n in (("RN-toy", 512), ("RN50", 256)) if not quick else (("RN-toy", 64),):
        model, tok = random_model(name, device)
        prompts = [TEMPLATES[i % len(TEMPLATES)].format(f"thing{i}") for i in range(n)]
        with torch.no_grad():
            text = tok(prompts).to(device)
            seconds = timed(lambda: model.encode_text(text), device, 1 if quick else 2)
        rate = n / seconds
        out["models"].append({"model": name, "prompts_per_s": rate, "paper_pool_minutes":
                              PAPER_POOL * len(TEMPLATES) / rate / 60})
        say(f"  text {name}: {rate:.0f} prompts/s; paper pool {PAPER_POOL * len(TEMPLATES) / rate / 60:.1f} min")
    model, tok = random_model("RN-toy", device)
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
    say(f"  concept cache ({len(concepts)} concepts): {first:.2f} s computed, {second:.3f} s read back")
    return out


# ---- 5. detector step -------------------------------------------------------------------------------------------
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
        say(f"  detector step, {name} RoI sampling: {seconds:.3f} s")
    for r in rows:
        r["relative_step_time"] = r["step_s"] / rows[0]["step_s"]
    return rows


# ---- 6. memory, 7. GPU ------------------------------------------------------------------------------------------
def bench_memory() -> dict:
    out = {"this_run_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    path = ROOT / "runs" / "toy-bench" / "results" / "timings.json"  # make toy's record
    calls = json.loads(path.read_text()).get("_calls", []) if path.is_file() else []
    if calls:
        big = max(calls, key=lambda c: c["peak_memory_mb"])
        out["make_toy"] = big
    return out


def bench_gpu(device, quick: bool) -> list[dict]:
    rows = []
    cfg = pretrain_cfg(model_name="RN50", image_size=800, region_scale=1.0, batch_size=3, proposals="random",
                        proposals_per_image=100, device="cuda", channels_last=True)
    sb = StepBench(cfg, device, PAPER_POOL)
    batch = synthetic_batch(3, 800, device)
    for autocast in (False, True):
        torch.cuda.reset_peak_memory_stats(device)
        sb.model.amp = "bf16" if autocast else "none"
        seconds = timed(lambda: sb.step(batch), device, 3 if quick else 10)
        rows.append({"autocast_bf16": autocast, "step_s": seconds, "images_per_s": 3 / seconds,
                     "peak_gpu_mem_gb": torch.cuda.max_memory_allocated(device) / 2 ** 30})
        say(f"  GPU RN50 800 px, bf16 {autocast}: {3 / seconds:.2f} images/s")
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", nargs="?", default="bench", choices=("bench", "detector-ap", "render"),
                   help="bench: measure; detector-ap: section 5's AP50 runs; render: bench.md from bench.json")
    p.add_argument("--device", default="cpu", help="cpu | cuda (default %(default)s)")
    p.add_argument("--only", default="1,2,3,4,5,6,7", help="sections to run (default all)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for the tests (figures mean nothing)")
    p.add_argument("--out", default="runs/bench/results", help="folder for bench.md / bench.json (default "
                   "%(default)s, untracked; the committed reference tables are in results/)")
    p.add_argument("--init", default="runs/toy-bench/clip/final.pt", help="detector-ap: the stage-0 CLIP")
    p.add_argument("--data", default="data/toy", help="detector-ap: the toy world")
    p.add_argument("--runs", default="runs/bench", help="detector-ap: run folders")
    p.add_argument("--ours_run", default="runs/toy-bench/det-clip-s{seed}", help="detector-ap: make toy's (and make "
                   "toy-seeds') CLIP transfer of each seed, read as the 'ours' row when it is that same run "
                   "(default %(default)s)")
    p.add_argument("--seeds", default="0,1,2", help="detector-ap: ','-separated training seeds of every setting "
                   "(default %(default)s: one seed misled here, docs/RESULTS.md; make toy-seeds already trained "
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
                say(f"section {number}: {key}")
                res[key] = fn()
    if 7 in only and device.type == "cuda":
        res["gpu"] = bench_gpu(device, args.quick)
    if 6 in only:
        res["memory"] = bench_memory()
    res["wall_seconds"] = time.time() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(res, indent=2))
    text = markdown(res, out)
    (out / "bench.md").write_text(text + "\n")
    print(text)
    return res


if __name__ == "__main__":
    main()
