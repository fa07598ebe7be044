"""LVIS's federated evaluation (scoring.detection_ap on an LVIS-format json) against plain COCOeval, on a file
small enough to work out by hand."""
import copy

import pytest

from regionclip_min.scoring import detection_ap, is_federated, ovd_ap, top_per_image


def _lvis():
    """Two categories, two images. Image 1 has a box of A and says nothing of B. Image 2 has a box of B, checked
    A as absent (negative), and marks B not exhaustively annotated."""
    cats = [{"id": 1, "name": "a", "frequency": "f"}, {"id": 2, "name": "b", "frequency": "r"}]
    images = [{"id": 1, "file_name": "1.jpg", "width": 100, "height": 100, "neg_category_ids": [],
               "not_exhaustive_category_ids": []},
              {"id": 2, "file_name": "2.jpg", "width": 100, "height": 100, "neg_category_ids": [1],
               "not_exhaustive_category_ids": [2]}]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30]},
            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [50, 50, 30, 30]}]
    return {"images": images, "annotations": anns, "categories": cats}


DETECTIONS = [
    {"image_id": 2, "category_id": 1, "bbox": [0, 50, 20, 20], "score": 0.95},  # A on image 2, where A is negative
    {"image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "score": 0.90},  # A found on image 1
    {"image_id": 2, "category_id": 2, "bbox": [0, 0, 20, 20], "score": 0.85},    # B, no box there, image 2
    {"image_id": 1, "category_id": 2, "bbox": [60, 60, 20, 20], "score": 0.80},  # B on image 1, never checked for B
    {"image_id": 2, "category_id": 2, "bbox": [50, 50, 30, 30], "score": 0.70},  # B found on image 2
]


def test_federated_and_plain_cocoeval_disagree_as_worked_out_by_hand():
    """Every true detection is exact (IoU 1), so AP = AP50 and each category's AP is its precision at recall 1.

    A, plain and federated alike: its false positive on image 2 (A is a checked negative there) outranks its one
    true positive: precision 1/2, AP 0.5.
    B, plain COCOeval: two false positives (image 2's empty box, image 1's box) outrank the true one: AP 1/3.
    B, federated: image 1 was never checked for B, so that detection is dropped; B is not exhaustively annotated
    on image 2, so its unmatched box there is ignored: only the true positive is left, AP 1.
    B, federated, with image 2 exhaustive for B: that unmatched box now counts, AP 1/2.
    """
    gt = _lvis()
    assert is_federated(gt)
    plain = {k: v for k, v in gt.items()}
    plain["images"] = [{k: v for k, v in im.items() if "category_ids" not in k} for im in gt["images"]]
    assert not is_federated(plain)
    coco = detection_ap(plain, DETECTIONS, groups={"r": [2], "f": [1], "all": [1, 2]}, max_dets=300)
    lvis = detection_ap(gt, DETECTIONS, groups={"r": [2], "f": [1], "all": [1, 2]}, max_dets=300)
    assert coco["protocol"] == "coco" and lvis["protocol"] == "lvis-federated"
    assert coco["per_category"][1]["ap"] == pytest.approx(0.5) and lvis["per_category"][1]["ap"] == pytest.approx(0.5)
    assert coco["per_category"][2]["ap"] == pytest.approx(1 / 3)
    assert lvis["per_category"][2]["ap"] == pytest.approx(1.0)
    assert coco["ap"]["all"] == pytest.approx((0.5 + 1 / 3) / 2) and lvis["ap"]["all"] == pytest.approx(0.75)
    assert lvis["ap50"] == pytest.approx(lvis["ap"])
    exhaustive = copy.deepcopy(gt)
    exhaustive["images"][1]["not_exhaustive_category_ids"] = []
    assert detection_ap(exhaustive, DETECTIONS, max_dets=300)["per_category"][2]["ap"] == pytest.approx(0.5)


def test_ovd_ap_reports_apr_apc_apf_by_the_federated_protocol():
    m = ovd_ap(_lvis(), DETECTIONS, novel_ids=[2], base_ids=[1], max_dets=300)
    assert m["protocol"] == "lvis-federated"
    assert m["lvis"]["APr"] == pytest.approx(1.0) and m["lvis"]["APf"] == pytest.approx(0.5)
    assert m["lvis"]["APc"] != m["lvis"]["APc"]  # no common category: undefined (nan), not 0
    assert m["lvis"]["AP"] == pytest.approx(0.75) and m["ap50"]["novel"] == pytest.approx(1.0)


def test_at_most_max_dets_per_image_over_all_categories():
    """LVIS keeps an image's 300 best detections over all categories; here 2: image 2 keeps its 0.95 and 0.85.
    Its true B box (0.70) is cut, so B has no true positive left: AP 0."""
    kept = top_per_image(DETECTIONS, 2)
    assert sorted(r["score"] for r in kept if r["image_id"] == 2) == [0.85, 0.95] and len(kept) == 4
    assert detection_ap(_lvis(), DETECTIONS, max_dets=2)["per_category"][2]["ap"] == pytest.approx(0.0)
