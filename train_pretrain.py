"""RegionCLIP pretraining (paper Sec. 3.2) and the stage-0 image-level CLIP that stands in for OpenAI's CLIP.

    python train_pretrain.py --preset toy-clip                      # stage 0: image-text loss, both towers
    python train_pretrain.py --preset toy                           # RegionCLIP from the stage-0 checkpoint
    torchrun --nproc_per_node 2 train_pretrain.py --preset toy      # the same under DDP (gloo on CPU)

One RegionCLIP step (docs/DESIGN.md §1, §4):
    images + captions -> proposals (random | grid | file | rpn) on images enlarged by `region_scale`
    teacher (frozen image-level CLIP): region embeddings -> pseudo_label -> (y, q, keep)          [no_grad]
    student: region embeddings of the proposals and of the whole-image box
    L = w_region * L_region_contrastive(kept) + w_distill * L_distill(kept) + w_image * L_image_contrastive
Teacher and student start from the same CLIP. The student trains layer2..layer4 + attnpool; its stem, layer1,
BatchNorm and text tower stay frozen; concept and caption embeddings come from the frozen text encoder.

Everything random in a step (data order, flips, caption choice, random boxes) is a function of (seed, step), so a
run resumed with --resume ends with the same weights as an uninterrupted one.
"""
from __future__ import annotations

from regionclip_min.cli import answer_usage
from regionclip_min.configs.pretrain import PRESETS, PretrainConfig

if __name__ == "__main__":  # --help and option mistakes answered before the heavy imports below
    answer_usage(PretrainConfig, PRESETS, __doc__)

import contextlib
import copy
import dataclasses
import hashlib
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torchvision.ops import boxes as box_ops
from tqdm import tqdm

from regionclip_min import checkpoint as ckpt
from regionclip_min.cli import (config_to_dict, flags, format_config, parse_config, preset_of, run_main,
                                weights_choice)
from regionclip_min.clip_model import SINGLE_TEMPLATE, TEMPLATES, CachedTokenizer, activation, is_quick_gelu, load_clip
from regionclip_min.concepts import backend as concept_backend
from regionclip_min.concepts import build_concept_pool, concept_embeddings, read_names
from regionclip_min.data import (ImageCaptionDataset, boxes_to_resized, boxes_to_transformed, collate_image_caption,
                                 flip_valid)
from regionclip_min.detector import load_rpn, propose
from regionclip_min.losses import concept_distillation, image_text_contrastive, region_text_contrastive
from regionclip_min.official import read_embeddings
from regionclip_min.pseudo_labels import pseudo_label
from regionclip_min.regions import (RegionEncoder, grid_boxes, load_proposals_file, random_boxes,
                                    region_encoder)
from regionclip_min.runtime import poll_threads
from regionclip_min.steps import (StepSampler, build_optimizer, clip_gradients, make_scheduler, parameter_groups,
                                  resolve_amp, resolve_device, step_generator)




# ---- distributed ------------------------------------------------------------------------------------------
def init_distributed(device: str) -> tuple[int, int]:
    """Starts torch.distributed when launched by torchrun (WORLD_SIZE > 1); returns (rank, world_size)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gathers (N, D) from every rank into (world * N, D), keeping the gradient path to every rank's input."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    import torch.distributed.nn.functional as dist_fn  # autograd-aware collectives
    return torch.cat(dist_fn.all_gather(x), dim=0)  # (world * N, D)


def check_replicas_in_sync(model) -> str:
    """Under DDP, compares a hash of every rank's parameters with rank 0's; raises if any rank drifted."""
    flat = torch.cat([p.detach().cpu().flatten().float() for p in model.parameters()])  # (num_params,)
    digest = hashlib.sha256(flat.numpy().tobytes()).hexdigest()
    digests = [None] * dist.get_world_size()
    dist.all_gather_object(digests, digest)
    if len(set(digests)) != 1:
        raise RuntimeError(f"DDP ranks hold different weights after training: {digests}")
    return f"all {len(digests)} ranks hold identical weights (sha256 {digest[:12]})"


def make_proposals(cfg, images, batch, proposals_table, rpn, g) -> list[torch.Tensor]:
    """One (R_i, 4) xyxy box tensor per image, in the pixels of `images` (B, 3, H, W), CLIP-normalised (enlarged by
    region_scale), each inside its own image (not its padding); R_i may be 0 (an image whose file lists no proposal:
    it then adds only the image-text loss)."""
    sizes = (batch["sizes"].float() * cfg.region_scale).round().long().tolist()  # [h, w] of each unpadded image
    if cfg.proposals == "rpn":  # paper: RPN boxes after NMS 0.5, top 300, a random subset per image
        boxes = propose(rpn, images, cfg.rpn_top_k, clip_normalized=True, nms_thresh=0.5)
        boxes = [_inside(b, h, w) for b, (h, w) in zip(boxes, sizes)]
        return [b[torch.randperm(len(b), generator=g)[: cfg.proposals_per_image].sort().values.to(b.device)]
                for b in boxes]
    if cfg.proposals == "random":
        return [random_boxes(cfg.proposals_per_image, h, w, generator=g) for h, w in sizes]
    if cfg.proposals == "grid":
        return [grid_boxes(h, w)[: cfg.proposals_per_image] for h, w in sizes]
    boxes = []  # file boxes are in the pixels of the image file: map them through the resize (+ crop)
    for i, size, new in zip(batch["image_ids"].tolist(), batch["orig_sizes"].tolist(), batch["sizes"].tolist()):
        table = proposals_table[i]  # checked at start: present
        rows = (boxes_to_transformed(table, tuple(size), cfg.image_size) if cfg.max_size is None
                else boxes_to_resized(table, tuple(size), tuple(new)))
        boxes.append(rows[: cfg.proposals_per_image, :4] * cfg.region_scale)
    return boxes


def _inside(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, 4) xyxy clipped to an h x w image; boxes left without area are dropped."""
    boxes = box_ops.clip_boxes_to_image(boxes, (h, w))
    return boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]


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
    teacher = copy.deepcopy(student).eval().requires_grad_(False)
    student.requires_grad_(False)
    visual = student.visual
    for name in ("layer2", "layer3", "layer4", "attnpool"):  # paper: stem and layer1 frozen (docs/DESIGN.md §4)
        getattr(visual, name).requires_grad_(True)
    return student, teacher, tokenizer


def make_optimizer(cfg, trained):
    """Stage 0 decays as CLIP does (not biases, gains, logit_scale); RegionCLIP as the official code (biases too)."""
    rule = "clip" if cfg.stage == "clip" else "detectron2"
    groups = parameter_groups(trained, cfg.weight_decay, rule=rule, lr=cfg.lr)
    return build_optimizer(cfg.optimizer, groups, cfg.lr, cfg.momentum)


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
    templates = TEMPLATES if cfg.templates == "ensemble" else SINGLE_TEMPLATE
    init_key = cfg.init or cfg.pretrained or "random"
    if Path(init_key).is_file():  # key the cache by the weights' content, not only their name
        init_key += ":" + ckpt.file_digest(init_key)
    emb = concept_embeddings(teacher, tokenizer, concepts, templates, cache_dir=cfg.concept_cache,
                             model_key=f"{cfg.model_name}|{activation(teacher)}|{init_key}")
    return concepts, emb.to(device)


# ---- the step ---------------------------------------------------------------------------------------------
def autocast(cfg, device):
    """The context the model forwards run in: bfloat16 autocast with --amp bf16, else nothing."""
    if cfg.amp == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def clip_step(cfg, model, tokenizer, batch, g, device):
    """Stage 0: open_clip's forward on whole images and one random caption each; CLIP's symmetric InfoNCE."""
    images = batch["images"].to(device)  # (B, 3, S, S)
    if cfg.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    captions = [caps[torch.randint(len(caps), (1,), generator=g).item()] for caps in batch["captions"]]
    text = tokenizer(captions).to(device)  # (B, L)
    with autocast(cfg, device):
        out = model(images, text)
    img, txt, scale = (out["image_features"], out["text_features"], out["logit_scale"]) if isinstance(out, dict) \
        else out[:3]
    loss = image_text_contrastive(gather_with_grad(img.float()), gather_with_grad(txt.float()), tau=1.0 / scale)
    return {"loss_image_contrastive": loss}, {"logit_scale": float(scale.detach())}


def _untimed(name):
    return contextlib.nullcontext()


def regionclip_step(cfg, student_enc, teacher_enc, teacher, tokenizer, concept_emb, batch, proposals_table, rpn, g,
                    device, tau, timer=_untimed, image_tau=None):
    """One RegionCLIP step's losses. `timer(name)` is a context manager around each part (benchmarks/run.py
    times them: enlarge, proposals, teacher forward, pseudo-labels, student forward, losses)."""
    with timer("enlarge images"):
        images = batch["images"].to(device)  # (B, 3, S, S)
        if cfg.region_scale != 1.0:
            images = F.interpolate(images, scale_factor=cfg.region_scale, mode="bicubic", align_corners=False)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
    captions = [caps[torch.randint(len(caps), (1,), generator=g).item()] for caps in batch["captions"]]
    with timer("proposals"), autocast(cfg, device):
        boxes = [b.to(device).float() for b in make_proposals(cfg, images, batch, proposals_table, rpn, g)]
    whole = [images.new_tensor([[0.0, 0.0, images.shape[-1], images.shape[-2]]]) for _ in range(len(images))]
    with torch.no_grad():
        with timer("teacher forward"), autocast(cfg, device):
            teacher_emb = teacher_enc(images, boxes).float()  # (R, D)
            text_emb = teacher.encode_text(tokenizer(captions).to(device)).float()  # (B, D), frozen text tower
        with timer("pseudo-labels"):
            labels, q, keep = pseudo_label(teacher_emb, concept_emb, tau=tau, threshold=cfg.pseudo_threshold)
    # one student pass over proposals and whole-image boxes: [R_0 props, 1 whole, R_1 props, 1 whole, ...]
    with timer("student forward"), autocast(cfg, device):
        emb = student_enc(images, [torch.cat([b, w]) for b, w in zip(boxes, whole)]).float()  # (R + B, D)
    with timer("losses"):
        is_whole = torch.cat([torch.tensor([False] * len(b) + [True]) for b in boxes]).to(device)  # (R + B,)
        region_emb, image_emb = emb[~is_whole], emb[is_whole]  # (R, D), (B, D)
        losses = {
            "loss_region_contrastive": region_text_contrastive(region_emb[keep], labels[keep], concept_emb, tau=tau,
                                                               negatives=cfg.negatives),
            "loss_distill": concept_distillation(region_emb[keep], concept_emb, q[keep], tau=tau),
            "loss_image_contrastive": image_text_contrastive(gather_with_grad(image_emb), gather_with_grad(text_emb),
                                                             tau=tau if image_tau is None else image_tau),
        }
    confident = bool((q.amax(dim=-1) > cfg.pseudo_threshold).any()) if len(q) else True
    return losses, {"kept": keep.float().mean().item() if len(keep) else 0.0,
                    "no_proposal_images": sum(len(b) == 0 for b in boxes), "all_kept": not confident}


# ---- main -------------------------------------------------------------------------------------------------
def resolve_paths(cfg):
    if cfg.image_root is None and cfg.captions.endswith(".json") and (Path(cfg.captions).parent / "images").is_dir():
        cfg.image_root = str(Path(cfg.captions).parent / "images")  # the toy world's layout
    return cfg


def main(argv=None):
    cfg, preset = parse_config(PretrainConfig, argv, PRESETS, description=__doc__)
    weights_choice(cfg)
    cfg = resolve_paths(cfg)
    if cfg.stage not in ("clip", "regionclip"):
        raise SystemExit(f"--stage must be 'clip' or 'regionclip', got {cfg.stage!r}")
    if cfg.schedule not in ("multistep", "cosine"):
        raise SystemExit(f"--schedule must be multistep or cosine, got {cfg.schedule!r}")
    if cfg.negatives not in ("regions", "pool"):
        raise SystemExit(f"--negatives must be regions or pool, got {cfg.negatives!r}")
    if cfg.proposals not in ("random", "grid", "file", "rpn"):
        raise SystemExit(f"--proposals must be random, grid, file or rpn, got {cfg.proposals!r}")
    if cfg.teacher not in ("pooled", "crop"):
        raise SystemExit(f"--teacher must be pooled or crop, got {cfg.teacher!r}")
    if cfg.amp not in ("none", "bf16", "auto"):
        raise SystemExit(f"--amp must be none, bf16 or auto, got {cfg.amp!r}")
    if cfg.concept_embeddings is not None and cfg.concepts is None:
        raise SystemExit("--concept_embeddings needs --concepts: the names file of its rows, one per line, in order")
    if cfg.proposals == "rpn" and not cfg.rpn_checkpoint:
        raise SystemExit("--proposals rpn needs --rpn_checkpoint (train one: python train_detect.py --preset toy-rpn)")
    cfg.device = resolve_device(cfg.device)
    rank, world = init_distributed(cfg.device)
    lock = None
    if rank == 0:  # one writer per out_dir; a finished run is not overwritten by accident
        lock = ckpt.claim_out_dir(cfg.out_dir, resume=cfg.resume, overwrite=cfg.overwrite,
                                  command="train_pretrain.py " + " ".join(sys.argv[1:] if argv is None else argv))
    try:
        return run_training(cfg, preset, rank, world)
    finally:
        if lock is not None:
            lock.release()


def check_proposals_file(path, table: dict, dataset) -> dict:
    """Every training image must have a row in the proposals file (else SystemExit naming the file and the ids);
    ids the dataset lacks are ignored and images with no proposal only add the image-text loss: both counted."""
    ids = [image_id for _, _, image_id, _ in dataset.items]
    missing = [i for i in ids if i not in table]
    if missing:
        raise SystemExit(f"{path}: no proposals for {len(missing)} of the {len(ids)} training images (image ids "
                         f"{missing[:8]}{' ...' if len(missing) > 8 else ''}); give every image a row (an empty "
                         f"list is allowed)")
    known = set(ids)
    counts = {"proposal_ids_not_in_dataset": sum(1 for i in table if i not in known),
              "images_without_proposals": sum(1 for i in ids if len(table[i]) == 0)}
    if any(counts.values()):
        print(f"{path}: {counts['proposal_ids_not_in_dataset']} image ids that the dataset lacks (ignored), "
              f"{counts['images_without_proposals']} images with no proposal (image-text loss only)")
    return counts


def run_training(cfg, preset, rank: int, world: int):
    if cfg.batch_size % world:
        raise SystemExit(f"--batch_size {cfg.batch_size} is the global batch: it must split evenly over {world} ranks")
    per_rank = cfg.batch_size // world
    device = torch.device(cfg.device if cfg.device != "cuda" else f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    main_proc = rank == 0
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    torch.manual_seed(cfg.seed)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    cfg.amp = resolve_amp(cfg.amp, device)  # 'auto' -> what this machine has; config.json records the choice
    if main_proc:
        procs = f"{world} process{'es' if world > 1 else ''}, {per_rank} images each"
        print(f"resolved config (preset {preset}, {procs}):\n{format_config(cfg)}")
        (out / "config.json").write_text(format_config(cfg))

    dataset = ImageCaptionDataset(cfg.captions, cfg.image_root, image_size=cfg.image_size, train=False,
                                  cache_images=cfg.cache_images, max_size=cfg.max_size)
    if main_proc:
        print(dataset.summary())
    dataset.check_images("--image_root")  # a wrong image_root would otherwise skip every image, silently
    student, teacher, tokenizer = build_models(cfg, device)
    captions_tokenizer = CachedTokenizer(tokenizer)  # the steps' captions: each tokenized once
    concepts, concept_emb, teacher_enc, proposals_table, rpn, tau = [], None, None, {}, None, cfg.tau
    image_tau = None  # the image-text loss's temperature: tau unless --image_tau_from_teacher
    if cfg.stage == "regionclip":
        concepts, concept_emb = build_concepts(cfg, dataset, teacher, tokenizer, device)
        teacher_enc = region_encoder(cfg.teacher, teacher.visual, crop_context=cfg.crop_context).eval()
        if cfg.tau_from_teacher:
            tau = 1.0 / teacher.logit_scale.exp().item()
        if cfg.image_tau_from_teacher:
            image_tau = 1.0 / teacher.logit_scale.exp().item()
        if cfg.proposals == "file":
            try:
                proposals_table = load_proposals_file(cfg.proposals_file)
            except (OSError, ValueError) as e:
                raise SystemExit(f"--proposals_file: {e}") from None
            summary.update(check_proposals_file(cfg.proposals_file, proposals_table, dataset))
        if cfg.proposals == "rpn":
            rpn = load_rpn(cfg.rpn_checkpoint, device)
        if main_proc:
            print(f"concept pool: {len(concepts)} concepts ({concept_backend()}), e.g. {', '.join(concepts[:12])}; "
                  f"tau {tau:.4f}" + (f", image-text tau {image_tau:.4f}" if image_tau is not None else ""))
        trained = RegionEncoder(student.visual)
    else:
        trained = student
    trained.train()
    params = [p for p in trained.parameters() if p.requires_grad]
    optimizer = make_optimizer(cfg, trained)
    scheduler = make_scheduler(optimizer, schedule=cfg.schedule, warmup_steps=cfg.warmup_steps,
                               max_steps=cfg.max_steps, lr_steps=cfg.lr_steps)
    start = 0
    if cfg.resume and (last := ckpt.latest_checkpoint(out)) is not None:
        state = ckpt.load_checkpoint(last, map_location=device)
        student.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(state["rng"])
        start = state["step"]
        if main_proc:
            print(f"resumed from {last} at step {start}")
    if cfg.resume and main_proc:  # drop log lines written after the checkpoint resumed from (all, if none)
        ckpt.truncate_metrics(out / "metrics.jsonl", start)
    model = DDP(trained) if world > 1 else trained

    def save(path, step):
        if main_proc:
            ckpt.save_checkpoint(path, {"model": student.state_dict(), "optimizer": optimizer.state_dict(),
                                        "scheduler": scheduler.state_dict(), "step": step, "rng": ckpt.rng_state(),
                                        "config": config_to_dict(cfg), "model_name": cfg.model_name,
                                        "stage": cfg.stage, "concepts": concepts,
                                        "quick_gelu": is_quick_gelu(student)})

    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=StepSampler(len(dataset), per_rank, rank, world, cfg.seed, start, cfg.max_steps),
        collate_fn=collate_image_caption, num_workers=cfg.num_workers, persistent_workers=False)
    metrics = open(out / "metrics.jsonl", "a") if main_proc else None
    bar = tqdm(total=cfg.max_steps, initial=start, desc=f"{cfg.stage}", disable=not main_proc, dynamic_ncols=True)
    step, t0 = start, time.time()
    skipped_batches = skipped_images = unconfident_batches = no_proposal_images = 0  # this session's steps
    for batch in loader:
        poll_threads()
        g = step_generator(cfg.seed, step, rank)
        if batch is None:  # every image of this batch was unreadable (counted in the dataset summary)
            step += 1
            scheduler.step()
            skipped_batches += 1
            skipped_images += per_rank
            continue
        skipped_images += per_rank - len(batch["images"])  # bad images dropped by the collate
        if cfg.hflip:
            flip = torch.rand(len(batch["images"]), generator=g) < 0.5  # (B,)
            flip_valid(batch["images"], batch["sizes"], flip)
        if cfg.stage == "clip":
            losses, info = clip_step(cfg, model, captions_tokenizer, batch, g, device)
        else:
            losses, info = regionclip_step(cfg, model, teacher_enc, teacher, captions_tokenizer, concept_emb, batch,
                                           proposals_table, rpn, g, device, tau, image_tau=image_tau)
            unconfident_batches += info.pop("all_kept")  # no region passed the threshold: all kept (official)
            no_proposal_images += info.pop("no_proposal_images")
        weights = {"loss_region_contrastive": cfg.w_region, "loss_distill": cfg.w_distill,
                   "loss_image_contrastive": cfg.w_image}
        total = sum(weights[k] * v for k, v in losses.items())
        values = {k: v.item() for k, v in losses.items()}
        if not all(math.isfinite(v) for v in values.values()) or not math.isfinite(total.item()):
            bad = [k for k, v in values.items() if not math.isfinite(v)]
            last = ckpt.latest_checkpoint(out)
            raise SystemExit(f"non-finite loss at step {step}: {bad or ['total']} in {values}. Stopped; the last good "
                             f"checkpoint is {last} (resume with --resume, perhaps with a lower --lr)")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        clip_gradients(params, cfg.grad_clip, per_tensor=cfg.stage != "clip")
        optimizer.step()
        scheduler.step()
        if cfg.stage == "clip":
            with torch.no_grad():  # CLIP clamps the learned logit scale at 100
                student.logit_scale.clamp_(0, math.log(100))
        step += 1
        bar.update(1)
        bar.set_postfix({k.replace("loss_", ""): f"{v:.3f}" for k, v in values.items()} |
                        {k: f"{v:.2f}" for k, v in info.items()})
        if main_proc and (step % cfg.log_every == 0 or step == cfg.max_steps):
            metrics.write(ckpt.strict_json({"step": step, "lr": scheduler.get_last_lr()[0], "total": total.item(),
                                            **values, **info, "elapsed_s": round(time.time() - t0, 1)}) + "\n")
            metrics.flush()
        if step % cfg.ckpt_every == 0 and step < cfg.max_steps:
            save(ckpt.checkpoint_path(out, step), step)
            if main_proc:
                ckpt.prune_checkpoints(out, cfg.keep_ckpts)
    bar.close()
    save(ckpt.checkpoint_path(out, step), step)
    if main_proc:
        ckpt.link_checkpoint(ckpt.checkpoint_path(out, step), out / "final.pt")
        metrics.close()
        ckpt.prune_checkpoints(out, cfg.keep_ckpts)
        toy = (preset_of(cfg) or "").startswith("toy")
        data = "" if toy else " " + flags(cfg, ("captions", "image_root", "image_size", "model_name"))
        nxt = (f"python train_pretrain.py {'--preset toy' if toy else '--stage regionclip'} --init {out / 'final.pt'}"
               f"{data}" if cfg.stage == "clip" else
               f"python eval_zeroshot.py --checkpoint {out / 'final.pt'}"
               + ("" if toy else " --instances <a COCO-format instances json> --image_root <its images> --scale 1"))
        summary.update(steps=step - start, first_step=start, seconds=round(time.time() - t0, 1),
                       images_skipped_unreadable=skipped_images, batches_skipped_unreadable=skipped_batches,
                       dataset_skipped_at_load=dict(dataset.skipped),
                       batches_all_kept_no_region_confident=unconfident_batches,
                       images_without_proposals_seen=no_proposal_images)
        ckpt.write_json(out / "run_summary.json", summary)
        print(f"run summary ({out / 'run_summary.json'}): {ckpt.strict_json(summary)}")
        print(f"done: {step} steps in {time.time() - t0:.0f} s; checkpoint {out / 'final.pt'}; next: {nxt}")
    if dist.is_initialized():
        msg = check_replicas_in_sync(student)
        if main_proc:
            print(msg)
        dist.barrier()
        dist.destroy_process_group()
    return out / "final.pt"


if __name__ == "__main__":
    run_main(main)
