"""Zero-shot region recognition with ground-truth boxes (paper Table 4 protocol, Fig. 1(b)).

    python eval_zeroshot.py --checkpoint runs/toy/final.pt          # RegionCLIP on the toy val set
    python eval_zeroshot.py --checkpoint runs/toy-clip/final.pt     # the stage-0 "CLIP" baseline, same protocol
    python eval_zeroshot.py --model_name RN50 --pretrained openai --instances data/coco/annotations/instances_val2017.json

Every ground-truth box of the scene images goes through the region path (res4 map -> RoIAlign -> layer4 ->
attention pool) of the model and is classified by cosine to the class-name embeddings (prompt ensemble): top-1
accuracy over all, base and novel categories. The same model also classifies object-centric images as whole
images (`encode_image`), the image-level number of Fig. 1(b). The same protocol runs for "CLIP" and "RegionCLIP".
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from regionclip_min.checkpoint import load_checkpoint
from regionclip_min.cli import format_config, parse_config
from regionclip_min.clip_model import SINGLE_TEMPLATE, TEMPLATES, encode_texts, load_clip
from regionclip_min.data import DetectionDataset
from regionclip_min.evaluation import gt_box_accuracy, whole_image_accuracy
from regionclip_min.regions import RegionEncoder


@dataclass
class EvalConfig:
    # ---- model: one of our checkpoints, or an open_clip model name (+ tag or local weights file)
    checkpoint: str | None = field(default=None, metadata={"help": "a train_pretrain.py checkpoint (stage-0 CLIP "
                                   "or RegionCLIP); its model_name is read from it"})
    model_name: str = field(default="RN-toy", metadata={"help": "open_clip model name when no --checkpoint"})
    pretrained: str | None = field(default=None, metadata={"help": "open_clip tag or weights file, with "
                                   "--model_name"})
    # ---- data
    instances: str = field(default="data/toy/instances_val_all.json", metadata={"help": "COCO instances json"})
    image_root: str | None = field(default=None, metadata={"help": "image folder (default: 'images/' beside "
                                   "the json if present, else the json's folder)"})
    scale: float = field(default=2.0, metadata={"help": "enlarge images by this before pooling regions "
                         "(DESIGN §5.1; 1.0 for real detection images)"})
    kinds: str = field(default="scene", metadata={"help": "images whose 'kind' is in this comma list are used "
                       "for GT boxes ('all' = every image)"})
    # ---- vocabulary
    templates: str = field(default="ensemble", metadata={"help": "'ensemble' or 'single' prompt templates"})
    # ---- run
    batch_size: int = 32
    device: str = "cpu"
    out: str | None = field(default=None, metadata={"help": "results json (default: beside the checkpoint)"})


def load_model(cfg, device):
    """(CLIP model, tokenizer, a short description) from --checkpoint or --model_name/--pretrained."""
    if cfg.checkpoint is not None:
        state = load_checkpoint(cfg.checkpoint)
        name = state.get("model_name") or state.get("config", {}).get("model_name")
        if name is None:
            raise SystemExit(f"{cfg.checkpoint}: no model_name in this checkpoint; pass --model_name and "
                             f"--pretrained instead")
        model, tok = load_clip(name, cfg.checkpoint, device=device)
        return model, tok, f"{cfg.checkpoint} ({state.get('stage', '?')}, step {state.get('step', '?')})"
    model, tok = load_clip(cfg.model_name, cfg.pretrained, device=device)
    return model, tok, f"{cfg.model_name} ({cfg.pretrained or 'random init'})"


def main(argv=None) -> dict:
    cfg, _ = parse_config(EvalConfig, argv, description=__doc__.split("\n\n")[0])
    device = torch.device(cfg.device)
    if cfg.image_root is None and (Path(cfg.instances).parent / "images").is_dir():
        cfg.image_root = str(Path(cfg.instances).parent / "images")
    print(f"resolved config:\n{format_config(cfg)}")
    t0 = time.time()
    model, tokenizer, desc = load_model(cfg, device)
    dataset = DetectionDataset(cfg.instances, cfg.image_root)
    templates = TEMPLATES if cfg.templates == "ensemble" else SINGLE_TEMPLATE
    class_emb = encode_texts(model, tokenizer, dataset.category_names, templates).to(device)  # (K, D)
    kinds = None if cfg.kinds == "all" else tuple(k.strip() for k in cfg.kinds.split(","))
    regions = gt_box_accuracy(RegionEncoder(model.visual), dataset, class_emb, scale=cfg.scale,
                              batch_size=cfg.batch_size, kinds=kinds, progress=True, device=device)
    image = whole_image_accuracy(model, dataset, class_emb, batch_size=cfg.batch_size, device=device)
    results = {"model": desc, "instances": cfg.instances, "scale": cfg.scale, "kinds": cfg.kinds,
               "gt_box_top1": regions, "whole_image_top1": image, "seconds": round(time.time() - t0, 1)}
    pct = lambda v: f"{100 * v:5.1f}" if v == v else "  n/a"  # noqa: E731
    print(f"\nzero-shot recognition, {desc}")
    print("| GT-box top-1 all | base | novel | boxes | whole-image top-1 (object-centric) | images |")
    print("|---|---|---|---|---|---|")
    print(f"| {pct(regions['all'])} | {pct(regions['base'])} | {pct(regions['novel'])} | {regions['n_boxes']} | "
          f"{pct(image['accuracy'])} | {image['n_images']} |")
    out = Path(cfg.out) if cfg.out else (Path(cfg.checkpoint).with_suffix(".zeroshot.json") if cfg.checkpoint
                                          else Path("results/zeroshot.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"results written to {out}")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
