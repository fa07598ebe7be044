"""The three scripts' settings, one module each: a `@dataclass` whose fields are the command-line options (with
their help texts), and the named presets.

These modules import nothing but the standard library, so a script answers `--help`, `--preset X --help` and a
mistyped option before it imports torch, torchvision and open_clip (about 6 s on a laptop CPU); see
`cli.answer_usage`.
"""

QUICK_GELU_HELP = ("text tower activation: none = from the weights (QuickGELU for OpenAI-lineage ResNet weights, GELU "
                   "for RN-toy), true / false forces it")
