"""Zero-shot region recognition and detection (paper Table 4, Fig. 1(b)), free-text queries, region features.

    python eval_zeroshot.py --checkpoint runs/toy/final.pt                       # GT boxes: top-1 + AP50
    python eval_zeroshot.py --checkpoint runs/toy-clip/final.pt                  # the "CLIP" row, same protocol
    python eval_zeroshot.py --checkpoint runs/toy/final.pt --boxes rpn           # RPN proposals: AP50
    python eval_zeroshot.py --checkpoint runs/toy/final.pt --image data/toy/images/val_000003.png \
        --vocabulary "circle,star,heart,red square"                              # demo: table + PNG
    python eval_zeroshot.py --model_name RN50 --pretrained openai --region_scale 1 \
        --instances data/coco/annotations/instances_val2017.json                 # OpenAI's CLIP on COCO

Every box goes through the region path of the model (res4 map -> RoIAlign -> layer4 -> attention pool; images
enlarged by --region_scale first, docs/DESIGN.md §5.1) and is compared by cosine with the vocabulary's
prompt-ensembled text
embeddings. The same protocol runs for every model: a stage-0 CLIP or RegionCLIP checkpoint of train_pretrain.py, a
detector checkpoint of train_detect.py (its backbone + box head are the region path, its text encoder is that of
the checkpoint it was initialised from), or an open_clip model name with a tag or a local weights file.

--boxes gt: each ground-truth box of the --kinds images is classified: top-1 accuracy over all / base / novel
  categories; and COCO AP50 (novel / base / all) with every GT box reported once per class, scored by the class
  probability softmax(cos / tau), tau the model's own 1/exp(logit_scale) unless --tau is given (0.01 for OpenAI's
  CLIP, the paper's; top-1 does not depend on it, AP does). Also whole-image top-1 of the object-centric images
  (`encode_image`), the image-level side of Fig. 1(b), and how each category's boxes were named (the 5 most
  frequent vocabulary names: a confusion table by rows, `gt_box_named_as` in the json).
--boxes rpn: zero-shot detection: the --rpn_top_k proposals of a class-agnostic RPN (train_detect.py --preset toy-rpn)
  per image, each scored for every class by its probability times the RPN's objectness ** --objectness_power (a
  softmax over the vocabulary has no background, so without objectness a background box scores as high as an
  object); no box regression; NMS per class; the best 100 per image: AP50 / AP (novel / base / all), as
  train_detect.py scores a trained detector. --boxes file | random | grid: the same with the other proposers of
  pretraining (regionclip_min/proposals.py), --proposals_per_image each; a file's fifth column is the objectness.
The vocabulary is the dataset's category names, or --vocabulary: comma-separated names or a text file with one
name per line. Extra names compete as distractors; every dataset category must be named to be scored.
"""
from __future__ import annotations

from regionclip_min.cli import answer_usage
from regionclip_min.configs.zeroshot import EvalConfig, check_config, resolve_kinds

if __name__ == "__main__":  # --help and option mistakes answered before the heavy imports below
    answer_usage(EvalConfig, None, __doc__)

import math
import time
from pathlib import Path

import torch

from regionclip_min import engine, official
from regionclip_min.checkpoint import claim_result, file_digest, load_checkpoint, recorded_model_name, write_json
from regionclip_min.cli import format_config, parse_config, run_main
from regionclip_min.clip_model import (SINGLE_TEMPLATE, TEMPLATES, encode_texts, guess_model_name, load_clip,
                                       logit_scale)
from regionclip_min.concepts import read_names
from regionclip_min.data import DetectionDataset
from regionclip_min.demo import (detector_detections, read_image, report_detections, rpn_proposer,
                                 zero_shot_detections)
from regionclip_min.detector import load_detector, load_official_visual, visual_state_from_detector
from regionclip_min.evaluation import (encode_regions, eval_indices, named_as, print_zero_shot, region_detections,
                                       save_region_features, top1_accuracy, vocabulary_index, whole_image_accuracy)
from regionclip_min.proposals import build_proposer
from regionclip_min.regions import region_encoder
from regionclip_min.scoring import is_federated, ovd_ap
from regionclip_min.steps import resolve_device



def load_model(cfg, device, state: dict | None = None):
    """(CLIP model whose visual is the region path, tokenizer or None, a short description, the model's own class
    embeddings or None). The tokenizer is None for an official detector without --text_checkpoint: it has no text
    encoder, and its own class embeddings (test_cls_score rows) name the classes. `state`: --checkpoint already
    loaded, if it was."""
    if cfg.checkpoint is None:
        model, tok = load_clip(cfg.model_name, cfg.pretrained, device=device, quick_gelu=cfg.quick_gelu)
        return model, tok, f"{cfg.model_name} ({cfg.pretrained or 'random init'})", None
    state = load_checkpoint(cfg.checkpoint) if state is None else state
    if (layout := official.checkpoint_layout(state)) is not None:
        return load_official(cfg, state["model"], layout, device)
    name = recorded_model_name(state)
    kind = state.get("kind") or state.get("stage", "?")
    if name is None:
        raise SystemExit(f"{cfg.checkpoint}: no model_name in this checkpoint; pass --model_name and --pretrained")
    if kind == "rpn":
        raise SystemExit(f"{cfg.checkpoint} is a proposal network (RPN) checkpoint, which has no classifier; pass it "
                         f"as --rpn_checkpoint and a CLIP, RegionCLIP or detector checkpoint as --checkpoint")
    desc = f"{cfg.checkpoint} ({kind}, step {state.get('step', '?')})"
    if kind != "detector":
        model, tok = load_clip(name, cfg.checkpoint, device=device, quick_gelu=cfg.quick_gelu)
        return model, tok, desc, None
    text = cfg.text_checkpoint or state.get("config", {}).get("init") or state.get("config", {}).get("pretrained")
    if text is None or (not Path(text).is_file() and text.endswith(".pt")):
        raise SystemExit(f"{cfg.checkpoint} is a detector checkpoint; its text encoder comes from the checkpoint it "
                         f"was initialised from ({text}), which is not there: pass --text_checkpoint")
    model, tok = load_clip(name, text, device=device, quick_gelu=cfg.quick_gelu)
    model.visual.load_state_dict(visual_state_from_detector(state["model"]), strict=True)
    return model, tok, f"{desc}, text encoder of {text}", None


def load_official(cfg, state: dict, layout: str, device):
    """load_model for an official RegionCLIP checkpoint; the architecture (RN50, RN50x4) is read from its shapes."""
    if layout == official.PRETRAINED:
        name = guess_model_name(official.clip_state(state, cfg.checkpoint)[0]) or cfg.model_name
        model, tok = load_clip(name, cfg.checkpoint, device=device, quick_gelu=cfg.quick_gelu)
        return model, tok, f"{cfg.checkpoint} (official RegionCLIP pretrained, {name})", None
    parts = official.detector_parts(state, cfg.checkpoint)
    name = guess_model_name(parts.visual) or cfg.model_name
    for note in parts.notes:
        print(f"{cfg.checkpoint}: {note}")
    if cfg.text_checkpoint:
        model, tok = load_clip(name, cfg.text_checkpoint, device=device, quick_gelu=cfg.quick_gelu)
        desc = f"{cfg.checkpoint} (official RegionCLIP detector, {name}), text encoder of {cfg.text_checkpoint}"
    else:  # no text tower: a random one is never used (tok None), the class embeddings come with the detector
        model, tok = load_clip(name, None, device=device, verbose=False)[0], None
        desc = f"{cfg.checkpoint} (official RegionCLIP detector, {name}; its own class embeddings)"
    load_official_visual(model.visual, parts, name)
    print(f"{cfg.checkpoint}: backbone -> the region path; test_cls_score: {len(parts.test_embeddings)} class "
          f"embeddings; its Detectron2 RPN is not used (--boxes rpn takes our --rpn_checkpoint)")
    return model.to(device), tok, desc, parts.test_embeddings


def resolve_tau(cfg, model, own: torch.Tensor | None) -> str:
    """Sets cfg.tau where --tau was not given: the loaded model's own temperature 1/exp(logit_scale), as the toy
    transfer's classifier uses it (train_detect.py --tau_from_init), or the official 0.01 for an official detector's
    own class embeddings (it has no text tower, hence no logit_scale). Returns where the value came from."""
    if cfg.tau is not None:
        return "--tau"
    if own is not None:
        cfg.tau, source = 1.0 / math.exp(official.OFFICIAL_LOGIT_SCALE), "the official CLSS_TEMP"
    else:
        cfg.tau, source = 1.0 / logit_scale(model), "the model's own 1/exp(logit_scale)"
    print(f"class probabilities at tau = {cfg.tau:.4f} ({source}; --tau sets another)")
    return source


def class_embeddings(cfg, names: list[str], model, tokenizer, own: torch.Tensor | None) -> torch.Tensor:
    """(V, D) normalised embeddings of the vocabulary `names`: from --class_embeddings, from the model's own (an
    official detector's test_cls_score, whose rows `names` must name in order), or encoded with the templates."""
    dim = model.visual.attnpool.c_proj.out_features
    if cfg.class_embeddings is not None:
        return official.read_embeddings(cfg.class_embeddings, names, dim=dim)
    if tokenizer is None:  # an official detector: its own rows, named in order
        return official.checked_embeddings(
            own, names, dim=dim, source=f"{cfg.checkpoint}'s test_cls_score (the detector has no text encoder)",
            hint="pass --vocabulary naming its rows in order, --class_embeddings, or --text_checkpoint (e.g. "
                 "regionclip_pretrained-cc_rn50.pth) to encode the names")
    templates = TEMPLATES if cfg.templates == "ensemble" else SINGLE_TEMPLATE
    return encode_texts(model, tokenizer, names, templates).cpu()  # (V, D)


def _default_out(cfg, kind: str) -> Path:
    if cfg.out:
        return Path(cfg.out)
    if cfg.checkpoint:
        return Path(cfg.checkpoint).with_suffix(f".zeroshot-{kind}.json")
    weights = Path(cfg.pretrained).stem if cfg.pretrained else "random"
    return Path("results/zeroshot") / f"{cfg.model_name}-{weights}-{kind}.json"


def per_image(cfg) -> int:
    """Proposals per image asked for (an image may have fewer)."""
    return cfg.rpn_top_k if cfg.boxes == "rpn" else cfg.proposals_per_image


def run_inputs(cfg) -> dict:
    """What a result was computed from, by content: the weights, the data, and the class embeddings and RPN used."""
    weights = cfg.checkpoint or cfg.pretrained
    inputs = {"weights": weights, "weights_sha256": file_digest(weights) if weights else None,
              "instances": cfg.instances, "instances_sha256": file_digest(cfg.instances)}
    used = {"rpn": ("rpn_checkpoint",), "file": ("proposals_file",)}.get(cfg.boxes, ())
    for name in ("text_checkpoint", "class_embeddings") + used:
        if getattr(cfg, name):
            inputs[f"{name}_sha256"] = file_digest(getattr(cfg, name))
    return inputs


def run_demo(cfg, image, model, class_emb, names, desc, device, detector=None) -> dict:
    """Detection of `names` in `image` (3, H, W), read from --image; table + PNG. Zero-shot (the region path):
    proposals from the RPN or sliding windows, classified and NMS'd. With `detector` (a trained one): it runs as it
    was trained, its own RPN, box regression and background class, with `names` as its vocabulary."""
    path = Path(cfg.image)
    if detector is not None:
        dets, source, record = detector_detections(detector, class_emb, image, device), "the detector's own RPN", None
    else:  # the RPN's proposals, or sliding windows when there is no trained RPN (--image_boxes)
        use_rpn = cfg.image_boxes == "rpn" or cfg.image_boxes == "auto" and Path(cfg.rpn_checkpoint).is_file()
        encoder = region_encoder(cfg.region_encoder, model.visual, crop_context=cfg.crop_context)
        dets, record, source = zero_shot_detections(
            model.visual, image, class_emb,
            proposer=rpn_proposer(cfg.rpn_checkpoint, cfg.rpn_top_k, device) if use_rpn else None,
            scale=cfg.region_scale, tau=cfg.tau, nms_thresh=cfg.nms_thresh, objectness_power=cfg.objectness_power,
            encoder=encoder, device=device)
    out_png = Path(cfg.out_image) if cfg.out_image else Path("results/demo") / f"{path.stem}.png"
    what = f"{'detection' if detector is not None else 'zero-shot detection'} in {path}"
    shown = report_detections(image, dets, names, f"{what}, {desc}, {source}", out_png, score_thresh=cfg.score_thresh,
                              max_boxes=cfg.max_boxes, draw_scale=cfg.draw_scale)
    if cfg.save_region_features and record is not None:
        save_region_features(cfg.save_region_features, [record], [], "image", desc, cfg.region_scale)
    return {"image": str(path), "detections": [{**d, "name": names[d["category_id"]]} for d in shown],
            "png": str(out_png)}


def main(argv=None) -> dict:
    cfg, _ = parse_config(EvalConfig, argv, description=__doc__)
    check_config(cfg)
    cfg.device = resolve_device(cfg.device)
    rank, world = engine.init_distributed(cfg.device)  # torchrun: the images are sharded over the ranks
    device = engine.process_device(cfg.device)
    if world > 1 and cfg.image is not None:
        raise SystemExit("--image (the demo) runs in one process: run it without torchrun")
    if cfg.image_root is None and (Path(cfg.instances).parent / "images").is_dir():
        cfg.image_root = str(Path(cfg.instances).parent / "images")
    if rank == 0:
        print(f"resolved config ({world} process{'es' if world > 1 else ''}):\n{format_config(cfg)}")
    try:
        return evaluate(cfg, device, rank)
    finally:
        engine.finish_distributed()


def evaluate(cfg, device, rank: int) -> dict:
    """The demo, or the dataset's regions encoded (sharded over the ranks under torchrun) and scored by rank 0;
    the results dict (on the other ranks, {"rank", "scored_by": 0})."""
    t0 = time.time()
    vocab, source = (read_names(cfg.vocabulary, dedupe=cfg.class_embeddings is None) if cfg.vocabulary is not None
                     else (None, None))
    if vocab is not None and len(vocab) == 1:
        print(f"warning: {source} names one class ({vocab[0]!r}): a softmax over one name gives every box "
              f"probability 1, so boxes rank by objectness alone and any box can be called {vocab[0]!r}; add the "
              f"other things the images may show (or 'background') as distractors")
    if cfg.image is not None and vocab is None and not Path(cfg.instances).is_file():
        raise SystemExit("--image needs --vocabulary (or an --instances json whose categories to use)")
    if cfg.image is not None:
        image = read_image(cfg.image)  # a mistyped path stops here, before any model is loaded
        names = vocab or DetectionDataset(cfg.instances, cfg.image_root).category_names
        state = load_checkpoint(cfg.checkpoint) if cfg.checkpoint else None  # read once
        model, tokenizer, desc, own = load_model(cfg, device, state)
        class_emb = class_embeddings(cfg, names, model, tokenizer, own)  # (V, D)
        resolve_tau(cfg, model, own)
        detector = None
        if state is not None and state.get("kind") == "detector":  # ours: run it whole
            detector = load_detector(cfg.checkpoint, device=device, state=state)
        return run_demo(cfg, image, model, class_emb, names, desc, device, detector)

    # the data, the vocabulary and the images to score are checked before any model is built
    dataset = DetectionDataset(cfg.instances, cfg.image_root)
    dataset.check_images("--image_root")
    names = vocab or dataset.category_names
    rows = vocabulary_index(dataset.category_names, names, source or "the vocabulary")  # dataset class -> row
    cat_of_row = [None] * len(names)  # vocabulary row -> dataset category id (None: a distractor)
    for k, r in enumerate(rows):
        cat_of_row[r] = dataset.category_ids[k]
    kinds, kinds_t = resolve_kinds(cfg, dataset)
    proposer, counts = None, {}
    if cfg.boxes != "gt":  # proposals are found on the dataset's [0, 1] images, before the enlargement for pooling
        ids = [dataset.image_ids[i] for i in eval_indices(dataset, kinds_t, cfg.eval_max_images)]
        proposer, counts = build_proposer(cfg.boxes, per_image=None if cfg.boxes == "rpn" else cfg.proposals_per_image,
                                          image_ids=ids, rpn_checkpoint=cfg.rpn_checkpoint, rpn_top_k=cfg.rpn_top_k,
                                          nms_thresh=None, clip_normalized=False, proposals_file=cfg.proposals_file,
                                          device=device)
    out, inputs = _default_out(cfg, cfg.boxes), run_inputs(cfg)
    if rank == 0:
        claim_result(out, inputs, overwrite=cfg.overwrite)
    model, tokenizer, desc, own = load_model(cfg, device)
    class_emb = class_embeddings(cfg, names, model, tokenizer, own)  # (V, D)
    tau_source = resolve_tau(cfg, model, own)
    encoder = region_encoder(cfg.region_encoder, model.visual, crop_context=cfg.crop_context)
    records = encode_regions(encoder, dataset, proposer=proposer, scale=cfg.region_scale,
                             batch_size=cfg.eval_batch_size, kinds=kinds_t, max_images=cfg.eval_max_images,
                             progress=True, device=device)
    if records is None:  # a rank other than 0: its share went to rank 0, which scores
        return {"rank": rank, "scored_by": 0}
    if not records:
        raise SystemExit(f"{cfg.instances}: no image of kind {kinds!r} to evaluate (see --kinds)")
    image_ids = [r["image_id"] for r in records]
    max_dets = cfg.max_dets or (300 if is_federated({"images": dataset.images}) else 100)
    print(f"scoring the regions of {len(records)} images (COCOeval{', whole images' if cfg.boxes == 'gt' else ''}) ...")
    novel = [c for c, s in zip(dataset.category_ids, dataset.category_splits) if s == "novel"]
    base = [c for c in dataset.category_ids if c not in set(novel)]
    results = {"model": desc, "instances": cfg.instances, "boxes": cfg.boxes, "kinds": kinds,
               "region_scale": cfg.region_scale,
               "region_encoder": cfg.region_encoder + (f" (context {cfg.crop_context})" if cfg.region_encoder == "crop"
                                                       else ""),
               "vocabulary": names if vocab else "dataset categories", "templates": cfg.templates, "tau": cfg.tau,
               "tau_source": tau_source, "n_images": len(records), "max_dets": max_dets}
    dets = region_detections(records, class_emb, cat_of_row, tau=cfg.tau, max_dets=max_dets,
                             **({"nms_thresh": None} if cfg.boxes == "gt" else
                                {"nms_thresh": cfg.nms_thresh, "objectness_power": cfg.objectness_power}))
    ap = ovd_ap(dataset.coco_json_path, dets, novel_ids=novel, base_ids=base, image_ids=image_ids, max_dets=max_dets)
    if cfg.boxes == "gt":
        results["gt_box_top1"] = top1_accuracy(records, class_emb, dataset.category_splits, rows)
        results["gt_box_ap50"] = ap["ap50"]
        results["gt_box_named_as"] = named_as(records, class_emb, names, dataset.category_names)
        results["whole_image_top1"] = whole_image_accuracy(model, dataset, class_emb, batch_size=cfg.eval_batch_size,
                                                           vocab_index=rows, device=device)
    else:
        source = ({"rpn_checkpoint": cfg.rpn_checkpoint, "rpn_top_k": cfg.rpn_top_k} if cfg.boxes == "rpn" else
                  {"proposals_file": cfg.proposals_file} if cfg.boxes == "file" else {})
        results.update(**source, **counts, proposals_per_image=per_image(cfg), nms_thresh=cfg.nms_thresh,
                       objectness_power=cfg.objectness_power)
        results[f"{cfg.boxes}_ap50"], results[f"{cfg.boxes}_ap"] = ap["ap50"], ap["ap"]
    results["protocol"] = ap["protocol"]  # "coco", or "lvis-federated" for an LVIS-format json
    if "lvis" in ap:
        results["lvis_ap"] = ap["lvis"]  # APr / APc / APf / AP, IoU 0.50:0.95
    results["per_category_ap50"] = {n: v["ap50"] for n, v in ap["per_category"].items()}
    results["seconds"] = round(time.time() - t0, 1)

    print_zero_shot(results, desc, dataset)
    write_json(out, {**results, "inputs": inputs})
    print(f"results written to {out} ({results['seconds']} s)")
    if cfg.save_region_features:
        save_region_features(cfg.save_region_features, records, dataset.category_ids, cfg.boxes, desc, cfg.region_scale)
    return results


if __name__ == "__main__":
    run_main(main)
