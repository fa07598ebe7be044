"""regionclip_min/plots.py: the numbers behind each picture, and that each picture is written."""
import json

import pytest
import torch

from regionclip_min import plots


def test_heatmap_is_the_best_score_of_the_boxes_covering_each_pixel():
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [2.0, 2.0, 6.0, 6.0]])
    hm = plots.heatmap(boxes, torch.tensor([0.3, 0.8]), (8, 8))
    assert hm[0, 0] == pytest.approx(0.3) and hm[3, 3] == pytest.approx(0.8) and hm[5, 5] == pytest.approx(0.8)
    assert hm[7, 7] == 0 and hm[1, 5] == 0  # covered by neither box


def test_pca_finds_the_direction_of_largest_spread_with_a_fixed_sign():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g) * torch.tensor([10.0, 3.0, 0.1, 0.1, 0.1])
    y = plots.pca_2d(x)
    assert y.shape == (200, 2)
    assert float(y[:, 0].std()) == pytest.approx(float(x[:, 0].std()), rel=0.05)
    assert float(y[:, 1].std()) == pytest.approx(float(x[:, 1].std()), rel=0.1)
    assert torch.equal(plots.pca_2d(-x), y)  # the sign does not depend on the input's


def test_smoothing_is_a_trailing_mean():
    assert plots._smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]


def test_every_picture_is_written(tmp_path):
    m = tmp_path / "run" / "metrics.jsonl"
    m.parent.mkdir()
    m.write_text("\n".join(json.dumps({"step": s, "total": 3 - s / 10, "loss_distill": 1 - s / 20, "lr": 1e-4})
                           for s in range(1, 11)) + "\n")
    out = plots.main([str(m.parent), "--out", str(tmp_path / "loss.png")])
    names = ["circle", "star", "heart"]
    emb = torch.randn(30, 8)
    labels = torch.arange(30) % 3
    plots.embedding_map({"A": (emb, labels), "B": (emb * 2, labels)}, names, [False, False, True],
                        tmp_path / "map.png")
    plots.concept_heatmaps([("img", torch.rand(3, 16, 16), torch.tensor([[0.0, 0.0, 8.0, 8.0]]),
                             torch.tensor([[0.2, 0.5, 0.3]]))], names, [False, False, True], tmp_path / "heat.png")
    for p in (out, tmp_path / "map.png", tmp_path / "heat.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1}\nnot json\n')
    with pytest.raises(SystemExit, match="bad.jsonl, line 2"):
        plots.read_metrics(bad)
    with pytest.raises(SystemExit, match="no such metrics file"):
        plots.main([str(tmp_path / "nowhere")])
