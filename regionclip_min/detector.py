"""Open-vocabulary Faster R-CNN from a (Region)CLIP ResNet: the paper's transfer to detection (Sec. 3.3, 4.1).

torchvision's Faster R-CNN, assembled by injection from these parts (docs/DESIGN.md §4, "Transfer"):

    images -> GeneralizedRCNNTransform (resize to min_size/max_size, CLIP mean/std)
           -> CLIPBackbone: CLIP stem..layer3, the res4 map (stride 16), one level
           -> RPN (torchvision's, single level) -> proposals, xyxy pixels of the resized image
           -> AlignedRoIPool: roi_align(aligned=True) to P x P, P = 2 x the attention-pool grid
           -> CLIPBoxHead: CLIP layer4 + attnpool -> region embedding v (R, D)
           -> TextEmbeddingPredictor:  logit_k = cos(v, e_k) / tau  (k = 1..K),  logit_0 = 0 (background)
                                       deltas  = Linear(D, 4)(v), one class-agnostic box, repeated K + 1 times
    training loss (FocalRoIHeads): mean_i w_i (1 - p_i(y_i))^gamma CE_i, w = background_weight on background
    rows (COCO recipe gamma 0.5, weight 0.2; losses.focal_scaled_cross_entropy), plus L1 on the box deltas
    test (FocalRoIHeads): score > 0.001, gaussian soft-NMS per class, the best 100 (postprocess.py)

The class embeddings e_k are frozen, L2-normalised class-name text embeddings (prompt ensemble). They are a
non-persistent buffer: `set_vocabulary` swaps base names for base + novel (or any list) without touching a weight.
Background is torchvision's index 0; class k of the vocabulary is label k + 1 (docs/DESIGN.md §3).

Two RPN modes:
  - "joint" (torchvision's default): the RPN head is trained with the detector on the shared res4 map;
  - "offline" (the paper's): a class-agnostic `ProposalNetwork` trained alone on base boxes (train_detect.py
    --preset toy-rpn), frozen and wrapped by `FrozenRPN`; it runs its own backbone on the detector's resized,
    CLIP-normalised images and contributes no loss.
The same ProposalNetwork's boxes serve RegionCLIP pretraining and zero-shot detection (`proposals.RPNProposer`).

Why GeneralizedRCNN and not FasterRCNN(...): FasterRCNN's constructor only accepts a MultiScaleRoIAlign pooler,
which does not use aligned=True (docs/DESIGN.md §3); so we assemble exactly the parts its constructor assembles
(transform, RPN, RoIHeads) and hand them to its base class. Left out: FPN, masks, multi-GPU BatchNorm.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import boxes as box_ops

from regionclip_min import official
from regionclip_min.checkpoint import load_checkpoint
from regionclip_min.clip_model import guess_model_name
from regionclip_min.losses import focal_scaled_cross_entropy
from regionclip_min.postprocess import select_detections
from regionclip_min.regions import CLIPBackbone, FrozenBatchNorm, pooler_size, res5_head, roi_pool
from regionclip_min.rpn import FrozenRPN, ProposalNetwork, make_rpn, make_transform, visual_of


class AlignedRoIPool(nn.Module):
    """Our RoI pooler for torchvision's RoIHeads: `regions.roi_pool` (roi_align aligned=True, scale 1/16) on the
    single res4 map. Called as box_roi_pool(features, proposals, image_shapes) with features {"0": (B, C4, H/16,
    W/16)} and proposals B tensors (R_i, 4) xyxy pixels of the resized image; returns (R, C4, P, P)."""

    def __init__(self, pooler_size: int, sampling_ratio: int = 0):
        super().__init__()
        self.pooler_size, self.sampling_ratio = pooler_size, sampling_ratio

    def forward(self, features: dict, proposals: list[torch.Tensor], image_shapes=None) -> torch.Tensor:
        fmap = features["0"] if isinstance(features, dict) else features  # (B, C4, H/16, W/16)
        return roi_pool(fmap, proposals, self.pooler_size, self.sampling_ratio)  # (R, C4, P, P)


class CLIPBoxHead(FrozenBatchNorm):
    """CLIP layer4 (res5) + attention pool as the box head: (R, C4, P, P) -> (R, D) region embeddings, not
    normalised (`regions.res5_head`). Shares the modules of `visual` (upstream names); BatchNorm frozen."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.layer4, self.attnpool = visual.layer4, visual.attnpool
        self.pooler_size = pooler_size(visual.attnpool)
        self.freeze_batchnorm()

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return res5_head(self.layer4, self.attnpool, pooled)  # (R, D)


class TextEmbeddingPredictor(nn.Module):
    """Classifier = frozen class-name embeddings (Sec. 3.3): logits (R, K + 1) with column 0 the background, whose
    logit is the constant 0 (a frozen all-zero embedding, as the official code); regression is class-agnostic.

        logits[:, 0] = 0,   logits[:, k] = cos(v, e_k) / tau   (k = 1..K)
        deltas       = Linear(D, 4)(v), repeated K + 1 times -> (R, 4 (K + 1)), the shape torchvision's
                       RoIHeads.postprocess_detections decodes per class (every class gets the same box).

    Args:
        class_embeddings: (K, D) float text embeddings (normalised here); a non-persistent buffer.
        tau: temperature (paper 0.01: logit scale 100).
    """

    def __init__(self, class_embeddings: torch.Tensor, tau: float = 0.01):
        super().__init__()
        self.tau = tau
        self.register_buffer("class_embeddings", torch.empty(0), persistent=False)
        self.set_class_embeddings(class_embeddings)
        self.bbox_pred = nn.Linear(class_embeddings.shape[1], 4)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)  # start near "keep the proposal"
        nn.init.zeros_(self.bbox_pred.bias)

    def set_class_embeddings(self, class_embeddings: torch.Tensor) -> None:
        """Swap the vocabulary: (K', D) embeddings, any K' >= 1; weights are untouched."""
        if class_embeddings.ndim != 2 or len(class_embeddings) == 0:
            raise ValueError(f"class_embeddings must be (K, D) with K >= 1, got {tuple(class_embeddings.shape)}")
        if self.class_embeddings.numel() and class_embeddings.shape[1] != self.class_embeddings.shape[1]:
            raise ValueError(f"new class embeddings have D = {class_embeddings.shape[1]}, the model "
                             f"{self.class_embeddings.shape[1]}")
        self.class_embeddings = self.unit(class_embeddings)  # (K, D)

    def unit(self, class_embeddings: torch.Tensor) -> torch.Tensor:
        """(K, D) embeddings as the classifier holds them: float, unit rows, on its device."""
        return F.normalize(class_embeddings.detach().float(), dim=-1).to(self.class_embeddings.device)

    def forward(self, x: torch.Tensor, class_embeddings: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(R, D) region features -> logits, deltas; `class_embeddings` (K', D) from `unit` score the regions
        against other names than the vocabulary (the deltas do not depend on the names)."""
        v = F.normalize(x, dim=-1)  # (R, D)
        cls = v @ (self.class_embeddings if class_embeddings is None else class_embeddings).t() / self.tau  # (R, K)
        logits = torch.cat([cls.new_zeros(len(cls), 1), cls], dim=1)  # (R, K + 1)
        deltas = self.bbox_pred(x).repeat(1, logits.shape[1])  # (R, 4 (K + 1)), class-agnostic
        return logits, deltas


class FocalRoIHeads(RoIHeads):
    """torchvision's RoIHeads with the official code's box-head loss and test post-processing.

    torchvision computes its box loss in a module-level function (`fastrcnn_loss`, plain CE, smooth-L1 with beta
    1/9) that offers no hook; this override keeps its sampling (`select_training_samples`) and replaces the loss:
    the focal-scaled CE of `losses.py` and an L1 box loss (detectron2's SMOOTH_L1_BETA = 0), summed over the
    foreground RoIs and divided by the number of sampled RoIs. At test, `postprocess.select_detections` (score
    threshold, soft- or hard NMS per class, the best `detections_per_img`), after an optional RPN-score fusion
    (the official MULTIPLY_RPN_SCORE of the LVIS recipe: sqrt(p_class * objectness), with the objectness a
    probability, `objectness` callable). Boxes only: no masks or keypoints.
    """

    def __init__(self, *args, focal_gamma: float = 0.5, background_weight: float = 0.2, nms: str = "soft",
                 objectness=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.focal_gamma, self.background_weight, self.nms = focal_gamma, background_weight, nms
        self.objectness = objectness  # None, or a callable giving the last proposals' objectness: RPN-score fusion
        self.also: dict[str, torch.Tensor] = {}  # test only: more vocabularies scored on the same RoIs (set_vocabulary)

    def forward(self, features, proposals, image_shapes, targets=None):
        if self.training:  # sample positives/negatives, attach labels (0 = background) and box targets
            proposals, _, labels, regression_targets = self.select_training_samples(proposals, targets)
        x = self.box_head(self.box_roi_pool(features, proposals, image_shapes))  # (R, D)
        class_logits, box_regression = self.box_predictor(x)  # (R, K + 1), (R, 4 (K + 1))
        if not self.training:
            out = self._detections(class_logits, box_regression, proposals, image_shapes)
            for key, emb in self.also.items():  # the same RoI features against other names: out[i][key]
                logits, _ = self.box_predictor(x, emb)
                for o, other in zip(out, self._detections(logits, box_regression, proposals, image_shapes)):
                    o[key] = other
            return out, {}
        return [], self.losses(class_logits, box_regression, torch.cat(labels), torch.cat(regression_targets))

    def _detections(self, class_logits, box_regression, proposals, image_shapes) -> list[dict]:
        boxes, scores, labels = self.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
        return [{"boxes": b, "labels": l, "scores": s} for b, l, s in zip(boxes, labels, scores)]

    def losses(self, class_logits, box_regression, labels, regression_targets) -> dict:
        """(R, K + 1) logits, (R, 4 (K + 1)) deltas, (R,) labels, (R, 4) targets -> the two box-head losses."""
        pos = torch.where(labels > 0)[0]  # foreground rows; none for an image without boxes
        # L1 on the class-agnostic deltas (columns 0..3; all K + 1 groups are equal) / the number of sampled RoIs
        box = F.l1_loss(box_regression[pos, :4], regression_targets[pos], reduction="sum") / max(labels.numel(), 1)
        return {"loss_classifier": focal_scaled_cross_entropy(class_logits, labels, self.focal_gamma,
                                                              self.background_weight), "loss_box_reg": box}

    def postprocess_detections(self, class_logits, box_regression, proposals, image_shapes):
        """Per image: softmax scores, decoded boxes clipped to the image, background dropped, then
        `select_detections`. Returns lists of boxes (N, 4), scores (N,), labels (N,) in 1..K."""
        boxes = self.box_coder.decode(box_regression[:, :4], proposals)[:, 0]  # (R, 4) class-agnostic
        scores = F.softmax(class_logits, -1)[:, 1:]  # (R, K)
        if self.objectness is not None:  # the LVIS test's fusion: sqrt(p_class * objectness)
            scores = (scores * torch.cat(self.objectness())[:, None]).sqrt()
        out = ([], [], [])
        for b, s, shape in zip(boxes.split([len(p) for p in proposals]), scores.split([len(p) for p in proposals]),
                               image_shapes):
            b = box_ops.clip_boxes_to_image(b, shape)
            labels = torch.arange(1, s.shape[1] + 1, device=s.device).expand_as(s)  # (R_i, K)
            picked = select_detections(b[:, None].expand(-1, s.shape[1], -1).reshape(-1, 4), s.reshape(-1),
                                       labels.reshape(-1), score_thresh=self.score_thresh, nms=self.nms,
                                       nms_thresh=self.nms_thresh, max_out=self.detections_per_img)
            for lst, v in zip(out, picked):
                lst.append(v)
        return out


def build_detector(visual: nn.Module, class_embeddings: torch.Tensor, *, min_size=800, max_size: int = 1333,
                   anchor_sizes=(32, 64, 128, 256, 512), aspect_ratios=(0.5, 1.0, 2.0),
                   rpn_pre_nms_top_n_train: int = 2000, rpn_pre_nms_top_n_test: int = 1000,
                   rpn_post_nms_top_n_train: int = 2000, rpn_post_nms_top_n_test: int = 1000,
                   rpn_nms_thresh: float = 0.7, rpn_batch_size_per_image: int = 256,
                   box_batch_size_per_image: int = 512, box_positive_fraction: float = 0.25,
                   box_score_thresh: float = 0.001, box_nms: str = "soft", box_nms_thresh: float = 0.5,
                   detections_per_img: int = 100,
                   tau: float = 0.01, focal_gamma: float = 0.5, background_weight: float = 0.2,
                   sampling_ratio: int = 0, offline_rpn: ProposalNetwork | None = None,
                   rpn_score_fusion: bool = False) -> GeneralizedRCNN:
    """The open-vocabulary detector of the transfer (see the module docstring).

    Args:
        visual: `model.visual` of an open_clip CLIP with a ModifiedResNet (RegionCLIP student or CLIP); its
            modules are shared: backbone = stem..layer3 (stem, layer1 frozen), box head = layer4 + attnpool.
        class_embeddings: (K, D) training vocabulary (e.g. base class names), frozen.
        min_size, max_size: GeneralizedRCNNTransform resize; a tuple of short sides is sampled in training and its
            last entry used at test (torchvision's rule), e.g. (640, ..., 800) for COCO, 256 for 128-px toy images.
        rpn_*: torchvision RPN settings (single level: one anchor per size x ratio per res4 cell).
        box_*: RoIHeads sampling (RoIs per image, positive fraction) and inference (score threshold, soft or hard
            NMS, top-N; `postprocess.select_detections`).
        tau, focal_gamma, background_weight: the predictor's temperature and the classification loss.
        sampling_ratio: RoIAlign samples per bin (0 adaptive, exact for the whole-image box).
        offline_rpn: None = RPN trained with the detector ("joint"); a trained ProposalNetwork = frozen
            offline RPN giving rpn_post_nms_top_n_* proposals per image.
        rpn_score_fusion: at test, score = sqrt(p_class * the proposal's objectness) (the official LVIS test).
    Returns:
        torchvision GeneralizedRCNN: train mode `model(images, targets)` -> loss dict; eval `model(images)` ->
        [{"boxes" (N, 4) xyxy pixels of the input image, "labels" (N,) in 1..K, "scores" (N,)}].
    """
    backbone = CLIPBackbone(visual)
    box_head = CLIPBoxHead(visual)
    if offline_rpn is None:
        rpn = make_rpn(backbone.out_channels, anchor_sizes=anchor_sizes, aspect_ratios=aspect_ratios,
                   pre_nms_top_n_train=rpn_pre_nms_top_n_train, pre_nms_top_n_test=rpn_pre_nms_top_n_test,
                   post_nms_top_n_train=rpn_post_nms_top_n_train, post_nms_top_n_test=rpn_post_nms_top_n_test,
                   nms_thresh=rpn_nms_thresh, batch_size_per_image=rpn_batch_size_per_image)
    else:
        rpn = FrozenRPN(offline_rpn, top_k_train=rpn_post_nms_top_n_train, top_k_test=rpn_post_nms_top_n_test)
    roi_heads = FocalRoIHeads(AlignedRoIPool(box_head.pooler_size, sampling_ratio), box_head,
                              TextEmbeddingPredictor(class_embeddings, tau),
                              0.5, 0.5, box_batch_size_per_image, box_positive_fraction, None,  # fg/bg IoU 0.5
                              box_score_thresh, box_nms_thresh, detections_per_img,
                              focal_gamma=focal_gamma, background_weight=background_weight, nms=box_nms,
                              objectness=rpn.proposal_scores if rpn_score_fusion else None)
    return GeneralizedRCNN(backbone, rpn, roi_heads, make_transform(min_size, max_size))


class TrainingStep(nn.Module):
    """A detector (or ProposalNetwork) as engine.train calls a model: (batch (images, targets), g) -> its dict of
    losses, the batch moved to `device`."""

    def __init__(self, model, device):
        super().__init__()
        self.model, self.device = model, device

    def forward(self, batch, g):
        images, targets = batch
        return self.model([im.to(self.device) for im in images],
                          [{"boxes": t["boxes"].to(self.device), "labels": t["labels"].to(self.device)}
                           for t in targets])


def set_vocabulary(detector: GeneralizedRCNN, class_embeddings: torch.Tensor,
                   also: dict[str, torch.Tensor] | None = None) -> None:
    """Swap the detector's classes, e.g. base -> base + novel names at test: K changes, no weight does. `also`
    {key: (K', D)}: at test the detector also scores its RoIs against each of these vocabularies, returned under
    output[key] (labels 1..K' of that vocabulary), so one pass gives both, e.g. the open and the closed vocabulary;
    a later call without `also` drops them."""
    predictor = detector.roi_heads.box_predictor
    predictor.set_class_embeddings(class_embeddings)
    detector.roi_heads.also = {key: predictor.unit(emb) for key, emb in (also or {}).items()}


def load_detector(checkpoint_path, *, vocabulary: str = "test", device="cpu", state: dict | None = None
                  ) -> GeneralizedRCNN:
    """A detector from a train_detect.py checkpoint, with its "train" (base) or "test" (all) vocabulary, eval mode.
    `state`: the checkpoint already loaded (load_checkpoint), so that it is not read twice."""
    state = load_checkpoint(checkpoint_path, map_location=device) if state is None else state
    if state.get("kind") != "detector":
        raise ValueError(f"{checkpoint_path} is not a detector checkpoint (kind {state.get('kind')!r})")
    offline = None
    if state.get("rpn_kwargs") is not None:  # offline RPN: its weights are in state["model"] under rpn.net.*
        offline = ProposalNetwork(visual_of(state["rpn_model_name"], device), **state["rpn_kwargs"])
    emb = state["class_embeddings"][vocabulary]
    detector = build_detector(visual_of(state["model_name"], device), emb, offline_rpn=offline,
                              **state["detector_kwargs"]).to(device)
    detector.load_state_dict(state["model"])
    return detector.eval()


def visual_state_from_detector(detector_state: dict) -> dict:
    """The CLIP visual tower's state dict (open_clip names) inside a detector's `state_dict()`: the backbone's
    stem..layer3 ("backbone.*") and the box head's layer4 + attnpool ("roi_heads.box_head.*"), which keep their
    upstream names (see CLIPBackbone, CLIPBoxHead). Loads into `clip.visual` with strict=True."""
    out = {}
    for key, value in detector_state.items():
        for prefix in ("backbone.", "roi_heads.box_head."):
            if key.startswith(prefix):
                out[key[len(prefix):]] = value
    return out


def load_official_visual(visual: nn.Module, parts: official.DetectorParts, model_name: str) -> nn.Module:
    """An official detector's backbone (the whole ModifiedResNet) loaded strictly into open_clip's `visual`; an
    error that names the architecture the weights do fit."""
    try:
        visual.load_state_dict({k[len("visual."):]: v for k, v in parts.visual.items()}, strict=True)
    except RuntimeError as e:
        fits = guess_model_name(parts.visual)
        raise ValueError(f"the detector's backbone does not fit open_clip's {model_name!r} visual tower"
                         + (f"; it has the shapes of {fits!r}: pass --model_name {fits}" if fits else "")
                         + f" ({str(e)[:300]})") from None
    return visual


def detector_from_official(parts: official.DetectorParts, model_name: str, *, offline_rpn: ProposalNetwork,
                           class_embeddings: torch.Tensor | None = None, device="cpu",
                           **detector_kwargs) -> GeneralizedRCNN:
    """Our detector from an official fine-tuned RegionCLIP detector (`official.detector_parts`), in eval mode.

    Mapped: the CLIP ResNet (backbone = stem..layer3, box head = layer4 + attnpool, loaded strictly into open_clip's
    `visual`), the class-agnostic `bbox_pred`, and the class embeddings: the `test_cls_score` rows as the
    vocabulary, unless `class_embeddings` (K, D) replaces them. The official model's zero
    background embedding is our constant zero background logit. Not mapped: its Detectron2 R50 RPN, so the
    proposals come from `offline_rpn`, one of our ProposalNetworks (a frozen offline RPN, as the official one is)."""
    visual = load_official_visual(visual_of(model_name, device), parts, model_name)
    class_embeddings = parts.test_embeddings if class_embeddings is None else class_embeddings
    detector = build_detector(visual, class_embeddings, offline_rpn=offline_rpn, **detector_kwargs)
    detector.roi_heads.box_predictor.bbox_pred.load_state_dict(parts.bbox_pred, strict=True)
    return detector.to(device).eval()
