"""Running a pipeline of the project's commands as subprocesses: dependencies, skip-if-done, two lanes on two cores.

A `Step` is one command (python args), the file that proves it finished, and the steps it needs. `Runner.run`
starts steps in list order as soon as what they need has finished, up to `jobs` at a time; the list order is the
priority, so put the critical path first. Why lanes: on a 2-core machine one process at 2 threads trains only 1.3x
faster than at 1 thread, while two 1-thread processes run at full speed each (docs/RESULTS.md), so two independent
steps side by side finish ~1.5x sooner than one after the other.

Every step runs at a fixed thread count: its own `threads`, else the runner's (cores // jobs). Float rounding
depends on the thread count, so a step gives the same numbers on every run, whatever ran beside it. Steps side by
side never hold more threads than jobs x the runner's count: a 2-thread stage 0 takes both lanes of a 2-core
machine, and the ready steps behind it in the list wait for it to start (so a long 2-thread step is not starved).

Each step's stdout goes to <results>/logs/<name>.log. With one lane its progress bar (stderr) goes to the terminal;
with two, stderr joins the log and one bar here counts finished steps, its postfix showing each running step's own
progress read from its log. Wall time per step, its threads, and the peak memory of the whole process tree (sum of
PSS, i.e. shared library pages counted once, and the largest single RSS) go to <results>/timings.json.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm import tqdm

from regionclip_min.checkpoint import run_files

ROOT = Path(__file__).resolve().parents[2]
# glibc's allocator keeps freed memory instead of handing it back to the system after every step (a variable set
# in the caller's environment wins): stage 0 ran 15% faster with bitwise-equal weights (docs/RESULTS.md)
MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(1 << 32), "MALLOC_TRIM_THRESHOLD_": str(1 << 32),
          "MALLOC_TOP_PAD_": str(1 << 30)}


@dataclass
class Step:
    name: str  # unique; its log is logs/<name>.log and its timing timings.json[name]
    what: str  # one line for the terminal
    output: Path  # exists <=> the step has finished
    cmd: list  # python arguments, run from the repository root
    run_dir: Path | None = None  # a training run: resumed if it holds checkpoints, --overwrite with force
    after: tuple = ()  # names of the steps this one needs
    threads: int | None = None  # its thread count; None: the runner's


def prefixed(steps: list[Step], prefix: str) -> list[Step]:
    """The same steps named `prefix` + name (and needing the prefixed names), so that the pipelines of several
    worlds run as one list in one Runner without their names colliding."""
    return [replace(s, name=prefix + s.name, after=tuple(prefix + a for a in s.after)) for s in steps]


class Runner:
    """Runs Steps as subprocesses, skipping those whose output exists, and records wall times and peak memory."""

    def __init__(self, results: Path, force: bool = False, jobs: int = 1, threads: int | None = None):
        self.results, self.force, self.jobs = Path(results), force, max(1, int(jobs))
        self.threads = threads or max(1, (os.cpu_count() or 1) // self.jobs)  # each step's, unless it has its own
        self.cores = self.jobs * self.threads  # the threads that may run at once (a larger step runs alone)
        (self.results / "logs").mkdir(parents=True, exist_ok=True)
        self.timings_path = self.results / "timings.json"
        self.timings = json.loads(self.timings_path.read_text()) if self.timings_path.is_file() else {}
        self.memory = MemoryWatch()
        self.ran: list[str] = []  # the steps the last run() call ran to the end

    def _args(self, s: Step) -> list[str]:
        args = [str(a) for a in s.cmd]
        if s.run_dir is not None:
            args += ["--overwrite", "true"] if self.force else (
                # a folder an earlier (perhaps killed) run wrote to, as the script's own check sees it: resumed
                # from its newest checkpoint, or from step 0 if it was killed before the first one
                ["--resume", "true"] if run_files(s.run_dir) else [])
        return args

    def run(self, steps: list[Step]) -> None:
        names = [s.name for s in steps]
        if len(set(names)) != len(names):
            raise ValueError(f"step names repeat: {sorted(n for n in set(names) if names.count(n) > 1)}")
        unknown = {a for s in steps for a in s.after} - set(names)
        if unknown:
            raise ValueError(f"steps need steps that are not in the list: {sorted(unknown)}")
        done, todo = set(), []
        self.ran = []
        for s in steps:
            if s.output.exists() and not self.force:
                seconds = self.timings.get(s.name, {}).get("seconds", "?")
                print(f"[{s.name}] {s.what}: done before ({s.output}; {seconds} s then), skipped")
                done.add(s.name)
            else:
                todo.append(s)
        if not todo:
            return
        running: dict[str, tuple[Step, subprocess.Popen, float, Path, int]] = {}
        bar = tqdm(total=len(todo), desc="pipeline steps", unit="step", dynamic_ncols=True,
                   disable=self.jobs == 1 or None)
        self.memory.start()
        try:
            while todo or running:
                for s in [s for s in todo if set(s.after) <= done]:  # ready, in priority order
                    threads = s.threads or self.threads
                    busy = sum(r[-1] for r in running.values())
                    if running and (len(running) >= self.jobs or busy + threads > self.cores):
                        break  # the first that does not fit waits, and so does every step behind it
                    todo.remove(s)
                    running[s.name] = (s, *self._launch(s, threads, bar), threads)
                if not running:
                    raise RuntimeError(f"steps wait on each other: {[s.name for s in todo]}")  # a cycle
                time.sleep(0.2)
                for name, (s, proc, t0, log, threads) in list(running.items()):
                    if proc.poll() is None:
                        continue
                    del running[name]
                    seconds = round(time.time() - t0, 1)
                    if proc.returncode != 0:
                        for other in running.values():
                            other[1].terminate()
                        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
                        others = f" (stopped {', '.join(running)}: they resume on the next call)" if running else ""
                        raise SystemExit(f"[{name}] failed (exit {proc.returncode}) after {seconds} s{others}; the "
                                         f"end of {log}:\n{tail}")
                    done.add(name)
                    self.ran.append(name)
                    self.timings[name] = {"seconds": seconds, "threads": threads,
                                          "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
                    self.timings_path.write_text(json.dumps(self.timings, indent=2))
                    bar.update(1)
                    (bar.write if self.jobs > 1 else print)(f"[{name}] done in {seconds} s ({threads} thread"
                                                            f"{'s' if threads > 1 else ''})")
                if self.jobs > 1:
                    bar.set_postfix_str(", ".join(f"{n} {_progress(r[3])}" for n, r in running.items()), refresh=False)
        finally:
            for _, proc, *_ in running.values():
                if proc.poll() is None:
                    proc.terminate()
            bar.close()
            self.memory.stop()

    def _launch(self, s: Step, threads: int, bar) -> tuple[subprocess.Popen, float, Path]:
        args = self._args(s)
        log = self.results / "logs" / f"{s.name}.log"
        say = bar.write if self.jobs > 1 else print
        say(f"[{s.name}] {s.what} ({threads} thread{'s' if threads > 1 else ''})\n  $ python {' '.join(args)}\n"
            f"  log: {log}")
        env = {**MALLOC, **os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
               "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        f = open(log, "w")
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=f,
                                stderr=subprocess.STDOUT if self.jobs > 1 else None)
        f.close()  # the child holds its own descriptor
        sys.stdout.flush()
        return proc, time.time(), log


def _progress(log: Path) -> str:
    """'n/total' of the last tqdm update in a log, or '' (read from the last 4 kB)."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 4096))
            tail = f.read().decode(errors="replace")
    except OSError:
        return ""
    hits = re.findall(r"(\d+)/(\d+) \[", tail)
    return f"{hits[-1][0]}/{hits[-1][1]}" if hits else ""


# ---- memory ---------------------------------------------------------------------------------------------------
def tree_memory(root: int | None = None) -> tuple[int, int]:
    """(sum of PSS, largest RSS) in kB over `root` (default: this process) and all its descendants, from /proc.
    PSS counts a page shared by n processes as 1/n in each, so the sum is the physical memory the tree holds
    (torch's libraries, ~0.9 GB of RSS in every process, are mostly shared pages). (0, 0) where /proc is missing."""
    root = os.getpid() if root is None else root
    parent = {}
    for d in Path("/proc").glob("[0-9]*"):
        try:
            parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    tree, frontier = {root}, [root]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier and p not in tree]
        tree.update(kids)
        frontier = kids
    pss = rss = 0
    for pid in tree:
        try:
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
        except (OSError, ValueError):
            continue
        pss += int(fields.get("Pss", "0 kB").split()[0])
        rss = max(rss, int(fields.get("Rss", "0 kB").split()[0]))
    return pss, rss


class MemoryWatch:
    """Samples `tree_memory` every `every` seconds in a thread between start() and stop(); keeps the peaks (kB).
    One sample costs ~0.1 s of CPU with four 1-2 GB processes (the kernel walks their page tables for PSS): every
    second that took 10-25% of a core from the pipeline it measures; every 5 s, 2-5%. Training processes hold their
    peak for minutes, so 5 s misses little."""

    def __init__(self, every: float = 5.0):
        self.every, self.peak_pss_kb, self.peak_rss_kb = every, 0, 0
        self._stop, self._thread = threading.Event(), None

    def _loop(self):
        while not self._stop.is_set():
            pss, rss = tree_memory()
            self.peak_pss_kb, self.peak_rss_kb = max(self.peak_pss_kb, pss), max(self.peak_rss_kb, rss)
            self._stop.wait(self.every)

    def start(self):
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
