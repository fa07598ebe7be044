"""eval_zeroshot.py's settings: `EvalConfig` (every field is a command-line option) and `check_config`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from regionclip_min.configs import QUICK_GELU_HELP, choice_problems


@dataclass
class EvalConfig:
    # ---- model: one of our checkpoints, or an open_clip model name (+ tag or local weights file)
    checkpoint: str | None = field(default=None, metadata={"help": "a train_pretrain.py checkpoint (stage-0 CLIP "
                                   "or RegionCLIP), a train_detect.py detector checkpoint, or an official RegionCLIP "
                                   "checkpoint (regionclip_pretrained-*.pth, regionclip_finetuned-*.pth)"})
    text_checkpoint: str | None = field(default=None, metadata={"help": "detector checkpoints only: the "
                                        "checkpoint whose text encoder to use (default: the detector's --init; an "
                                        "official detector has none and uses its own class embeddings)"})
    model_name: str = field(default="RN-toy", metadata={"help": "open_clip model name when no --checkpoint (an "
                            "official --checkpoint's architecture is read from its shapes)"})
    pretrained: str | None = field(default=None, metadata={"help": "open_clip tag or weights file (open_clip, "
                                   "OpenAI or official RegionCLIP layout), with --model_name"})
    quick_gelu: bool | None = field(default=None, metadata={"help": QUICK_GELU_HELP})
    # ---- data and boxes
    instances: str = field(default="data/toy/instances_val_all.json", metadata={"help": "COCO instances json"})
    image_root: str | None = field(default=None, metadata={"help": "image folder (default: 'images/' beside "
                                   "the json if present, else the json's folder)"})
    boxes: str = field(default="gt", metadata={"help": "'gt': ground-truth boxes (top-1 accuracy, AP50); or "
                       "proposals (zero-shot detection AP50): 'rpn' (--rpn_checkpoint), 'file' (--proposals_file), "
                       "'random', 'grid', 'windows' (proposals.PROPOSERS)"})
    rpn_checkpoint: str = field(default="runs/toy-rpn/final.pt", metadata={"help": "class-agnostic RPN "
                                "(train_detect.py --preset toy-rpn) for --boxes rpn and --image"})
    proposals_file: str | None = field(default=None, metadata={"help": "--boxes file: json image id -> [[x1, y1, "
                                       "x2, y2, score], ...] in the pixels of the image files"})
    proposals_per_image: int = field(default=100, metadata={"help": "--boxes file / random / grid / windows: "
                                     "proposals per image (a file's first rows)"})
    rpn_top_k: int = field(default=100, metadata={"help": "RPN proposals per image, highest objectness first"})
    image_boxes: str = field(default="auto", metadata={"help": "--image proposals: 'rpn' (--rpn_checkpoint), "
                             "'windows' (multi-scale sliding windows, no training needed), 'auto' (rpn if the "
                             "checkpoint exists, else windows). A detector --checkpoint uses its own RPN"})
    region_scale: float = field(default=2.0, metadata={"help": "enlarge images by this before pooling regions "
                         "(docs/DESIGN.md §5.1: 2 for the 128-px toy CLIP; 1 for real detection images)"})
    region_encoder: str = field(default="pooled", metadata={"help": "'pooled' (the paper: RoIAlign on res4, res5, "
                                "attention pool) or 'crop' (ViLD-style: each box cut out and encoded as a whole "
                                "image; regions.CropEncoder)"})
    crop_context: float = field(default=1.25, metadata={"help": "--region_encoder crop: side of the square crop "
                                "over the box's longer side"})
    kinds: str = field(default="auto", metadata={"help": "images whose 'kind' is in this comma list; 'all' = every "
                       "image; 'auto' = scenes for --boxes gt, all images for proposals"})
    eval_max_images: int | None = field(default=None, metadata={"help": "only the first this many images"})
    # ---- vocabulary and scoring
    vocabulary: str | None = field(default=None, metadata={"help": "class names: 'a,b,c' or a text file with one "
                                   "name per line (default: the dataset's categories)"})
    templates: str = field(default="ensemble", metadata={"help": "'ensemble' (the official 81: '{}.' + OpenAI's 80 "
                           "ImageNet templates) or 'single' ('a photo of a {}.')"})
    class_embeddings: str | None = field(default=None, metadata={"help": "a (C, D) tensor file of class-name "
                                         "embeddings (e.g. the official coco_65_cls_emb.pth) used instead of encoding "
                                         "the names; its rows are the --vocabulary names, or the dataset's categories "
                                         "sorted by id"})
    tau: float | None = field(default=None, metadata={"help": "softmax temperature of the class probabilities "
                              "(default: the loaded model's own, 1/exp(logit_scale): 0.01 for OpenAI's CLIP and the "
                              "official checkpoints, the paper's value, and the learned ~0.057 for the toy CLIP; an "
                              "official detector without a text encoder: the official 0.01)"})
    objectness_power: float = field(default=0.5, metadata={"help": "--boxes rpn / --image: score = p_class * "
                                    "objectness ** this (0: class probability only, which ranks background boxes "
                                    "as high as objects; 1: their product)"})
    nms_thresh: float = field(default=0.5, metadata={"help": "proposals: per-class NMS IoU"})
    max_dets: int | None = field(default=None, metadata={"help": "detections kept per image (default: 300 for an "
                                 "LVIS-format json, LVIS's limit, scored by its federated protocol; else 100)"})
    # ---- demo and features
    image: str | None = field(default=None, metadata={"help": "demo: detect --vocabulary in this image with the "
                              "RPN's proposals; prints a table, writes a PNG (no dataset needed)"})
    out_image: str | None = field(default=None, metadata={"help": "demo PNG (default: results/demo/<image "
                                  "stem>.png)"})
    score_thresh: float = field(default=0.3, metadata={"help": "demo: detections drawn and listed score at least "
                                "this"})
    max_boxes: int = field(default=5, metadata={"help": "demo: at most this many detections listed and drawn"})
    draw_scale: int = field(default=1, metadata={"help": "demo: the PNG is the image enlarged this many times "
                            "(1: the image's size; 4 makes labels on a 128-px toy image legible)"})
    save_region_features: str | None = field(default=None, metadata={"help": "write boxes, region embeddings and "
                                             "image ids (torch.load(weights_only=True)) to this file"})
    # ---- run
    eval_batch_size: int = field(default=32, metadata={"help": "images per forward pass"})
    device: str = field(default="cpu", metadata={"help": "cpu | cuda | auto (cuda where a GPU is visible)"})
    out: str | None = field(default=None, metadata={"help": "results json (default: beside the checkpoint, "
                            "<name>.zeroshot-<boxes>.json, or results/zeroshot/<model>-<weights>-<boxes>.json)"})
    overwrite: bool = field(default=False, metadata={"help": "replace a results json that holds results of other "
                            "weights or data (refused otherwise)"})


def check_config(cfg) -> None:
    """SystemExit listing every bad option of an EvalConfig at once."""
    from regionclip_min.proposals import PROPOSERS, proposer_problems  # torch: not needed by --help
    problems = choice_problems(cfg, {"boxes": ("gt", *PROPOSERS), "templates": ("ensemble", "single"),
                                     "image_boxes": ("auto", "rpn", "windows")})
    if cfg.region_encoder not in ("pooled", "crop") or cfg.crop_context <= 0:
        problems.append(f"--region_encoder must be pooled or crop and --crop_context positive, got "
                        f"{cfg.region_encoder!r} and {cfg.crop_context}")
    if cfg.region_scale <= 0 or (cfg.tau is not None and cfg.tau <= 0) or min(cfg.rpn_top_k, cfg.proposals_per_image, cfg.eval_batch_size,
                                                     cfg.max_boxes, cfg.draw_scale) < 1:
        problems.append("--region_scale, --tau, --rpn_top_k, --proposals_per_image, --eval_batch_size, --max_boxes "
                        "and --draw_scale must be positive")
    if cfg.image is None and cfg.boxes in PROPOSERS:
        problems += proposer_problems(cfg.boxes, cfg.rpn_checkpoint, cfg.proposals_file)
    if cfg.image and cfg.image_boxes == "rpn" and not Path(cfg.rpn_checkpoint).is_file():
        problems.append(f"--rpn_checkpoint {cfg.rpn_checkpoint} does not exist (train one: python train_detect.py "
                        f"--preset toy-rpn)")
    if cfg.image is None and not Path(cfg.instances).is_file():
        problems.append(f"--instances {cfg.instances} does not exist (make toy generates data/toy)")
    if problems:
        raise SystemExit("bad configuration:\n  " + "\n  ".join(problems))


def resolve_kinds(cfg, dataset) -> tuple[str, tuple[str, ...] | None]:
    """(--kinds as resolved, the tuple of kinds to keep or None for all). 'auto': the toy world's scenes for GT
    boxes when the json marks image kinds (its object-centric images have one large box each), else every image.
    SystemExit when no image is left."""
    marked = any(k is not None for k in dataset.kinds)
    kinds = ("scene" if cfg.boxes == "gt" and marked else "all") if cfg.kinds == "auto" else cfg.kinds
    kinds_t = None if kinds == "all" else tuple(k.strip() for k in kinds.split(","))
    if kinds_t is not None and not any(k in kinds_t for k in dataset.kinds):
        found = sorted({str(k) for k in dataset.kinds})
        raise SystemExit(f"{cfg.instances}: no image has a 'kind' in {list(kinds_t)} (the images' kinds: {found}); "
                         f"pass --kinds all, or --kinds with some of those")
    return kinds, kinds_t
