"""Config parsing (docs/DESIGN.md §6) and checkpoints (atomic, safe loading, RNG round trip)."""
import dataclasses
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from regionclip_min.checkpoint import (latest_checkpoint, link_checkpoint, load_checkpoint, prune_checkpoints, rng_state,
                                       save_checkpoint, set_rng_state, checkpoint_path)
from regionclip_min.cli import config_from_dict, config_to_dict, flags, given, parse_config, preset_of, run_main


@dataclasses.dataclass
class Cfg:
    # ---- optimisation
    lr: float = dataclasses.field(default=1e-3, metadata={"help": "peak learning rate"})
    max_steps: int = 10
    use_flip: bool = True
    # ---- model
    model_name: str = "RN-toy"
    init: str | None = None


PRESETS = {"big": {"_doc": "more steps", "max_steps": 1000, "model_name": "RN50"}}


def test_defaults_preset_then_cli_overrides():
    cfg, preset = parse_config(Cfg, [], PRESETS)
    assert cfg == Cfg() and preset is None
    cfg, preset = parse_config(Cfg, ["--preset", "big", "--lr", "0.5", "--use-flip", "false", "--init=none"], PRESETS)
    assert preset == "big"
    assert (cfg.max_steps, cfg.model_name, cfg.lr, cfg.use_flip, cfg.init) == (1000, "RN50", 0.5, False, None)
    cfg, _ = parse_config(Cfg, ["--max_steps", "7", "--init", "runs/x.pt"], PRESETS)
    assert cfg.max_steps == 7 and cfg.init == "runs/x.pt"


@pytest.mark.parametrize("argv", [["--max_steps", "1.5"], ["--lr", "fast"], ["--use_flip", "maybe"],
                                  ["--no_such_field", "1"], ["--preset", "nope"], ["--max"]])
def test_bad_overrides_are_rejected(argv, capsys):
    with pytest.raises(SystemExit) as e:
        parse_config(Cfg, argv, PRESETS)
    assert e.value.code == 2


def test_help_lists_every_field_with_default(capsys):
    with pytest.raises(SystemExit):
        parse_config(Cfg, ["--help"], PRESETS)
    out = capsys.readouterr().out
    for f in dataclasses.fields(Cfg):
        assert f"--{f.name}" in out
    assert "peak learning rate" in out and "0.001" in out and "big" in out


def test_help_with_a_preset_shows_its_values_and_the_given_fields_are_known(capsys):
    with pytest.raises(SystemExit):
        parse_config(Cfg, ["--preset", "big", "--help"], PRESETS, description="Title.\n\n    python x.py --lr 1")
    out = capsys.readouterr().out
    assert "(preset: 1000; default: 10)" in out and "    python x.py --lr 1" in out  # examples kept as typed
    cfg, _ = parse_config(Cfg, ["--preset", "big", "--lr", "0.5"], PRESETS)
    assert given(cfg) == {"lr"} and preset_of(cfg) == "big" and config_to_dict(cfg)["lr"] == 0.5
    assert flags(cfg, ("lr", "max_steps", "use_flip")) == "--lr 0.5 --max_steps 1000"  # only what differs


@pytest.mark.parametrize("script", ["train_pretrain.py", "train_detect.py", "eval_zeroshot.py"])
@pytest.mark.parametrize("argv, code", [(["--help"], 0), (["--no_such_option", "1"], 2)])
def test_scripts_answer_help_and_typos_before_importing_torch(script, argv, code):
    """`--help` and a mistyped option are answered from the stdlib-only configs, without the ~6 s torch import."""
    probe = (f"import runpy, sys\nsys.argv = [{script!r}] + {argv!r}\n"
             f"try:\n    runpy.run_path({script!r}, run_name='__main__')\n"
             f"except SystemExit as e:\n    print('exit', e.code, 'torch' in sys.modules)\n")
    run = subprocess.run([sys.executable, "-c", probe], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                         text=True, timeout=120)
    assert run.stdout.strip().splitlines()[-1] == f"exit {code} False", (run.stdout[-300:], run.stderr[-300:])
    if code == 0:
        assert f"python {script} --" in run.stdout  # the usage examples head the help


def test_run_main_turns_user_errors_into_one_line(monkeypatch):
    def bad():
        raise FileNotFoundError("data/x.json: file not found")
    monkeypatch.delenv("REGIONCLIP_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as e:
        run_main(bad)
    assert str(e.value.code).startswith("error: data/x.json: file not found")
    with pytest.raises(SystemExit) as e:
        run_main(lambda: {"ok": 1})
    assert e.value.code == 0


def test_preset_with_unknown_field_is_an_error():
    with pytest.raises(KeyError, match="bogus"):
        parse_config(Cfg, ["--preset", "bad"], {"bad": {"bogus": 1}})


def test_config_round_trip_through_dict():
    cfg = Cfg(lr=0.1, init="a")
    assert config_from_dict(Cfg, config_to_dict(cfg)) == cfg
    with pytest.raises(KeyError):
        config_from_dict(Cfg, {**config_to_dict(cfg), "extra": 1})


def test_checkpoint_round_trip_and_latest(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 5, "config": config_to_dict(Cfg()),
             "rng": rng_state()}
    for step in (5, 10, 15):
        save_checkpoint(checkpoint_path(tmp_path, step), {**state, "step": step})
    assert latest_checkpoint(tmp_path).name == "ckpt_0000015.pt"
    loaded = load_checkpoint(latest_checkpoint(tmp_path))
    assert loaded["step"] == 15 and torch.equal(loaded["model"]["weight"], model.weight)
    torch.optim.AdamW(model.parameters()).load_state_dict(loaded["optimizer"])
    prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.glob("ckpt_*.pt")) == ["ckpt_0000010.pt", "ckpt_0000015.pt"]
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind
    assert latest_checkpoint(tmp_path / "empty") is None


def test_rng_state_round_trip_restores_streams(tmp_path):
    save_checkpoint(tmp_path / "r.pt", {"rng": rng_state()})
    a = (random.random(), torch.rand(3))
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    b = (random.random(), torch.rand(3))
    assert a[0] == b[0] and torch.equal(a[1], b[1])


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('EVIL_MARKER', '/tmp/evil')}",))


def test_hostile_pickle_is_refused_and_never_runs(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("EVIL_MARKER", str(marker))
    bad = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": _Evil()}, bad)
    assert not marker.exists()
    with pytest.raises(ValueError, match="evil.pt"):
        load_checkpoint(bad)
    assert not marker.exists()


def test_corrupt_and_missing_checkpoints_name_the_file(tmp_path):
    p = tmp_path / "trunc.pt"
    save_checkpoint(p, {"w": torch.randn(100)})
    p.write_bytes(p.read_bytes()[:50])
    with pytest.raises(ValueError, match="trunc.pt"):
        load_checkpoint(p)
    with pytest.raises(FileNotFoundError, match="nothere.pt"):
        load_checkpoint(tmp_path / "nothere.pt")
    q = tmp_path / "list.pt"
    torch.save([1, 2], q)
    with pytest.raises(ValueError, match="expected a dict"):
        load_checkpoint(q)


def test_failed_write_keeps_previous_file(tmp_path):
    p = tmp_path / "c.pt"
    save_checkpoint(p, {"v": torch.tensor(1)})
    with pytest.raises(Exception):
        save_checkpoint(p, {"v": _Unpicklable()})
    assert load_checkpoint(p)["v"].item() == 1
    assert not list(tmp_path.glob(".*tmp"))


class _Unpicklable:
    def __reduce__(self):
        raise pickle.PicklingError("no")


def test_final_link_survives_pruning_and_replaces_atomically(tmp_path):
    for step in (1, 2):
        save_checkpoint(checkpoint_path(tmp_path, step), {"step": step})
        link_checkpoint(checkpoint_path(tmp_path, step), tmp_path / "final.pt")
    prune_checkpoints(tmp_path, keep=0)  # keep <= 0 keeps everything
    for p in tmp_path.glob("ckpt_*.pt"):
        p.unlink()  # the step checkpoints go; final.pt must still hold the last one
    assert load_checkpoint(tmp_path / "final.pt")["step"] == 2
    assert not list(tmp_path.glob(".*tmp"))
