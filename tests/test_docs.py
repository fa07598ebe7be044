"""The documentation points at things that exist (README.md and docs/*.md).

- Every relative markdown link, and every repository path written in backticks, names a file or folder that git
  tracks, or a path that runs write (GENERATED; RUN_OUTPUTS where the same line says the run writes it).
- Every `path.py:N` pointer is followed by the backticked symbol that line N of the file defines; when it is not,
  the message gives the line where the symbol is defined, so the number can be fixed by hand.
- Every `path.py::name` names a function, class or variable defined in that file.
- README.md is a guide of at most README_MAX_LINES lines and links the four pages of docs/.
- No tracked file cites a design or style page other than this repository's docs/DESIGN.md.

Standard library only (no torch import); a few seconds.
"""
from __future__ import annotations

import fnmatch
import functools
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 210
DOCS_LINKED_FROM_README = ("docs/DESIGN.md", "docs/PARITY.md", "docs/USAGE.md", "docs/RESULTS.md")

# Paths that runs write and git never tracks (.gitignore): every script's run folders and the generated data.
GENERATED = ("runs/", "data/")
# eval_zeroshot.py's default result folders: allowed only on a line that says a run writes them.
RUN_OUTPUTS = ("results/zeroshot/", "results/demo/")
# A folder of the official RegionCLIP repository, named in docs/PARITY.md's prose.
EXTERNAL = ("detectron2/",)
# Table columns headed like this name the official repository's files, not ours (docs/PARITY.md).
EXTERNAL_COLUMN = "official"

FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
WRITES = re.compile(r"\bwrit(?:e|es|ten|ing)\b", re.IGNORECASE)
PATH_CHARS = re.compile(r"^[A-Za-z0-9_.\-*/]+$")
BARE_DOC_OR_CODE = re.compile(r"^[A-Za-z0-9_.\-]+\.(?:py|md)$")
EXTENSION = re.compile(r"\.[A-Za-z0-9]+$")
POINTER = re.compile(r"`?(?P<path>[A-Za-z0-9_./\-]+\.py):(?P<line>\d+)`?(?=(?P<after>[^\n]*))")
POINTED_SYMBOL = re.compile(r"^\s+`(?P<symbol>[A-Za-z_][\w.]*)`")
DOUBLE_COLON = re.compile(r"^(?P<path>[A-Za-z0-9_./\-]+\.py)::(?P<symbol>[A-Za-z_*][\w.*]*)")
PAGE_CITATION = re.compile(r"[\w./\-]*(?:DESIGN|STYLE)\.md")


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:  # an exported tree without git
        pytest.skip(f"git ls-files unavailable: {e}")


@functools.lru_cache(maxsize=None)
def tracked_files() -> frozenset[str]:
    return frozenset(p for p in _git("ls-files", "-z").split("\0") if p)


@functools.lru_cache(maxsize=None)
def tracked_dirs() -> frozenset[str]:
    return frozenset(str(parent) for f in tracked_files() for parent in Path(f).parents if str(parent) != ".")


@functools.lru_cache(maxsize=None)
def tracked_by_name() -> dict[str, list[str]]:
    names: dict[str, list[str]] = {}
    for f in sorted(tracked_files()):
        names.setdefault(Path(f).name, []).append(f)
    return names


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _rel(doc: Path) -> str:
    return doc.relative_to(ROOT).as_posix()


def prose_lines(doc: Path):
    """(line number, text) of each line outside fenced code blocks, with the cells of external table columns
    blanked (a table's first row is its header)."""
    in_fence, skip_columns, in_table = False, set(), False
    for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        if line.lstrip().startswith("|"):
            cells = line.strip().strip("|").split("|")
            if not in_table:
                skip_columns = {i for i, c in enumerate(cells) if c.strip().lower().startswith(EXTERNAL_COLUMN)}
                in_table = True
            line = "|".join("" if i in skip_columns else c for i, c in enumerate(cells))
        else:
            in_table = False
        yield number, line


def _expand_braces(word: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", word)
    if not m:
        return [word]
    return [x for part in m.group(1).split(",") for x in _expand_braces(word[:m.start()] + part + word[m.end():])]


def _path_part(word: str) -> str:
    """The path in a word: without a trailing ':N' line number, '::symbol', or sentence punctuation."""
    word = word.split("::")[0]
    word = re.sub(r":\d+$", "", word)
    return word.strip(".,;:()[]'\"")


def looks_like_repo_path(word: str) -> bool:
    if not word or not PATH_CHARS.match(word) or word.startswith(("/", ".", "-")) or "//" in word:
        return False
    if "/" not in word:
        return bool(BARE_DOC_OR_CODE.match(word))
    first = word.split("/")[0]
    last = word.rstrip("/").split("/")[-1]
    return (word.endswith("/") or bool(EXTENSION.search(last)) or first in tracked_dirs()
            or word.startswith(GENERATED + RUN_OUTPUTS))


def resolve(word: str, doc: Path, line: str) -> str | None:
    """None if `word` names something that exists (tracked, or written by a run), else why not."""
    path = word.rstrip("/")
    if word.startswith(EXTERNAL) or word.startswith(GENERATED) or path + "/" in GENERATED:
        return None
    if word.startswith(RUN_OUTPUTS):
        return None if WRITES.search(line) else (f"{word!r} is only written by a run: say so on the line, or "
                                                 "name a tracked file")
    here = Path(_rel(doc)).parent.as_posix()
    candidates = [path] if here in (".", "") else [path, f"{here}/{path}"]
    for c in candidates:
        if "*" in c:
            if fnmatch.filter(tracked_files(), c) or fnmatch.filter(tracked_dirs(), c):
                return None
        elif c in tracked_files() or c in tracked_dirs():
            return None
    if "/" not in path and path in tracked_by_name():  # a bare file name: the tracked file of that name
        return None
    top = path.split("/")[0]
    if "/" in word and top not in tracked_dirs() and top not in tracked_files() and any(
            t.endswith("/" + path) for t in tracked_files() | tracked_dirs()):
        return None  # a path inside a package folder, as docs/DESIGN.md names `configs/detect.py`
    return f"{word!r} is not tracked in git (git ls-files) and is not a generated path {GENERATED + RUN_OUTPUTS}"


def _defines(text: str, symbol: str) -> bool:
    name = re.escape(symbol)
    return bool(re.match(rf"^\s*(?:async\s+)?(?:def|class)\s+{name}\b", text)
                or re.match(rf"^\s*{name}\s*(?::[^=]*)?=(?!=)", text))


def defined_at(path: str, symbol: str) -> list[int]:
    """Lines of `path` that define the last dotted part of `symbol` (def, class, or assignment); a `*` in it
    matches any name (`test_bad_image_*`)."""
    name = symbol.split(".")[-1]
    lines = (ROOT / path).read_text(encoding="utf-8").splitlines()
    if "*" in name:
        defined = re.compile(r"^\s*(?:async\s+)?(?:def|class)\s+(\w+)|^\s*(\w+)\s*(?::[^=]*)?=(?!=)")
        return [i for i, text in enumerate(lines, 1)
                if (m := defined.match(text)) and fnmatch.fnmatchcase(m.group(1) or m.group(2), name)]
    return [i for i, text in enumerate(lines, 1) if _defines(text, name)]


def _code_words(line: str):
    for span in CODE_SPAN.finditer(line):
        for word in re.split(r"[\s=]+", span.group(2)):
            yield word


def anchors(md: Path) -> set[str]:
    """The heading anchors GitHub makes for a markdown file: lower case, punctuation dropped, spaces to hyphens,
    repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose_lines(md):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).replace("`", "").lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_relative_links_resolve():
    bad = []
    for doc in doc_files():
        for number, line in prose_lines(doc):
            for target in LINK.findall(CODE_SPAN.sub("", line)):
                if re.match(r"^[a-z][a-z0-9+.\-]*:", target):
                    continue  # a URL
                path, _, anchor = target.partition("#")
                normal = os.path.normpath(Path(_rel(doc)).parent / path).replace(os.sep, "/") if path else _rel(doc)
                # `normal` is already relative to the repository root, so resolve it as the README would
                why = resolve(normal + ("/" if path.endswith("/") else ""), ROOT / "README.md", line)
                if not why and anchor and normal.endswith(".md") and anchor not in anchors(ROOT / normal):
                    why = f"{normal} has no heading with the anchor #{anchor}"
                if why:
                    bad.append(f"{_rel(doc)}:{number}: link ({target}): {why}")
    assert not bad, "links that name nothing in the repository:\n" + "\n".join(bad)


def test_backticked_paths_resolve():
    bad = []
    for doc in doc_files():
        for number, line in prose_lines(doc):
            for raw in _code_words(line):
                for word in _expand_braces(_path_part(raw)):
                    if looks_like_repo_path(word):
                        why = resolve(word, doc, line)
                        if why:
                            bad.append(f"{_rel(doc)}:{number}: {why}")
    assert not bad, "backticked paths that name nothing in the repository:\n" + "\n".join(bad)


def test_line_pointers_name_the_symbol_defined_there():
    bad, seen = [], 0
    for doc in doc_files():
        lines_of_doc = list(prose_lines(doc))
        for k, (number, line) in enumerate(lines_of_doc):
            for m in POINTER.finditer(line):  # every pointer of the line; its symbol may wrap to the next line
                where = f"{_rel(doc)}:{number}: {m.group('path')}:{m.group('line')}"
                path, n = m.group("path"), int(m.group("line"))
                after = m.group("after")
                if not after.strip() and k + 1 < len(lines_of_doc):
                    after = " " + lines_of_doc[k + 1][1].strip()
                symbol = POINTED_SYMBOL.match(after)
                if not (ROOT / path).is_file() or path not in tracked_files():
                    bad.append(f"{where}: {path} is not a tracked file")
                    continue
                if not symbol:
                    bad.append(f"{where}: follow the pointer with the backticked symbol defined there")
                    continue
                seen += 1
                symbol = symbol.group("symbol")
                lines = (ROOT / path).read_text(encoding="utf-8").splitlines()
                if 1 <= n <= len(lines) and _defines(lines[n - 1], symbol.split(".")[-1]):
                    continue
                found = defined_at(path, symbol)
                fix = (f"`{symbol}` is defined at line {', '.join(map(str, found))}: write {path}:{found[0]}"
                       if found else f"`{symbol}` is not defined in {path}")
                bad.append(f"{where} `{symbol}`: line {n} does not define it; {fix}")
    assert not bad, "file:line pointers to re-point:\n" + "\n".join(bad)
    assert seen, "no file:line pointer found: the README's reading order should have them"


def test_double_colon_symbols_are_defined():
    bad = []
    for doc in doc_files():
        for number, line in prose_lines(doc):
            for raw in _code_words(line):
                m = DOUBLE_COLON.match(raw)
                if not m:
                    continue
                path, symbol = m.group("path"), m.group("symbol")
                files = [path] if path in tracked_files() else tracked_by_name().get(path, [])
                if not files:
                    continue  # reported by test_backticked_paths_resolve
                parts = symbol.split(".")
                if not all(any(defined_at(f, part) for f in files) for part in parts):
                    bad.append(f"{_rel(doc)}:{number}: `{raw}`: {symbol} is not defined in {' or '.join(files)}")
    assert not bad, "path.py::name that names nothing:\n" + "\n".join(bad)


def test_readme_is_a_short_guide_that_links_the_docs():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    n = len(text.splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines, at most {README_MAX_LINES}: move reference material " \
                                  "to docs/USAGE.md and results to docs/RESULTS.md"
    links = set(LINK.findall(text))
    missing = [d for d in DOCS_LINKED_FROM_README if not any(t.split("#")[0] == d for t in links)]
    assert not missing, f"README.md does not link {missing}"


def test_design_and_style_pages_are_cited_only_as_docs_design():
    bad = []
    for f in sorted(tracked_files()):
        p = ROOT / f
        if not p.is_file():
            continue
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # pictures and other binary files
        for number, line in enumerate(text.splitlines(), 1):
            for m in PAGE_CITATION.finditer(line):
                cited = m.group(0)
                if cited != "docs/DESIGN.md" and not cited.endswith("/docs/DESIGN.md"):
                    bad.append(f"{f}:{number}: {cited!r}")
    assert not bad, "cite this repository's docs/DESIGN.md (no other design or style page exists here):\n" + \
        "\n".join(bad)
