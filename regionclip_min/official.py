"""The official RegionCLIP release (microsoft/RegionCLIP, docs/MODEL_ZOO.md), read without Detectron2.

The authors released Detectron2 checkpoints and embedding files. This module recognises their layout from the keys
and maps them, name for name, onto this project's models (open_clip's CLIP and our torchvision detector):

| official key                                   | here                                      | note                    |
|------------------------------------------------|-------------------------------------------|-------------------------|
| `backbone.X` (284 keys: the ModifiedResNet,    | `visual.X` of the open_clip CLIP          | same names and shapes   |
|   stem..layer4 and attnpool)                   |                                           |                         |
| its FrozenBatchNorm2d buffers (weight, bias,   | open_clip's BatchNorm2d, plus             | a counter, unread in    |
|   running_mean, running_var)                   |   `num_batches_tracked` = 0               |   eval mode             |
| `lang_encoder.X` (149 keys: transformer.       | `X` of the open_clip CLIP (text tower)    | same names and shapes   |
|   resblocks.N.*, token_embedding.weight,       |                                           |                         |
|   positional_embedding, ln_final.*,            |                                           |                         |
|   text_projection)                             |                                           |                         |
| (no `logit_scale`)                             | `logit_scale` = ln 100                    | CLSS_TEMP 0.01          |
| `teacher_backbone.*`                           | dropped (pretraining's frozen teacher)    | printed                 |
| `offline_backbone.*`,                          | dropped: a Detectron2 R50 RPN, which our  | printed                 |
|   `offline_proposal_generator.*`               |   RPN cannot take                         |                         |
| `roi_heads.box_predictor.cls_score.weight`     | the detector's training vocabulary        | (K_base, D)             |
| `roi_heads.box_predictor.test_cls_score.weight`| the detector's test vocabulary            | (K_all, D)              |
| `roi_heads.box_predictor.cls_bg_score.weight`  | the constant 0 background logit           | (1, D), must be zero    |
| `roi_heads.box_predictor.bbox_pred.*`          | `roi_heads.box_predictor.bbox_pred.*`     | (4, D), class-agnostic  |
| `roi_heads.mask_head.*` (LVIS models)          | dropped: our detector predicts boxes only | printed                 |

Layouts (`detect_layout`):
- "regionclip-pretrained": `PretrainFastRCNN`, `{"model": state}` with `backbone.*` and `lang_encoder.*`
  (`regionclip_pretrained-cc_{rn50,rn50x4}.pth`, and OpenAI's CLIP in the same layout,
  `teacher_RN50_student_RN50_OAI_CLIP.pth` and its RN50x4 twin). The student becomes a CLIP: `clip_state`.
- "regionclip-detector": `CLIPFastRCNN` with `backbone.*` and `roi_heads.box_predictor.*`
  (`regionclip_finetuned-{coco,lvis}_{rn50,rn50x4}.pth`); no text encoder. `detector_parts`.
- "openai": OpenAI's own state dict (open_clip names plus the `input_resolution`, `context_length`, `vocab_size`
  entries, which are dropped).
- "open_clip": open_clip's names (`visual.*`, `transformer.*`, ...), as our checkpoints store them.

Embedding files (`{coco,lvis}_NUMBER_emb*.pth`, `{coco,googlecc}_nouns_NUMBER.pth`) are a bare (C, D) tensor: the
UNnormalised mean of a name's text embeddings over 81 prompt templates (`read_embeddings` normalises the rows, as
`clip_model.encode_texts` does). Their rows follow the order of the names they were made from (for a dataset's
classes: its categories sorted by id, Detectron2's class order).

Every file is read with torch.load(weights_only=True) (`checkpoint.safe_load`): a pickle that would run code is
refused.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from regionclip_min.checkpoint import safe_load

PRETRAINED, DETECTOR, OPENAI, OPEN_CLIP = "regionclip-pretrained", "regionclip-detector", "openai", "open_clip"
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")  # scalars in OpenAI's state dicts
DROPPED_PREFIXES = {"teacher_backbone.": "the pretraining teacher", "offline_backbone.": "Detectron2 RPN",
                    "offline_proposal_generator.": "Detectron2 RPN", "roi_heads.mask_head.": "mask head"}
PREDICTOR = "roi_heads.box_predictor."
PREDICTOR_KEYS = ("cls_score.weight", "test_cls_score.weight", "cls_bg_score.weight", "bbox_pred.weight",
                  "bbox_pred.bias")
OFFICIAL_LOGIT_SCALE = math.log(100.0)  # MODEL.CLIP.CLSS_TEMP = 0.01 of the official config
EXPECTED = ("open_clip / OpenAI CLIP: visual.*, transformer.*, token_embedding.weight, positional_embedding, "
            "ln_final.*, text_projection, logit_scale; RegionCLIP pretrained: backbone.*, lang_encoder.* (optionally "
            "teacher_backbone.*, offline_*); RegionCLIP detector: backbone.*, roi_heads.box_predictor.{"
            + ", ".join(PREDICTOR_KEYS) + "} (optionally offline_*, roi_heads.mask_head.*)")


def key_groups(keys) -> str:
    """'backbone.* (284), lang_encoder.* (149), foo (1)': the top-level names of a state dict with their counts."""
    counts = Counter(k.split(".", 1)[0] + (".*" if "." in k else "") for k in keys)
    return ", ".join(f"{g} ({n})" for g, n in counts.most_common())


def detect_layout(state: dict) -> str | None:
    """The layout of a state dict (see the module docstring), or None if it is none of them."""
    keys = list(state)
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    if has("backbone.") and has(PREDICTOR):
        return DETECTOR
    if has("backbone."):  # with lang_encoder.* (a pretrained model), or without (refused by clip_state)
        return PRETRAINED
    if has("visual."):
        return OPENAI if any(k in state for k in OPENAI_EXTRA_KEYS) else OPEN_CLIP
    return None


def checkpoint_layout(checkpoint: dict) -> str | None:
    """PRETRAINED or DETECTOR for a loaded official checkpoint ({"model": state}), None otherwise: our own
    checkpoints record what they are ("kind" or "stage") and are read as such."""
    if "kind" in checkpoint or "stage" in checkpoint or not isinstance(checkpoint.get("model"), dict):
        return None
    layout = detect_layout(checkpoint["model"])
    return layout if layout in (PRETRAINED, DETECTOR) else None


def unknown_layout_error(path, state: dict) -> ValueError:
    return ValueError(f"{path}: not a CLIP or RegionCLIP state dict of a known layout. Expected the keys of one of: "
                      f"{EXPECTED}. Found: {key_groups(state) or 'no keys'}")


def _split(state: dict, path) -> tuple[dict, dict, list[str]]:
    """(backbone.* renamed to visual.*, every other group by prefix, notes on the dropped groups). Keys outside the
    known groups are an error (strict)."""
    visual, rest, notes, unknown = {}, {}, [], []
    dropped = Counter()
    for k, v in state.items():
        if k.startswith("backbone."):
            visual["visual." + k[len("backbone."):]] = v
        elif (prefix := next((p for p in DROPPED_PREFIXES if k.startswith(p)), None)) is not None:
            dropped[prefix] += 1
        elif k.startswith("lang_encoder.") or k.startswith(PREDICTOR):
            rest[k] = v
        else:
            unknown.append(k)
    if unknown:
        raise ValueError(f"{path}: keys outside the official RegionCLIP layout: {key_groups(unknown)} (e.g. "
                         f"{unknown[:3]}). Expected: {EXPECTED}")
    for prefix, n in dropped.items():
        notes.append(f"dropped {prefix}* ({n} keys: {DROPPED_PREFIXES[prefix]}"
                     + (", which this project's RPN cannot take; use one of our RPN checkpoints or GT boxes)"
                        if "offline" in prefix else ")"))
    return _add_bn_counters(visual), rest, notes


def _add_bn_counters(visual: dict) -> dict:
    """Detectron2's FrozenBatchNorm2d has weight, bias, running_mean, running_var; open_clip's BatchNorm2d also a
    `num_batches_tracked` counter, which only momentum-free training reads: 0 here."""
    out = dict(visual)
    for k in visual:
        if k.endswith(".running_var") and (c := k[: -len("running_var")] + "num_batches_tracked") not in out:
            out[c] = torch.tensor(0, dtype=torch.long)
    return out


def clip_state(state: dict, path) -> tuple[dict, list[str]]:
    """A "regionclip-pretrained" state dict -> open_clip CLIP names (student visual + text tower, logit_scale ln 100),
    and notes on what was dropped."""
    visual, rest, notes = _split(state, path)
    text = {k[len("lang_encoder."):]: v for k, v in rest.items() if k.startswith("lang_encoder.")}
    if not text:
        raise ValueError(f"{path}: an official RegionCLIP layout with a visual backbone and no text tower "
                         f"(lang_encoder.*): found {key_groups(state)}. A CLIP needs both; the released pretrained "
                         f"models have both")
    if "logit_scale" not in text:
        text["logit_scale"] = torch.tensor(OFFICIAL_LOGIT_SCALE)
        notes.append("logit_scale = ln 100 (tau 0.01, the official temperature; the file has none)")
    return {**visual, **text}, notes


def openai_state(state: dict) -> tuple[dict, list[str]]:
    """OpenAI's state dict -> open_clip names: drop its three scalar entries, add BatchNorm counters if absent."""
    out = {k: v for k, v in state.items() if k not in OPENAI_EXTRA_KEYS}
    visual = {k: v for k, v in out.items() if k.startswith("visual.")}
    out.update(_add_bn_counters(visual))
    return out, [f"dropped OpenAI's {', '.join(k for k in OPENAI_EXTRA_KEYS if k in state)} entries"]


@dataclass
class DetectorParts:
    """The pieces of an official fine-tuned detector that map onto ours (see `detector_parts`)."""
    visual: dict  # open_clip `visual.*` names (the whole ModifiedResNet: stem..layer4, attnpool)
    train_embeddings: torch.Tensor  # (K_base, D) cls_score.weight
    test_embeddings: torch.Tensor  # (K_all, D) test_cls_score.weight
    bbox_pred: dict  # {"weight": (4, D), "bias": (4,)}
    notes: list[str] = field(default_factory=list)


def detector_parts(state: dict, path) -> DetectorParts:
    """A "regionclip-detector" state dict -> DetectorParts. Strict: every predictor key must be there with the
    shapes of a class-agnostic, text-embedding classifier, and the background embedding must be zero (the official
    one is initialised to zero and frozen; our classifier's background logit is the constant 0)."""
    visual, rest, notes = _split(state, path)
    text = [k for k in rest if k.startswith("lang_encoder.")]
    if text:
        notes.append(f"dropped lang_encoder.* ({len(text)} keys): the detector's class embeddings are used")
    pred = {k[len(PREDICTOR):]: v for k, v in rest.items() if k.startswith(PREDICTOR)}
    missing = [k for k in PREDICTOR_KEYS if k not in pred]
    extra = [k for k in pred if k not in PREDICTOR_KEYS]
    if missing or extra:
        raise ValueError(f"{path}: the box predictor does not have the official layout: missing "
                         f"{[PREDICTOR + k for k in missing]}, unexpected {[PREDICTOR + k for k in extra]} (a biased "
                         f"or class-specific predictor is not supported). Expected {PREDICTOR}{{"
                         f"{', '.join(PREDICTOR_KEYS)}}}")
    dim = pred["test_cls_score.weight"].shape[-1]
    shapes = {"cls_score.weight": (None, dim), "test_cls_score.weight": (None, dim), "cls_bg_score.weight": (1, dim),
              "bbox_pred.weight": (4, dim), "bbox_pred.bias": (4,)}
    for k, want in shapes.items():
        got = tuple(pred[k].shape)
        if len(got) != len(want) or any(w is not None and w != g for w, g in zip(want, got)):
            expected = tuple("K" if w is None else w for w in want)
            raise ValueError(f"{path}: {PREDICTOR}{k} has shape {got}, expected {expected}")
    if pred["cls_bg_score.weight"].abs().max() > 0:
        raise ValueError(f"{path}: {PREDICTOR}cls_bg_score.weight is not zero (a learned background embedding); "
                         f"this project's classifier has a constant zero background logit, as the released models")
    return DetectorParts(visual=visual, train_embeddings=pred["cls_score.weight"].float(),
                         test_embeddings=pred["test_cls_score.weight"].float(),
                         bbox_pred={"weight": pred["bbox_pred.weight"].float(), "bias": pred["bbox_pred.bias"].float()},
                         notes=notes)


def read_embeddings(path, names: list[str], *, dim: int | None = None, option: str = "--class_embeddings"
                    ) -> torch.Tensor:
    """An official embedding file: a bare (C, D) tensor whose row c embeds names[c]. Checked: C = len(names), D = dim
    (the model's embedding width) when given, finite. Returns (C, D) float32 with L2-normalised rows."""
    path = Path(path)
    try:
        emb = safe_load(path)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"{option}: {e}") from None
    if not torch.is_tensor(emb) or emb.ndim != 2:
        what = f"a tensor of shape {tuple(emb.shape)}" if torch.is_tensor(emb) else f"a {type(emb).__name__}"
        raise SystemExit(f"{option} {path} holds {what}; expected a bare (C, D) tensor of text embeddings")
    return checked_embeddings(emb, names, dim=dim, source=f"{option} {path}")


def checked_embeddings(emb: torch.Tensor, names: list[str], *, dim: int | None, source: str,
                       hint: str = "the names file must list one name per row, in the file's order") -> torch.Tensor:
    """(C, D) class embeddings whose row c embeds names[c], checked: C = len(names), D = dim when given, finite and
    non-zero rows (SystemExit naming `source` otherwise). Returns them as float32 with L2-normalised rows."""
    if len(emb) != len(names):
        raise SystemExit(f"{source} has {len(emb)} rows, but {len(names)} names were given for them "
                         f"({', '.join(names[:4])}{' ...' if len(names) > 4 else ''}); {hint}")
    if dim is not None and emb.shape[1] != dim:
        raise SystemExit(f"{source} has D = {emb.shape[1]}, the model embeds to D = {dim} (RN50: 1024, "
                         f"RN50x4: 640): embeddings of another model")
    if not torch.isfinite(emb).all() or (emb.norm(dim=1) == 0).any():
        raise SystemExit(f"{source} has non-finite or all-zero rows")
    return F.normalize(emb.float(), dim=-1)


def rows_for(names: list[str], wanted: list[str], source: str) -> list[int]:
    """The row of each wanted name among `names` (exact, then case-insensitive), or SystemExit naming the missing."""
    exact = {n: i for i, n in enumerate(names)}
    folded = {n.lower(): i for i, n in reversed(list(enumerate(names)))}
    rows = [exact.get(w, folded.get(w.lower())) for w in wanted]
    missing = [w for w, r in zip(wanted, rows) if r is None]
    if missing:
        raise SystemExit(f"{source} has no row for {len(missing)} needed name(s): {missing[:8]}"
                         f"{' ...' if len(missing) > 8 else ''}")
    return rows
