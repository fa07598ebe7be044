"""LVIS repeat-factor sampling (steps.repeat_factors, steps.RepeatFactorSampler), on a small made-up instances file."""
import json
import math

import pytest
import torch

from regionclip_min.data import DetectionDataset
from regionclip_min.steps import RepeatFactorSampler, repeat_factors


def _instances(tmp_path):
    """10 images of 100 x 100 px: 'common' is in images 0-7, 'rare' only in image 8, image 9 has no box."""
    images = [{"id": i, "file_name": f"{i}.png", "width": 100, "height": 100} for i in range(10)]
    anns = [{"id": i + 1, "image_id": i, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0}
            for i in range(8)]
    anns.append({"id": 100, "image_id": 8, "category_id": 2, "bbox": [5, 5, 30, 30], "area": 900, "iscrowd": 0})
    anns.append({"id": 101, "image_id": 8, "category_id": 2, "bbox": [50, 50, 30, 30], "area": 900, "iscrowd": 0})
    cats = [{"id": 1, "name": "common"}, {"id": 2, "name": "rare"}]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def test_factors_are_the_lvis_formula_worked_by_hand(tmp_path):
    ds = DetectionDataset(_instances(tmp_path), tmp_path)
    # f_common = 8/10, f_rare = 1/10 (two boxes in one image count once). With t = 0.4:
    #   r_common = max(1, sqrt(0.4 / 0.8)) = 1;  r_rare = max(1, sqrt(0.4 / 0.1)) = 2;  an image without boxes: 1
    r = repeat_factors(ds.image_labels(), 0.4)
    assert r.tolist() == [1.0] * 8 + [2.0, 1.0]
    # t = 0.9: r_common = sqrt(0.9 / 0.8) = 1.0607, r_rare = sqrt(9) = 3
    r = repeat_factors(ds.image_labels(), 0.9)
    assert r[:8].tolist() == pytest.approx([math.sqrt(0.9 / 0.8)] * 8) and r[8] == pytest.approx(3.0) and r[9] == 1.0
    # an image holding both categories takes the larger factor
    assert repeat_factors([[1, 2], [1], [1], [1]], 0.5).tolist() == pytest.approx([2 ** 0.5, 1.0, 1.0, 1.0])


def test_sampler_repeats_rare_images_as_often_as_their_factor_and_is_a_function_of_seed_and_step():
    factors = torch.tensor([1.0, 1.0, 1.0, 2.5], dtype=torch.float64)  # image 3 appears 2 or 3 times per epoch
    sampler = RepeatFactorSampler(factors, batch=1, rank=0, world=1, seed=0, start=0, stop=4000)
    seen = [i for batch in sampler for i in batch]
    assert len(seen) == 4000
    share = seen.count(3) / len(seen)
    assert abs(share - 2.5 / 5.5) < 0.02  # 2.5 of the 5.5 samples of an average epoch
    for e in range(20):  # stochastic rounding: floor or ceil, never anything else
        assert sampler.epoch(e).count(3) in (2, 3) and all(sampler.epoch(e).count(i) == 1 for i in range(3))
    resumed = RepeatFactorSampler(factors, batch=1, rank=0, world=1, seed=0, start=1234, stop=4000)
    assert [i for batch in resumed for i in batch] == seen[1234:]  # --resume draws what an uninterrupted run draws
    other = RepeatFactorSampler(factors, batch=1, rank=0, world=1, seed=1, start=0, stop=4000)
    assert [i for batch in other for i in batch] != seen


def test_ranks_share_out_each_global_batch():
    factors = torch.tensor([1.0, 3.0, 1.0, 1.0, 2.0, 1.0], dtype=torch.float64)
    ranks = [list(RepeatFactorSampler(factors, batch=2, rank=r, world=2, seed=5, start=0, stop=3)) for r in (0, 1)]
    one = list(RepeatFactorSampler(factors, batch=4, rank=0, world=1, seed=5, start=0, stop=3))
    assert [a + b for a, b in zip(*ranks)] == one  # rank r takes the r-th slice of the same global batch
