"""The step runner of the toy benchmark: dependencies, priority order, two lanes, skip-if-done, failures, memory."""
import json
import os
import sys
import time

import pytest

from benchmarks.toy.pipeline import Runner, Step, tree_memory


def _touch_step(tmp_path, name, after=(), sleep=0.0, code=0):
    """A step that sleeps, writes '<start> <end> <OMP_NUM_THREADS>' to its output and exits with `code`."""
    out = tmp_path / f"{name}.out"
    prog = (f"import os, time; t = time.time(); time.sleep({sleep}); "
            f"open({str(out)!r}, 'w').write(f'{{t}} {{time.time()}} {{os.environ[\"OMP_NUM_THREADS\"]}}') "
            f"if {code} == 0 else None; raise SystemExit({code})")
    return Step(name, f"test step {name}", out, ["-c", prog], after=tuple(after))


def _span(tmp_path, name):
    start, end, threads = (tmp_path / f"{name}.out").read_text().split()
    return float(start), float(end), int(threads)


def test_two_lanes_run_independent_steps_side_by_side_and_respect_dependencies(tmp_path):
    steps = [_touch_step(tmp_path, "a", sleep=0.3), _touch_step(tmp_path, "b", ["a"], sleep=1.0),
             _touch_step(tmp_path, "c", ["a"], sleep=1.0), _touch_step(tmp_path, "d", ["b", "c"])]
    r = Runner(tmp_path / "res", jobs=2)
    r.run(steps)
    a, b, c, d = (_span(tmp_path, n) for n in "abcd")
    assert a[1] <= b[0] and a[1] <= c[0]  # after their dependency
    assert b[0] < c[1] and c[0] < b[1]  # b and c overlap in time
    assert d[0] >= max(b[1], c[1])
    # every step at the runner's fixed count, alone or not: float rounding must not depend on the schedule
    assert a[2] == b[2] == c[2] == d[2] == r.threads == max(1, os.cpu_count() // 2)
    timings = json.loads((tmp_path / "res" / "timings.json").read_text())
    assert set(timings) == set("abcd") and all(t["seconds"] > 0 for t in timings.values())
    assert (tmp_path / "res" / "logs" / "b.log").is_file()


def test_a_step_with_fixed_threads_keeps_them(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    pinned, short = _touch_step(tmp_path, "pinned", sleep=1.0), _touch_step(tmp_path, "short")
    pinned.threads = 3  # its own count, not the runner's 2 per lane
    Runner(tmp_path / "res", jobs=2).run([pinned, short])
    assert _span(tmp_path, "pinned")[2] == 3 and _span(tmp_path, "short")[2] == 2
    timings = json.loads((tmp_path / "res" / "timings.json").read_text())
    assert timings["pinned"]["threads"] == 3 and timings["short"]["threads"] == 2


def test_steps_side_by_side_never_hold_more_threads_than_the_lanes(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)  # two lanes of one thread
    big1, big2 = _touch_step(tmp_path, "big1", sleep=0.5), _touch_step(tmp_path, "big2", sleep=0.5)
    big1.threads = big2.threads = 2  # each takes both cores
    small = _touch_step(tmp_path, "small", sleep=0.5)
    Runner(tmp_path / "res", jobs=2).run([big1, big2, small])
    b1, b2, sm = (_span(tmp_path, n) for n in ("big1", "big2", "small"))
    assert b1[1] <= b2[0] and b2[1] <= sm[0]  # one after the other, the 1-thread step waiting behind big2
    assert (b1[2], b2[2], sm[2]) == (2, 2, 1)


def test_one_lane_keeps_list_order_and_skips_finished_steps(tmp_path, capsys):
    steps = [_touch_step(tmp_path, "x"), _touch_step(tmp_path, "y"), _touch_step(tmp_path, "z", ["x"])]
    Runner(tmp_path / "res", jobs=1).run(steps)
    x, y, z = (_span(tmp_path, n) for n in "xyz")
    assert x[1] <= y[0] <= y[1] <= z[0]
    capsys.readouterr()
    (tmp_path / "y.out").unlink()
    r = Runner(tmp_path / "res", jobs=1)
    r.run(steps)
    printed = capsys.readouterr().out
    assert printed.count("skipped") == 2 and "[y] done" in printed and r.ran == ["y"]


def test_a_failing_step_stops_the_run_names_it_and_stops_its_neighbour(tmp_path):
    steps = [_touch_step(tmp_path, "slow", sleep=30), _touch_step(tmp_path, "bad", code=3),
             _touch_step(tmp_path, "later", ["bad"])]
    t0 = time.time()
    with pytest.raises(SystemExit, match=r"\[bad\] failed \(exit 3\).*stopped slow"):
        Runner(tmp_path / "res", jobs=2).run(steps)
    assert time.time() - t0 < 20  # the 30-s neighbour was terminated, not waited for
    assert not (tmp_path / "later.out").exists()


def test_bad_step_lists_are_refused(tmp_path):
    r = Runner(tmp_path / "res")
    with pytest.raises(ValueError, match="repeat"):
        r.run([_touch_step(tmp_path, "a"), _touch_step(tmp_path, "a")])
    with pytest.raises(ValueError, match="not in the list"):
        r.run([_touch_step(tmp_path, "a", ["nope"])])
    with pytest.raises(RuntimeError, match="wait on each other"):
        r.run([_touch_step(tmp_path, "p", ["q"]), _touch_step(tmp_path, "q", ["p"])])


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_tree_memory_counts_children(tmp_path):
    import subprocess
    own_pss, own_rss = tree_memory()
    assert own_pss > 10_000 and own_rss >= own_pss // 2  # this python with torch imported: > 10 MB
    child = subprocess.Popen([sys.executable, "-c", "x = bytearray(200 * 2**20); import time; time.sleep(5)"])
    try:
        time.sleep(1.5)
        pss, rss = tree_memory()
        assert pss > own_pss + 150_000  # the child's 200 MB is counted
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize("left, flag", [((), []), (("metrics.jsonl",), ["--resume", "true"]),
                                        (("metrics.jsonl", "ckpt_0000100.pt"), ["--resume", "true"])])
def test_a_run_folder_left_by_a_killed_run_is_resumed(tmp_path, left, flag):
    # a run killed before its first checkpoint leaves only metrics.jsonl; without --resume the script would refuse
    # the folder, and the whole benchmark would stop there
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in left:
        (run_dir / name).write_text("")
    step = Step("train", "a training run", tmp_path / "out", ["train.py", "--out_dir", str(run_dir)], run_dir=run_dir)
    args = Runner(tmp_path / "res")._args(step)
    assert args == ["train.py", "--out_dir", str(run_dir)] + flag
    assert Runner(tmp_path / "res2", force=True)._args(step)[-2:] == ["--overwrite", "true"]
