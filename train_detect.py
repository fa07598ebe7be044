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
(detector.load_rpn / detector.propose).

Everything random in a step (data order, flips, torchvision's anchor and RoI sampling, the random training size) is a
function of (seed, step): the global RNG is reseeded from the step's generator, so --resume ends with the same weights.
"""
from __future__ import annotations

from regionclip_min.cli import answer_usage
from regionclip_min.configs.detect import COCO_OVD_BASE, COCO_OVD_NOVEL, PRESETS, DetectConfig

if __name__ == "__main__":  # --help and option mistakes answered before the heavy imports below
    answer_usage(DetectConfig, PRESETS, __doc__)

import json
import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from regionclip_min import checkpoint as ckpt
from regionclip_min import official
from regionclip_min.cli import (config_to_dict, flags, format_config, parse_config, preset_of, run_main,
                                weights_choice)
from regionclip_min.clip_model import SINGLE_TEMPLATE, TEMPLATES, encode_texts, load_clip
from regionclip_min.concepts import read_names
from regionclip_min.data import DetectionDataset, collate_detection, hflip
from regionclip_min.detector import (ProposalNetwork, build_detector, detector_from_official, load_detector,
                                     load_rpn, propose, set_vocabulary)
from regionclip_min.drawing import draw_detections
from regionclip_min.evaluation import detect, ovd_ap, proposal_recall
from regionclip_min.runtime import poll_threads
from regionclip_min.steps import (StepSampler, build_optimizer, clip_gradients, make_scheduler, parameter_groups,
                                  resolve_device, step_generator)





def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def _image_root(json_path: str, root: str | None) -> str | None:
    if root is None and (Path(json_path).parent / "images").is_dir():
        return str(Path(json_path).parent / "images")  # the toy world's layout
    return root


# ---- config -> keyword arguments, in one place (docs/DESIGN.md §2) ------------------------------------------
def rpn_kwargs(cfg) -> dict:
    return dict(min_size=list(_ints(cfg.min_sizes)), max_size=cfg.max_size, anchor_sizes=list(_ints(cfg.anchor_sizes)),
                aspect_ratios=list(_floats(cfg.aspect_ratios)), pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train,
                pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test, post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
                post_nms_top_n_test=cfg.rpn_post_nms_top_n_test, nms_thresh=cfg.rpn_nms_thresh,
                batch_size_per_image=cfg.rpn_batch_size_per_image)


def detector_kwargs(cfg) -> dict:
    r = rpn_kwargs(cfg)
    return dict(min_size=r["min_size"], max_size=cfg.max_size, anchor_sizes=r["anchor_sizes"],
                aspect_ratios=r["aspect_ratios"], rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train,
                rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
                rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
                rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test, rpn_nms_thresh=cfg.rpn_nms_thresh,
                rpn_batch_size_per_image=cfg.rpn_batch_size_per_image,
                box_batch_size_per_image=cfg.box_batch_size_per_image, box_positive_fraction=cfg.box_positive_fraction,
                box_score_thresh=cfg.box_score_thresh, box_nms=cfg.box_nms, box_nms_thresh=cfg.box_nms_thresh,
                detections_per_img=cfg.detections_per_img, tau=cfg.tau, focal_gamma=cfg.focal_gamma,
                background_weight=cfg.background_weight, sampling_ratio=cfg.roi_sampling_ratio)


def check_config(cfg) -> None:
    problems = []
    if cfg.task not in ("detector", "rpn"):
        problems.append(f"--task must be detector or rpn, got {cfg.task!r}")
    if cfg.category_split not in ("json", "coco-ovd"):
        problems.append(f"--category_split must be json or coco-ovd, got {cfg.category_split!r}")
    if cfg.rpn not in ("joint", "offline"):
        problems.append(f"--rpn must be joint or offline, got {cfg.rpn!r}")
    if cfg.rpn == "offline" and cfg.task == "detector" and not cfg.rpn_checkpoint:
        problems.append("--rpn offline needs --rpn_checkpoint (train one: python train_detect.py --preset toy-rpn)")
    if cfg.optimizer not in ("adamw", "sgd"):
        problems.append(f"--optimizer must be adamw or sgd, got {cfg.optimizer!r}")
    if cfg.box_nms not in ("soft", "hard"):
        problems.append(f"--box_nms must be soft or hard, got {cfg.box_nms!r}")
    if cfg.templates not in ("ensemble", "single"):
        problems.append(f"--templates must be ensemble or single, got {cfg.templates!r}")
    for name in ("min_sizes", "anchor_sizes", "aspect_ratios", "lr_steps"):
        try:
            _floats(getattr(cfg, name))
        except ValueError:
            problems.append(f"--{name} must be comma-separated numbers, got {getattr(cfg, name)!r}")
    if problems:
        raise SystemExit("bad config: " + "; ".join(problems))


def load_datasets(cfg, *, train: bool = True) -> tuple[DetectionDataset | None, DetectionDataset]:
    """(train set with the base categories, or None when not `train`; val set with every evaluated category). Images
    stay in [0, 1] at their own size: the detector's transform resizes and normalises them."""
    train_cats, val_cats = "base", None  # json: the "split" field; val keeps every category
    if cfg.category_split == "coco-ovd":  # the 48 / 17 names each json has (a COCO subset keeps its own share)
        train_cats = coco_ovd_names(cfg.train_json, COCO_OVD_BASE, "train")
        val_cats = coco_ovd_names(cfg.val_json, COCO_OVD_BASE + COCO_OVD_NOVEL, "val")
    root = _image_root(cfg.train_json, cfg.image_root)
    try:
        train = (DetectionDataset(cfg.train_json, root, categories=train_cats, drop_empty=cfg.drop_empty)
                 if train else None)
    except ValueError as e:
        if "no category has split" not in str(e):
            raise
        raise SystemExit(f"{e}. --category_split json reads each category's \"split\" field: mark the categories "
                         f"of {cfg.train_json} with \"split\": \"base\" (trained on) or \"novel\" (held out), or "
                         f"use --category_split coco-ovd for COCO names") from None
    val = DetectionDataset(cfg.val_json, _image_root(cfg.val_json, cfg.val_image_root or cfg.image_root),
                           categories=val_cats)
    return train, val


def coco_ovd_names(json_path: str, wanted: tuple[str, ...], which: str) -> list[str]:
    """The names of `wanted` (OVR-CNN's base, or base + novel) that the json's categories have; the others are
    named in a message, and so are the json's categories outside the split, which are left out."""
    with open(json_path, encoding="utf-8") as f:
        have = [c.get("name") for c in json.load(f).get("categories", [])]
    kept = [n for n in wanted if n in have]
    if not kept:
        raise SystemExit(f"{json_path}: none of OVR-CNN's COCO names ({', '.join(wanted[:5])}, ...) among its "
                         f"categories ({have[:5]}...): --category_split coco-ovd is for COCO; use --category_split "
                         f"json with a \"split\" field per category")
    missing, outside = [n for n in wanted if n not in have], [n for n in have if n not in wanted]
    if missing or outside:
        print(f"{which} json {json_path}: {len(kept)} of the split's {len(wanted)} names; "
              + (f"absent: {', '.join(missing)}; " if missing else "")
              + (f"left out ({'not a base name' if which == 'train' else 'not in the 48/17 split'}): "
                 f"{', '.join(outside)}" if outside else ""))
    return kept


def novel_base_ids(cfg, val: DetectionDataset) -> tuple[list[int], list[int]]:
    if cfg.category_split == "coco-ovd":
        ids = dict(zip(val.category_names, val.category_ids))
        return [ids[n] for n in COCO_OVD_NOVEL if n in ids], [ids[n] for n in COCO_OVD_BASE if n in ids]
    novel = [c for c, s in zip(val.category_ids, val.category_splits) if s == "novel"]
    return novel, [c for c in val.category_ids if c not in set(novel)]


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
def evaluate_detector(cfg, model, val: DetectionDataset, emb_test: torch.Tensor, out: Path, device) -> dict:
    """Swap in every val category (base + novel), detect, score AP50 novel/base/all and AP, draw a few images.

    With novel categories, also "base_vocabulary": the base AP50 / AP when only the base names are offered (the
    closed-vocabulary detector the training produced). The gap to the open-vocabulary base AP50 is what the novel
    names take: boxes of base objects and background that now score highest on a novel name."""
    set_vocabulary(model, emb_test)
    results, image_ids = detect(model, val, batch_size=cfg.eval_batch_size, max_images=cfg.eval_max_images,
                                device=device, progress=True)
    if not image_ids:  # every image unreadable: an AP of 0 would be a silent lie
        raise SystemExit(f"{cfg.val_json}: no val image could be read (skipped: {dict(val.skipped)}); nothing scored")
    novel, base = novel_base_ids(cfg, val)
    print(f"scoring {len(results)} detections on {len(image_ids)} images with COCOeval ...")
    metrics = ovd_ap(val.coco_json_path, results, novel_ids=novel, base_ids=base, image_ids=image_ids,
                     max_dets=cfg.detections_per_img)
    if novel and base:
        rows = [val.category_ids.index(c) for c in base]
        set_vocabulary(model, emb_test[rows])
        closed, _ = detect(model, val, batch_size=cfg.eval_batch_size, max_images=cfg.eval_max_images,
                           device=device, progress=True, category_ids=base)
        m = ovd_ap(val.coco_json_path, closed, novel_ids=[], base_ids=base, image_ids=image_ids,
                   max_dets=cfg.detections_per_img)
        metrics["base_vocabulary"] = {"ap50": m["ap50"]["base"], "ap": m["ap"]["base"]}
        set_vocabulary(model, emb_test)  # the drawings below use the whole vocabulary
    (out / "predictions").mkdir(exist_ok=True)
    novel_set = set(novel)
    with torch.no_grad():
        for i in range(min(cfg.draw_images, len(val))):
            if (item := val[i]) is None:
                continue
            image, target = item
            pred = model([image.to(device)])[0]
            labels = (pred["labels"] - 1).tolist()
            draw_detections(image, pred["boxes"].cpu(), [val.category_names[k] for k in labels], pred["scores"].cpu(),
                            out / "predictions" / f"{target['image_id']}.png",
                            is_novel=[val.category_ids[k] in novel_set for k in labels])
    return metrics


def evaluate_rpn(cfg, model, val: DetectionDataset, device, top_ks=(10, 100)) -> dict:
    """Recall@k (IoU 0.5) of the class-agnostic proposals on base and novel val boxes, for each k in top_ks."""
    n = len(val) if cfg.eval_max_images is None else min(cfg.eval_max_images, len(val))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(val, range(n)), batch_size=cfg.eval_batch_size,
                                         collate_fn=collate_detection)
    novel_k = torch.tensor([s == "novel" for s in val.category_splits])  # (K,)
    props, gts, novel = [], [], []
    for images, targets in tqdm(loader, desc="proposals"):
        props += [p.cpu() for p in propose(model, [im.to(device) for im in images], max(top_ks))]
        gts += [t["boxes"] for t in targets]
        novel += [novel_k[t["labels"] - 1] for t in targets]
    return {**{f"recall@{k}": proposal_recall([p[:k] for p in props], gts, novel) for k in top_ks}, "n_images": n}


# ---- main ---------------------------------------------------------------------------------------------------------
def eval_inputs(cfg, checkpoint: Path) -> dict:
    """What results.json was computed from, by content: the checkpoint and the val json."""
    return {"checkpoint": str(checkpoint), "checkpoint_sha256": ckpt.file_digest(checkpoint),
            "val_json": cfg.val_json, "val_json_sha256": ckpt.file_digest(cfg.val_json)}


def evaluate(cfg, model, kind: str, val: DetectionDataset, emb_test, out: Path, step: int | None, device, *,
             checkpoint: Path | None = None) -> dict:
    """Score a trained model on the val set and write results.json (and predictions/*.png for a detector)."""
    model.eval()
    if kind == "rpn":
        results = evaluate_rpn(cfg, model, val, device)
    else:
        results = evaluate_detector(cfg, model, val, emb_test.to(device), out, device)
    checkpoint = checkpoint or out / "final.pt"
    results = {**results, "checkpoint": str(checkpoint), "step": step, "inputs": eval_inputs(cfg, checkpoint)}
    ckpt.write_json(out / "results.json", results)
    print(f"results ({out / 'results.json'}): "
          f"{ckpt.strict_json({k: v for k, v in results.items() if k != 'per_category'})}")
    return results


def eval_only(cfg, out: Path, device) -> Path:
    """--eval_only: rebuild the model from --checkpoint (default out_dir/final.pt) alone and score it. Ours carries
    its vocabulary; an official RegionCLIP detector is mapped by `official_detector`."""
    final = Path(cfg.checkpoint) if cfg.checkpoint else out / "final.pt"
    if not final.is_file():
        raise SystemExit(f"--eval_only: {final} does not exist (--checkpoint, or out_dir/final.pt)")
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
    device = torch.device(cfg.device)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    print(f"resolved config (preset {preset}):\n{format_config(cfg)}")
    if cfg.eval_only:
        return eval_only(cfg, out, device)
    lock = ckpt.claim_out_dir(out, resume=cfg.resume, overwrite=cfg.overwrite,
                              command="train_detect.py " + " ".join(sys.argv[1:] if argv is None else argv))
    try:
        return run_training(cfg, out, device)
    finally:
        lock.release()


def run_training(cfg, out: Path, device) -> Path:
    (out / "config.json").write_text(format_config(cfg))
    for path in (cfg.init, cfg.rpn_checkpoint if cfg.rpn == "offline" and cfg.task == "detector" else None):
        if path is not None and not Path(path).is_file():
            raise SystemExit(f"checkpoint {path} not found (--init / --rpn_checkpoint); run the stage that writes it "
                             f"first, or pass another path")
    train, val = load_datasets(cfg)
    print(f"train: {train.summary()}\nval: {val.summary()}")
    train.check_images("--image_root")  # both, before any work: a wrong root would train or score nothing
    if cfg.eval_at_end:
        val.check_images("--val_image_root")
    torch.manual_seed(cfg.seed)
    model, meta = build(cfg, train, val, device)
    (out / "config.json").write_text(format_config(cfg))  # again: build() resolves --tau_from_init
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if meta["kind"] == "detector":
        print(f"detector: {len(meta['class_names']['train'])} training classes {meta['class_names']['train']}; "
              f"evaluated on {len(meta['class_names']['test'])}; RPN {cfg.rpn}")
    optimizer = make_optimizer(cfg, model)
    scheduler = make_scheduler(optimizer, schedule="multistep", warmup_steps=cfg.warmup_steps,
                               max_steps=cfg.max_steps, lr_steps=cfg.lr_steps)
    start = 0
    if cfg.resume and (last := ckpt.latest_checkpoint(out)) is not None:
        state = ckpt.load_checkpoint(last, map_location=device)
        if state.get("kind") != meta["kind"]:
            raise SystemExit(f"{last} holds a {state.get('kind')!r} checkpoint, this run trains {meta['kind']!r}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = state["step"]
        print(f"resumed from {last} at step {start}")
    if cfg.resume:  # drop log lines written after the checkpoint resumed from (all, if none)
        ckpt.truncate_metrics(out / "metrics.jsonl", start)

    def save(path, step):
        ckpt.save_checkpoint(path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                    "scheduler": scheduler.state_dict(), "step": step, "rng": ckpt.rng_state(),
                                    "config": config_to_dict(cfg), "model_name": cfg.model_name, **meta})

    sampler = StepSampler(len(train), cfg.batch_size, 0, 1, cfg.seed, start, cfg.max_steps)
    loader = torch.utils.data.DataLoader(train, batch_sampler=sampler, collate_fn=collate_detection,
                                         num_workers=cfg.num_workers)
    model.train()
    bar = tqdm(total=cfg.max_steps, initial=start, desc=cfg.task, dynamic_ncols=True)
    step, t0 = start, time.time()
    skipped_images = skipped_batches = 0
    with open(out / "metrics.jsonl", "a") as metrics:
        for images, targets in loader:
            poll_threads()
            g = step_generator(cfg.seed, step, 0)
            # torchvision draws anchors/RoIs to sample and the training size from the global RNG: seed it per step
            torch.manual_seed(int(torch.randint(2 ** 62, (1,), generator=g)))
            skipped_images += cfg.batch_size - len(images)  # bad images dropped by the collate
            if not images:  # every image of this batch was unreadable (counted in the dataset summary)
                step += 1
                scheduler.step()
                skipped_batches += 1
                continue
            flips = torch.rand(len(images), generator=g) < 0.5 if cfg.hflip else torch.zeros(len(images), dtype=bool)
            batch = [hflip(im, t["boxes"]) if f else (im, t["boxes"]) for im, t, f in zip(images, targets, flips)]
            images = [im.to(device) for im, _ in batch]
            targets = [{"boxes": b.to(device), "labels": t["labels"].to(device)} for (_, b), t in zip(batch, targets)]
            losses = model(images, targets)
            total = sum(losses.values())  # every term weighted 1 (torchvision's and the paper's sum)
            values = {k: v.item() for k, v in losses.items()}
            if not all(math.isfinite(v) for v in values.values()):
                bad = [k for k, v in values.items() if not math.isfinite(v)]
                raise SystemExit(f"non-finite loss at step {step}: {bad} in {values}. Stopped; the last good "
                                 f"checkpoint is {ckpt.latest_checkpoint(out)} (resume with --resume, perhaps with a "
                                 f"lower --lr)")
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            clip_gradients([p for p in model.parameters() if p.requires_grad], cfg.grad_clip, per_tensor=True)
            optimizer.step()
            scheduler.step()
            step += 1
            bar.update(1)
            bar.set_postfix({k.replace("loss_", ""): f"{v:.3f}" for k, v in values.items()})
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                metrics.write(ckpt.strict_json({"step": step, "lr": scheduler.get_last_lr()[0], "total": total.item(),
                                          **values, "elapsed_s": round(time.time() - t0, 1)}) + "\n")
                metrics.flush()
            if step % cfg.ckpt_every == 0 and step < cfg.max_steps:
                save(ckpt.checkpoint_path(out, step), step)
                ckpt.prune_checkpoints(out, cfg.keep_ckpts)
    bar.close()
    elapsed = time.time() - t0
    save(ckpt.checkpoint_path(out, step), step)
    ckpt.link_checkpoint(ckpt.checkpoint_path(out, step), out / "final.pt")
    ckpt.prune_checkpoints(out, cfg.keep_ckpts)
    print(f"trained {step - start} steps in {elapsed:.0f} s ({(step - start) / max(elapsed, 1e-9):.2f} steps/s)")
    summary = {"steps": step - start, "first_step": start, "seconds": round(elapsed, 1),
               "images_skipped_unreadable": skipped_images, "batches_skipped_unreadable": skipped_batches,
               "train_skipped_at_load": dict(train.skipped), "val_skipped_at_load": dict(val.skipped)}
    ckpt.write_json(out / "run_summary.json", summary)
    print(f"run summary ({out / 'run_summary.json'}): {ckpt.strict_json(summary)}")
    if cfg.eval_at_end:
        evaluate(cfg, model, meta["kind"], val, meta.get("class_embeddings", {}).get("test"), out, step, device)
    data = flags(cfg, ("train_json", "val_json", "image_root", "val_image_root", "category_split", "model_name",
                       "min_sizes", "max_size"))
    toy = (preset_of(cfg) or "").startswith("toy")
    start = "--preset toy" if toy else f"--task detector --init {cfg.init or cfg.pretrained}"
    nxt = (f"python train_detect.py {start} --rpn offline --rpn_checkpoint {out / 'final.pt'} {data}  (or RPN "
           f"proposals for pretraining: regionclip_min.detector.load_rpn / propose)" if cfg.task == "rpn" else
           f"look at {out / 'predictions'}/*.png; evaluate again with python train_detect.py --eval_only true "
           f"--out_dir {out} {flags(cfg, ('val_json', 'val_image_root', 'image_root', 'category_split'))}")
    print(f"done: checkpoint {out / 'final.pt'}; next: {nxt}")
    return out / "final.pt"


if __name__ == "__main__":
    run_main(main)
