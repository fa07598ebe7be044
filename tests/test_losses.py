"""Losses (Sec. 3.2 Eq. 1-3, Sec. 3.3) and pseudo-labels (Sec. 3.2): equivalences and sanity, each able to fail."""
import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from regionclip_min.losses import (concept_distillation, focal_scaled_cross_entropy, image_text_contrastive,
                                   region_text_contrastive)
from regionclip_min.pseudo_labels import pseudo_label


def _unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-1)


# ---- image-text contrastive ------------------------------------------------------------------------------------
@pytest.mark.parametrize("tau", [0.01, 0.07, 1.0])
def test_image_text_loss_equals_open_clip_cliploss(tau):
    img, txt = _unit(8, 32, seed=1), _unit(8, 32, seed=2)
    ours = image_text_contrastive(img, txt, tau=tau)
    ref = ClipLoss()(img, txt, logit_scale=torch.tensor(1.0 / tau))
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_image_text_loss_is_log_n_for_uninformative_embeddings():
    n = 16
    img = torch.ones(n, 8)  # every pair has the same cosine
    assert image_text_contrastive(img, torch.ones(n, 8), tau=0.01).item() == pytest.approx(math.log(n), rel=1e-5)


def test_image_text_loss_learnable_tau_gets_gradient():
    logit_scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    loss = image_text_contrastive(_unit(4, 8, seed=3), _unit(4, 8, seed=4), tau=1 / logit_scale.exp())
    loss.backward()
    assert logit_scale.grad is not None and logit_scale.grad.abs() > 0


# ---- region-text contrastive -----------------------------------------------------------------------------------
def test_region_contrastive_pool_equals_cross_entropy_over_all_concepts():
    v, l = _unit(10, 16, seed=5), _unit(7, 16, seed=6)
    y = torch.randint(0, 7, (10,), generator=torch.Generator().manual_seed(0))
    ref = F.cross_entropy(v @ l.t() / 0.05, y)
    assert torch.allclose(region_text_contrastive(v * 3.0, y, l, tau=0.05, negatives="pool"), ref, rtol=1e-5)


def test_region_contrastive_regions_columns_with_a_single_concept_is_zero():
    v, l = _unit(6, 16, seed=7), _unit(20, 16, seed=8)
    # every region has the same concept: every column is a positive, the loss is exactly 0
    assert region_text_contrastive(v, torch.full((6,), 4), l).item() == pytest.approx(0.0, abs=1e-6)


def test_region_contrastive_rejects_unknown_negatives():
    with pytest.raises(ValueError, match="negatives"):
        region_text_contrastive(_unit(2, 4), torch.zeros(2, dtype=torch.long), _unit(3, 4), negatives="all")


# ---- concept distillation --------------------------------------------------------------------------------------
def test_distillation_kl_of_p_with_itself_is_zero():
    v, l = _unit(5, 16, seed=9), _unit(12, 16, seed=10)
    q = (v @ l.t() / 0.01).softmax(-1)
    assert concept_distillation(v, l, q, tau=0.01).item() == pytest.approx(0.0, abs=1e-5)


def test_distillation_equals_kl_div_and_moves_student_toward_teacher():
    l = _unit(12, 16, seed=11)
    teacher = _unit(5, 16, seed=12)
    q = (teacher @ l.t() / 0.1).softmax(-1)
    student = _unit(5, 16, seed=13).requires_grad_(True)
    loss = concept_distillation(student, l, q, tau=0.1)
    ref = F.kl_div(F.log_softmax(student @ l.t() / 0.1, -1), q, reduction="batchmean")
    assert torch.allclose(loss, ref, rtol=1e-5)
    opt = torch.optim.SGD([student], lr=0.05)
    before = loss.item()
    for _ in range(20):
        opt.zero_grad()
        concept_distillation(student, l, q, tau=0.1).backward()
        opt.step()
    assert concept_distillation(student, l, q, tau=0.1).item() < 0.5 * before


def test_distillation_handles_exact_zero_teacher_probabilities():
    l = _unit(4, 8, seed=14)
    q = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    loss = concept_distillation(_unit(1, 8, seed=15), l, q, tau=0.1)
    assert torch.isfinite(loss)


# ---- empty inputs ----------------------------------------------------------------------------------------------
def test_zero_kept_regions_give_finite_zero_loss_that_backpropagates():
    w = torch.nn.Parameter(torch.randn(16, 16))
    feats = torch.randn(3, 16) @ w  # (3, D) attached to w
    keep = torch.zeros(3, dtype=torch.bool)
    l = _unit(5, 16)
    rc = region_text_contrastive(feats[keep], torch.zeros(0, dtype=torch.long), l)
    kd = concept_distillation(feats[keep], l, torch.zeros(0, 5))
    fc = focal_scaled_cross_entropy(feats[keep][:, :5], torch.zeros(0, dtype=torch.long))
    total = rc + kd + fc
    assert total.item() == 0.0 and torch.isfinite(total)
    total.backward()
    assert w.grad is not None and torch.count_nonzero(w.grad) == 0


# ---- focal-scaled cross-entropy --------------------------------------------------------------------------------
def test_focal_gamma0_bg1_equals_cross_entropy():
    logits = torch.randn(20, 6, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 6, (20,), generator=torch.Generator().manual_seed(2))
    assert torch.allclose(focal_scaled_cross_entropy(logits, y, gamma=0.0, background_weight=1.0),
                          F.cross_entropy(logits, y), rtol=1e-6)


def test_focal_background_weight_matches_weighted_cross_entropy():
    logits = torch.randn(20, 6, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0] * 10 + list(range(1, 6)) * 2)
    weight = torch.tensor([0.2, 1, 1, 1, 1, 1])
    assert torch.allclose(focal_scaled_cross_entropy(logits, y, gamma=0.0, background_weight=0.2),
                          F.cross_entropy(logits, y, weight=weight), rtol=1e-6)


def test_focal_scaling_down_weights_easy_examples():
    easy = torch.tensor([[10.0, 0.0], [0.0, 10.0]])
    hard = torch.tensor([[0.5, 0.0], [0.0, 0.5]])
    y = torch.tensor([0, 1])
    ratio_focal = focal_scaled_cross_entropy(easy, y, 0.5, 1.0) / focal_scaled_cross_entropy(hard, y, 0.5, 1.0)
    ratio_ce = F.cross_entropy(easy, y) / F.cross_entropy(hard, y)
    assert ratio_focal < ratio_ce


# ---- pseudo-labels ---------------------------------------------------------------------------------------------
def test_pseudo_labels_pick_best_concept_and_threshold():
    l = torch.eye(4)  # (C, D)
    regions = torch.tensor([[1.0, 0, 0, 0], [0, 0, 2.0, 0], [1.0, 1.0, 1.0, 1.0]])  # last: no preference
    labels, q, keep, _ = pseudo_label(regions, l, tau=0.01, threshold=0.3)
    assert labels[:2].tolist() == [0, 2]
    assert torch.allclose(q.sum(-1), torch.ones(3))
    assert keep.tolist() == [True, True, False]  # uniform row: max q = 0.25


def test_pseudo_labels_keep_all_when_none_is_confident():
    labels, q, keep, all_kept = pseudo_label(torch.ones(2, 4), torch.eye(4), threshold=0.5)  # max q = 0.25 everywhere
    assert keep.tolist() == [True, True] and all_kept  # the official fallback (max q > 0)
    labels, q, keep, all_kept = pseudo_label(torch.tensor([[1.0, 0, 0, 0], [1.0, 1, 1, 1]]), torch.eye(4),
                                             threshold=0.5)
    assert keep.tolist() == [True, False] and not all_kept  # one confident region: no fallback
    labels, q, keep, all_kept = pseudo_label(torch.zeros(0, 4), torch.eye(4))
    assert not all_kept  # no region: nothing fell back
    assert labels.shape == (0,) and q.shape == (0, 4) and keep.shape == (0,)
    with pytest.raises(ValueError, match="empty"):
        pseudo_label(torch.ones(2, 4), torch.zeros(0, 4))
    with pytest.raises(ValueError, match="expected"):
        pseudo_label(torch.ones(2, 4), torch.ones(3, 5))
