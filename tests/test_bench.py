"""benchmarks/run.py (make bench) at tiny sizes: every section runs, writes its tables, and its own checks bite."""
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import run as bench  # noqa: E402

from benchmarks import detector_ap, measure  # noqa: E402


def test_quick_bench_writes_every_cpu_section(tmp_path):
    res = bench.main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert set(saved) >= {"machine", "regions", "step_parts", "scaling", "text", "detector", "memory"}
    assert saved["machine"]["cores"] >= 1 and saved["machine"]["device"] == "cpu"
    for r in res["regions"]:
        assert r["whole_box_rel_err"] < 1e-4 and r["bound"] > 1.0 and r["ours_regions_per_s"] > 0
    for r in res["step_parts"]:
        assert {"teacher forward", "student forward", "student backward", "optimizer"} <= set(r["shares"])
        assert abs(sum(r["shares"].values()) - 1.0) < 1e-6 and 0 <= r["other_share"] <= 1
    flops = {r["value"]: r["gflops"] for r in res["scaling"] if r["vary"] == "regions"}
    assert flops[16] > flops[4]  # more regions, more arithmetic
    assert res["text"]["cache"]["files"] == 1
    assert res["detector"][0]["sampling"] == "ours" and len(res["detector"]) == len(bench.DETECTOR_SAMPLING)
    md = (tmp_path / "bench.md").read_text()
    assert "## 1. Region embeddings" in md and "## 7. GPU" in md and "Not run: no GPU" in md
    (tmp_path / "bench.md").unlink()
    assert bench.main(["render", "--out", str(tmp_path)]) == saved  # measures nothing, rewrites the same table
    assert (tmp_path / "bench.md").read_text() == md


def test_flop_bound_matches_arithmetic_on_rn_toy():
    """The bound is FLOPs(crops) / FLOPs(ours): R crops cost R whole-tower passes."""
    model, _ = measure.random_model("RN-toy", torch.device("cpu"))
    image = torch.randn(1, 3, 128, 128)
    boxes = torch.tensor([[0.0, 0.0, 64.0, 64.0], [10.0, 20.0, 100.0, 120.0]])
    with torch.no_grad():
        one = bench.count_flops(lambda: model.encode_image(image))
        crops = bench.count_flops(lambda: bench.crop_encode(model, image, boxes, 128))
    assert crops == 2 * one


def test_a_wrong_fast_path_stops_the_bench(monkeypatch):
    from regionclip_min import regions
    original = regions.RegionEncoder.head
    monkeypatch.setattr(regions.RegionEncoder, "head", lambda self, pooled: original(self, pooled) * 1.01)
    with pytest.raises(SystemExit, match="differs from encode_image"):
        bench.bench_regions(torch.device("cpu"), quick=True)


def test_bad_options_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="section numbers"):
        bench.main(["--only", "one", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="unknown"):
        bench.main(["detector-ap", "--settings", "fastest", "--init", __file__, "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--seeds takes integers"):
        bench.main(["detector-ap", "--seeds", "0,one", "--init", __file__, "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="not found"):
        bench.main(["detector-ap", "--init", str(tmp_path / "nope.pt"), "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="bench.json: cannot read"):
        bench.main(["render", "--out", str(tmp_path)])


def test_detector_ap_resumes_a_killed_run_of_the_same_settings_only(tmp_path):
    kw = bench.DETECTOR_SAMPLING["torchvision defaults"]
    init = tmp_path / "clip.pt"
    cfg = {"init": str(init), "max_steps": 300, "seed": 0, "box_batch_size_per_image": 512, "roi_sampling_ratio": 2,
           "rpn_post_nms_top_n_train": 2000, "rpn_pre_nms_top_n_train": 2000}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert detector_ap.same_run(tmp_path, init, 300, kw, finished=False)  # killed before results.json: resume it
    assert not detector_ap.same_run(tmp_path, init, 300, kw)  # not finished: not read as a result
    assert not detector_ap.same_run(tmp_path, init, 300, bench.DETECTOR_SAMPLING["ours"], finished=False)
    (tmp_path / "results.json").write_text("{}")
    assert detector_ap.same_run(tmp_path, init, 300, kw)
    assert not detector_ap.same_run(tmp_path, init, 300, kw, seed=1)  # another seed's run is not this one


def test_detector_ap_table_shows_the_closed_vocabulary_ap_when_recorded(tmp_path):
    ap50 = {"novel": 0.01, "base": 0.12, "all": 0.09}
    (tmp_path / "bench-detector-ap.json").write_text(json.dumps({"init": "clip.pt", "steps": 300, "runs": {
        "ours": {"train_seconds": 160, "ap50": ap50, "base_vocabulary_ap50": 0.784},
        "older record": {"train_seconds": 170, "ap50": ap50}}}))
    res = {"machine": {"date": "d", "processor": "p", "cores": 2, "torch": "t", "torch_threads": 2, "device": "cpu"},
           "wall_seconds": 1.0, "detector": [{"sampling": "ours", "box_batch_size_per_image": 32, "sampling_ratio": 0,
                                              "rpn_post_nms_top_n_train": 200, "step_s": 0.5,
                                              "relative_step_time": 1.0}]}
    md = bench.markdown(res, tmp_path)  # this run's AP table (the folder's), not the committed reference
    assert "| ours | 0 | 160 | 1.0 | 12.0 | 9.0 | 78.4 |" in md and "| older record | 0 | 170 | 1.0 | 12.0 | 9.0 | — |" in md


def test_detector_ap_table_gives_mean_and_std_over_the_seeds_of_each_setting(tmp_path):
    def rec(novel, seconds):
        return {"train_seconds": seconds, "ap50": {"novel": novel, "base": 0.8, "all": 0.7},
                "base_vocabulary_ap50": None}
    path = tmp_path / "bench-detector-ap.json"
    path.write_text(json.dumps({"init": "clip.pt", "steps": 300, "runs": {
        "ours": {"seeds": {"0": rec(0.50, 100), "1": rec(0.60, 200), "2": rec(0.55, 300)}},
        "old": {"train_seconds": 400, "ap50": {"novel": 0.4, "base": 0.8, "all": 0.7}}}}))
    a = detector_ap.read_detector_ap(path)
    assert list(a["runs"]["old"]["seeds"]) == ["0"]  # a record from before seeds reads as seed 0
    md = detector_ap.detector_ap_table(a)
    assert "| ours | 0,1,2 | 200 | 55.0 ± 5.0 | 80.0 ± 0.0 | 70.0 ± 0.0 | — |" in md
    assert "| old | 0 | 400 | 40.0 | 80.0 | 70.0 | — |" in md
    path.write_text("{not json")
    with pytest.raises(SystemExit, match="bench-detector-ap.json: not valid JSON"):
        detector_ap.read_detector_ap(path)
