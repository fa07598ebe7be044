"""The class-agnostic region proposal network: the paper's offline RPN, trained alone on base-category boxes
(train_detect.py --task rpn), and the one source of RPN boxes for all three tasks: RegionCLIP pretraining and
zero-shot detection (both through `proposals.RPNProposer`, which asks `propose`) and the detector's frozen RPN
(`FrozenRPN`, detector.py).

    images -> GeneralizedRCNNTransform (resize, CLIP mean/std) -> CLIPBackbone (res4) -> torchvision RPN
    (one level, detectron2's L1 box loss) -> boxes sorted by objectness
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import nms

from regionclip_min.checkpoint import load_checkpoint
from regionclip_min.clip_model import load_clip
from regionclip_min.regions import CLIPBackbone
from regionclip_min.transforms import CLIP_MEAN, CLIP_STD


class ScoredRPN(RegionProposalNetwork):
    """torchvision's RPN with detectron2's L1 box loss (SMOOTH_L1_BETA = 0, the official RPN's; torchvision's is
    smooth-L1 with beta 1/9), which also keeps the objectness (sigmoid) of the boxes of the last call in
    `last_scores` (B tensors (R_i,), aligned with the boxes) for proposal files. Both losses are normalised by the
    number of sampled anchors, as in torchvision (detectron2 divides by images x batch_size_per_image, the same
    number whenever an image has enough negative anchors, which it always has)."""

    def filter_proposals(self, *args):
        boxes, scores = super().filter_proposals(*args)
        self.last_scores = scores
        return boxes, scores

    def proposal_scores(self) -> list[torch.Tensor]:
        """The objectness of the boxes of the last call: B tensors (R_i,) in [0, 1]."""
        return self.last_scores

    def compute_loss(self, objectness, pred_bbox_deltas, labels, regression_targets):
        pos, neg = (torch.where(torch.cat(m))[0] for m in self.fg_bg_sampler(labels))
        sampled = torch.cat([pos, neg])
        labels, regression_targets = torch.cat(labels), torch.cat(regression_targets)
        box_loss = F.l1_loss(pred_bbox_deltas[pos], regression_targets[pos], reduction="sum") / sampled.numel()
        objectness_loss = F.binary_cross_entropy_with_logits(objectness.flatten()[sampled], labels[sampled])
        return objectness_loss, box_loss


def make_rpn(out_channels: int, *, anchor_sizes, aspect_ratios, pre_nms_top_n_train: int, pre_nms_top_n_test: int,
         post_nms_top_n_train: int, post_nms_top_n_test: int, nms_thresh: float, batch_size_per_image: int,
         fg_iou_thresh: float = 0.7, bg_iou_thresh: float = 0.3) -> ScoredRPN:
    """torchvision's RPN on one feature level: len(anchor_sizes) x len(aspect_ratios) anchors per cell."""
    anchors = AnchorGenerator(sizes=(tuple(anchor_sizes),), aspect_ratios=(tuple(aspect_ratios),))
    head = RPNHead(out_channels, anchors.num_anchors_per_location()[0])
    return ScoredRPN(anchors, head, fg_iou_thresh, bg_iou_thresh, batch_size_per_image, 0.5,
                     dict(training=pre_nms_top_n_train, testing=pre_nms_top_n_test),
                     dict(training=post_nms_top_n_train, testing=post_nms_top_n_test), nms_thresh)


class Transform(GeneralizedRCNNTransform):
    """torchvision's resize + normalisation, whose test post-processing also maps the boxes of the detections
    under other vocabularies (`detector.FocalRoIHeads.also`: output[key]["boxes"]) back to the input image."""

    def postprocess(self, result, image_shapes, original_image_sizes):
        result = super().postprocess(result, image_shapes, original_image_sizes)
        if not self.training:
            for out, shape, size in zip(result, image_shapes, original_image_sizes):
                for other in (v for v in out.values() if isinstance(v, dict) and "boxes" in v):
                    other["boxes"] = resize_boxes(other["boxes"], shape, size)
        return result


def make_transform(min_size, max_size: int) -> GeneralizedRCNNTransform:
    """Resize (training: short side drawn from `min_size`; test: its last entry) and CLIP normalisation."""
    sizes = (min_size,) if isinstance(min_size, int) else tuple(min_size)
    return Transform(sizes, max_size, list(CLIP_MEAN), list(CLIP_STD))


class ProposalNetwork(nn.Module):
    """Class-agnostic proposal network: transform + CLIPBackbone + RPN (the paper's offline RPN, trained on base
    boxes). Training: `model(images, targets)` -> {"loss_objectness", "loss_rpn_box_reg"}. Eval: `model(images)`
    -> B tensors (R_i, 4) xyxy pixels of the images passed in, sorted by objectness (at most post_nms_top_n_test).

    Args:
        visual: open_clip ModifiedResNet (its stem..layer3 are shared, not copied).
        min_size, max_size: resize of GeneralizedRCNNTransform (int or tuple of training short sides).
        rpn_kwargs: keyword arguments of torchvision's RPN (see `make_rpn`).
    Images: list of (3, H, W) float RGB in [0, 1], any size (resized and CLIP-normalised inside).
    """

    def __init__(self, visual: nn.Module, *, min_size, max_size: int, **rpn_kwargs):
        super().__init__()
        self.transform = make_transform(min_size, max_size)
        self.backbone = CLIPBackbone(visual)
        self.rpn = make_rpn(self.backbone.out_channels, **rpn_kwargs)

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        original_sizes = [tuple(im.shape[-2:]) for im in images]
        image_list, targets = self.transform(images, targets)
        boxes, losses = self.rpn(image_list, {"0": self.backbone(image_list.tensors)}, targets)
        if self.training:
            return losses
        out = self.transform.postprocess([{"boxes": b} for b in boxes], image_list.image_sizes, original_sizes)
        return [o["boxes"] for o in out]  # B x (R_i, 4) in the input images' pixels


class FrozenRPN(nn.Module):
    """A trained ProposalNetwork as the detector's RPN (offline mode): frozen, always eval, no loss.

    GeneralizedRCNN calls rpn(images, features, targets) with `images` the detector's resized, CLIP-normalised
    batch; this ignores `features` and runs the proposal network's own backbone on images.tensors, so the
    ProposalNetwork should have been trained at the detector's min_size (both normalise with CLIP mean/std).
    Returns the top_k_train (detector in train mode) or top_k_test highest-objectness proposals per image, xyxy
    pixels of the resized image."""

    def __init__(self, proposal_network: ProposalNetwork, *, top_k_train: int, top_k_test: int):
        super().__init__()
        self.net = proposal_network.requires_grad_(False).eval()
        self.top_k_train, self.top_k_test = top_k_train, top_k_test

    def train(self, mode: bool = True):
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, images, features=None, targets=None):
        with torch.no_grad():
            boxes, _ = self.net.rpn(images, {"0": self.net.backbone(images.tensors)})
        k = self.top_k_train if self.training else self.top_k_test
        self.last_scores = [v[:k] for v in self.net.rpn.last_scores]
        return [b[:k] for b in boxes], {}

    def proposal_scores(self) -> list[torch.Tensor]:
        """The objectness of the proposals of the last call: B tensors (R_i,) in [0, 1]."""
        return self.last_scores


def visual_of(model_name: str, device) -> nn.Module:
    clip, _ = load_clip(model_name, None, device=device)  # architecture only; weights come from the checkpoint
    return clip.visual


def load_rpn(checkpoint_path, device="cpu") -> ProposalNetwork:
    """A ProposalNetwork from a train_detect.py --task rpn checkpoint (safe load), frozen and in eval mode."""
    state = load_checkpoint(checkpoint_path, map_location=device)
    if state.get("kind") != "rpn":
        raise ValueError(f"{checkpoint_path} is not a proposal-network checkpoint (kind {state.get('kind')!r}); "
                         f"train one with: python train_detect.py --preset toy-rpn")
    net = ProposalNetwork(visual_of(state["model_name"], device), **state["rpn_kwargs"]).to(device)
    net.load_state_dict(state["model"])
    return net.requires_grad_(False).eval()


@torch.no_grad()
def propose(rpn: ProposalNetwork, images, top_k: int, *, clip_normalized: bool = False,
            nms_thresh: float | None = None, with_scores: bool = False) -> list[torch.Tensor]:
    """Class-agnostic proposals for RegionCLIP pretraining (Sec. 3.1: RPN boxes, e.g. NMS 0.5, top 300).

    Args:
        rpn: from `load_rpn`.
        images: (B, 3, H, W) tensor or list of (3, H_i, W_i), float RGB at any scale: in [0, 1], or CLIP-normalised
            if `clip_normalized` (undone here). The network resizes them to its own min_size internally.
        top_k: at most this many boxes per image, highest objectness first.
        nms_thresh: an extra NMS at this IoU (the RPN's own NMS is 0.7), or None.
        with_scores: append each box's objectness in [0, 1] as a fifth column (the proposals-file rows).
    Returns:
        B tensors (R_i, 4) (or (R_i, 5) with scores), R_i <= top_k, float32 xyxy absolute pixels of the images
        passed in, highest objectness first.
    """
    rpn.eval()
    if clip_normalized:
        mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
        std = torch.tensor(CLIP_STD).view(3, 1, 1)
        images = [im * std.to(im) + mean.to(im) for im in images]  # back to [0, 1]
    out = []
    for boxes, scores in zip(rpn(list(images)), rpn.rpn.last_scores):  # B x (N_i, 4), (N_i,), objectness-sorted
        if nms_thresh is not None:
            keep = nms(boxes, scores, nms_thresh)  # (N_i',) indices, decreasing score
            boxes, scores = boxes[keep], scores[keep]
        boxes, scores = boxes[:top_k], scores[:top_k]
        out.append(torch.cat([boxes, scores[:, None]], dim=1) if with_scores else boxes)  # (R_i, 5) or (R_i, 4)
    return out
