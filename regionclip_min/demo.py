"""Zero-shot detection of free-text names in one image, as a Python call (for notebooks and forks).

    from regionclip_min.demo import detect
    for d in detect("photo.jpg", ["cat", "remote control", "sofa"], "RN50", "regionclip_pretrained-cc_rn50.pth"):
        print(d["name"], round(d["score"], 3), d["box"])

Weights in (an open_clip name with a weights file or tag, our checkpoints, or an official RegionCLIP checkpoint:
whatever `clip_model.load_clip` takes), an image and names in, boxes, names and scores out. The proposals are an RPN
checkpoint's (`rpn=`, train_detect.py --task rpn) or multi-scale sliding windows (`proposals.WindowProposer`, no
training needed); each box goes through the region path (res4 -> RoIAlign -> layer4 -> attention pool) and is
scored by softmax(cos / tau) over the names, times the RPN's objectness ** 0.5, then NMS per name.
`eval_zeroshot.py --image` is the same on the command line, with a table and a drawing.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.functional import to_tensor

from regionclip_min.clip_model import TEMPLATES, encode_texts, load_clip, logit_scale
from regionclip_min.detector import set_vocabulary
from regionclip_min.drawing import draw_detections
from regionclip_min.evaluation import region_detections, region_embeddings
from regionclip_min.proposals import RPNProposer, WindowProposer
from regionclip_min.regions import RegionEncoder
from regionclip_min.rpn import load_rpn
from regionclip_min.transforms import open_rgb


def zero_shot_detections(visual, image: torch.Tensor, class_emb: torch.Tensor, *, proposer=None,
                         scale: float = 1.0, tau: float = 0.01, nms_thresh: float = 0.5,
                         objectness_power: float = 0.5, encoder=None, device="cpu") -> tuple[list[dict], dict, str]:
    """(detections best first as region_detections gives them: bbox xywh pixels of `image`, score, category_id =
    the row of class_emb; the proposals' record; where the proposals came from).

    Args:
        visual: a CLIP ModifiedResNet (`model.visual`), or pass `encoder` (a region encoder built on it).
        image: (3, H, W) float RGB in [0, 1].
        class_emb: (V, D) class-name embeddings.
        proposer: a `proposals.PROPOSERS` proposer for [0, 1] images, e.g. `RPNProposer(load_rpn(path), top_k=100,
            per_image=None, nms_thresh=None, clip_normalized=False)`; None: sliding windows (objectness 1 each).
    """
    proposer = proposer or WindowProposer()
    h, w = image.shape[-2:]
    batch = {"image_ids": torch.tensor([0]), "sizes": torch.tensor([[h, w]]), "orig_sizes": torch.tensor([[w, h]])}
    props = proposer([image.to(device)], [[h, w]], batch, torch.Generator().manual_seed(0))[0].cpu()  # (R, 5)
    encoder = (encoder or RegionEncoder(visual)).eval()
    emb = region_embeddings(encoder, [image], [props[:, :4]], scale=scale, device=device)[0].cpu()  # (R, D)
    record = {"image_id": 0, "boxes": props[:, :4], "embeddings": emb,
              "labels": torch.full((len(props),), -1, dtype=torch.int64), "objectness": props[:, 4]}
    dets = region_detections([record], class_emb, list(range(len(class_emb))), tau=tau, nms_thresh=nms_thresh,
                             objectness_power=objectness_power)
    return dets, record, f"{len(props)} proposals ({proposer.label})"


def rpn_proposer(checkpoint, top_k: int = 100, device="cpu") -> RPNProposer:
    """Zero-shot detection's RPN proposals: the `top_k` best of an RPN checkpoint, all kept, for [0, 1] images."""
    return RPNProposer(load_rpn(checkpoint, device), top_k=top_k, per_image=None, nms_thresh=None,
                       clip_normalized=False)


def report_detections(image: torch.Tensor, dets: list[dict], names: list[str], title: str, out_png, *,
                      score_thresh: float, max_boxes: int, draw_scale: int = 1) -> list[dict]:
    """Prints the `max_boxes` best detections scoring at least `score_thresh` as a table under `title`, draws them on
    `image` into `out_png`, and returns them."""
    shown = [d for d in dets if d["score"] >= score_thresh][:max_boxes]
    print(f"\n{title} ({image.shape[-1]} x {image.shape[-2]} px), {len(names)} names")
    print("| # | name | score | box x1, y1, x2, y2 |\n|---|---|---|---|")
    for i, d in enumerate(shown, 1):
        x, y, w, h = d["bbox"]
        print(f"| {i} | {names[d['category_id']]} | {d['score']:.3f} | {x:.0f}, {y:.0f}, {x + w:.0f}, {y + h:.0f} |")
    if not shown:
        print(f"(no detection scores {score_thresh} or more; best: "
              f"{max((d['score'] for d in dets), default=0):.3f}; lower --score_thresh)")
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in shown)]).reshape(-1, 4)  # (n, 4)
    draw_detections(image, boxes, [names[d["category_id"]] for d in shown], torch.tensor([d["score"] for d in shown]),
                    out_png, score_thresh=score_thresh, max_boxes=len(shown), scale=draw_scale)
    print(f"drawn to {out_png}")
    return shown


def read_image(path, option: str = "--image") -> torch.Tensor:
    """An image file as (3, H, W) float RGB in [0, 1], EXIF orientation applied; SystemExit in one line naming
    `option` if it is unreadable or smaller than 16 x 16."""
    try:
        image = to_tensor(open_rgb(path))  # (3, H, W)
    except (FileNotFoundError, UnidentifiedImageError, OSError) as e:
        raise SystemExit(f"{option} {path}: cannot read it as an image ({type(e).__name__}: {e})") from None
    if min(image.shape[-2:]) < 16:
        raise SystemExit(f"{option} {path}: {tuple(image.shape[-2:])} pixels is too small (at least 16 x 16)")
    return image


@torch.no_grad()
def detector_detections(detector, class_emb: torch.Tensor, image: torch.Tensor, device) -> list[dict]:
    """A trained detector on one image with `class_emb` (V, D) as its vocabulary: detections as region_detections
    gives them (bbox xywh pixels of the image, score, category_id = the vocabulary row), best first."""
    set_vocabulary(detector, class_emb.to(device))
    out = detector.eval()([image.to(device)])[0]
    dets = [{"image_id": 0, "category_id": label - 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score}
            for (x1, y1, x2, y2), label, score in zip(out["boxes"].cpu().tolist(), out["labels"].tolist(),
                                                     out["scores"].tolist())]
    return sorted(dets, key=lambda d: -d["score"])


@functools.lru_cache(maxsize=2)
def _model(model_name: str, weights: str | None, device: str):
    return load_clip(model_name, weights, device=device)


def detect(image, names: list[str], model_name: str = "RN50", weights: str | None = None, *, rpn: str | None = None,
           scale: float = 1.0, tau: float | None = None, min_score: float = 0.0, max_boxes: int = 10,
           device: str = "cpu") -> list[dict]:
    """Detect `names` in `image` (a path, a PIL image, or a (3, H, W) float tensor in [0, 1]).

    Returns at most `max_boxes` dicts {"box": [x1, y1, x2, y2] pixels of the image, "name", "score"}, best first.
    The model is loaded once per (model_name, weights) and kept for the next call. `scale` enlarges the image before
    regions are pooled (1 for photos and real CLIPs; 2 for the 128-px toy CLIP). `tau`: the softmax temperature;
    None reads the model's own 1/exp(logit_scale), as `eval_zeroshot.py` does (0.01 for OpenAI's CLIP).
    """
    if not names:
        raise ValueError("detect needs at least one name")
    if isinstance(image, (str, Path)):
        image = to_tensor(open_rgb(image))  # (3, H, W), EXIF orientation applied
    elif isinstance(image, Image.Image):
        image = to_tensor(image.convert("RGB"))
    model, tokenizer = _model(model_name, str(weights) if weights is not None else None, device)
    class_emb = encode_texts(model, tokenizer, list(names), TEMPLATES).cpu()  # (V, D)
    tau = 1.0 / logit_scale(model) if tau is None else tau
    dets, _, _ = zero_shot_detections(model.visual, image, class_emb,
                                      proposer=rpn_proposer(rpn, device=device) if rpn else None, scale=scale,
                                      tau=tau, device=device)
    out = [{"box": [x, y, x + w, y + h], "name": names[d["category_id"]], "score": d["score"]}
           for d in dets if d["score"] >= min_score for x, y, w, h in [d["bbox"]]]
    return out[:max_boxes]
