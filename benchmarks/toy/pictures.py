"""The toy benchmark's pictures (docs/RESULTS.md), drawn from the runs of one seed for CLIP and for RegionCLIP:

    regions.png         GT boxes of val scenes named by zero-shot region recognition (drawing.region_grid)
    detections.png      the two transfers' detections (drawing.detection_grid)
    region_map.png      val GT-box region embeddings, first two principal components, by category, novel as crosses
    concept_heatmaps.png  for a few val scenes, each concept's zero-shot detection score over the RPN's proposals
    loss_curves.png     stage 0, RegionCLIP pretraining and the RegionCLIP transfer, from their metrics.jsonl

They are redrawn when a checkpoint they show is newer than they are (a fresh clone's committed pictures are older
than its runs), or with --force.
"""
from __future__ import annotations

from pathlib import Path

import torch

SCALE = 2.0  # regions pooled from 2x enlarged images, as the benchmark's zero-shot evaluation (docs/DESIGN.md §5.1)


def pictures(b, clip_ckpt: Path, rc_ckpt: Path, seed: int, n_images: int = 6) -> None:
    """All the pictures of the module docstring into b.results, for the CLIP and RegionCLIP checkpoints given and
    the transfers of `seed`."""
    from regionclip_min.drawing import detection_grid, region_grid

    dets = [b.runs / f"det-{name}-s{seed}" / "final.pt" for name in ("clip", "regionclip")]
    names = ("regions.png", "detections.png", "region_map.png", "concept_heatmaps.png", "loss_curves.png")
    outs = {n: b.results / n for n in names}
    newest = max(p.stat().st_mtime for p in (clip_ckpt, rc_ckpt, *dets))
    if all(p.is_file() and p.stat().st_mtime >= newest for p in outs.values()) and not b.force:
        return
    val = (b.data / "instances_val_all.json", b.data / "images")
    models = {"CLIP (stage 0)": clip_ckpt, "RegionCLIP": rc_ckpt}
    region_grid(*val, list(models.values()), outs["regions.png"], n_images=n_images)
    print(f"{outs['regions.png']}: top row CLIP, bottom row RegionCLIP; green right, red wrong; * novel")
    detection_grid(*val, dets, outs["detections.png"], n_images=n_images)
    print(f"{outs['detections.png']}: top row transfer from CLIP, bottom row from RegionCLIP; novel classes red and *")
    region_map(*val, models, outs["region_map.png"])
    print(f"{outs['region_map.png']}: val GT-box regions, PCA of each model's embeddings; novel categories crosses")
    concept_heatmaps(*val, models, b.runs / "rpn" / "final.pt", outs["concept_heatmaps.png"])
    print(f"{outs['concept_heatmaps.png']}: each concept's probability over the RPN's proposals, CLIP and RegionCLIP")
    from regionclip_min.plots import loss_curves
    loss_curves({"stage 0 (toy CLIP)": clip_ckpt.parent / "metrics.jsonl",
                 f"RegionCLIP pretraining, seed {seed}": rc_ckpt.parent / "metrics.jsonl",
                 f"transfer from RegionCLIP, seed {seed}": dets[1].parent / "metrics.jsonl"}, outs["loss_curves.png"])
    print(f"{outs['loss_curves.png']}: the losses of stage 0, RegionCLIP pretraining and the RegionCLIP transfer")


def _load(ckpt: Path):
    from regionclip_min.clip_model import load_clip

    return load_clip("RN-toy", str(ckpt), verbose=False)


@torch.no_grad()
def region_map(instances, image_root, models: dict[str, Path], out) -> Path:
    """plots.embedding_map of every val scene's GT-box region embeddings, one panel per checkpoint."""
    from regionclip_min.data import DetectionDataset
    from regionclip_min.evaluation import encode_regions
    from regionclip_min.plots import embedding_map
    from regionclip_min.regions import RegionEncoder

    ds = DetectionDataset(instances, image_root)
    panels = {}
    for title, ckpt in models.items():
        model, _ = _load(ckpt)
        records = encode_regions(RegionEncoder(model.visual), ds, scale=SCALE, kinds=("scene",))
        panels[title] = (torch.cat([r["embeddings"] for r in records]), torch.cat([r["labels"] for r in records]))
    return embedding_map(panels, ds.category_names, [s == "novel" for s in ds.category_splits], out)


@torch.no_grad()
def concept_heatmaps(instances, image_root, models: dict[str, Path], rpn_ckpt: Path, out, *,
                     n_images: int = 3) -> Path:
    """plots.concept_heatmaps of the first `n_images` val scenes: for each checkpoint, the RPN's 100 best proposals
    scored as zero-shot detection scores them (eval_zeroshot.py --boxes rpn): softmax(cos / tau) over the class
    names at the model's own tau, times the objectness ** 0.5 (without it, background boxes that cover the whole
    image score as high as objects)."""
    from regionclip_min.clip_model import TEMPLATES, encode_texts, logit_scale
    from regionclip_min.data import DetectionDataset
    from regionclip_min.demo import rpn_proposer, zero_shot_detections
    from regionclip_min.plots import concept_heatmaps as draw

    ds = DetectionDataset(instances, image_root)
    picks = [i for i in range(len(ds)) if ds.kinds[i] == "scene"][:n_images]
    proposer = rpn_proposer(rpn_ckpt, top_k=100)
    loaded = {title: _load(ckpt) for title, ckpt in models.items()}
    class_emb = {title: encode_texts(model, tok, ds.category_names, TEMPLATES) for title, (model, tok) in
                 loaded.items()}  # (K, D) each
    rows = []
    for i in picks:
        image, target = ds[i]
        for title, (model, _) in loaded.items():
            _, record, _ = zero_shot_detections(model.visual, image, class_emb[title], proposer=proposer, scale=SCALE)
            prob = torch.softmax(record["embeddings"] @ class_emb[title].t() * logit_scale(model), dim=-1)  # (R, K)
            prob = prob * record["objectness"][:, None] ** 0.5  # the zero-shot detection score (eval_zeroshot.py)
            rows.append((f"image {target['image_id']}\n{title}", image, record["boxes"], prob))
    return draw(rows, ds.category_names, [s == "novel" for s in ds.category_splits], out)
