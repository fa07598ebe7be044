"""Open-vocabulary detection transfer (paper Sec. 3.3, 4.1) and the class-agnostic RPN it and pretraining use.

    python train_detect.py --preset toy-rpn                  # class-agnostic RPN on the toy base boxes
    python train_detect.py --preset toy                      # OVD on the toy world from a RegionCLIP checkpoint
    python train_detect.py --preset toy --init runs/toy-clip/final.pt --out_dir runs/toy-det-clip   # CLIP baseline
    python train_detect.py --preset toy --rpn offline --rpn_checkpoint runs/toy-rpn/final.pt         # paper's RPN
    python train_detect.py --preset coco-ovd-rn50 --init runs/rn50-coco/final.pt                     # paper scale

--task detector: torchvision Faster R-CNN from the pretrained visual encoder (regionclip_min/detector.py), classifier =
the frozen prompt-ensembled embeddings of the training class names from the same checkpoint's text encoder; trained
on base-category boxes only; at the end the vocabulary is swapped to every category of the val json (base + novel)
and scored with AP50 novel / base / all and COCO AP (results.json), a few val images drawn to predictions/*.png.
--task rpn: a class-agnostic ProposalNetwork on the base boxes; scored by proposal recall@100 on base and novel val
boxes. Its checkpoint is the detector's offline RPN and the source of RPN proposals for train_pretrain.py
(rpn.load_rpn / rpn.propose).

Everything random in a step (data order, flips, torchvision's anchor and RoI sampling, the random training size) is a
function of (seed, step): the global RNG is reseeded from the step's generator, so --resume ends with the same weights.
"""
from __future__ import annotations

from regionclip_min.cli import answer_usage
from regionclip_min.configs.detect import PRESETS, DetectConfig, check_config, detector_kwargs, rpn_kwargs

if __name__ == "__main__":  # --help and option mistakes answered before the heavy imports below
    answer_usage(DetectConfig, PRESETS, __doc__)

import sys
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from regionclip_min import checkpoint as ckpt
from regionclip_min import engine, official
from regionclip_min.cli import config_to_dict, flags, format_config, parse_config, preset_of, run_main, weights_choice
from regionclip_min.clip_model import SINGLE_TEMPLATE, TEMPLATES, encode_texts, load_clip
from regionclip_min.concepts import read_names
from regionclip_min.data import DetectionDataset, collate_detection
from regionclip_min.detector import TrainingStep, build_detector, detector_from_official, load_detector
from regionclip_min.drawing import draw_predictions
from regionclip_min.rpn import ProposalNetwork, load_rpn
from regionclip_min.scoring import open_vocabulary_ap, rpn_recall
from regionclip_min.splits import detection_datasets, novel_base_ids
from regionclip_min.steps import build_optimizer, make_scheduler, parameter_groups, repeat_factors, resolve_device
from regionclip_min.transforms import random_hflip_detection


def load_datasets(cfg, *, train: bool = True) -> tuple[DetectionDataset | None, DetectionDataset]:
    return detection_datasets(cfg.category_split, cfg.train_json, cfg.val_json, image_root=cfg.image_root,
                              val_image_root=cfg.val_image_root, drop_empty=cfg.drop_empty, train=train)


def build(cfg, train: DetectionDataset, val: DetectionDataset, device) -> tuple[torch.nn.Module, dict]:
    """The model to train and the checkpoint fields that rebuild it (detector.load_detector / load_rpn)."""
    weights = cfg.init if cfg.init is not None else cfg.pretrained
    clip, tokenizer = load_clip(cfg.model_name, weights, device=device, quick_gelu=cfg.quick_gelu)
    if cfg.task == "detector" and cfg.tau_from_init:  # resolved here, so config.json and the checkpoint record it
        cfg.tau = 1.0 / float(clip.logit_scale.detach().exp())
        print(f"classifier temperature: the loaded CLIP's own, tau = 1/{1 / cfg.tau:.2f} = {cfg.tau:.4f}")
    if cfg.task == "rpn":
        model = ProposalNetwork(clip.visual, **rpn_kwargs(cfg))
        return model, {"kind": "rpn", "rpn_kwargs": rpn_kwargs(cfg)}
    names = {"train": train.category_names, "test": val.category_names}
    if cfg.class_embeddings is not None:  # an official embedding file: each needed name's row
        rows_of, table = embeddings_from_file(cfg, val, dim=clip.text_projection.shape[1])
    else:  # every name once: the training names are usually among the val names
        rows_of = list(dict.fromkeys(names["test"] + names["train"]))
        templates = TEMPLATES if cfg.templates == "ensemble" else SINGLE_TEMPLATE
        table = encode_texts(clip, tokenizer, rows_of, templates).cpu()  # (N, D)
    source = f"--class_embeddings {cfg.class_embeddings}" if cfg.class_embeddings else "the class embeddings"
    emb = {k: table[official.rows_for(rows_of, v, source)] for k, v in names.items()}  # (K, D) each
    offline, extra = None, {"rpn_kwargs": None, "rpn_model_name": None}
    if cfg.rpn == "offline":
        offline = load_rpn(cfg.rpn_checkpoint, device=device)
        rpn_state = ckpt.load_checkpoint(cfg.rpn_checkpoint)
        extra = {"rpn_kwargs": rpn_state["rpn_kwargs"], "rpn_model_name": rpn_state["model_name"]}
    model = build_detector(clip.visual, emb["train"], offline_rpn=offline, **detector_kwargs(cfg))
    return model, {"kind": "detector", "detector_kwargs": detector_kwargs(cfg), "class_names": names,
                   "category_ids": {"train": train.category_ids, "test": val.category_ids}, "class_embeddings": emb,
                   **extra}


def embeddings_from_file(cfg, val: DetectionDataset, dim: int | None) -> tuple[list[str], torch.Tensor]:
    """--class_embeddings: (the names of its rows, (C, D) normalised rows). The rows are named by --vocabulary, else
    they must be the val json's categories in id order (Detectron2's class order)."""
    names = row_names(cfg, val)
    return names, official.read_embeddings(cfg.class_embeddings, names, dim=dim)


def row_names(cfg, val: DetectionDataset) -> list[str]:
    """The names of the rows of a class-embedding table: --vocabulary, else the val json's categories in id order."""
    return read_names(cfg.vocabulary, dedupe=False)[0] if cfg.vocabulary is not None else val.category_names


def make_optimizer(cfg, model):
    """AdamW or SGD over the trainable parameters, weight decay by detectron2's rule (biases too, not norms); the
    randomly initialised RPN head and box regressor get lr x new_layers_lr_mult (the CLIP parts start trained)."""
    def lr_mult(name):
        return cfg.new_layers_lr_mult if name.startswith("rpn.") or ".bbox_pred." in name else 1.0
    groups = parameter_groups(model, cfg.weight_decay, rule="detectron2", lr=cfg.lr, lr_mult=lr_mult)
    return build_optimizer(cfg.optimizer, groups, cfg.lr, cfg.momentum)


# ---- evaluation -------------------------------------------------------------------------------------------------
def evaluate_detector(cfg, model, val: DetectionDataset, emb_test: torch.Tensor, out: Path, device) -> dict | None:
    """AP50 novel / base / all and AP over every val category (scoring.open_vocabulary_ap), and a few val images
    drawn to out/predictions. Under torchrun the images are sharded over the ranks; rank 0 scores and draws, the
    others return None."""
    novel, base = novel_base_ids(cfg.category_split, val)
    metrics = open_vocabulary_ap(model, val, emb_test, novel, base, batch_size=cfg.eval_batch_size,
                                 max_images=cfg.eval_max_images, max_dets=cfg.detections_per_img, device=device,
                                 closed_vocabulary=cfg.category_split != "all")
    if metrics is not None:
        draw_predictions(model, val, cfg.draw_images, out / "predictions", novel, device)
    return metrics


# ---- main ---------------------------------------------------------------------------------------------------------
def eval_inputs(cfg, checkpoint: Path) -> dict:
    """What results.json was computed from, by content: the checkpoint and the val json."""
    return {"checkpoint": str(checkpoint), "checkpoint_sha256": ckpt.file_digest(checkpoint),
            "val_json": cfg.val_json, "val_json_sha256": ckpt.file_digest(cfg.val_json)}


def evaluate(cfg, model, kind: str, val: DetectionDataset, emb_test, out: Path, step: int | None, device, *,
             checkpoint: Path | None = None) -> dict | None:
    """Score a trained model on the val set and write results.json (and predictions/*.png for a detector); under
    torchrun the val images are sharded over the ranks and rank 0 scores and writes (the others return None)."""
    model.eval()
    if kind == "rpn":
        results = rpn_recall(model, val, batch_size=cfg.eval_batch_size, max_images=cfg.eval_max_images,
                             device=device)
    else:
        results = evaluate_detector(cfg, model, val, emb_test.to(device), out, device)
    if results is None:  # a rank other than 0 under torchrun: it detected its share, rank 0 scores
        return None
    checkpoint = checkpoint or out / "final.pt"
    results = {**results, "checkpoint": str(checkpoint), "step": step, "inputs": eval_inputs(cfg, checkpoint)}
    ckpt.write_json(out / "results.json", results)
    print(f"results ({out / 'results.json'}): "
          f"{ckpt.strict_json({k: v for k, v in results.items() if k != 'per_category'})}")
    return results


def eval_only(cfg, out: Path, device, rank: int = 0) -> Path:
    """--eval_only: rebuild the model from --checkpoint (default out_dir/final.pt) alone and score it. Ours carries
    its vocabulary; an official RegionCLIP detector is mapped by `official_detector`."""
    final = Path(cfg.checkpoint) if cfg.checkpoint else out / "final.pt"
    if not final.is_file():
        raise SystemExit(f"--eval_only: {final} does not exist (--checkpoint, or out_dir/final.pt)")
    if rank == 0:
        ckpt.claim_result(out / "results.json", eval_inputs(cfg, final), overwrite=cfg.overwrite, option="--out_dir")
    state = ckpt.load_checkpoint(final)
    is_official = official.checkpoint_layout(state) == official.DETECTOR
    if not is_official and state.get("kind") not in ("rpn", "detector"):
        raise SystemExit(f"--eval_only: {final} is not a train_detect.py checkpoint nor an official RegionCLIP "
                         f"detector (its keys: {official.key_groups(state.get('model', state))})")
    _, val = load_datasets(cfg, train=False)
    val.check_images("--val_image_root")
    if is_official:
        model, emb = official_detector(cfg, final, state["model"], val, device)
        evaluate(cfg, model, "detector", val, emb, out, None, device, checkpoint=final)
        return final
    emb = None
    if state["kind"] == "rpn":
        model = load_rpn(final, device=device)
    else:
        if state["class_names"]["test"] != val.category_names:
            raise SystemExit(f"--eval_only: {final} was made for classes {state['class_names']['test']}, the val json "
                             f"has {val.category_names}")
        model, emb = load_detector(final, device=device), state["class_embeddings"]["test"]
    evaluate(cfg, model, state["kind"], val, emb, out, state["step"], device, checkpoint=final)
    return final


def official_detector(cfg, path: Path, state: dict, val: DetectionDataset, device):
    """(our detector, its (K_val, D) test vocabulary) from an official fine-tuned RegionCLIP detector: backbone, box
    head, class-agnostic bbox_pred and the class embeddings (its test_cls_score rows, named by --vocabulary or the
    val json's categories in id order; or --class_embeddings); proposals from --rpn_checkpoint."""
    parts = official.detector_parts(state, path)
    if not cfg.rpn_checkpoint or not Path(cfg.rpn_checkpoint).is_file():
        raise SystemExit(f"{path} is an official RegionCLIP detector, whose Detectron2 R50 RPN (offline_*) cannot be "
                         f"mapped onto this project's RPN: pass --rpn_checkpoint, one of our class-agnostic RPNs "
                         f"(train_detect.py --task rpn), or score its region head on GT boxes with eval_zeroshot.py "
                         f"--checkpoint {path} (--rpn_checkpoint now: {cfg.rpn_checkpoint})")
    if cfg.class_embeddings is not None:
        names, table = embeddings_from_file(cfg, val, dim=parts.test_embeddings.shape[1])
        source = f"--class_embeddings {cfg.class_embeddings}"
    else:
        names, source = row_names(cfg, val), f"{path}'s test_cls_score"
        table = official.checked_embeddings(parts.test_embeddings, names, dim=None, source=source,
                                            hint="pass --vocabulary with the names of its rows in order, or "
                                                 "--class_embeddings")
    emb = table[official.rows_for(names, val.category_names, source)]  # (K_val, D)
    for note in parts.notes:
        print(f"{path}: {note}")
    model = detector_from_official(parts, cfg.model_name, offline_rpn=load_rpn(cfg.rpn_checkpoint, device=device),
                                   class_embeddings=emb, device=device, **detector_kwargs(cfg))
    print(f"official RegionCLIP detector {path}: backbone, box head, bbox_pred and {len(emb)} class embeddings "
          f"({source}) mapped; proposals from {cfg.rpn_checkpoint}")
    return model, emb


def main(argv=None):
    cfg, preset = parse_config(DetectConfig, argv, PRESETS, description=__doc__)
    weights_choice(cfg)
    check_config(cfg)
    cfg.device = resolve_device(cfg.device)
    rank, world = engine.init_distributed(cfg.device)  # torchrun: one process per GPU (or CPU, with gloo)
    device = engine.process_device(cfg.device)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if cfg.batch_size % world and not cfg.eval_only:
        raise SystemExit(f"--batch_size {cfg.batch_size} is the global batch: it must split evenly over {world} ranks")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        print(f"resolved config (preset {preset}, {world} process{'es' if world > 1 else ''}, "
              f"{cfg.batch_size // world} images each):\n{format_config(cfg)}")
    if cfg.eval_only:
        final = eval_only(cfg, out, device, rank)
        engine.finish_distributed()
        return final
    lock = None
    if rank == 0:  # one writer per out_dir; the other ranks wait until it is claimed (and emptied, on --overwrite)
        lock = ckpt.claim_out_dir(out, resume=cfg.resume, overwrite=cfg.overwrite,
                                  command="train_detect.py " + " ".join(sys.argv[1:] if argv is None else argv))
    engine.barrier()
    try:
        return run_training(cfg, out, device, rank, world)
    finally:
        if lock is not None:
            lock.release()


def run_training(cfg, out: Path, device, rank: int = 0, world: int = 1) -> Path:
    main_rank = rank == 0
    if main_rank:
        (out / "config.json").write_text(format_config(cfg))
    for path in (cfg.init, cfg.rpn_checkpoint if cfg.rpn == "offline" and cfg.task == "detector" else None):
        if path is not None and not Path(path).is_file():
            raise SystemExit(f"checkpoint {path} not found (--init / --rpn_checkpoint); run the stage that writes it "
                             f"first, or pass another path")
    train, val = load_datasets(cfg)
    if main_rank:
        print(f"train: {train.summary()}\nval: {val.summary()}")
    train.check_images("--image_root")  # both, before any work: a wrong root would train or score nothing
    if cfg.eval_at_end:
        val.check_images("--val_image_root")
    torch.manual_seed(cfg.seed)
    model, meta = build(cfg, train, val, device)
    if main_rank:
        (out / "config.json").write_text(format_config(cfg))  # again: build() resolves --tau_from_init
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if meta["kind"] == "detector" and main_rank:
        print(f"detector: {len(meta['class_names']['train'])} training classes {meta['class_names']['train']}; "
              f"evaluated on {len(meta['class_names']['test'])}; RPN {cfg.rpn}")
    optimizer = make_optimizer(cfg, model)
    scheduler = make_scheduler(optimizer, schedule="multistep", warmup_steps=cfg.warmup_steps,
                               max_steps=cfg.max_steps, lr_steps=cfg.lr_steps)
    # torchvision draws anchors / RoIs to sample and the training size from the global RNG: reseeded every step
    run = engine.Run(out, cfg.seed, cfg.max_steps, cfg.log_every, cfg.ckpt_every, cfg.keep_ckpts, cfg.grad_clip,
                     reseed_global=True, rank=rank, world=world, desc=cfg.task)

    def same_kind(state):
        if state.get("kind") != meta["kind"]:
            raise SystemExit(f"{out} holds a {state.get('kind')!r} checkpoint, this run trains {meta['kind']!r}")

    start = engine.resume(run, model, optimizer, scheduler, device=device, check=same_kind) if cfg.resume else 0
    t = cfg.repeat_factor_threshold  # LVIS's rare-category oversampling, off at 0
    repeat = repeat_factors(train.image_labels(), t) if t > 0 else None
    model.train()

    def save():  # what a checkpoint holds besides the optimizer, scheduler, step and RNG
        return {"model": model.state_dict(), "config": config_to_dict(cfg), "model_name": cfg.model_name, **meta}

    step_model = TrainingStep(model, device)
    if world > 1:  # gradients averaged over the ranks; frozen parts (stem, layer1, an offline RPN) take no part
        step_model = DDP(step_model, device_ids=[device.index] if device.type == "cuda" else None,
                         broadcast_buffers=False)
    step = engine.train(run, step_model, [p for p in model.parameters() if p.requires_grad],
                        optimizer, scheduler, train, collate=collate_detection, batch_size=cfg.batch_size // world,
                        start=start, save=save, augment=random_hflip_detection if cfg.hflip else None,
                        num_workers=cfg.num_workers, repeat=repeat)
    engine.check_in_sync(model)
    if main_rank:
        elapsed = run.counts["seconds"]
        print(f"trained {step - start} steps in {elapsed:.0f} s ({(step - start) / max(elapsed, 1e-9):.2f} steps/s)")
        summary = {**run.counts, "train_skipped_at_load": dict(train.skipped),
                   "val_skipped_at_load": dict(val.skipped)}
        ckpt.write_json(out / "run_summary.json", summary)
        print(f"run summary ({out / 'run_summary.json'}): {ckpt.strict_json(summary)}")
    if cfg.eval_at_end:
        evaluate(cfg, model, meta["kind"], val, meta.get("class_embeddings", {}).get("test"), out, step, device)
    engine.finish_distributed()
    if not main_rank:
        return out / "final.pt"
    data = flags(cfg, ("train_json", "val_json", "image_root", "val_image_root", "category_split", "model_name",
                       "min_sizes", "max_size"))
    toy = (preset_of(cfg) or "").startswith("toy")
    start = "--preset toy" if toy else f"--task detector --init {cfg.init or cfg.pretrained}"
    nxt = (f"python train_detect.py {start} --rpn offline --rpn_checkpoint {out / 'final.pt'} {data}  (or RPN "
           f"proposals for pretraining: regionclip_min.rpn.load_rpn / propose)" if cfg.task == "rpn" else
           f"look at {out / 'predictions'}/*.png; evaluate again with python train_detect.py --eval_only true "
           f"--out_dir {out} {flags(cfg, ('val_json', 'val_image_root', 'image_root', 'category_split'))}")
    print(f"done: checkpoint {out / 'final.pt'}; next: {nxt}")
    return out / "final.pt"


if __name__ == "__main__":
    run_main(main)
