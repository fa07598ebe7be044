"""The method in one place (regionclip_min/regionclip.py): RegionCLIP's forward returns its losses by name, each
one weighted in weight_dict, and the training loop (engine.train) needs nothing else to train it."""
import torch
import torch.nn.functional as F

from regionclip_min.clip_model import load_clip
from regionclip_min.configs.pretrain import PretrainConfig, loss_weights
from regionclip_min.proposals import PROPOSERS
from regionclip_min.regionclip import STUDENT_TRAINS, RegionCLIP, student_and_teacher
from regionclip_min.regions import RegionEncoder


def _model(weights=None):
    torch.manual_seed(0)
    clip, tok = load_clip("RN-toy", None)
    student, teacher = student_and_teacher(clip)
    concepts = F.normalize(torch.randn(5, teacher.text_projection.shape[1]), dim=-1)  # (C, D)
    weights = weights or loss_weights(PretrainConfig())
    return RegionCLIP(student.visual, teacher, RegionEncoder(teacher.visual), tok, concepts,
                      PROPOSERS["random"](per_image=3), tau=0.01, weights=weights, region_scale=1.0), student, teacher


def _batch(n=2, size=128):
    return {"images": torch.randn(n, 3, size, size), "captions": [["a red circle", "a circle"]] * n,
            "sizes": torch.full((n, 2), size), "image_ids": torch.arange(n), "orig_sizes": torch.full((n, 2), size)}


def test_every_loss_of_the_forward_has_its_weight_and_the_config_names_it():
    model, _, _ = _model()
    out = model(_batch(), torch.Generator().manual_seed(0))
    losses = {k for k in out if k.startswith("loss_")}
    assert losses == set(model.weight_dict) == set(RegionCLIP.LOSS_WEIGHTS)
    assert set(RegionCLIP.LOSS_WEIGHTS.values()) == set(loss_weights(PretrainConfig()))  # each has a --w_* option
    assert all(torch.isfinite(out[k]) for k in losses) and 0.0 <= out["kept"] <= 1.0


def test_only_the_students_trained_parts_get_gradients_and_a_zero_weight_silences_its_loss():
    model, student, teacher = _model({"w_region": 0.0, "w_distill": 0.0, "w_image": 1.0})
    out = model(_batch(), torch.Generator().manual_seed(0))
    sum(model.weight_dict[k] * v for k, v in out.items() if k.startswith("loss_")).backward()
    trained = {n.split(".")[0] for n, p in student.visual.named_parameters() if p.grad is not None}
    assert trained <= set(STUDENT_TRAINS) and trained
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for n, p in student.named_parameters() if not n.startswith("visual."))
    assert model.weight_dict == {"loss_region_contrastive": 0.0, "loss_distill": 0.0, "loss_image_contrastive": 1.0}


def test_the_same_generator_gives_the_same_losses():
    model, _, _ = _model()
    batch = _batch()
    a = model(batch, torch.Generator().manual_seed(3))
    b = model(batch, torch.Generator().manual_seed(3))
    c = model(batch, torch.Generator().manual_seed(4))  # other random boxes and captions
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("loss_"))
    assert any(not torch.equal(a[k], c[k]) for k in a if k.startswith("loss_"))
