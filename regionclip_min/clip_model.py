"""Loading open_clip CLIP models and encoding class / concept names with prompt ensembles.

Paper: RegionCLIP starts teacher and student from the same image-level CLIP (Sec. 3.1, "visual encoder
initialised from CLIP") and embeds every concept of the pool with CLIP's text encoder (Sec. 3.1, "semantic
representation of region", prompt templates such as "a photo of a {concept}"). The prompt ensemble is the
one of the CLIP paper: the text embeddings of one name under many templates are averaged, then normalised:

    e_c = normalize( (1/T) * sum_t text_encoder(template_t.format(name_c)) )

What this module holds: `load_clip` (open_clip model by name; random init, an open_clip pretrained tag,
or a local weights file loaded with strict=True under upstream parameter names), the tiny "RN-toy"
config of the toy world (registered with `open_clip.add_model_config`), `encode_texts`, `TEMPLATES`.

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
from torch import nn

# The toy world's CLIP ("RN-toy": ModifiedResNet [1,1,1,1], width 16, embed 64, 128 px; text 2 x 128, 2 heads,
# context 32) is a json config next to this file, added through open_clip's public config registry.
_CONFIG_DIR = Path(__file__).parent / "model_configs"
if "RN-toy" not in open_clip.list_models():
    open_clip.add_model_config(_CONFIG_DIR)

# Prompt templates for the ensemble, written for this project in the spirit of CLIP's ImageNet prompts.
TEMPLATES = [
    "a photo of a {}.", "a photo of the {}.", "a photo of one {}.", "a photo of my {}.",
    "a close-up photo of a {}.", "a close-up photo of the {}.", "a cropped photo of a {}.",
    "a cropped photo of the {}.", "a bright photo of a {}.", "a bright photo of the {}.",
    "a dark photo of a {}.", "a dark photo of the {}.", "a blurry photo of a {}.", "a blurry photo of the {}.",
    "a grainy photo of a {}.", "a grainy photo of the {}.", "a low resolution photo of a {}.",
    "a low resolution photo of the {}.", "a high resolution photo of a {}.", "a jpeg photo of a {}.",
    "a pixelated photo of a {}.", "a bad photo of a {}.", "a bad photo of the {}.", "a good photo of a {}.",
    "a good photo of the {}.", "a nice photo of a {}.", "a clean photo of a {}.", "a dirty photo of a {}.",
    "a photo of a small {}.", "a photo of the small {}.", "a photo of a big {}.", "a photo of the big {}.",
    "a photo of a large {}.", "a photo of a tiny {}.", "a photo of a weird {}.", "a photo of a cool {}.",
    "a photo of many {}.", "a photo of several {}.", "a photo of a {} in the corner.",
    "a photo of a {} in the middle.", "a photo of a {} on a plain background.",
    "a photo of a {} on a busy background.", "a picture of a {}.", "a picture of the {}.",
    "an image of a {}.", "an image of the {}.", "an image containing a {}.", "a snapshot of a {}.",
    "a rendering of a {}.", "a rendering of the {}.", "a 3d rendering of a {}.", "a drawing of a {}.",
    "a drawing of the {}.", "a sketch of a {}.", "a sketch of the {}.", "a painting of a {}.",
    "a painting of the {}.", "a cartoon {}.", "a cartoon of the {}.", "a doodle of a {}.",
    "a clipart image of a {}.", "an illustration of a {}.", "a black and white photo of a {}.",
    "a black and white photo of the {}.", "a colourful photo of a {}.", "a faded photo of a {}.",
    "a sculpture of a {}.", "a toy {}.", "a plastic {}.", "a paper cutout of a {}.", "a sticker of a {}.",
    "an embroidered {}.", "a tattoo of a {}.", "a pattern of {}.", "an origami {}.",
    "a video game {}.", "art of a {}.", "a {} in a scene.", "there is a {} in the image.",
    "this is a {}.", "{}.",
]
SINGLE_TEMPLATE = ["a photo of a {}."]


def load_clip(model_name: str, pretrained: str | None = None, *, device: str | torch.device = "cpu",
              cache_dir: str | None = None) -> tuple[nn.Module, object]:
    """Build an open_clip CLIP model and its tokenizer.

    Args:
        model_name: open_clip config name ("RN50", "RN50x4", "RN-toy", "RN50-quickgelu", ...). Weights of
            OpenAI's CLIP were trained with QuickGELU: a local copy of them needs the "-quickgelu" name
            (a tag such as "openai" sets QuickGELU itself).
        pretrained: None (random init); an open_clip tag such as "openai" (downloads; offline it uses the
            Hugging Face cache or fails fast); or a path to a local weights file: a state dict in open_clip /
            OpenAI parameter names (.pt/.pth/.bin via torch.load(weights_only=True), .safetensors), optionally
            wrapped as {"model": state_dict} (our checkpoints) or {"state_dict": ...}. Loaded with strict=True.
        device: where the model lives.
        cache_dir: download / Hugging Face cache directory for tags (None: the default cache).

    Returns:
        (model in eval mode, tokenizer: list[str] -> (N, context_length) int64 token ids).
    """
    tokenizer = open_clip.get_tokenizer(model_name)
    if pretrained is None:
        model = _create_unloaded(model_name, device=device)
    elif Path(pretrained).is_file() or Path(pretrained).suffix in (".pt", ".pth", ".bin", ".safetensors"):
        state = _read_state_dict(pretrained)
        model = _create_unloaded(model_name, device=device)
        _load_state_dict(model, state, pretrained, model_name)
    else:
        tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
        if not tag_cfg:
            raise ValueError(
                f"pretrained={pretrained!r} is neither a file nor an open_clip tag of {model_name!r} "
                f"(its tags: {open_clip.list_pretrained_tags_by_model(model_name)}); "
                f"pass the path of a local weights file (.pt/.bin/.safetensors) instead")
        quick_gelu = bool(tag_cfg.get("quick_gelu", False))
        if _offline():  # use a cached copy if there is one, never touch the network
            cached = _cached_tag_file(tag_cfg, cache_dir)
            if cached is None:
                raise RuntimeError(
                    f"loading {model_name!r} with pretrained={pretrained!r} needs the internet (weights are "
                    f"downloaded from the Hugging Face Hub), and this machine is offline (HF_HUB_OFFLINE is set "
                    f"or huggingface.co is unreachable) with no cached copy. Download the weights elsewhere and "
                    f"pass the local file instead: load_clip({model_name!r}, pretrained='/path/to/weights.bin')")
            state = _read_state_dict(cached)
            model = _create_unloaded(model_name, device=device, force_quick_gelu=quick_gelu)
            _load_state_dict(model, state, cached, model_name)
        else:
            model = open_clip.create_model(model_name, pretrained, device=device, cache_dir=cache_dir,
                                           force_quick_gelu=quick_gelu)
    return model.eval(), tokenizer


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


def _read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a local weights file (see `load_clip`) into a state dict; every error names the file."""
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
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # our checkpoints: {"model": state_dict, "config": ..., ...}
    elif isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # open_clip training checkpoints
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict (name -> tensor) of a CLIP model")
    return {k.removeprefix("module."): v for k, v in state.items()}  # "module." from DistributedDataParallel


def _is_torchscript(path: Path) -> bool:
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def _load_state_dict(model: nn.Module, state: dict, path: str | os.PathLike, model_name: str) -> None:
    """model.load_state_dict(state, strict=True), with an error that names the file and the architecture."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"weights in {path} do not fit the {model_name!r} architecture: {e}") from e


@torch.no_grad()
def encode_texts(model: nn.Module, tokenizer, names: list[str], templates: list[str], *,
                 batch_size: int = 256) -> torch.Tensor:
    """Prompt-ensemble text embeddings (CLIP's recipe, used by RegionCLIP for concepts and class names).

        e_n = normalize( mean_t  model.encode_text(tokenize(templates[t].format(names[n]))) )

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
    prompts = [t.format(name) for name in names for t in templates]  # name-major: row n*T + t
    chunks = [model.encode_text(tokenizer(prompts[i:i + batch_size]).to(device)).float()  # (b, D)
              for i in range(0, max(len(prompts), 1), batch_size)]  # one (0, D) call when names is empty
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
