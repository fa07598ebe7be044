"""RegionCLIP's training losses (paper Sec. 3.2, Eq. 1-3) and the detector's focal-scaled cross-entropy (Sec. 3.3).

All embeddings are L2-normalised here, at use; logits are cosine / tau with tau = 0.01 by default (docs/DESIGN.md §3).
Each function returns a scalar tensor. The total pretraining loss is the visible weighted sum in train_pretrain.py:

    L = w_rc * L_region_contrastive + w_dist * L_distill + w_img * L_image_contrastive      (paper: all w = 1)

Empty inputs (no kept region) give an exact zero that is still attached to the graph, so `backward()` works and
the step proceeds on the other terms.

As in the official code, the region losses see one process's regions (no gathering across GPUs); the image-text
loss is gathered across ranks by the training script. docs/PARITY.md compares each formula with the official one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _zero(*tensors: torch.Tensor) -> torch.Tensor:
    """An exact 0 that keeps the autograd graph of its inputs (so backward() on an empty batch is a no-op)."""
    return sum(t.sum() for t in tensors) * 0.0


def region_text_contrastive(region_emb: torch.Tensor, labels: torch.Tensor, concept_emb: torch.Tensor,
                            tau: float = 0.01, negatives: str = "regions") -> torch.Tensor:
    """Region-text contrastive loss over pseudo region-concept pairs (Sec. 3.2, Eq. 1, L_cntrst).

    negatives = "regions", the official code's (`MILCrossEntropy` in utils/comm.py, avg_positives=False): one
    column per kept region, holding the embedding of that region's pseudo concept; every column whose concept is
    the row's own is a positive (multi-instance):

        S_ij = cos(v_i, l_{y_j}) / tau                                (R, R)
        L    = mean_i -log( sum_{j : y_j = y_i} softmax_j(S_i)_j )

    A concept matched to n regions fills n columns, so it weighs n times in every row's softmax.
    negatives = "pool": every concept of the pool is a column, once: plain cross-entropy over the C concepts.

    Args:
        region_emb: (R, D) student region embeddings of the kept regions.
        labels: (R,) int64 pseudo concept index of each region into `concept_emb`.
        concept_emb: (C, D) the concept pool's text embeddings (frozen).
        tau: temperature.
        negatives: "regions" (the official) or "pool".
    Returns:
        scalar loss; 0 when R == 0.
    """
    if negatives not in ("regions", "pool"):
        raise ValueError(f"negatives must be 'regions' or 'pool', got {negatives!r}")
    if region_emb.shape[0] == 0:
        return _zero(region_emb)
    v = F.normalize(region_emb, dim=-1)  # (R, D)
    l = F.normalize(concept_emb, dim=-1)  # (C, D)
    if negatives == "pool":
        return F.cross_entropy(v @ l.t() / tau, labels)
    log_p = F.log_softmax(v @ l[labels].t() / tau, dim=-1)  # (R, R) column j = region j's concept
    positive = labels[:, None] == labels[None, :]  # (R, R), the diagonal included
    return -torch.logsumexp(log_p.masked_fill(~positive, float("-inf")), dim=-1).mean()


def concept_distillation(student_region_emb: torch.Tensor, concept_emb: torch.Tensor, teacher_probs: torch.Tensor,
                         tau: float = 0.01) -> torch.Tensor:
    """Knowledge distillation of the teacher's concept distribution into the student (Sec. 3.2, Eq. 2, L_dist).

        p_i = softmax_c( cos(v_i, l_c) / tau )        student, over all C concepts
        L   = mean_i KL(q_i || p_i) = mean_i sum_c q_ic (log q_ic - log p_ic)

    Computed with log_softmax (never log(softmax)) and xlogy, so q_ic = 0 contributes exactly 0.

    Args:
        student_region_emb: (R, D) student embeddings of the kept regions.
        concept_emb: (C, D) concept embeddings.
        teacher_probs: (R, C) q from `pseudo_label` for the same regions (rows sum to 1).
        tau: the student's temperature (the paper uses the teacher's, 0.01).
    Returns:
        scalar loss; 0 when R == 0.
    """
    if student_region_emb.shape[0] != teacher_probs.shape[0]:
        raise ValueError(f"{student_region_emb.shape[0]} student regions but {teacher_probs.shape[0]} teacher rows")
    if student_region_emb.shape[0] == 0:
        return _zero(student_region_emb)
    v = F.normalize(student_region_emb, dim=-1)  # (R, D)
    l = F.normalize(concept_emb, dim=-1)  # (C, D)
    log_p = F.log_softmax(v @ l.t() / tau, dim=-1)  # (R, C)
    q = teacher_probs.to(log_p.dtype)  # (R, C)
    kl = torch.xlogy(q, q) - q * log_p  # (R, C)
    return kl.sum(dim=-1).mean()


def image_text_contrastive(image_emb: torch.Tensor, text_emb: torch.Tensor, tau=0.01) -> torch.Tensor:
    """Symmetric image-text InfoNCE, CLIP's loss (Sec. 3.2, L_img; the same as stage 0's objective).

        S = cos(image, text) / tau                     (N, N), matched pairs on the diagonal
        L = ( CE(S, arange N) + CE(S^T, arange N) ) / 2

    In RegionCLIP the image embedding is the whole-image box through the student's region head, the text embedding
    the caption through the frozen text encoder. Under DDP the caller gathers both across ranks (with gradient)
    before calling, as open_clip's ClipLoss does with gather_with_grad.

    Args:
        image_emb: (N, D); text_emb: (N, D); row i of each is a pair.
        tau: float, or a 0-d tensor for a learnable temperature (stage 0: tau = 1 / logit_scale.exp()).
    Returns:
        scalar loss.
    """
    if image_emb.shape != text_emb.shape:
        raise ValueError(f"image {tuple(image_emb.shape)} and text {tuple(text_emb.shape)} embeddings differ")
    i = F.normalize(image_emb, dim=-1)  # (N, D)
    t = F.normalize(text_emb, dim=-1)  # (N, D)
    logits = i @ t.t() / tau  # (N, N)
    targets = torch.arange(len(i), device=i.device)  # (N,)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2


def focal_scaled_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 0.5,
                               background_weight: float = 0.2) -> torch.Tensor:
    """Detector classification loss with focal scaling and a down-weighted background (Sec. 3.3, transfer), as the
    official `FastRCNNOutputLayers.losses` / `focal_loss` (roi_heads/fast_rcnn.py) computes it:

        ce_i = -log p_i(y_i),   p = softmax(logits),   w_i = background_weight if y_i == 0 else 1
        gamma > 0:  L = mean_i  w_i (1 - p_i(y_i))^gamma ce_i         (the plain mean over all N sampled RoIs)
        gamma = 0:  L = sum_i w_i ce_i / sum_i w_i                      (torch's weighted cross_entropy)

    The two normalisers are the official code's two paths: its focal path takes the mean, its plain-CE path torch's
    class-weighted mean. The COCO recipe is gamma 0.5 with background weight 0.2, the LVIS recipe plain CE with
    background weight 0.8; gamma 0 and weight 1 give plain cross-entropy.

    Args:
        logits: (N, K + 1) class logits, column 0 = background (torchvision's convention).
        targets: (N,) int64 labels in [0, K].
    Returns:
        scalar loss; 0 when N == 0.
    """
    if logits.shape[0] == 0:
        return _zero(logits)
    ce = F.cross_entropy(logits, targets, reduction="none")  # (N,)
    weights = torch.where(targets == 0, torch.full_like(ce, background_weight), torch.ones_like(ce))  # (N,)
    if gamma == 0:
        return (weights * ce).sum() / weights.sum().clamp(min=1e-12)
    p_true = torch.exp(-ce)  # (N,) probability of the true class
    focal = (1 - p_true).clamp(min=1e-6) ** gamma  # (N,) the clamp keeps the gradient finite at p = 1
    return (weights * focal * ce).mean()
