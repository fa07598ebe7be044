"""The RegionCLIP pretraining objective (paper Sec. 3.2) as one module, and stage 0's image-level CLIP objective.

One RegionCLIP step (docs/DESIGN.md §1, §4), for images and one caption each:

    images enlarged by region_scale -> proposer -> boxes
    teacher (frozen image-level CLIP): region embeddings -> pseudo_label -> (y, q, keep)          [no_grad]
    student: region embeddings of the proposals and of the whole-image box
    L = w_region * L_region_contrastive(kept) + w_distill * L_distill(kept) + w_image * L_image_contrastive

`RegionCLIP.forward(batch, g)` returns the three losses by name and the share of regions kept; `weight_dict` holds
the w's (the config's `w_*` options, named in LOSS_WEIGHTS), and the training loop (engine.py) sums them. A new loss
term is one entry in the dict `forward` returns, one row of LOSS_WEIGHTS, and its `w_*` option. Teacher and student
start from the same CLIP; the student trains layer2..layer4 + attnpool (its stem, layer1 and BatchNorm stay
frozen), and the concept and caption embeddings come from the frozen text encoder. The paper's teacher / student
ablation (Table 6) gives the teacher another CLIP (`teacher_concept_emb`: the pool in its own text space, which
labels the regions), while the student's losses keep the init's text space.
"""
from __future__ import annotations

import contextlib
import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from regionclip_min.engine import gather_with_grad
from regionclip_min.losses import concept_distillation, image_text_contrastive, region_text_contrastive
from regionclip_min.pseudo_labels import pseudo_label
from regionclip_min.regions import RegionEncoder, whole_image_boxes

STUDENT_TRAINS = ("layer2", "layer3", "layer4", "attnpool")  # paper: stem and layer1 frozen (docs/DESIGN.md §4)


def student_and_teacher(clip: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(student, teacher) from one CLIP: the teacher a frozen copy in eval mode; of the student only the image
    tower's STUDENT_TRAINS parts train (BatchNorm stays frozen inside them: RegionEncoder)."""
    teacher = copy.deepcopy(clip).eval().requires_grad_(False)
    clip.requires_grad_(False)
    for name in STUDENT_TRAINS:
        getattr(clip.visual, name).requires_grad_(True)
    return clip, teacher


def autocast(amp: str, device) -> contextlib.AbstractContextManager:
    """The context model forwards run in: bfloat16 autocast for amp "bf16", else nothing."""
    if amp == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def pick_captions(batch, g) -> list[str]:
    """One caption per image, drawn with the step's generator."""
    return [caps[torch.randint(len(caps), (1,), generator=g).item()] for caps in batch["captions"]]


class RegionCLIP(nn.Module):
    """Student region encoder, frozen teacher, concept embeddings (C, D), proposer and temperatures.

    Args:
        student: the student CLIP's image tower (trained parts must already have requires_grad).
        text_clip: the frozen CLIP whose text tower encodes the captions (the init's, the student's text space).
        teacher_regions: the teacher's region encoder over its image tower (RegionEncoder, or CropEncoder); the
            teacher is `text_clip` itself unless a separate teacher is given (`teacher_concept_emb`).
        tokenizer: captions -> token ids.
        concept_emb: (C, D) normalised concept embeddings in the student's text space.
        teacher_concept_emb: (C, D_t) the same concepts in a separate teacher's text space, which pseudo-labels the
            regions (the official code's separate teacher concept embedding); None: `concept_emb`.
        proposer: a `proposals.PROPOSERS` instance.
        tau: temperature of the region losses and of pseudo-labelling; image_tau: of the image-text loss (None:
            tau).
        weights: the `w_*` options by name ({"w_region": 1.0, ...}); LOSS_WEIGHTS says which weighs which loss.
    """

    LOSS_WEIGHTS = {"loss_region_contrastive": "w_region", "loss_distill": "w_distill",
                    "loss_image_contrastive": "w_image"}

    def __init__(self, student: nn.Module, text_clip: nn.Module, teacher_regions: nn.Module, tokenizer,
                 concept_emb: torch.Tensor, proposer, *, teacher_concept_emb: torch.Tensor | None = None,
                 tau: float, image_tau: float | None = None,
                 weights: dict, region_scale: float = 1.0, pseudo_threshold: float = 0.0, negatives: str = "regions",
                 amp: str = "none", channels_last: bool = False):
        super().__init__()
        self.student = RegionEncoder(student)
        self.text_clip, self.teacher_regions = text_clip, teacher_regions.eval()
        self.register_buffer("concept_emb", concept_emb, persistent=False)  # (C, D)
        self.register_buffer("teacher_concept_emb", concept_emb if teacher_concept_emb is None else teacher_concept_emb,
                             persistent=False)  # (C, D_t)
        self.tokenizer, self.proposer = tokenizer, proposer
        self.tau, self.image_tau = tau, tau if image_tau is None else image_tau
        self.weight_dict = {loss: weights[w] for loss, w in self.LOSS_WEIGHTS.items()}
        self.region_scale, self.pseudo_threshold, self.negatives = region_scale, pseudo_threshold, negatives
        self.amp, self.channels_last = amp, channels_last
        self.counts = {"batches_all_kept_no_region_confident": 0, "images_without_proposals_seen": 0}

    def train(self, mode: bool = True) -> "RegionCLIP":
        """Only the student trains; the teacher stays in eval mode."""
        self.student.train(mode)
        return self

    def forward(self, batch: dict, g: torch.Generator) -> dict:
        device = self.concept_emb.device
        images = batch["images"].to(device)  # (B, 3, H, W)
        if self.region_scale != 1.0:
            images = F.interpolate(images, scale_factor=self.region_scale, mode="bicubic", align_corners=False)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        captions = pick_captions(batch, g)
        sizes = (batch["sizes"].float() * self.region_scale).round().long().tolist()  # [h, w] of each image
        with autocast(self.amp, device):
            boxes = [b[:, :4].to(device).float() for b in self.proposer(images, sizes, batch, g)]  # B x (R_i, 4)
        whole = whole_image_boxes(images)  # B x (1, 4): the image-level region
        with torch.no_grad(), autocast(self.amp, device):
            teacher_emb = self.teacher_regions(images, boxes).float()  # (R, D_t)
            text_emb = self.text_clip.encode_text(self.tokenizer(captions).to(device)).float()  # (B, D)
        labels, q, keep, all_kept = pseudo_label(teacher_emb, self.teacher_concept_emb, tau=self.tau,
                                                 threshold=self.pseudo_threshold)
        # one student pass over proposals and whole-image boxes: [R_0 props, 1 whole, R_1 props, 1 whole, ...]
        with autocast(self.amp, device):
            emb = self.student(images, [torch.cat([b, w]) for b, w in zip(boxes, whole)]).float()  # (R + B, D)
        is_whole = torch.cat([torch.tensor([False] * len(b) + [True]) for b in boxes]).to(device)  # (R + B,)
        region_emb, image_emb = emb[~is_whole], emb[is_whole]  # (R, D), (B, D)
        self.counts["batches_all_kept_no_region_confident"] += all_kept
        self.counts["images_without_proposals_seen"] += sum(len(b) == 0 for b in boxes)
        return {
            "loss_region_contrastive": region_text_contrastive(region_emb[keep], labels[keep], self.concept_emb,
                                                               tau=self.tau, negatives=self.negatives),
            "loss_distill": concept_distillation(region_emb[keep], self.concept_emb, q[keep], tau=self.tau),
            "loss_image_contrastive": image_text_contrastive(gather_with_grad(image_emb), gather_with_grad(text_emb),
                                                             tau=self.image_tau),
            "kept": keep.float().mean().item() if len(keep) else 0.0,
        }


class ImageTextCLIP(nn.Module):
    """Stage 0: open_clip's forward on whole images and one random caption each; CLIP's symmetric InfoNCE at the
    learned temperature (clamped at 1/100 after each step, as CLIP does: `clamp_logit_scale`)."""

    def __init__(self, clip: nn.Module, tokenizer, *, weight: float = 1.0, amp: str = "none",
                 channels_last: bool = False):
        super().__init__()
        self.clip, self.tokenizer, self.amp, self.channels_last = clip, tokenizer, amp, channels_last
        self.weight_dict = {"loss_image_contrastive": weight}

    def forward(self, batch: dict, g: torch.Generator) -> dict:
        device = self.clip.logit_scale.device
        images = batch["images"].to(device)  # (B, 3, S, S)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        text = self.tokenizer(pick_captions(batch, g)).to(device)  # (B, L)
        with autocast(self.amp, device):
            out = self.clip(images, text)
        img, txt, scale = ((out["image_features"], out["text_features"], out["logit_scale"]) if isinstance(out, dict)
                           else out[:3])
        loss = image_text_contrastive(gather_with_grad(img.float()), gather_with_grad(txt.float()), tau=1.0 / scale)
        return {"loss_image_contrastive": loss, "logit_scale": float(scale.detach())}

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        self.clip.logit_scale.clamp_(0, math.log(100))
