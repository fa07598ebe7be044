"""make toy-worlds on a tiny budget: each world is generated with its stats, stage 0 runs at a fixed single thread,
every row is evaluated, and the table names each row and whether it meets the Fig. 1(b) targets."""
import json

import pytest

from benchmarks.toy import worlds as toy_worlds
from benchmarks.toy.pipeline import Runner


def test_worlds_table_from_tiny_runs(tmp_path):
    rows = [("world-c", 0, 2), ("default", 1, 2)]
    steps = toy_worlds.steps_for(rows, tmp_path / "data", tmp_path / "runs", tmp_path / "res",
                                 world_size={"seed": 0, "num_train": 72, "num_val": 16})
    assert all(s.threads == 1 for s in steps if not s.name.startswith("world-"))  # never raised by the runner
    Runner(tmp_path / "res" / "worlds", jobs=2).run(steps)
    info = json.loads((tmp_path / "data" / "world-c" / "captions_train.json").read_text())["info"]
    assert info["stats"]["scene_size"] == [26, 56]  # generated as world C
    out = toy_worlds.table(rows, tmp_path / "res")
    assert [(r["world"], r["seed"], r["steps"]) for r in out["rows"]] == rows
    assert all(0 <= r["gt_box_top1"]["all"] <= 100 and len(r["gt_box_right_per_category"]) >= 1 for r in out["rows"])
    md = (tmp_path / "res" / "stage0-worlds.md").read_text()
    assert md.count("| world C (docs/DESIGN.md §5.1) | 0 | 2 |") == 1 and "this project's world" in md
    assert "met |" in md  # each row says whether the targets are met


def test_only_names_known_worlds(tmp_path):
    with pytest.raises(SystemExit, match="unknown worlds"):
        toy_worlds.main(["--only", "nope:0:10", "--results", str(tmp_path)])
    with pytest.raises(SystemExit, match="world:seed:steps"):
        toy_worlds.main(["--only", "default:0", "--results", str(tmp_path)])
