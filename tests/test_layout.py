"""The layout docs/DESIGN.md §2 promises: imports point one way (scripts -> library), the library never imports the
lab (benchmarks/) or a script, benchmarks/ imports no script, and the library has no import cycle."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"train_pretrain", "train_detect", "eval_zeroshot"}


def _imports(path: Path) -> set[str]:
    """Top-level names of every module `path` imports (at any depth of the file)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_the_library_imports_neither_a_script_nor_the_lab():
    bad = {str(p.relative_to(ROOT)): sorted(m for m in _imports(p) if m.split(".")[0] in SCRIPTS | {"benchmarks"})
           for p in (ROOT / "regionclip_min").rglob("*.py")}
    assert not {k: v for k, v in bad.items() if v}


def test_benchmarks_import_no_script():
    bad = {str(p.relative_to(ROOT)): sorted(m for m in _imports(p) if m.split(".")[0] in SCRIPTS)
           for p in (ROOT / "benchmarks").rglob("*.py")}
    assert not {k: v for k, v in bad.items() if v}


def test_the_library_has_no_import_cycle():
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts): p for p in (ROOT / "regionclip_min").rglob("*.py")}
    modules = {m.removesuffix(".__init__"): p for m, p in modules.items()}
    graph = {m: {d for d in _imports(p) if d in modules and d != m} for m, p in modules.items()}
    done, path = set(), []

    def visit(m):
        if m in path:
            raise AssertionError(f"import cycle: {' -> '.join(path[path.index(m):] + [m])}")
        if m in done:
            return
        path.append(m)
        for d in graph[m]:
            visit(d)
        path.pop()
        done.add(m)

    for m in graph:
        visit(m)
    assert "regionclip_min.engine" in graph["regionclip_min.regionclip"]  # the edges are seen
