"""The three scripts' settings, one module each: a `@dataclass` whose fields are the command-line options (with
their help texts), and the named presets.

These modules import nothing but the standard library, so a script answers `--help`, `--preset X --help` and a
mistyped option before it imports torch, torchvision and open_clip (seconds on a CPU); see
`cli.answer_usage`.
"""

QUICK_GELU_HELP = ("text tower activation: none = from the weights (QuickGELU for OpenAI-lineage ResNet weights, GELU "
                   "for RN-toy), true / false forces it")


def choice_problems(cfg, choices: dict) -> list[str]:
    """One line per option of `cfg` whose value is not among its `choices` ({option: allowed values}), e.g.
    "--task must be detector or rpn, got 'x'"."""
    def one_of(values):
        values = [str(v) for v in values]
        return values[0] if len(values) == 1 else f"{', '.join(values[:-1])} or {values[-1]}"
    return [f"--{name} must be {one_of(allowed)}, got {getattr(cfg, name)!r}" for name, allowed in choices.items()
            if getattr(cfg, name) not in allowed]
