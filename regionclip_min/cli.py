"""One `@dataclass` config per script, overridden from the command line (docs/DESIGN.md §6).

    python train_pretrain.py --preset toy --lr 5e-4 --max_steps 600

Resolution order: the dataclass defaults, then the named preset's overrides, then `--field value` arguments.
Every field is an option (`--field_name` or `--field-name`), type-checked by its annotation (int, float, str,
bool, and `X | None`); unknown options are rejected; `--help` lists every field with its default and the help
text from `field(metadata={"help": ...})`. Presets are plain dicts of overrides, checked against the fields.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import types
import typing


def _parse_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _field_parser(tp):
    """A str -> value converter for a field's annotation; `X | None` also accepts 'none'."""
    optional = False
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        tp = args[0] if len(args) == 1 else str
    base = {bool: _parse_bool, int: int, float: float, str: str}.get(tp)
    if base is None:
        raise TypeError(f"unsupported config field type {tp!r}")

    def parse(text: str):
        if optional and text.strip().lower() in ("none", "null", ""):
            return None
        try:
            return base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {tp.__name__}, got {text!r}") from None
    parse.__name__ = getattr(tp, "__name__", "value")  # argparse names the type in its error messages
    return parse


def _as_text(value) -> str:
    """A preset's Python value as the text a user would type, so presets go through the same type checks."""
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def parse_config(cls, argv=None, presets: dict | None = None, description: str = ""):
    """Builds a `cls` instance from defaults, `--preset NAME` and `--field value` overrides. `description` is the
    script's docstring: its first two paragraphs (what it does, the usage examples) head `--help`.

    Returns:
        (config, preset_name) where preset_name is None when no preset was given.
    """
    presets = presets or {}
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    parsers = {f.name: _field_parser(hints[f.name]) for f in fields}
    parser = argparse.ArgumentParser(description="\n\n".join(description.split("\n\n")[:2]), allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    chosen = presets.get(_preset_in(argv), {})  # `--preset X --help` shows the values X sets
    if presets:
        parser.add_argument("--preset", choices=sorted(presets), default=None,
                            help="named settings applied before the options below: " + "; ".join(
                                f"{k}: {v.get('_doc', '')}" for k, v in presets.items()))
    for f in fields:
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        opts = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        parser.add_argument(*opts, dest=f.name, type=parsers[f.name], default=argparse.SUPPRESS,
                            metavar=hints[f.name].__name__ if isinstance(hints[f.name], type) else "VALUE",
                            help=f"{f.metadata.get('help', '')} ("
                            + (f"preset: {chosen[f.name]!r}; " if f.name in chosen else "") + f"default: {default!r})")
    args = vars(parser.parse_args(argv))
    preset_name = args.pop("preset", None)
    values = {}
    if preset_name is not None:
        for k, v in presets[preset_name].items():
            if k.startswith("_"):
                continue
            if k not in parsers:
                raise KeyError(f"preset {preset_name!r} sets unknown field {k!r}")
            values[k] = parsers[k](_as_text(v))
    values.update(args)
    config = cls(**values)
    object.__setattr__(config, "_given", frozenset(args))  # see `given`; not a field, so not saved
    object.__setattr__(config, "_preset", preset_name)
    return config, preset_name


def answer_usage(cls, presets: dict | None = None, description: str = "") -> None:
    """Parses the command line once before a script imports torch, torchvision and open_clip (~6 s): `--help`,
    `--preset X --help` and a mistyped or ill-typed option are answered at once. The script's `main` parses again."""
    parse_config(cls, None, presets, description)


def preset_of(config) -> str | None:
    """The --preset a config was built with (None: none)."""
    return getattr(config, "_preset", None)


def flags(config, names) -> str:
    """'--a x --b y' for the fields `names` whose value is not the dataclass default: the part of a next command
    that points it at the same data and model as this run."""
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    out = [f"--{n} {_as_text(getattr(config, n))}" for n in names if getattr(config, n) != defaults.get(n)]
    return " ".join(out)


def run_main(main) -> None:
    """A script's entry point: exit 0 when `main()` returns something, 1 otherwise; a user's mistake that surfaces as
    FileNotFoundError, ValueError or KeyError (bad files, bad names) ends in one line naming it, not a traceback
    (REGIONCLIP_TRACEBACK=1 shows the traceback)."""
    if os.environ.get("REGIONCLIP_TRACEBACK"):
        sys.exit(0 if main() else 1)
    try:
        sys.exit(0 if main() else 1)
    except (FileNotFoundError, ValueError, KeyError) as e:
        sys.exit(f"error: {e} (REGIONCLIP_TRACEBACK=1 shows where)")


def given(config) -> frozenset:
    """The fields set by `--field value` on the command line (not by a default or a preset)."""
    return getattr(config, "_given", frozenset())


def weights_choice(config) -> None:
    """`--pretrained W` typed on the command line wins over an `init` that only a default or a preset set (it would
    otherwise be loaded instead of W, silently); both typed is an error."""
    typed = given(config)
    if "pretrained" in typed and config.pretrained is not None and config.init is not None:
        if "init" in typed:
            raise SystemExit(f"pass one of --init ({config.init}) and --pretrained ({config.pretrained}), not both")
        print(f"--pretrained {config.pretrained}: used instead of the default / preset init {config.init}")
        config.init = None


def _preset_in(argv) -> str | None:
    """The NAME of `--preset NAME` / `--preset=NAME` in argv (None when absent)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, a in enumerate(argv):
        if a == "--preset" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--preset="):
            return a.split("=", 1)[1]
    return None


def config_to_dict(config) -> dict:
    return dataclasses.asdict(config)


def config_from_dict(cls, d: dict):
    """Rebuilds a config saved by `config_to_dict` (e.g. from a checkpoint); unknown keys are an error."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise KeyError(f"saved config has fields this version does not know: {sorted(unknown)}")
    return cls(**d)


def format_config(config) -> str:
    return json.dumps(config_to_dict(config), indent=2)
