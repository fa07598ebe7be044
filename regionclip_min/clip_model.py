"""Loading open_clip CLIP models and encoding class / concept names with prompt ensembles.

Paper: RegionCLIP starts teacher and student from the same image-level CLIP (Sec. 3.1, "visual encoder
initialised from CLIP") and embeds every concept of the pool with CLIP's text encoder (Sec. 3.1, "semantic
representation of region", prompt templates such as "a photo of a {concept}"). The prompt ensemble is the official
code's (`clip_prompt_utils.get_prompt_templates`): '{}.' and OpenAI's 80 ImageNet templates, which open_clip ships
as `OPENAI_IMAGENET_TEMPLATES` (imported here, not re-typed). A name is cleaned as the official code cleans it
(`clean_name`), the text embeddings of its prompts are averaged, unnormalised, then the mean is normalised:

    e_c = normalize( (1/T) * sum_t text_encoder(template_t.format(clean_name(name_c))) )

What this module holds: `load_clip` (open_clip model by name; random init, an open_clip pretrained tag, or a local
weights file: open_clip / OpenAI names, our checkpoints, or an official RegionCLIP checkpoint, whose layout is
recognised from its keys and mapped by `official.py`; loaded strictly), the tiny "RN-toy" config of the toy world
(registered with `open_clip.add_model_config`), `encode_texts`, `TEMPLATES`, `clean_name`.

The text tower's activation: OpenAI's CLIP, and so every released ResNet CLIP and RegionCLIP model, was trained
with QuickGELU (x * sigmoid(1.702 x)); open_clip's plain "RN50" config builds GELU. `load_clip` builds QuickGELU
for OpenAI-lineage ResNet weights (an official layout, OpenAI's state dict, or a local file for one of open_clip's
ResNet configs) and for a checkpoint that records it; GELU for RN-toy and random init; `quick_gelu=` overrides.

What it leaves out: ViT towers (RegionCLIP's region head needs the ResNet attention pool), TorchScript
archives (OpenAI's original `.pt` release; convert them to a state dict first), mixed precision.
Loading tags needs the internet; offline it fails fast instead of retrying for a minute.
"""
from __future__ import annotations

import logging
import os
import socket
import zipfile
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
from torch import nn
from tqdm import tqdm

from regionclip_min import official

# The toy world's CLIP ("RN-toy": ModifiedResNet [1,1,1,1], width 16, embed 64, 128 px; text 2 x 128, 2 heads,
# context 32) and its larger teacher for the teacher / student ablation ("RN-toy-L": width 24, embed 96) are json
# configs next to this file, added through open_clip's public config registry.
_CONFIG_DIR = Path(__file__).parent / "model_configs"
OUR_CONFIGS = tuple(p.stem for p in _CONFIG_DIR.glob("*.json"))  # trained here with open_clip's default GELU
if "RN-toy" not in open_clip.list_models():
    open_clip.add_model_config(_CONFIG_DIR)

# The official ensemble: '{}.' and OpenAI's 80 ImageNet templates (open_clip stores them as functions of the name).
TEMPLATES = ["{}."] + [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
SINGLE_TEMPLATE = ["a photo of a {}."]
PROGRESS_PROMPTS = 1024  # encode_texts shows a progress bar from this many prompts on (RN50 on a CPU: ~25 / s)


def clean_name(name: str) -> str:
    """A class or concept name as the official code puts it into a template: LVIS's '_' becomes a space and
    parentheses go (`get_cls_names`), commas go and '+' becomes a space (`prompt_engineering`); 'bow_(weapon)' ->
    'bow weapon'. Plain names (COCO's, the toy world's) are unchanged."""
    name = name.replace("_", " ").replace("(", "").replace(")", "").replace(",", "").replace("+", " ")
    return " ".join(name.split())


def load_clip(model_name: str, pretrained: str | None = None, *, device: str | torch.device = "cpu",
              cache_dir: str | None = None, quick_gelu: bool | None = None,
              verbose: bool = True) -> tuple[nn.Module, object]:
    """Build an open_clip CLIP model and its tokenizer.

    Args:
        model_name: open_clip config name ("RN50", "RN50x4", "RN-toy", "RN50-quickgelu", ...).
        pretrained: None (random init); an open_clip tag such as "openai" (downloads; offline it uses the
            Hugging Face cache or fails fast); or a path to a local weights file, read with
            torch.load(weights_only=True) (.pt/.pth/.bin) or safetensors, whose layout is recognised from its
            keys (`official.detect_layout`): open_clip names, optionally wrapped as {"model": state_dict} (our
            checkpoints) or {"state_dict": ...}; OpenAI's state dict; an official RegionCLIP pretrained checkpoint (student + text tower; the teacher and
            the offline RPN are dropped, and the printout says so). Loaded with strict=True.
        device: where the model lives.
        cache_dir: download / Hugging Face cache directory for tags (None: the default cache).
        quick_gelu: the text tower's activation; None = decided from the weights (module docstring).
        verbose: print where the weights came from, what was dropped and the activation.

    Returns:
        (model in eval mode, tokenizer: list[str] -> (N, context_length) int64 token ids).
    """
    if quick_gelu is False and model_name.endswith("-quickgelu"):
        raise ValueError(f"quick_gelu=False contradicts the model name {model_name!r}; use {model_name[:-10]!r}")
    tokenizer = open_clip.get_tokenizer(model_name)
    if pretrained is None:
        quick = bool(quick_gelu)
        model = _create_unloaded(model_name, device=device, force_quick_gelu=quick)
    elif Path(pretrained).is_file() or Path(pretrained).suffix in (".pt", ".pth", ".bin", ".safetensors"):
        state, layout, recorded, notes = _read_weights(pretrained)
        quick, why = _resolve_quick_gelu(model_name, layout, recorded, quick_gelu)
        model = _create_unloaded(model_name, device=device, force_quick_gelu=quick)
        _load_state_dict(model, state, pretrained, model_name)
        if verbose:
            print(f"CLIP {model_name}: weights from {pretrained} ({layout} layout"
                  + "".join(f"; {n}" for n in notes) + f"); text activation {activation(model)} ({why})")
    else:
        tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
        if not tag_cfg:
            raise ValueError(
                f"pretrained={pretrained!r} is neither a file nor an open_clip tag of {model_name!r} "
                f"(its tags: {open_clip.list_pretrained_tags_by_model(model_name)}); "
                f"pass the path of a local weights file (.pt/.bin/.safetensors) instead")
        quick = bool(tag_cfg.get("quick_gelu", False)) if quick_gelu is None else quick_gelu
        if _offline():  # use a cached copy if there is one, never touch the network
            cached = _cached_tag_file(tag_cfg, cache_dir)
            if cached is None:
                raise RuntimeError(
                    f"loading {model_name!r} with pretrained={pretrained!r} needs the internet (weights are "
                    f"downloaded from the Hugging Face Hub), and this machine is offline (HF_HUB_OFFLINE is set "
                    f"or huggingface.co is unreachable) with no cached copy. Download the weights elsewhere and "
                    f"pass the local file instead: load_clip({model_name!r}, pretrained='/path/to/weights.bin')")
            state, _, _, _ = _read_weights(cached)
            model = _create_unloaded(model_name, device=device, force_quick_gelu=quick)
            _load_state_dict(model, state, cached, model_name)
        else:
            model = open_clip.create_model(model_name, pretrained, device=device, cache_dir=cache_dir,
                                           force_quick_gelu=quick)
        if verbose:
            print(f"CLIP {model_name}: open_clip tag {pretrained!r}; text activation {activation(model)}")
    return model.eval(), tokenizer


def activation(model: nn.Module) -> str:
    """'QuickGELU' or 'GELU': the activation of the text tower's MLPs."""
    return type(model.transformer.resblocks[0].mlp.gelu).__name__


def is_quick_gelu(model: nn.Module) -> bool:
    return activation(model) == "QuickGELU"


def _resolve_quick_gelu(model_name: str, layout: str, recorded: bool | None, override: bool | None
                        ) -> tuple[bool, str]:
    """(QuickGELU?, why) for weights of `layout`; see the module docstring."""
    if override is not None:
        return override, "set by quick_gelu / --quick_gelu"
    if model_name.endswith("-quickgelu"):
        return True, "the model name"
    if recorded is not None:
        return recorded, "recorded in the checkpoint"
    if layout in (official.PRETRAINED, official.OPENAI):
        return True, f"{layout} weights are OpenAI-lineage; --quick_gelu false overrides"
    if model_name.startswith("RN") and model_name not in OUR_CONFIGS:
        return True, ("OpenAI-lineage ResNet weights: every released ResNet CLIP uses QuickGELU; --quick_gelu false "
                      "overrides")
    return False, f"open_clip's {model_name!r} config"


class _DropRandomInitNote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


def _create_unloaded(model_name: str, **kwargs) -> nn.Module:
    """open_clip.create_model without weights, minus its 'initialized randomly' warning: random init is what
    pretrained=None asks for, and a local file is loaded right after (a misleading line in every log otherwise)."""
    note = _DropRandomInitNote()
    logging.getLogger().addFilter(note)
    try:
        return open_clip.create_model(model_name, **kwargs)
    finally:
        logging.getLogger().removeFilter(note)


def _offline() -> bool:
    """True if HF_HUB_OFFLINE is set or huggingface.co cannot be reached within 2 s."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        socket.create_connection(("huggingface.co", 443), timeout=2).close()
        return False
    except OSError:
        return True


def _cached_tag_file(tag_cfg: dict, cache_dir: str | None) -> str | None:
    """Path of a tag's weights in the local Hugging Face cache, or None (never downloads)."""
    from huggingface_hub import try_to_load_from_cache

    repo_id, filename = os.path.split(tag_cfg.get("hf_hub", ""))
    if not repo_id:
        return None
    for name in [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]:
        path = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
        if isinstance(path, str):
            return path
    return None


def _read_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str, bool | None, list[str]]:
    """Read a local weights file (see `load_clip`) as (open_clip-named state dict, layout, the QuickGELU flag the
    file records or None, notes on what was changed); every error names the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CLIP weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file  # optional dependency, only needed for this format

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except ImportError as e:
        raise ImportError(f"reading {path} needs the 'safetensors' package: pip install safetensors") from e
    except Exception as e:
        hint = ""
        if zipfile.is_zipfile(path) and _is_torchscript(path):
            hint = (" It is a TorchScript archive (OpenAI's original release); save "
                    "torch.jit.load(path, map_location='cpu').state_dict() to a .pt file and pass that.")
        raise ValueError(f"could not read CLIP weights from {path}: {type(e).__name__}: {e}.{hint}") from e
    recorded = None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        if state.get("kind") in ("detector", "rpn"):
            raise ValueError(f"{path} is a train_detect.py {state['kind']} checkpoint, not a CLIP: pass the checkpoint "
                             f"it was initialised from, or use eval_zeroshot.py --checkpoint {path}")
        recorded = state.get("quick_gelu") if isinstance(state.get("quick_gelu"), bool) else None
        state = state["model"]  # our checkpoints: {"model": state_dict, "config": ..., ...}; official ones too
    elif isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # open_clip training checkpoints
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict (name -> tensor) of a CLIP model")
    state = {k.removeprefix("module."): v for k, v in state.items()}  # "module." from DistributedDataParallel
    layout, notes = official.detect_layout(state), []
    if layout is None:
        raise official.unknown_layout_error(path, state)
    if layout == official.DETECTOR:
        raise ValueError(f"{path} is a fine-tuned RegionCLIP detector (CLIPFastRCNN: backbone.* and "
                         f"roi_heads.box_predictor.*), which has no text encoder. Evaluate it with eval_zeroshot.py "
                         f"--checkpoint {path} or train_detect.py --eval_only true --checkpoint {path}; to transfer "
                         f"or pretrain, start from a pretrained RegionCLIP checkpoint (regionclip_pretrained-*.pth)")
    if layout == official.PRETRAINED:
        state, notes = official.clip_state(state, path)
    elif layout == official.OPENAI:
        state, notes = official.openai_state(state)
    return state, layout, recorded, notes


def _is_torchscript(path: Path) -> bool:
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def _load_state_dict(model: nn.Module, state: dict, path: str | os.PathLike, model_name: str) -> None:
    """model.load_state_dict(state, strict=True), with an error that names the file, the architecture, a few of the
    missing / unexpected / misshapen keys, and the open_clip config the weights do fit, if one does."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        fits = guess_model_name(state)
        hint = f" These weights have the shapes of open_clip's {fits!r}: pass --model_name {fits}." if fits else ""
        raise ValueError(f"weights in {path} do not fit the {model_name!r} architecture: {len(missing)} missing keys "
                         f"{missing[:4]}, {len(unexpected)} unexpected {unexpected[:4]}, {len(shapes)} of another "
                         f"shape {shapes[:3]}.{hint}")
    model.load_state_dict(state, strict=True)


def guess_model_name(state: dict) -> str | None:
    """The ResNet config (open_clip's RN50, RN101, RN50x4, RN50x16, RN50x64 or our RN-toy) whose shapes an
    open_clip-named state dict (`visual.*`, and the text tower if present) has, or None: read from its layer
    counts, widths and embedding size."""
    def blocks(i):
        return len({k.split(".")[2] for k in state if k.startswith(f"visual.layer{i}.")})
    try:
        found = {"layers": [blocks(i) for i in (1, 2, 3, 4)], "width": state["visual.layer1.0.conv1.weight"].shape[0],
                 "embed_dim": state["visual.attnpool.c_proj.weight"].shape[0]}
    except KeyError:
        return None
    if "ln_final.weight" in state:  # a text tower too (a detector's state has none)
        found["text_width"] = state["ln_final.weight"].shape[0]
    for name in ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", *OUR_CONFIGS):
        cfg = open_clip.get_model_config(name)
        want = {"layers": list(cfg["vision_cfg"]["layers"]), "width": cfg["vision_cfg"]["width"],
                "embed_dim": cfg["embed_dim"], "text_width": cfg["text_cfg"]["width"]} if cfg else {}
        if cfg and all(want[k] == v for k, v in found.items()):
            return name
    return None


@torch.no_grad()
def encode_texts(model: nn.Module, tokenizer, names: list[str], templates: list[str], *,
                 batch_size: int = 256) -> torch.Tensor:
    """Prompt-ensemble text embeddings (CLIP's recipe, used by RegionCLIP for concepts and class names).

        e_n = normalize( mean_t  model.encode_text(tokenize(templates[t].format(clean_name(names[n])))) )

    The mean is over the UNnormalised embeddings, as the official code does; only the result is normalised.

    Args:
        model: open_clip CLIP model (its mode is left as it is; run under torch.no_grad).
        tokenizer: the model's tokenizer (list[str] -> (N, context_length) int64).
        names: N class / concept names.
        templates: T strings with one "{}" each, e.g. TEMPLATES or SINGLE_TEMPLATE.
        batch_size: prompts per text-encoder call.

    Returns:
        (N, D) float32 on the model's device, each row L2-normalised.
    """
    if not templates or any("{}" not in t for t in templates):
        raise ValueError("templates must be a non-empty list of strings that each contain '{}'")
    device = next(model.parameters()).device
    prompts = [t.format(clean_name(name)) for name in names for t in templates]  # name-major: row n*T + t
    starts = range(0, max(len(prompts), 1), batch_size)  # one (0, D) call when names is empty
    bar = tqdm(starts, desc=f"text: {len(names)} names x {len(templates)} prompts", unit="batch",
               disable=len(prompts) < PROGRESS_PROMPTS, leave=False)
    chunks = [model.encode_text(tokenizer(prompts[i:i + batch_size]).to(device)).float() for i in bar]  # (b, D) each
    emb = torch.cat(chunks)  # (N*T, D)
    emb = emb.view(len(names), len(templates), emb.shape[-1]).mean(dim=1)  # (N, D)
    return F.normalize(emb, dim=-1)  # (N, D)


class CachedTokenizer:
    """A tokenizer that tokenizes each distinct text once and reuses its row: the same (N, L) tensor as
    `tokenizer(texts)`. The training loops draw from a fixed set of captions; open_clip's BPE costs ~0.13 ms a
    caption here, 9 ms of every 0.31-s stage-0 step of the toy world."""

    def __init__(self, tokenizer):
        self.tokenizer, self.rows = tokenizer, {}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        new = [t for t in dict.fromkeys(texts) if t not in self.rows]
        if new:
            self.rows.update(zip(new, self.tokenizer(new)))  # (L,) int64 each
        return torch.stack([self.rows[t] for t in texts])  # (N, L)


def logit_scale(model: nn.Module) -> float:
    """The model's learned contrastive scale exp(logit_scale) = 1/tau (OpenAI CLIP: 100, i.e. tau = 0.01)."""
    return float(model.logit_scale.detach().exp())
