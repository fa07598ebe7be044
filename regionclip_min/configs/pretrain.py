"""train_pretrain.py's settings: `PretrainConfig` (every field is a command-line option) and its named `PRESETS`."""
from __future__ import annotations

from dataclasses import dataclass, field

from regionclip_min.configs import QUICK_GELU_HELP


@dataclass
class PretrainConfig:
    # ---- what to train
    stage: str = field(default="regionclip", metadata={"help": "'clip': stage 0, image-text loss on the whole "
                       "image tower, both towers trained; 'regionclip': the paper's region-text pretraining"})
    # ---- data
    captions: str = field(default="data/toy/captions_train.json",
                          metadata={"help": "COCO captions json or TSV of image_path<TAB>caption"})
    image_root: str | None = field(default=None, metadata={"help": "image folder (default: toy layout "
                                   "'images/' beside a json, else the file's folder)"})
    image_size: int = field(default=128, metadata={"help": "short side of the training image (with max_size None: "
                            "the side of a square centre crop)"})
    max_size: int | None = field(default=None, metadata={"help": "None: square centre crops; a value: the aspect kept, "
                                 "the long side at most this, batches zero-padded (the official 800 / 1333)"})
    region_scale: float = field(default=2.0, metadata={"help": "images are enlarged by this before region pooling "
                                "(docs/DESIGN.md §5.1: a 128-px CLIP needs 2-3x; the paper pools from 800-px images)"})
    hflip: bool = field(default=True, metadata={"help": "random horizontal flips"})
    num_workers: int = field(default=1, metadata={"help": "DataLoader worker processes"})
    cache_images: bool = field(default=False, metadata={"help": "keep decoded images in memory after their first "
                               "read (3 x image_size^2 bytes each); with num_workers 0, for many epochs over a small "
                               "set (toy stage 0: 0.42 -> 0.37 s/step)"})
    # ---- model
    model_name: str = field(default="RN-toy", metadata={"help": "open_clip model name (RN-toy, RN50, RN50x4)"})
    pretrained: str | None = field(default=None, metadata={"help": "open_clip tag (openai) or local weights file "
                                   "for the initial CLIP; None = random init"})
    init: str | None = field(default=None, metadata={"help": "checkpoint to start from: ours (stage-0 CLIP for "
                             "'regionclip'), or an official RegionCLIP one (regionclip_pretrained-*.pth, "
                             "teacher_*_OAI_CLIP.pth: student and text tower, teacher and RPN dropped); overrides "
                             "pretrained"})
    quick_gelu: bool | None = field(default=None, metadata={"help": QUICK_GELU_HELP})
    # ---- concepts and pseudo-labels (regionclip)
    concept_min_count: int = field(default=1, metadata={"help": "keep caption nouns seen at least this often "
                                   "(paper: 100)"})
    max_concepts: int | None = field(default=None, metadata={"help": "cap on the concept pool size"})
    concepts: str | None = field(default=None, metadata={"help": "use these concept names ('a,b,c' or a text file, "
                                 "one per line) instead of the nouns parsed from the captions (ablation: class "
                                 "names only)"})
    templates: str = field(default="ensemble", metadata={"help": "'ensemble' (the official 81: '{}.' + OpenAI's 80 "
                           "ImageNet prompts) or 'single'"})
    concept_embeddings: str | None = field(default=None, metadata={"help": "a (C, D) tensor file of concept "
                                           "embeddings (e.g. the official googlecc_nouns_*.pth) used instead of "
                                           "encoding the pool; needs --concepts naming its C rows in order"})
    concept_cache: str | None = field(default="data/cache", metadata={"help": "folder caching concept embeddings"})
    proposals: str = field(default="random", metadata={"help": "where the regions come from: a name of "
                           "proposals.PROPOSERS (random | grid | file | rpn | windows)"})
    proposals_per_image: int = field(default=16, metadata={"help": "regions per image (paper: 100 of 300 RPN)"})
    proposals_file: str | None = field(default=None, metadata={"help": "json image id -> [[x1,y1,x2,y2,score]] in "
                                       "the pixels of the image_size training image (scaled by region_scale here)"})
    rpn_checkpoint: str | None = field(default=None, metadata={"help": "class-agnostic RPN from train_detect.py "
                                       "--preset toy-rpn, for --proposals rpn"})
    rpn_top_k: int = field(default=300, metadata={"help": "rpn: keep the top-k boxes after NMS 0.5, then sample "
                           "proposals_per_image of them at random (paper: 300, 100)"})
    tau: float = field(default=0.01, metadata={"help": "temperature of region losses and pseudo-labels (paper)"})
    tau_from_init: bool = field(default=False, metadata={"help": "tau = the init CLIP's (the teacher's) own "
                                "1/logit_scale"})
    image_tau_from_init: bool = field(default=False, metadata={"help": "image-text loss at the init CLIP's "
                                         "own 1/logit_scale, region losses at tau (not the paper's: an ablation "
                                         "row)"})
    teacher: str = field(default="pooled", metadata={"help": "how the frozen teacher embeds a proposal: 'pooled' "
                         "(the paper: RoIAlign on its res4 map, res5, attention pool) or 'crop' (not the paper's: "
                         "ViLD-style, the box cut out and encoded as a whole image; regions.CropEncoder)"})
    teacher_init: str | None = field(default=None, metadata={"help": "a separate frozen teacher (the paper's "
                                     "teacher / student ablation, Table 6; official TEACHER_RESNETS_DEPTH): a "
                                     "train_pretrain.py checkpoint such as a larger stage-0 CLIP, or weights for "
                                     "--teacher_model_name. It labels the regions with the pool embedded by its own "
                                     "text tower; the student's losses and the image-text loss keep the init's text "
                                     "tower (default: the init's frozen copy teaches)"})
    teacher_model_name: str | None = field(default=None, metadata={"help": "--teacher_init's open_clip model "
                                           "(default: the name its checkpoint records, else --model_name)"})
    crop_context: float = field(default=1.25, metadata={"help": "--teacher crop: side of the square crop over the "
                                "box's longer side"})
    pseudo_threshold: float = field(default=0.1, metadata={"help": "keep region iff max concept prob > this"})
    negatives: str = field(default="regions", metadata={"help": "region-text loss columns: 'regions' (the "
                           "official: one per kept region, its concept's embedding; same-concept columns are "
                           "positives) or 'pool' (every concept of the pool once)"})
    # ---- loss weights (the total is their weighted sum; paper: all 1)
    w_region: float = 1.0
    w_distill: float = 1.0
    w_image: float = 1.0
    # ---- optimisation
    optimizer: str = field(default="adamw", metadata={"help": "adamw | sgd"})
    lr: float = 1e-4
    weight_decay: float = 0.1
    momentum: float = 0.9
    warmup_steps: int = 100
    max_steps: int = 600
    schedule: str = field(default="multistep", metadata={"help": "'multistep' (the official: warm-up from 0.001, "
                          "x0.1 at each of lr_steps) or 'cosine' (CLIP's, stage 0)"})
    lr_steps: str = field(default="0.5,0.875", metadata={"help": "multistep: steps of x0.1, comma-separated; a value "
                          "below 1 is a fraction of max_steps (the official 300k, 525k of 600k)"})
    batch_size: int = field(default=16, metadata={"help": "images per step over all processes, split evenly over "
                            "ranks (the official 96 = 3 images x 32 GPUs); the region losses see one rank's regions"})
    grad_clip: float = field(default=5.0, metadata={"help": "max gradient L2 norm of each parameter tensor "
                             "(regionclip, the official) or of all together (stage clip, open_clip's); 0 disables"})
    # ---- run
    out_dir: str = "runs/toy"
    seed: int = 0
    device: str = field(default="cpu", metadata={"help": "cpu | cuda | auto (cuda where a GPU is visible)"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: torch's default, one per core); "
                         "1 avoids thrashing on a machine shared with other jobs"})
    channels_last: bool = field(default=True, metadata={"help": "channels-last memory format for the image tower "
                                "(faster convolutions on CPU; same outputs up to float rounding)"})
    amp: str = field(default="none", metadata={"help": "'bf16': model forwards under bfloat16 autocast (weights, "
                     "losses and optimizer stay float32); 'none': float32 throughout; 'auto': bf16 where the "
                     "hardware has it natively (AVX512-BF16/AMX CPUs, bf16 GPUs); results differ by more than "
                     "rounding"})
    log_every: int = 10
    ckpt_every: int = field(default=200, metadata={"help": "checkpoint every N steps (and at the end)"})
    keep_ckpts: int = field(default=2, metadata={"help": "step checkpoints kept on disk (0 = all)"})
    resume: bool = field(default=False, metadata={"help": "continue from the newest checkpoint in out_dir"})
    overwrite: bool = field(default=False, metadata={"help": "start again in an out_dir that holds a run (its "
                            "checkpoints and metrics are deleted), or take it over from a live run"})


PRESETS = {
    "toy-clip": dict(_doc="stage 0: a tiny CLIP on the toy captions (the teacher / 'CLIP' baseline)",
                     stage="clip", model_name="RN-toy", region_scale=1.0, lr=2e-3, weight_decay=0.1, schedule="cosine",
                     warmup_steps=100, max_steps=2500, batch_size=64, ckpt_every=500, out_dir="runs/toy-clip",
                     num_workers=0, cache_images=True),
    "toy": dict(_doc="RegionCLIP on the toy world from the toy-clip checkpoint, proposals of the toy-rpn RPN (the "
                "toy benchmark's setting)", stage="regionclip", init="runs/toy-clip/final.pt", model_name="RN-toy",
                region_scale=2.0, lr=1e-4, weight_decay=0.1, warmup_steps=30, max_steps=300, batch_size=16,
                proposals="rpn", rpn_checkpoint="runs/toy-rpn/final.pt", proposals_per_image=16, out_dir="runs/toy"),
    "rn50-coco": dict(_doc="paper (configs/pretrain/RegionCLIP_RN50.yaml, pretrain.sh): RN50 from OpenAI's CLIP on "
                      "COCO Captions, proposals of the coco-rpn RPN, short side 800, SGD lr 0.002, global batch 96, "
                      "600k steps",
                      stage="regionclip", model_name="RN50", pretrained="openai",
                      captions="data/coco/annotations/captions_train2017.json",
                      image_root="data/coco/train2017", image_size=800, max_size=1333, region_scale=1.0,
                      concept_min_count=100, proposals="rpn", rpn_checkpoint="runs/coco-rpn/final.pt", rpn_top_k=300,
                      proposals_per_image=100, optimizer="sgd", lr=0.002, weight_decay=1e-4,
                      momentum=0.9, warmup_steps=1000, max_steps=600_000, lr_steps="300000,525000", batch_size=96,
                      device="auto", ckpt_every=5000, out_dir="runs/rn50-coco", num_workers=8),
    "rn50-cc3m": dict(_doc="paper (configs/pretrain/RegionCLIP_RN50.yaml, pretrain.sh): the same on CC3M, an "
                      "image_path<TAB>caption TSV",
                      stage="regionclip", model_name="RN50", pretrained="openai", captions="data/cc3m/train.tsv",
                      image_root=None, image_size=800, max_size=1333, region_scale=1.0,
                      concept_min_count=100, proposals="rpn", rpn_checkpoint="runs/coco-rpn/final.pt", rpn_top_k=300,
                      proposals_per_image=100, optimizer="sgd", lr=0.002, weight_decay=1e-4,
                      momentum=0.9, warmup_steps=1000, max_steps=600_000, lr_steps="300000,525000", batch_size=96,
                      device="auto", ckpt_every=5000, out_dir="runs/rn50-cc3m", num_workers=8),
}


def loss_weights(cfg) -> dict:
    """The `w_*` options of a PretrainConfig: the weight of each loss term (regionclip.RegionCLIP.LOSS_WEIGHTS)."""
    return {k: v for k, v in vars(cfg).items() if k.startswith("w_")}
