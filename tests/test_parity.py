"""The official code's formulas (microsoft/RegionCLIP at 4b8513b), restated here as plain math on small tensors, against
ours. Each test names the official file and function it restates; docs/PARITY.md lists them row by row."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regionclip_min.losses import focal_scaled_cross_entropy, region_text_contrastive
from regionclip_min.postprocess import select_detections, soft_nms
from regionclip_min.pseudo_labels import pseudo_label
from regionclip_min.steps import clip_gradients, lr_factor, make_scheduler, milestones, parameter_groups


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


# ---- utils/comm.py MILCrossEntropy (avg_positives=False), called by clip_rcnn.py region_concept_matching ----------
def test_region_text_loss_is_the_official_multi_instance_cross_entropy_with_a_repeated_concept():
    v, l = _unit(5, 8, seed=1), _unit(6, 8, seed=2)
    y = torch.tensor([2, 2, 5, 0, 2])  # concept 2 matched to three regions
    tau = 0.01
    # official: S = v @ l[y]^T / tau (one column per region); loss_i = -log sum_j [y_j == y_i] softmax(S_i)_j
    s = (v @ l[y].t() / tau).double()
    expected = 0.0
    for i in range(5):
        p = torch.exp(s[i] - s[i].max()) / torch.exp(s[i] - s[i].max()).sum()
        expected += -math.log(sum(p[j].item() for j in range(5) if y[j] == y[i]))
    expected /= 5
    assert region_text_contrastive(v, y, l, tau=tau).item() == pytest.approx(expected, rel=1e-5)
    # a repeated concept weighs once per region: not the same as one column per distinct concept
    distinct, targets = torch.unique(y, return_inverse=True)
    assert abs(F.cross_entropy(v @ l[distinct].t() / tau, targets).item() - expected) > 1e-3


# ---- roi_heads/fast_rcnn.py FastRCNNOutputLayers.focal_loss: the plain mean over the sampled RoIs ------------------
def test_focal_loss_is_the_mean_over_all_rois_at_five_percent_foreground():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(40, 4, generator=g)
    y = torch.zeros(40, dtype=torch.long)
    y[:2] = torch.tensor([1, 3])  # 2 of 40 foreground: 5%
    ce = F.cross_entropy(logits, y, reduction="none")
    p_t = F.softmax(logits, -1)[torch.arange(40), y]
    w = torch.where(y == 0, 0.2, 1.0)
    official = (ce * (1 - p_t) ** 0.5 * w).mean()
    ours = focal_scaled_cross_entropy(logits, y, gamma=0.5, background_weight=0.2)
    assert ours.item() == pytest.approx(official.item(), rel=1e-5)
    # the weight-normalised mean would be 40 / (2 + 38 * 0.2) = 4.2x larger here
    assert (ce * (1 - p_t) ** 0.5 * w).sum().item() / w.sum().item() == pytest.approx(official.item() * 40 / 9.6,
                                                                                      rel=1e-5)


# ---- meta_arch/clip_rcnn.py get_psuedo_concept_labels: no confident region -> every region is kept ----------------
def test_pseudo_labels_fall_back_to_every_region_as_the_official_code():
    t = _unit(6, 8, seed=4)
    l = _unit(300, 8, seed=5)  # a large pool at tau 1: no probability above 0.1
    labels, q, keep, _ = pseudo_label(t, l, tau=1.0, threshold=0.1)
    assert q.amax(-1).max() < 0.1 and keep.all()
    assert labels.tolist() == q.argmax(-1).tolist()


# ---- roi_heads/fast_rcnn.py box_reg_loss (SMOOTH_L1_BETA 0: L1), summed over foreground / all sampled RoIs --------
def test_box_and_rpn_losses_are_l1_divided_by_the_sampled_count():
    torch.manual_seed(0)
    from regionclip_min.clip_model import load_clip
    from regionclip_min.detector import build_detector
    clip, _ = load_clip("RN-toy", None)
    det = build_detector(clip.visual, _unit(3, clip.visual.output_dim, seed=6), min_size=128, max_size=128,
                         anchor_sizes=(32, 64), box_batch_size_per_image=16, rpn_batch_size_per_image=32)
    heads = det.roi_heads
    deltas = torch.randn(16, 16)  # (R, 4 (K + 1))
    targets = torch.randn(16, 4)
    labels = torch.tensor([1, 0, 2, 0] * 4)
    fg = labels > 0
    official = (deltas[fg, :4] - targets[fg]).abs().sum() / 16
    losses = heads.losses(torch.randn(16, 4), deltas, labels, targets)
    assert losses["loss_box_reg"].item() == pytest.approx(official.item(), rel=1e-6)
    # the RPN's compute_loss: L1 (not torchvision's smooth-L1 beta 1/9) over positives / sampled anchors
    rpn = det.rpn
    n = 64
    obj = torch.randn(n, 1)
    pred = torch.randn(n, 4) * 0.01  # small deltas: where beta 1/9 and L1 differ most
    reg = torch.randn(n, 4) * 0.01
    lab = torch.cat([torch.ones(8), torch.zeros(n - 8)])
    torch.manual_seed(1)
    obj_loss, box_loss = rpn.compute_loss(obj, pred, [lab], [reg])
    torch.manual_seed(1)
    pos, neg = (torch.where(torch.cat(m))[0] for m in rpn.fg_bg_sampler([lab]))
    expected = (pred[pos] - reg[pos]).abs().sum() / (len(pos) + len(neg))
    assert box_loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert box_loss.item() != pytest.approx(F.smooth_l1_loss(pred[pos], reg[pos], beta=1 / 9, reduction="sum").item()
                                            / (len(pos) + len(neg)), rel=1e-3)


# ---- solver/build.py: CLIP_TYPE "norm" clips each parameter tensor on its own -------------------------------------
def test_gradient_clipping_is_per_tensor():
    a, b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2))
    a.grad, b.grad = torch.tensor([30.0, 40.0, 0.0]), torch.tensor([3.0, 4.0])  # norms 50 and 5
    clip_gradients([a, b], 5.0, per_tensor=True)
    assert torch.allclose(a.grad, torch.tensor([3.0, 4.0, 0.0]), atol=1e-5)  # 50 -> 5
    assert torch.allclose(b.grad, torch.tensor([3.0, 4.0]), atol=1e-5)  # already at 5: unchanged
    a.grad, b.grad = torch.tensor([30.0, 40.0, 0.0]), torch.tensor([3.0, 4.0])
    clip_gradients([a, b], 5.0, per_tensor=False)  # one global norm sqrt(2525): both scaled alike
    scale = 5.0 / math.sqrt(2525)
    assert torch.allclose(b.grad, torch.tensor([3.0, 4.0]) * scale, atol=1e-5)


# ---- solver/lr_scheduler.py WarmupParamScheduler + MultiStepParamScheduler (WarmupMultiStepLR) ---------------------
@pytest.mark.parametrize("step, factor", [(0, 0.001), (2500, 0.001 + 0.999 * 0.5), (5000, 1.0), (59_999, 1.0),
                                          (60_000, 0.1), (79_999, 0.1), (80_000, 0.01), (89_999, 0.01)])
def test_multistep_schedule_factor_at_chosen_steps(step, factor):
    got = lr_factor(step, schedule="multistep", warmup_steps=5000, max_steps=90_000,
                    milestones=milestones("60000,80000", 90_000))
    assert got == pytest.approx(factor, rel=1e-9)


def test_milestones_as_fractions_and_the_scheduler_steps_them():
    assert milestones("0.5,0.875", 600_000) == (300_000, 525_000)
    assert milestones("0.6667,0.8889", 600) == (400, 533)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, schedule="multistep", warmup_steps=2, max_steps=10, lr_steps="4,8")
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.001, 0.5005, 1, 1, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01])


# ---- solver/build.py get_default_optimizer_params: decay on biases, not on norm layers -----------------------------
def test_weight_decay_groups_follow_each_recipe():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.BatchNorm1d(4))
    model.logit_scale = nn.Parameter(torch.zeros(()))
    groups = parameter_groups(model, 0.1, rule="detectron2", lr=1.0)
    decayed = {id(p) for g in groups if g["weight_decay"] == 0.1 for p in g["params"]}
    assert decayed == {id(model[0].weight), id(model[0].bias), id(model.logit_scale)}
    groups = parameter_groups(model, 0.1, rule="clip", lr=1.0)
    decayed = {id(p) for g in groups if g["weight_decay"] == 0.1 for p in g["params"]}
    assert decayed == {id(model[0].weight)}


# ---- layers/soft_nms.py (gaussian), as fast_rcnn_inference_single_image uses it -----------------------------------
def test_soft_nms_on_a_hand_worked_example():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5], [20, 20, 30, 30], [0, 0, 10, 10]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    classes = torch.tensor([1, 1, 1, 2])  # the last box is another class: never suppressed by the first
    keep, new = soft_nms(boxes, scores, classes, sigma=0.5, prune=0.001)
    # pick 0 (0.9); box 1 has IoU 0.5 with it: 0.8 * exp(-0.25 / 0.5) = 0.4852; box 2 IoU 0; box 3 other class
    # then 2 (0.7), 3 (0.6), 1 (0.4852)
    assert keep.tolist() == [0, 2, 3, 1]
    assert new.tolist() == pytest.approx([0.9, 0.7, 0.6, 0.8 * math.exp(-0.5)], rel=1e-6)
    keep, _ = soft_nms(boxes, scores, classes, max_out=2)
    assert keep.tolist() == [0, 2]
    # a box decayed to the prune threshold or below is dropped
    keep, _ = soft_nms(boxes[:2], torch.tensor([0.9, 0.0015]), classes[:2], prune=0.001)
    assert keep.tolist() == [0]


def test_select_detections_thresholds_then_suppresses():
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 9], [5, 5, 9, 9]])
    scores = torch.tensor([0.9, 0.8, 0.0005])
    labels = torch.tensor([1, 1, 1])
    b, s, l = select_detections(boxes, scores, labels, score_thresh=0.001, nms="hard", nms_thresh=0.5, max_out=100)
    assert s.tolist() == pytest.approx([0.9])  # hard NMS drops the IoU-0.9 box; 0.0005 is under the threshold
    b, s, l = select_detections(boxes, scores, labels, score_thresh=0.001, nms="soft", nms_thresh=0.5, max_out=100)
    assert s.tolist() == pytest.approx([0.9, 0.8 * math.exp(-0.81 / 0.5)], rel=1e-5)  # kept, rescored
