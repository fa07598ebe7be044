"""train_detect.py's settings: `DetectConfig` (every field is a command-line option), its named `PRESETS`, and the
one place where a config becomes the keyword arguments of the detector and the RPN (`detector_kwargs`,
`rpn_kwargs`) and is checked (`check_config`). The category splits the presets name are in splits.py."""
from __future__ import annotations

from dataclasses import dataclass, field

from regionclip_min.configs import QUICK_GELU_HELP, choice_problems

@dataclass
class DetectConfig:
    # ---- what to train
    task: str = field(default="detector", metadata={"help": "'detector': open-vocabulary Faster R-CNN; 'rpn': "
                      "class-agnostic proposal network on the base boxes"})
    # ---- data
    train_json: str = field(default="data/toy/instances_train_base.json", metadata={"help": "COCO instances json"})
    val_json: str = field(default="data/toy/instances_val_all.json", metadata={"help": "all-category COCO json"})
    image_root: str | None = field(default=None, metadata={"help": "image folder (default: 'images/' beside the "
                                   "json if it exists, else the json's folder)"})
    val_image_root: str | None = field(default=None, metadata={"help": "val image folder (default: as image_root)"})
    category_split: str = field(default="json", metadata={"help": "'json': base/novel from each category's 'split' "
                                "field; 'coco-ovd': OVR-CNN's 48 base / 17 novel COCO names; 'lvis': base = "
                                "frequent + common (866 of LVIS v1), novel = rare (337), from each category's "
                                "'frequency'; 'all': fully supervised, every category's boxes (novel / base AP "
                                "still read from the 'split' field)"})
    drop_empty: bool = field(default=False, metadata={"help": "leave out training images without a base box"})
    min_sizes: str = field(default="256", metadata={"help": "training short sides, comma-separated (one drawn per "
                           "step); the last is the test size (torchvision's rule). Toy: 256 = 2x (docs/DESIGN.md "
                           "§5.1)"})
    max_size: int = field(default=256, metadata={"help": "longest side after resizing"})
    hflip: bool = field(default=True, metadata={"help": "random horizontal flips in training"})
    repeat_factor_threshold: float = field(default=0.0, metadata={"help": "LVIS repeat-factor sampling: an image "
                                           "with a category in fewer than this fraction of images is repeated (the "
                                           "LVIS recipe: 0.001); 0: every image once per epoch"})
    num_workers: int = 1
    # ---- model
    model_name: str = field(default="RN-toy", metadata={"help": "open_clip model (RN-toy, RN50, RN50x4)"})
    init: str | None = field(default="runs/toy/final.pt", metadata={"help": "RegionCLIP or stage-0 CLIP checkpoint "
                             "(ours), or a CLIP weights file; its text encoder embeds the class names"})
    pretrained: str | None = field(default=None, metadata={"help": "open_clip tag or weights file if init is None"})
    quick_gelu: bool | None = field(default=None, metadata={"help": QUICK_GELU_HELP})
    templates: str = field(default="ensemble", metadata={"help": "class-name prompts: 'ensemble' (the official 81) "
                           "or 'single'"})
    class_embeddings: str | None = field(default=None, metadata={"help": "a (C, D) tensor file of class-name "
                                         "embeddings (e.g. the official coco_65_cls_emb.pth) used instead of encoding "
                                         "the names; its rows are named by --vocabulary, or are the val json's "
                                         "categories sorted by id"})
    vocabulary: str | None = field(default=None, metadata={"help": "with --class_embeddings: the names of its rows, "
                                   "in order ('a,b,c' or a text file, one per line)"})
    tau: float = field(default=0.01, metadata={"help": "classifier temperature (paper 0.01)"})
    tau_from_init: bool = field(default=False, metadata={"help": "classifier temperature = the loaded CLIP's own "
                                "1/exp(logit_scale), replacing --tau: 0.01 for OpenAI's CLIP (the paper's value), "
                                "~0.057 for the toy CLIP (toy preset)"})
    focal_gamma: float = field(default=0.5, metadata={"help": "focal scaling gamma (COCO 0.5; 0 = plain CE)"})
    background_weight: float = field(default=0.2, metadata={"help": "CE weight of background RoIs (COCO 0.2)"})
    rpn: str = field(default="joint", metadata={"help": "'joint': RPN trained with the detector (torchvision's "
                     "default); 'offline': frozen ProposalNetwork from --rpn_checkpoint (the paper's)"})
    rpn_checkpoint: str | None = field(default=None, metadata={"help": "train_detect.py --task rpn checkpoint"})
    anchor_sizes: str = field(default="32,64,128,256", metadata={"help": "anchor sides in pixels (one level)"})
    aspect_ratios: str = "0.5,1.0,2.0"
    rpn_pre_nms_top_n_train: int = 1000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = field(default=200, metadata={"help": "proposals per image into RoI sampling"})
    rpn_post_nms_top_n_test: int = 300
    rpn_nms_thresh: float = 0.7
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = field(default=32, metadata={"help": "RoIs sampled per image (the box head "
                                          "runs once per RoI: its cost grows with this)"})
    box_positive_fraction: float = 0.25
    roi_sampling_ratio: int = field(default=0, metadata={"help": "RoIAlign samples per bin side (0: adaptive, one "
                                    "per bin here; torchvision's default 2 costs 4 samples per bin)"})
    box_score_thresh: float = field(default=0.001, metadata={"help": "test: detections scoring below this are dropped "
                                    "(the official COCO test: 0.001)"})
    box_nms: str = field(default="soft", metadata={"help": "test: 'soft' (gaussian soft-NMS, sigma 0.5, prune 0.001: "
                         "the official COCO and LVIS tests) or 'hard' (NMS at box_nms_thresh: Detectron2's default)"})
    box_nms_thresh: float = field(default=0.5, metadata={"help": "test: --box_nms hard's IoU"})
    detections_per_img: int = field(default=100, metadata={"help": "test: detections kept per image (COCO 100, "
                                    "LVIS 300)"})
    rpn_score_fusion: bool = field(default=False, metadata={"help": "test: score = sqrt(p_class * the proposal's "
                                   "objectness) (the official LVIS test, MULTIPLY_RPN_SCORE)"})
    channels_last: bool = field(default=True, metadata={"help": "channels-last convolutions (faster on CPU)"})
    # ---- optimisation
    optimizer: str = field(default="adamw", metadata={"help": "adamw | sgd"})
    lr: float = field(default=4e-4, metadata={"help": "toy, 600 steps, CLIP init: AP50 all 0.35 at 4e-4, 0.12 at "
                      "1e-4"})
    new_layers_lr_mult: float = field(default=10.0, metadata={"help": "lr factor of the randomly initialised RPN "
                                      "head and box regressor"})
    weight_decay: float = 1e-4
    momentum: float = 0.9
    warmup_steps: int = 50
    lr_steps: str = field(default="0.6667,0.8889", metadata={"help": "the official WarmupMultiStep schedule: linear "
                          "warm-up from 0.001 over warmup_steps, then x0.1 at each of these steps (comma-separated; a "
                          "value below 1 is a fraction of max_steps; COCO: 60k, 80k of 90k)"})
    max_steps: int = 600
    batch_size: int = 8
    grad_clip: float = field(default=0.0, metadata={"help": "max gradient L2 norm of each parameter tensor; 0 "
                             "disables (the official transfer does not clip)"})
    # ---- evaluation
    eval_at_end: bool = True
    eval_only: bool = field(default=False, metadata={"help": "only evaluate --checkpoint (default "
                            "out_dir/final.pt) and write out_dir/results.json"})
    checkpoint: str | None = field(default=None, metadata={"help": "--eval_only: the detector to score: ours, or an "
                                   "official fine-tuned RegionCLIP detector (regionclip_finetuned-*.pth; its "
                                   "Detectron2 RPN is not loaded: pass --rpn_checkpoint, one of our RPNs)"})
    eval_max_images: int | None = field(default=None, metadata={"help": "evaluate on the first N val images"})
    eval_batch_size: int = 16
    draw_images: int = field(default=6, metadata={"help": "val images drawn with predictions to predictions/"})
    # ---- run
    out_dir: str = "runs/toy-det"
    seed: int = 0
    device: str = field(default="cpu", metadata={"help": "cpu | cuda | auto (cuda where a GPU is visible)"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: torch's default, one per core); "
                         "1 avoids thrashing on a machine shared with other jobs"})
    log_every: int = 10
    ckpt_every: int = 200
    keep_ckpts: int = 2
    resume: bool = field(default=False, metadata={"help": "continue from the newest checkpoint in out_dir"})
    overwrite: bool = field(default=False, metadata={"help": "start again in an out_dir that holds a run (its "
                            "checkpoints and metrics are deleted), or take it over from a live run"})


PRESETS = {
    "toy-rpn": dict(_doc="class-agnostic RPN on the toy base boxes, from the stage-0 CLIP (offline RPN, proposals)",
                    task="rpn", init="runs/toy-clip/final.pt", lr=1e-3, new_layers_lr_mult=1.0, max_steps=600,
                    batch_size=8, warmup_steps=50, out_dir="runs/toy-rpn"),
    "toy": dict(_doc="open-vocabulary detection on the toy world from the RegionCLIP checkpoint (9 base -> 12); the "
                "classifier at the toy CLIP's own temperature, as the paper's 0.01 is OpenAI CLIP's own",
                task="detector", init="runs/toy/final.pt", lr=4e-4, max_steps=300, warmup_steps=30, batch_size=8,
                tau_from_init=True, out_dir="runs/toy-det"),
    "coco-rpn": dict(_doc="the offline RPN of the COCO recipe (test_transfer_learning.sh's rpn_coco_48.pth): class-"
                     "agnostic, on the 48 base classes' boxes, on OpenAI's RN50 res4 map (the official one is a "
                     "Detectron2 ImageNet R50-C4: configs/COCO-InstanceSegmentation/"
                     "mask_rcnn_R_50_C4_1x_ovd_FSD.yaml); SGD lr 0.02, batch 16, 90k steps",
                     task="rpn", model_name="RN50", init=None, pretrained="openai",
                     train_json="data/coco/annotations/instances_train2017.json",
                     val_json="data/coco/annotations/instances_val2017.json", image_root="data/coco/train2017",
                     val_image_root="data/coco/val2017", category_split="coco-ovd", drop_empty=True,
                     min_sizes="640,672,704,736,768,800", max_size=1333, anchor_sizes="32,64,128,256,512",
                     rpn_pre_nms_top_n_train=12000, rpn_pre_nms_top_n_test=6000, rpn_post_nms_top_n_train=2000,
                     rpn_post_nms_top_n_test=1000, optimizer="sgd", lr=0.02, new_layers_lr_mult=1.0,
                     weight_decay=1e-4, warmup_steps=1000, lr_steps="60000,80000", max_steps=90_000, batch_size=16,
                     channels_last=False, device="auto", num_workers=8, ckpt_every=5000, out_dir="runs/coco-rpn"),
    "coco-ovd-rn50": dict(_doc="paper (configs/COCO-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4_ovd.yaml, "
                          "test_transfer_learning.sh): COCO 48/17, RN50, the frozen coco-rpn RPN (1,000 proposals), "
                          "SGD lr 0.002, batch 16, 90k steps, 640-800 / 800 px, soft-NMS at test",
                          task="detector", model_name="RN50", init="runs/rn50-coco/final.pt", rpn="offline",
                          rpn_checkpoint="runs/coco-rpn/final.pt",
                          train_json="data/coco/annotations/instances_train2017.json",
                          val_json="data/coco/annotations/instances_val2017.json", image_root="data/coco/train2017",
                          val_image_root="data/coco/val2017", category_split="coco-ovd", drop_empty=True,
                          min_sizes="640,672,704,736,768,800", max_size=1333, anchor_sizes="32,64,128,256,512",
                          rpn_pre_nms_top_n_train=12000, rpn_pre_nms_top_n_test=6000, rpn_post_nms_top_n_train=1000,
                          rpn_post_nms_top_n_test=1000, box_batch_size_per_image=512, focal_gamma=0.5,
                          background_weight=0.2, optimizer="sgd", lr=0.002, new_layers_lr_mult=1.0,
                          weight_decay=1e-4, warmup_steps=5000, lr_steps="60000,80000", max_steps=90_000,
                          batch_size=16, channels_last=False, device="auto", num_workers=8, ckpt_every=5000,
                          draw_images=10, out_dir="runs/coco-ovd-rn50"),
    "lvis-rpn": dict(_doc="the offline RPN of the LVIS recipe (rpn_lvis_866_lsj.pth): class-agnostic, on the 866 "
                     "base (frequent + common) categories' boxes, on OpenAI's RN50 res4 map (the official one is a "
                     "Detectron2 R50-FPN: configs/LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml); SGD lr "
                     "0.02, batch 16, 180k steps, repeat-factor sampling 0.001. The paper's pretraining takes its "
                     "proposals from this RPN (train_pretrain.py --rpn_checkpoint runs/lvis-rpn/final.pt)",
                     task="rpn", model_name="RN50", init=None, pretrained="openai",
                     train_json="data/lvis/lvis_v1_train.json", val_json="data/lvis/lvis_v1_val.json",
                     image_root="data/coco", val_image_root="data/coco", category_split="lvis", drop_empty=True,
                     min_sizes="640,672,704,736,768,800", max_size=1333, anchor_sizes="32,64,128,256,512",
                     rpn_pre_nms_top_n_train=12000, rpn_pre_nms_top_n_test=6000, rpn_post_nms_top_n_train=2000,
                     rpn_post_nms_top_n_test=1000, repeat_factor_threshold=0.001, optimizer="sgd", lr=0.02,
                     new_layers_lr_mult=1.0, weight_decay=1e-4, warmup_steps=1000, lr_steps="120000,160000",
                     max_steps=180_000, batch_size=16, channels_last=False, device="auto", num_workers=8,
                     ckpt_every=5000, out_dir="runs/lvis-rpn"),
    "lvis-ovd-rn50": dict(_doc="paper (configs/LVISv1-InstanceSegmentation/CLIP_fast_rcnn_R_50_C4.yaml, "
                          "test_transfer_learning.sh): LVIS v1, 866 base categories in training and all 1,203 at "
                          "test, RN50 from RegionCLIP on CC3M, the frozen lvis-rpn RPN (1,000 proposals), plain CE "
                          "with background weight 0.8, repeat-factor sampling 0.001, SGD lr 0.002, batch 16, 180k "
                          "steps (x0.1 at 120k, 160k; 5k warm-up), test: score > 0.02, soft-NMS, 300 per image, "
                          "RPN-score fusion; scored by LVIS's federated protocol (box AP)",
                          task="detector", model_name="RN50", init="runs/rn50-cc3m/final.pt", rpn="offline",
                          rpn_checkpoint="runs/lvis-rpn/final.pt", train_json="data/lvis/lvis_v1_train.json",
                          val_json="data/lvis/lvis_v1_val.json", image_root="data/coco", val_image_root="data/coco",
                          category_split="lvis", drop_empty=True, min_sizes="640,672,704,736,768,800", max_size=1333,
                          anchor_sizes="32,64,128,256,512", rpn_pre_nms_top_n_train=12000,
                          rpn_pre_nms_top_n_test=6000, rpn_post_nms_top_n_train=1000, rpn_post_nms_top_n_test=1000,
                          box_batch_size_per_image=512, focal_gamma=0.0, background_weight=0.8,
                          repeat_factor_threshold=0.001, box_score_thresh=0.02, box_nms="soft",
                          detections_per_img=300, rpn_score_fusion=True, optimizer="sgd", lr=0.002,
                          new_layers_lr_mult=1.0, weight_decay=1e-4, warmup_steps=5000, lr_steps="120000,160000",
                          max_steps=180_000, batch_size=16, channels_last=False, device="auto", num_workers=8,
                          ckpt_every=5000, draw_images=10, out_dir="runs/lvis-ovd-rn50"),
}


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


# ---- config -> keyword arguments, in one place (docs/DESIGN.md §2) ------------------------------------------
def rpn_kwargs(cfg) -> dict:
    return dict(min_size=list(ints(cfg.min_sizes)), max_size=cfg.max_size, anchor_sizes=list(ints(cfg.anchor_sizes)),
                aspect_ratios=list(floats(cfg.aspect_ratios)), pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train,
                pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test, post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
                post_nms_top_n_test=cfg.rpn_post_nms_top_n_test, nms_thresh=cfg.rpn_nms_thresh,
                batch_size_per_image=cfg.rpn_batch_size_per_image)


def detector_kwargs(cfg) -> dict:
    """build_detector's keyword arguments: the RPN's (rpn_kwargs, its own settings prefixed rpn_) and the box head's."""
    r = rpn_kwargs(cfg)
    shared = {k: r.pop(k) for k in ("min_size", "max_size", "anchor_sizes", "aspect_ratios")}
    return dict(**shared, **{f"rpn_{k}": v for k, v in r.items()},
                box_batch_size_per_image=cfg.box_batch_size_per_image, box_positive_fraction=cfg.box_positive_fraction,
                box_score_thresh=cfg.box_score_thresh, box_nms=cfg.box_nms, box_nms_thresh=cfg.box_nms_thresh,
                detections_per_img=cfg.detections_per_img, tau=cfg.tau, focal_gamma=cfg.focal_gamma,
                background_weight=cfg.background_weight, sampling_ratio=cfg.roi_sampling_ratio,
                rpn_score_fusion=cfg.rpn_score_fusion)


def check_config(cfg) -> None:
    """SystemExit listing every bad option of a DetectConfig at once."""
    from regionclip_min.splits import SPLITS  # torch: not needed by --help
    problems = choice_problems(cfg, {"task": ("detector", "rpn"), "category_split": SPLITS,
                                     "rpn": ("joint", "offline"), "optimizer": ("adamw", "sgd"),
                                     "box_nms": ("soft", "hard"), "templates": ("ensemble", "single")})
    if cfg.rpn == "offline" and cfg.task == "detector" and not cfg.rpn_checkpoint:
        problems.append("--rpn offline needs --rpn_checkpoint (train one: python train_detect.py --preset toy-rpn)")
    for name in ("min_sizes", "anchor_sizes", "aspect_ratios", "lr_steps"):
        try:
            floats(getattr(cfg, name))
        except ValueError:
            problems.append(f"--{name} must be comma-separated numbers, got {getattr(cfg, name)!r}")
    if problems:
        raise SystemExit("bad config: " + "; ".join(problems))
