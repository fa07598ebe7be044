"""RegionCLIP pretraining (paper Sec. 3.2) and the stage-0 image-level CLIP that stands in for OpenAI's CLIP.

    python train_pretrain.py --preset toy-clip                      # stage 0: image-text loss, both towers
    python train_pretrain.py --preset toy                           # RegionCLIP from the stage-0 checkpoint
    torchrun --nproc_per_node 2 train_pretrain.py --preset toy      # the same under DDP (gloo on CPU)

The objective is regionclip_min/regionclip.py (`RegionCLIP`: student, frozen teacher, concepts, proposer; its forward
returns the named losses, its weight_dict their weights); the loop is regionclip_min/engine.py, shared with
train_detect.py. This file builds them from the config.

Everything random in a step (data order, flips, caption choice, random boxes) is a function of (seed, step), so a
run resumed with --resume ends with the same weights as an uninterrupted one.
"""
from __future__ import annotations

from regionclip_min.cli import answer_usage
from regionclip_min.configs import choice_problems
from regionclip_min.configs.pretrain import PRESETS, PretrainConfig, loss_weights

if __name__ == "__main__":  # --help and option mistakes answered before the heavy imports below
    answer_usage(PretrainConfig, PRESETS, __doc__)

import sys
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from regionclip_min import checkpoint as ckpt
from regionclip_min import engine
from regionclip_min.cli import config_to_dict, flags, format_config, parse_config, preset_of, run_main, weights_choice
from regionclip_min.clip_model import SINGLE_TEMPLATE, TEMPLATES, CachedTokenizer, activation, is_quick_gelu, load_clip
from regionclip_min.concepts import backend as concept_backend
from regionclip_min.concepts import build_concept_pool, concept_embeddings, read_names
from regionclip_min.data import ImageCaptionDataset, collate_image_caption, image_root_beside
from regionclip_min.official import read_embeddings
from regionclip_min.proposals import PROPOSERS, build_proposer, proposer_problems
from regionclip_min.regionclip import ImageTextCLIP, RegionCLIP, student_and_teacher
from regionclip_min.regions import region_encoder
from regionclip_min.steps import build_optimizer, make_scheduler, parameter_groups, resolve_amp, resolve_device
from regionclip_min.transforms import random_hflip_captioned


# ---- models -----------------------------------------------------------------------------------------------
def build_models(cfg, device):
    """(student CLIP, teacher CLIP or None, tokenizer). The teacher is frozen; the student's frozen parts too."""
    weights = cfg.init if cfg.init is not None else cfg.pretrained
    student, tokenizer = load_clip(cfg.model_name, weights, device=device, quick_gelu=cfg.quick_gelu)
    if cfg.channels_last:
        student.visual.to(memory_format=torch.channels_last)
    if cfg.stage == "clip":
        student.train()
        return student, None, tokenizer
    student, teacher = student_and_teacher(student)
    return student, teacher, tokenizer


def make_optimizer(cfg, trained):
    """Stage 0 decays as CLIP does (not biases, gains, logit_scale); RegionCLIP as the official code (biases too)."""
    rule = "clip" if cfg.stage == "clip" else "detectron2"
    groups = parameter_groups(trained, cfg.weight_decay, rule=rule, lr=cfg.lr)
    return build_optimizer(cfg.optimizer, groups, cfg.lr, cfg.momentum)


def build_teacher(cfg, text_clip, tokenizer, device):
    """(teacher CLIP, its tokenizer, its model name): the init's frozen copy `text_clip`, or --teacher_init's CLIP,
    frozen."""
    if cfg.teacher_init is None:
        return text_clip, tokenizer, cfg.model_name
    name = cfg.teacher_model_name
    if name is None and Path(cfg.teacher_init).is_file():
        name = ckpt.recorded_model_name(ckpt.load_checkpoint(cfg.teacher_init))
    teacher, teacher_tok = load_clip(name or cfg.model_name, cfg.teacher_init, device=device)
    return teacher.eval().requires_grad_(False), teacher_tok, name or cfg.model_name


def build_concepts(cfg, dataset, teacher, tokenizer, device):
    """Concept pool from the training captions (Sec. 3.1) and its prompt-ensembled embeddings (C, D)."""
    if cfg.concept_embeddings is not None:  # official embedding file: its rows are named by --concepts, in order
        concepts, _ = read_names(cfg.concepts, "--concepts", dedupe=False)
        emb = read_embeddings(cfg.concept_embeddings, concepts, dim=teacher.text_projection.shape[1],
                              option="--concept_embeddings")
        return concepts, emb.to(device)
    if cfg.concepts is not None:
        concepts, _ = read_names(cfg.concepts, "--concepts")
    else:
        captions = [c for _, caps, _, _ in dataset.items for c in caps]
        concepts = build_concept_pool(captions, min_count=cfg.concept_min_count, max_concepts=cfg.max_concepts)
    if not concepts:
        raise SystemExit(f"{cfg.captions}: the concept pool is empty: no noun occurs at least {cfg.concept_min_count} "
                         f"times in the captions (lower --concept_min_count)")
    return concepts, pool_embeddings(cfg, teacher, tokenizer, concepts, cfg.init or cfg.pretrained, cfg.model_name,
                                     device)


def pool_embeddings(cfg, clip, tokenizer, concepts: list[str], weights: str | None, model_name: str, device):
    """(C, D) prompt-ensembled embeddings of `concepts` by `clip`'s text tower, cached under --concept_cache by the
    weights' content."""
    templates = TEMPLATES if cfg.templates == "ensemble" else SINGLE_TEMPLATE
    key = weights or "random"
    if Path(key).is_file():  # key the cache by the weights' content, not only their name
        key += ":" + ckpt.file_digest(key)
    emb = concept_embeddings(clip, tokenizer, concepts, templates, cache_dir=cfg.concept_cache,
                             model_key=f"{model_name}|{activation(clip)}|{key}")
    return emb.to(device)


# ---- main -------------------------------------------------------------------------------------------------
def main(argv=None):
    cfg, preset = parse_config(PretrainConfig, argv, PRESETS, description=__doc__)
    weights_choice(cfg)
    if cfg.captions.endswith(".json"):
        cfg.image_root = image_root_beside(cfg.captions, cfg.image_root)
    problems = choice_problems(cfg, {"stage": ("clip", "regionclip"), "schedule": ("multistep", "cosine"),
                                     "negatives": ("regions", "pool"), "proposals": tuple(PROPOSERS),
                                     "teacher": ("pooled", "crop"), "amp": ("none", "bf16", "auto")})
    if cfg.proposals in PROPOSERS:
        problems += proposer_problems(cfg.proposals, cfg.rpn_checkpoint, cfg.proposals_file)
    if problems:
        raise SystemExit("; ".join(problems))
    if cfg.teacher_init is not None and cfg.stage != "regionclip":
        raise SystemExit("--teacher_init is for --stage regionclip (stage 0 has no teacher)")
    if cfg.concept_embeddings is not None and cfg.concepts is None:
        raise SystemExit("--concept_embeddings needs --concepts: the names file of its rows, one per line, in order")
    cfg.device = resolve_device(cfg.device)
    rank, world = engine.init_distributed(cfg.device)
    lock = None
    if rank == 0:  # one writer per out_dir; a finished run is not overwritten by accident
        lock = ckpt.claim_out_dir(cfg.out_dir, resume=cfg.resume, overwrite=cfg.overwrite,
                                  command="train_pretrain.py " + " ".join(sys.argv[1:] if argv is None else argv))
    engine.barrier()  # the other ranks read out_dir (resume) only once rank 0 has claimed it
    try:
        return run_training(cfg, preset, rank, world)
    finally:
        if lock is not None:
            lock.release()


def proposer(cfg, dataset, device, summary: dict):
    """The `--proposals` method for pretraining's batches (CLIP-normalised, enlarged by --region_scale); a
    proposals file's counts go to `summary`."""
    made, counts = build_proposer(cfg.proposals, per_image=cfg.proposals_per_image,
                                  image_ids=[image_id for _, _, image_id, _ in dataset.items],
                                  rpn_checkpoint=cfg.rpn_checkpoint, rpn_top_k=cfg.rpn_top_k, nms_thresh=0.5,
                                  proposals_file=cfg.proposals_file, scale=cfg.region_scale,
                                  crop_size=cfg.image_size if cfg.max_size is None else None, device=device)
    summary.update(counts)
    return made


def build_objective(cfg, dataset, student, teacher, tokenizer, device, summary: dict, verbose: bool = True):
    """(the module whose forward returns the losses, the concept names): ImageTextCLIP for stage 0, else RegionCLIP
    with its concept pool, teacher region encoder, proposer and temperatures."""
    captions = CachedTokenizer(tokenizer)  # the steps' captions: each tokenized once
    if cfg.stage == "clip":
        return ImageTextCLIP(student, captions, weight=cfg.w_image, amp=cfg.amp, channels_last=cfg.channels_last), []
    concepts, concept_emb = build_concepts(cfg, dataset, teacher, tokenizer, device)
    labeler, labeler_tok, labeler_name = build_teacher(cfg, teacher, tokenizer, device)
    labeler_emb = None  # the init teaches: it labels with concept_emb
    if labeler is not teacher:  # a separate teacher labels with the pool in its own text space
        labeler_emb = pool_embeddings(cfg, labeler, labeler_tok, concepts, cfg.teacher_init, labeler_name, device)
        if verbose:
            print(f"teacher: {cfg.teacher_init} ({labeler_name}, {labeler_emb.shape[1]}-d text space) labels the "
                  f"regions; the "
                  f"student's losses use the init's ({concept_emb.shape[1]}-d)")
    teacher_tau = 1.0 / labeler.logit_scale.exp().item()
    tau = teacher_tau if cfg.tau_from_init else cfg.tau
    image_tau = teacher_tau if cfg.image_tau_from_init else None  # None: the region losses' tau
    if verbose:
        print(f"concept pool: {len(concepts)} concepts ({concept_backend()}), e.g. {', '.join(concepts[:12])}; "
              f"tau {tau:.4f}" + (f", image-text tau {image_tau:.4f}" if image_tau is not None else ""))
    model = RegionCLIP(student.visual, teacher, region_encoder(cfg.teacher, labeler.visual,
                                                                crop_context=cfg.crop_context),
                       captions, concept_emb, proposer(cfg, dataset, device, summary), teacher_concept_emb=labeler_emb,
                       tau=tau,
                       image_tau=image_tau, weights=loss_weights(cfg),
                       region_scale=cfg.region_scale, pseudo_threshold=cfg.pseudo_threshold, negatives=cfg.negatives,
                       amp=cfg.amp, channels_last=cfg.channels_last)
    return model, concepts


def run_training(cfg, preset, rank: int, world: int):
    if cfg.batch_size % world:
        raise SystemExit(f"--batch_size {cfg.batch_size} is the global batch: it must split evenly over {world} ranks")
    run = engine.Run(Path(cfg.out_dir), cfg.seed, cfg.max_steps, cfg.log_every, cfg.ckpt_every, cfg.keep_ckpts,
                     cfg.grad_clip, per_tensor_clip=cfg.stage != "clip", rank=rank, world=world, desc=cfg.stage)
    device = engine.process_device(cfg.device)
    run.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    cfg.amp = resolve_amp(cfg.amp, device)  # 'auto' -> what this machine has; config.json records the choice
    if run.main:
        print(f"resolved config (preset {preset}, {world} process{'es' if world > 1 else ''}, "
              f"{cfg.batch_size // world} images each):\n{format_config(cfg)}")
        (run.out / "config.json").write_text(format_config(cfg))
    dataset = ImageCaptionDataset(cfg.captions, cfg.image_root, image_size=cfg.image_size, train=False,
                                  cache_images=cfg.cache_images, max_size=cfg.max_size)
    if run.main:
        print(dataset.summary())
    dataset.check_images("--image_root")  # a wrong image_root would otherwise skip every image, silently
    student, teacher, tokenizer = build_models(cfg, device)
    summary = {}
    model, concepts = build_objective(cfg, dataset, student, teacher, tokenizer, device, summary, verbose=run.main)
    trained = model.student if cfg.stage == "regionclip" else student
    optimizer = make_optimizer(cfg, trained.train())
    scheduler = make_scheduler(optimizer, schedule=cfg.schedule, warmup_steps=cfg.warmup_steps,
                               max_steps=cfg.max_steps, lr_steps=cfg.lr_steps)
    start = engine.resume(run, student, optimizer, scheduler, device=device) if cfg.resume else 0

    def save():  # what a checkpoint holds besides the optimizer, scheduler, step and RNG
        return {"model": student.state_dict(), "config": config_to_dict(cfg), "model_name": cfg.model_name,
                "stage": cfg.stage, "concepts": concepts, "quick_gelu": is_quick_gelu(student)}

    step = engine.train(run, DDP(model, broadcast_buffers=False) if world > 1 else model,
                        [p for p in trained.parameters() if p.requires_grad], optimizer, scheduler, dataset,
                        collate=collate_image_caption, batch_size=cfg.batch_size // world, start=start, save=save,
                        weight_dict=model.weight_dict, augment=random_hflip_captioned if cfg.hflip else None,
                        after_step=model.clamp_logit_scale if cfg.stage == "clip" else None,
                        num_workers=cfg.num_workers)
    if run.main:
        finish(cfg, run, {**summary, **run.counts, **getattr(model, "counts", {}),
                          "dataset_skipped_at_load": dict(dataset.skipped)}, step)
    engine.finish_distributed(student)
    return run.out / "final.pt"


def finish(cfg, run, summary: dict, step: int) -> None:
    """run_summary.json, and the command that comes next."""
    ckpt.write_json(run.out / "run_summary.json", summary)
    print(f"run summary ({run.out / 'run_summary.json'}): {ckpt.strict_json(summary)}")
    toy, final = (preset_of(cfg) or "").startswith("toy"), run.out / "final.pt"
    data = "" if toy else " " + flags(cfg, ("captions", "image_root", "image_size", "model_name"))
    nxt = (f"python train_pretrain.py {'--preset toy' if toy else '--stage regionclip'} --init {final}{data}"
           if cfg.stage == "clip" else f"python eval_zeroshot.py --checkpoint {final}"
           + ("" if toy else " --instances <a COCO-format instances json> --image_root <its images> --region_scale 1"))
    print(f"done: {step} steps in {summary.get('seconds', 0):.0f} s; checkpoint {final}; next: {nxt}")


if __name__ == "__main__":
    run_main(main)
