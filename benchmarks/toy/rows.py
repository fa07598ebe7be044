"""The rows of the toy benchmark's studies: the paper's ablations (and a few extra rows) of RegionCLIP pretraining,
and the transfer studies, each a tag, one line saying what it changes, and the script arguments that change it
(benchmark.py runs them; tables.py and study_tables.py read them; docs/RESULTS.md shows them)."""

ABLATIONS = [  # (tag, what, extra train_pretrain.py args); the full model is regionclip-full-s0
    ("no-distill", "without L_distill", ("--w_distill", "0")),
    ("no-region", "without L_region_contrastive", ("--w_region", "0")),
    ("no-image", "without L_image_contrastive", ("--w_image", "0")),
    ("image-only", "only L_image_contrastive, same steps (control: continued CLIP training)",
     ("--w_region", "0", "--w_distill", "0")),
    ("random-boxes", "random boxes instead of RPN proposals", ("--proposals", "random")),
    ("class-names", "concept pool = the 12 class names instead of caption nouns", ("--concepts", "CLASS_NAMES")),
    ("neg-pool", "negatives: every concept of the pool instead of the batch's", ("--negatives", "pool")),
    ("tau-teacher", "tau = the teacher's own 1/logit_scale instead of 0.01", ("--tau_from_init", "true")),
    ("native-128", "regions pooled at the native 128 px instead of 2x enlarged images", ("--region_scale", "1.0")),
    ("teacher-L", "teacher: a larger stage-0 CLIP (RN-toy-L: width 24, 96-d) teaches the RN-toy student (Table 6)",
     ("--teacher_init", "TEACHER_L")),
    ("image-tau-teacher", "extra, not in the paper: image-text loss at the teacher's own tau, region losses at 0.01",
     ("--image_tau_from_init", "true")),
    ("crop-teacher", "extra, not in the paper: ViLD-style teacher, each proposal cropped (1.25x context) and encoded "
     "as a whole image", ("--teacher", "crop")),
    ("crop-teacher-lr3e-5", "extra, not in the paper: the same ViLD-style teacher, learning rate 3e-5 instead of "
     "1e-4", ("--teacher", "crop", "--lr", "3e-5")),
    ("lr3e-5", "extra, optimisation tried: learning rate 3e-5 instead of 1e-4", ("--lr", "3e-5")),
    ("lr3e-4", "extra, optimisation tried: learning rate 3e-4 instead of 1e-4", ("--lr", "3e-4")),
    ("steps900", "extra, optimisation tried: 900 steps instead of 300", ("--max_steps", "900")),
]
LONG_ABLATIONS = ("teacher-L", "steps900", "crop-teacher", "crop-teacher-lr3e-5")  # started first by make toy-ablations
TRANSFER_ABLATIONS = ("teacher-L", "crop-teacher", "crop-teacher-lr3e-5")  # rows that also get a detector transfer


TRANSFER_STUDIES = [  # (tag, what, extra train_detect.py args): transfers from CLIP and RegionCLIP for every seed
    ("supervised", "fully supervised: every category's boxes and names in training (paper Table 5)",
     ("--train_json", "ALL_BOXES", "--category_split", "all")),
    ("rois512", "512 RoIs sampled per image instead of 32 (torchvision's default)",
     ("--box_batch_size_per_image", "512")),
    ("props2000", "2,000 proposals per image into RoI sampling instead of 200 (torchvision's default; 2,000 before "
     "NMS too)", ("--rpn_pre_nms_top_n_train", "2000", "--rpn_post_nms_top_n_train", "2000")),
    ("sampling2", "RoIAlign sampling ratio 2 instead of adaptive (torchvision's default)",
     ("--roi_sampling_ratio", "2")),
]
