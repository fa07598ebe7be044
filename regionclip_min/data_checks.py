"""Bad input, found before it costs anything: COCO-style json read with its required keys, boxes checked
against their images, and the bookkeeping both datasets of data.py share (`CheckedDataset`: raise when strict,
else count each skipped sample by kind, warn once per kind, and refuse at start an image root that holds none of
the images).
"""
from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from pathlib import Path
from typing import Sequence

from PIL import Image
from torch.utils.data import Dataset

from regionclip_min.transforms import open_rgb

BOX_TOLERANCE = 1.0  # px: a box at most this far outside its image is clipped to it, a farther one is skipped


def load_json(path: Path, required: Sequence[str]) -> dict:
    """Read a COCO-style json whose top level must hold the ``required`` keys, each a list."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: malformed JSON ({e})") from e
    require(data, required, path, "top level")
    if not all(isinstance(data[key], list) for key in required):
        raise ValueError(f"{path}: each of {list(required)} must be a list")
    return data


def require(entry, keys: Sequence[str], path: Path, where: str) -> None:
    if not isinstance(entry, dict) or not all(k in entry for k in keys):
        missing = [k for k in keys if not isinstance(entry, dict) or k not in entry]
        raise ValueError(f"{path}: {where} is missing required key(s) {missing}")


def box_xyxy(bbox, width: float, height: float) -> tuple[list[float] | None, str, str]:
    """COCO [x, y, w, h] -> ([x1, y1, x2, y2] clipped to the image, "", "") or (None, problem kind, reason)."""
    try:
        x, y, w, h = map(float, bbox)
    except (TypeError, ValueError):
        x = y = w = h = math.nan
    if not math.isfinite(x + y + w + h):
        return None, "box_invalid", f"bbox {bbox!r} is not 4 finite numbers"
    if w <= 0 or h <= 0:
        return None, "box_degenerate", f"bbox {bbox} has w <= 0 or h <= 0 (x2 <= x1 or y2 <= y1)"
    x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))  # clipped
    t = BOX_TOLERANCE
    if x < -t or y < -t or x + w > width + t or y + h > height + t or x2 <= x1 or y2 <= y1:
        return None, "box_outside", f"bbox {bbox} lies outside the {width}x{height} image"
    return [x1, y1, x2, y2], "", ""


def index_images(data: dict, keys: Sequence[str], path: Path) -> dict:
    """image id -> (index in data["images"], entry); each entry needs id, file_name and ``keys``. LVIS v1 names its
    images by `coco_url` only: its last two parts ('val2017/000000397133.jpg') become the file_name, so the image
    root is the COCO folder that holds train2017/ and val2017/."""
    by_id = {}
    for i, entry in enumerate(data["images"]):
        if "file_name" not in entry and isinstance(entry.get("coco_url"), str):
            entry["file_name"] = "/".join(entry["coco_url"].rstrip("/").split("/")[-2:])
        require(entry, ("id", "file_name", *keys), path, f"images[{i}]")
        if entry["id"] in by_id:
            raise ValueError(f"{path}: images[{i}] repeats image id {entry['id']}")
        by_id[entry["id"]] = (i, entry)
    return by_id


class CheckedDataset(Dataset):
    """Bookkeeping shared by the datasets: raise when strict, else count, remember and warn per problem kind."""

    def __init__(self, path, strict: bool):
        self.path, self.strict = Path(path), strict
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: file not found")
        self.skipped: Counter = Counter()
        self._first: dict[str, str] = {}
        self._bad_items: set[int] = set()
        self._bad_ids: set = set()  # image ids left out at load (their annotations are not counted again)

    def _problem(self, kind: str, message: str, error: type[Exception] = ValueError) -> None:
        if self.strict:
            raise error(message)
        self.skipped[kind] += 1
        self._first.setdefault(kind, message)

    def _ann_problem(self, kind: str, i: int, ann: dict, reason: str) -> None:
        self._problem(kind, f"{self.path}: annotations[{i}] (id {ann.get('id')}): {reason}")

    def _warn_skipped(self) -> None:
        for kind, n in sorted(self.skipped.items()):
            warnings.warn(f"{self.path}: skipped {n} x {kind}; first: {self._first[kind]}", stacklevel=3)

    def _open_rgb(self, index: int, path: Path, where: str, size: tuple[int, int] | None = None):
        """The image at ``path`` as an RGB PIL image, or None if missing/unreadable/not ``size`` (non-strict)."""
        if index in self._bad_items:
            return None
        try:
            image = open_rgb(path)
        except FileNotFoundError:
            kind, msg, error = "image_missing", f"{path} ({where}): image file not found", FileNotFoundError
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            kind, msg, error = "image_unreadable", f"{path} ({where}): cannot read image ({e})", ValueError
        else:
            if size is None or image.size == size:
                return image
            kind, error = "image_size_mismatch", ValueError
            msg = (f"{path} ({where}): image is {image.size[0]}x{image.size[1]}, the json says {size[0]}x{size[1]} "
                   f"(the image's size upright, after its EXIF orientation)")
        first = kind not in self.skipped
        self._problem(kind, msg, error)
        self._bad_items.add(index)
        if first:
            warnings.warn(f"{msg}; further ones are only counted in .skipped", stacklevel=3)
        return None

    def image_paths(self) -> list[Path]:
        """Every image file the dataset names, in item order."""
        raise NotImplementedError

    def check_images(self, option: str = "--image_root", sample: int = 8) -> None:
        """SystemExit before any work when the images are not where the dataset says: a few of them, spread over
        the list, must exist (a wrong image root would otherwise skip every image, silently)."""
        paths = self.image_paths()
        if not paths:
            raise SystemExit(f"{self.path} lists no image")
        picks = sorted({round(i * (len(paths) - 1) / max(sample - 1, 1)) for i in range(sample)})
        missing = [paths[i] for i in picks if not paths[i].is_file()]
        if missing:
            raise SystemExit(f"{self.path}: {len(missing)} of {len(picks)} images checked are missing, e.g. "
                             f"{missing[0]}; is {option} right? (it is {self.image_root})")

    def summary(self) -> str:
        """One line: the source file, what was kept and what was skipped per problem kind."""
        skipped = ", ".join(f"{k}={n}" for k, n in sorted(self.skipped.items())) or "nothing"
        return f"{type(self).__name__}({self.path}): {self._kept()}; skipped {skipped}"
