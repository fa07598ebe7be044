"""Pseudo region-text pairs from a frozen image-level CLIP teacher (paper Sec. 3.2, "Pseudo labels for regions").

The teacher (the image-level CLIP, frozen) encodes each proposal through the same RoIAlign -> layer4 -> attention
pool path as the student (docs/DESIGN.md §1). Each region is matched against the whole concept pool:

    q_ic = softmax_c( cos(t_i, l_c) / tau )            teacher's distribution over all C concepts
    y_i  = argmax_c q_ic                                 the region's pseudo concept (hard label)
    keep_i = max_c q_ic > threshold                      confident regions only

with tau = 0.01 (OpenAI CLIP's logit scale 100) and threshold 0.1, as in the paper's public code. The soft
targets q are used by the distillation loss, the hard labels y by the region-text contrastive loss; both are
computed over the kept regions only.

When no region of the batch passes the threshold, every region is kept, as the official code does
(`get_psuedo_concept_labels` in meta_arch/clip_rcnn.py falls back to max q > 0). Such batches are worth counting:
a pool of thousands of concepts with a poorly calibrated teacher (a too-large tau) passes almost nothing, and the
student then learns from the teacher's unconfident labels.

Left out: the paper's alternative of matching regions with concepts from the image's own caption only (Sec. 4.3
ablation), and any non-maximum suppression among pseudo-labelled regions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def pseudo_label(teacher_region_emb: torch.Tensor, concept_emb: torch.Tensor, tau: float = 0.01,
                 threshold: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """Labels each region with its best-matching concept according to the teacher.

    Args:
        teacher_region_emb: (R, D) float, the teacher's region embeddings (normalised here).
        concept_emb: (C, D) float, concept-pool text embeddings (normalised here).
        tau: softmax temperature; logits are cos / tau.
        threshold: a region is kept iff its largest concept probability is strictly above this.

    Returns:
        labels: (R,) int64, argmax concept index per region.
        teacher_probs: (R, C) float, q = softmax(cos / tau); each row sums to 1.
        keep: (R,) bool, max_c q > threshold; every region when none passes (see the module docstring).
        all_kept: True when that fallback was taken (no region passed, at least one region).
    """
    if teacher_region_emb.dim() != 2 or concept_emb.dim() != 2 or teacher_region_emb.shape[1] != concept_emb.shape[1]:
        raise ValueError(f"expected (R, D) region and (C, D) concept embeddings, got {tuple(teacher_region_emb.shape)}"
                         f" and {tuple(concept_emb.shape)}")
    if concept_emb.shape[0] == 0:
        raise ValueError("the concept pool is empty: nothing to label regions with")
    t = F.normalize(teacher_region_emb.float(), dim=-1)  # (R, D)
    l = F.normalize(concept_emb.float(), dim=-1)  # (C, D)
    teacher_probs = (t @ l.t() / tau).softmax(dim=-1)  # (R, C)
    conf, labels = teacher_probs.max(dim=-1) if len(t) else (t.new_zeros(0), t.new_zeros(0, dtype=torch.long))
    keep = conf > threshold  # (R,)
    all_kept = len(keep) > 0 and not keep.any()
    if all_kept:
        keep = conf > 0  # the official fallback: all regions
    return labels, teacher_probs, keep, all_kept
