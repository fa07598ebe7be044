"""Times pycocotools' COCOeval against faster-coco-eval on the same detections, and checks that they agree.

    python benchmarks/evaluators.py                                        # the toy val json, 100 detections/image
    python benchmarks/evaluators.py --instances data/coco/annotations/instances_val2017.json --per_image 100

The detections are made from the json's own boxes, so no model is needed: each ground-truth box jittered by up to
20% of its side, under a random category with probability 0.3, plus random boxes, up to --per_image per image, each
with a random score (seeded). Both evaluators score the same list (bbox, all areas, maxDets 100, plain COCO rules);
the script prints each one's seconds (best of --repeats) and the largest difference of their per-category AP.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import sys
import time
from pathlib import Path

import faster_coco_eval as fast_coco
import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from regionclip_min.scoring import _coco_gt  # noqa: E402


def make_detections(data: dict, per_image: int, seed: int = 0) -> list[dict]:
    """Jittered ground-truth boxes and random boxes with random scores: a detector's output, in shape only."""
    rng = random.Random(seed)
    cats = [c["id"] for c in data["categories"]]
    by_image: dict[int, list[dict]] = {im["id"]: [] for im in data["images"]}
    for a in data["annotations"]:
        by_image[a["image_id"]].append(a)
    out = []
    for im in data["images"]:
        rows = []
        for a in by_image[im["id"]]:
            x, y, w, h = a["bbox"]
            for _ in range(3):
                dx, dy, dw, dh = (rng.uniform(-0.2, 0.2) for _ in range(4))
                cat = a["category_id"] if rng.random() > 0.3 else rng.choice(cats)
                rows.append([x + dx * w, y + dy * h, w * (1 + dw), h * (1 + dh), cat])
        while len(rows) < per_image:
            w, h = rng.uniform(8, im["width"] / 2), rng.uniform(8, im["height"] / 2)
            rows.append([rng.uniform(0, im["width"] - w), rng.uniform(0, im["height"] - h), w, h, rng.choice(cats)])
        out += [{"image_id": im["id"], "category_id": c, "bbox": [x, y, w, h], "score": rng.random()}
                for x, y, w, h, c in rows[:per_image]]
    return out


def per_category_ap(ev) -> np.ndarray:
    """(K,) AP over IoU 0.50:0.95 of each category (area all, the largest maxDets); nan without ground truth."""
    p = np.asarray(ev.eval["precision"])[:, :, :, 0, -1]  # (T, R, K)
    return np.array([p[:, :, k][p[:, :, k] > -1].mean() if (p[:, :, k] > -1).any() else np.nan
                     for k in range(p.shape[2])])


def run(name: str, gt_data: dict, dets: list[dict]):
    with contextlib.redirect_stdout(io.StringIO()):
        t0 = time.perf_counter()
        if name == "pycocotools":
            gt = COCO()
            gt.dataset = gt_data
            gt.createIndex()
            ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        else:
            gt = fast_coco.COCO(gt_data)
            ev = fast_coco.COCOeval_faster(gt, gt.loadRes(dets), "bbox", print_function=lambda *a: None)
        ev.evaluate()
        ev.accumulate()
        return time.perf_counter() - t0, per_category_ap(ev)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--instances", default="data/toy/instances_val_all.json", help="COCO instances json")
    ap.add_argument("--per_image", type=int, default=100, help="detections per image")
    ap.add_argument("--repeats", type=int, default=3, help="each evaluator runs this many times; the best counts")
    args = ap.parse_args(argv)
    if not Path(args.instances).is_file():
        raise SystemExit(f"--instances {args.instances} does not exist (make toy generates data/toy)")
    data = _coco_gt(args.instances).dataset
    dets = make_detections(data, args.per_image)
    times, aps = {}, {}
    for name in ("pycocotools", "faster-coco-eval"):
        runs = [run(name, json.loads(json.dumps(data)), [dict(d) for d in dets]) for _ in range(args.repeats)]
        times[name], aps[name] = min(t for t, _ in runs), runs[0][1]
    diff = np.nanmax(np.abs(aps["pycocotools"] - aps["faster-coco-eval"]))
    print(f"{args.instances}: {len(data['images'])} images, {len(dets)} detections, "
          f"{len(data['categories'])} categories")
    print("| evaluator | seconds (evaluate + accumulate, best of {}) |\n|---|---|".format(args.repeats))
    for name, t in times.items():
        print(f"| {name} | {t:.3f} |")
    print(f"faster-coco-eval is {times['pycocotools'] / times['faster-coco-eval']:.1f}x as fast; largest "
          f"per-category AP difference {diff:.2e}")
    return {"seconds": times, "max_ap_difference": float(diff), "n_detections": len(dets)}


if __name__ == "__main__":
    main()
