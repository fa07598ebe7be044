"""A procedural toy world in which every stage of RegionCLIP can be run and measured on a CPU.

Why it exists (docs/DESIGN.md §5): no pretrained CLIP and no real dataset can be downloaded where this project is
built, so stage 0 trains a tiny CLIP on this world's captions and RegionCLIP (paper Sec. 3) is then run on top of it.

What the world holds, mirroring web image-caption corpora and detection data (docs/DESIGN.md §5.1 "world C", with the
changes of README "The toy world": half the images object-centric, colour named less often, larger scene objects):
  - 12 shape categories in 6 colours on textured / noisy backgrounds, with unannotated clutter (thin lines, dots);
  - object-centric images (50%): one large object, 60-110 px at 128 px (about half the frame or more);
  - scenes (50%): 2-4 smaller objects, 32-64 px, varied position, rotation within +-15 deg, some overlap;
  - 1-3 captions per image from varied templates, with plurals, articles, filler nouns ("photo", "picture",
    "image", "background"), a colour adjective in ~15% of mentions, and in ~30% of scenes only a subset of
    the objects mentioned, as real captions do;
  - a base/novel split (3 of 12 novel). Novel shapes appear in captions (the pretraining corpus) but their
    boxes are absent from `instances_train_base.json`, as in the open-vocabulary detection protocol.

Everything is written as standard files (PNG, COCO captions json, COCO instances json) and is a pure function of
the seed: each image draws from its own generator seeded by (seed, split, index), so the same seed gives
byte-identical files. Sizes are specified at 128 px and scale with `image_size`.

Left out on purpose: photometric realism, occlusion reasoning (later objects are simply painted over earlier ones;
their boxes stay the full shape's box, as a COCO annotator would draw them), and any attribute other than colour.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# ---- the world's vocabulary -------------------------------------------------------------------------------
SHAPES = ("circle", "square", "triangle", "star", "cross", "heart",
          "diamond", "hexagon", "pentagon", "crescent", "arrow", "ring")
NOVEL_SHAPES = ("heart", "hexagon", "arrow")  # caption-only during detection training (OVD protocol)
COLORS = {"red": (210, 40, 40), "green": (40, 170, 60), "blue": (45, 80, 215),
          "yellow": (235, 205, 40), "purple": (140, 60, 185), "orange": (245, 135, 30)}
FILLER_NOUNS = ("photo", "picture", "image", "drawing", "background")  # nouns of the caption templates

# ---- world statistics (pixels at 128 px; scaled with image_size) -----------------------------------------
@dataclass(frozen=True)
class WorldStats:
    """What the world's images and captions look like. The defaults are this project's world: docs/DESIGN.md §5.1's
    world C with three settings changed after a stage 0 of world C failed on other seeds (README "The toy world":
    with 35% object-centric images and colour in 30% of mentions a seed-2 stage 0 reached 40% whole-image top-1,
    seed 0 98%; with 26-56 px scene objects its regions were named right 16-34% of the time). `WORLD_C` is the
    original, for comparison (`--stats world-c`)."""
    object_centric_fraction: float = 0.5  # world C: 0.35
    object_centric_size: tuple[float, float] = (60, 110)  # side of the one object of an object-centric image
    scene_size: tuple[float, float] = (32, 64)  # side of each scene object; world C: (26, 56)
    scene_objects: tuple[int, int] = (2, 4)  # objects per scene (fewer if no room is left)
    max_rotation_deg: float = 15.0
    color_mention_prob: float = 0.15  # a mention names the colour; world C: 0.3
    subset_mention_prob: float = 0.3  # a scene's caption names only some of its shapes
    max_overlap: float = 0.25  # intersection / smaller box area allowed between two objects of a scene


WORLD_C = WorldStats(object_centric_fraction=0.35, scene_size=(26, 56), color_mention_prob=0.3)
SUPERSAMPLE = 2  # shapes are drawn at 2x and downsampled, for anti-aliased edges
_SPLIT_CODE = {"train": 0, "val": 1}


# ---- shapes: each is a list of (polygon in unit coords, fill) drawn on a mask; fill 0 cuts a hole ----------
def _regular(n: int, start: float = -math.pi / 2) -> list[tuple[float, float]]:
    return [(math.cos(start + 2 * math.pi * k / n), math.sin(start + 2 * math.pi * k / n)) for k in range(n)]


def _star() -> list[tuple[float, float]]:
    pts = []
    for k in range(10):
        r = 1.0 if k % 2 == 0 else 0.42
        a = -math.pi / 2 + math.pi * k / 5
        pts.append((r * math.cos(a), r * math.sin(a)))
    return pts


def _heart() -> list[tuple[float, float]]:
    pts = []
    for k in range(60):
        t = 2 * math.pi * k / 60
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((x / 17.0, -y / 17.0 + 0.1))
    return pts


def _crescent() -> list[tuple[float, float]]:
    # outer arc of the unit circle, back along an inner arc of a circle shifted to the right
    outer = [(math.cos(a), math.sin(a)) for a in np.linspace(0.45 * math.pi, 1.55 * math.pi, 40)]
    inner = [(0.45 + 0.8 * math.cos(a), 0.8 * math.sin(a)) for a in np.linspace(1.35 * math.pi, 0.65 * math.pi, 40)]
    return outer + inner


_CROSS = [(-0.33, -1), (0.33, -1), (0.33, -0.33), (1, -0.33), (1, 0.33), (0.33, 0.33), (0.33, 1),
          (-0.33, 1), (-0.33, 0.33), (-1, 0.33), (-1, -0.33), (-0.33, -0.33)]
_ARROW = [(-1, -0.28), (0.15, -0.28), (0.15, -0.75), (1, 0), (0.15, 0.75), (0.15, 0.28), (-1, 0.28)]
SHAPE_POLYGONS = {
    "circle": [(_regular(48), 255)],
    "square": [([(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)], 255)],
    "triangle": [([(0, -1), (0.95, 0.75), (-0.95, 0.75)], 255)],
    "star": [(_star(), 255)],
    "cross": [(_CROSS, 255)],
    "heart": [(_heart(), 255)],
    "diamond": [([(0, -1), (0.62, 0), (0, 1), (-0.62, 0)], 255)],
    "hexagon": [(_regular(6, 0.0), 255)],
    "pentagon": [(_regular(5), 255)],
    "crescent": [(_crescent(), 255)],
    "arrow": [(_ARROW, 255)],
    "ring": [(_regular(48), 255), ([(0.55 * x, 0.55 * y) for x, y in _regular(48)], 0)],
}


def _place(poly, cx, cy, half, angle):
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + half * (x * c - y * s), cy + half * (x * s + y * c)) for x, y in poly]


def _draw_object(canvas: np.ndarray, rng, shape: str, color, cx: float, cy: float, size: float, angle: float):
    """Paints one shape onto `canvas` (H, W, 3) float in place; returns its tight xyxy box in pixels."""
    h, w = canvas.shape[:2]
    half = size / 2
    ops = [(_place(poly, cx, cy, half, angle), fill) for poly, fill in SHAPE_POLYGONS[shape]]
    outer = np.array(ops[0][0])  # (N, 2) the first polygon bounds the shape
    x1, y1 = outer.min(0)
    x2, y2 = outer.max(0)
    # draw the mask at SUPERSAMPLE x inside the shape's bounding window only (cheap), then downsample
    bx1, by1 = max(int(x1) - 1, 0), max(int(y1) - 1, 0)
    bx2, by2 = min(int(math.ceil(x2)) + 1, w), min(int(math.ceil(y2)) + 1, h)
    ss = SUPERSAMPLE
    mask = Image.new("L", ((bx2 - bx1) * ss, (by2 - by1) * ss), 0)
    draw = ImageDraw.Draw(mask)
    for poly, fill in ops:
        draw.polygon([((x - bx1) * ss, (y - by1) * ss) for x, y in poly], fill=fill)
    mask = mask.resize((bx2 - bx1, by2 - by1), Image.BILINEAR)
    alpha = np.asarray(mask, dtype=np.float32)[..., None] / 255.0  # (h', w', 1)
    # the object's colour: jittered base colour with a soft linear shading and a little noise
    base = np.clip(np.array(color, np.float32) + rng.uniform(-22, 22, 3), 0, 255)
    yy, xx = np.mgrid[by1:by2, bx1:bx2].astype(np.float32)
    g = rng.uniform(-0.25, 0.25, 2)
    shade = 1.0 + (g[0] * (xx - cx) + g[1] * (yy - cy)) / max(size, 1.0)  # (h', w')
    fill_rgb = base[None, None, :] * shade[..., None] + rng.normal(0, 6, (by2 - by1, bx2 - bx1, 3))
    region = canvas[by1:by2, bx1:bx2]
    region[:] = region * (1 - alpha) + np.clip(fill_rgb, 0, 255) * alpha
    return [max(float(x1), 0.0), max(float(y1), 0.0), min(float(x2), float(w)), min(float(y2), float(h))]


def _background(rng, size: int) -> np.ndarray:
    """A textured or noisy background, (S, S, 3) float: a muted colour, a gradient or stripes, and noise."""
    base = rng.uniform(95, 200) + rng.uniform(-25, 25, 3)  # muted, so colours of objects stand out
    img = np.broadcast_to(base, (size, size, 3)).astype(np.float32).copy()
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    kind = rng.integers(3)
    if kind == 0:  # gradient
        g = rng.uniform(-40, 40, 2)
        img += (g[0] * xx + g[1] * yy)[..., None]
    elif kind == 1:  # stripes
        a, f = rng.uniform(0, math.pi), rng.uniform(4, 12)
        img += (rng.uniform(6, 18) * np.sin(2 * math.pi * f * (xx * math.cos(a) + yy * math.sin(a))))[..., None]
    img += rng.normal(0, rng.uniform(4, 18), (size, size, 3))
    return img


def _clutter(rng, canvas: np.ndarray):
    """Unannotated clutter (no category): a few thin lines and small dots."""
    size = canvas.shape[0]
    pil = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(rng.integers(1, 4)):
        col = tuple(int(v) for v in rng.integers(30, 230, 3))
        if rng.random() < 0.5:
            x, y = rng.uniform(0, size, 2)
            ln = rng.uniform(0.1, 0.35) * size
            a = rng.uniform(0, math.pi)
            draw.line([(x, y), (x + ln * math.cos(a), y + ln * math.sin(a))], fill=col, width=1)
        else:
            x, y = rng.uniform(0, size, 2)
            r = rng.uniform(1, 2.5) * size / 128
            draw.ellipse([x - r, y - r, x + r, y + r], fill=col)
    canvas[:] = np.asarray(pil, dtype=np.float32)


def _overlap_ok(box, boxes, max_overlap: float) -> bool:
    for b in boxes:
        iw = min(box[2], b[2]) - max(box[0], b[0])
        ih = min(box[3], b[3]) - max(box[1], b[1])
        if iw > 0 and ih > 0:
            smaller = min((box[2] - box[0]) * (box[3] - box[1]), (b[2] - b[0]) * (b[3] - b[1]))
            if iw * ih > max_overlap * smaller:
                return False
    return True


# ---- captions ---------------------------------------------------------------------------------------------
_COUNT_WORDS = {2: "two", 3: "three", 4: "four"}
_PREFIXES = ("", "a photo of ", "a picture of ", "an image of ", "a photo showing ", "a picture with ",
             "an image containing ", "a simple drawing of ", "a rendered image of ")
_SUFFIXES = ("", "", " on a noisy background", " against a textured background", " in the picture",
             " on a plain background", " in this image")
_SINGLE_PREFIXES = ("a large ", "a big ", "one large ", "")  # object-centric; "" takes the article of the next word


def plural(name: str) -> str:
    """English plural of a shape name (crosses, not crosss)."""
    return name + "es" if name.endswith(("s", "x", "sh", "ch")) else name + "s"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _mention(rng, name: str, colors: list[str], color_prob: float) -> str:
    """A noun phrase for `len(colors)` objects of one shape, e.g. 'a red star', 'two circles', 'some crosses'."""
    n = len(colors)
    adj = colors[0] + " " if len(set(colors)) == 1 and rng.random() < color_prob else ""
    if n == 1:
        return f"{_article(adj or name)} {adj}{name}"
    count = "some" if rng.random() < 0.15 else _COUNT_WORDS[n]
    return f"{count} {adj}{plural(name)}"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _caption(rng, objects: list[tuple[str, str]], object_centric: bool, stats: WorldStats = WorldStats()) -> str:
    groups: dict[str, list[str]] = {}
    for name, color in objects:
        groups.setdefault(name, []).append(color)
    names = list(groups)
    rng.shuffle(names)
    if not object_centric and len(names) > 1 and rng.random() < stats.subset_mention_prob:
        names = names[: rng.integers(1, len(names))]  # only some of the objects are mentioned
    if object_centric and rng.random() < 0.4:
        name, color = objects[0]
        adj = color + " " if rng.random() < stats.color_mention_prob else ""
        prefix = _SINGLE_PREFIXES[rng.integers(len(_SINGLE_PREFIXES))] or _article(adj or name) + " "
        body = prefix + adj + name
    else:
        body = _join([_mention(rng, n, groups[n], stats.color_mention_prob) for n in names])
    text = _PREFIXES[rng.integers(len(_PREFIXES))] + body + _SUFFIXES[rng.integers(len(_SUFFIXES))]
    if rng.random() < 0.5:
        text = text[0].upper() + text[1:] + "."
    return text


# ---- one image --------------------------------------------------------------------------------------------
def make_image(seed: int, split: str, index: int, image_size: int = 128, stats: WorldStats = WorldStats()):
    """Renders one image of the world. Deterministic in (seed, split, index) for given `stats`.

    Returns:
        image: PIL RGB image of size (image_size, image_size).
        objects: list of dicts {"category": name, "color": name, "box_xyxy": [x1, y1, x2, y2]} (float pixels).
        captions: list of 1-3 distinct caption strings.
        kind: "object" (object-centric) or "scene".
    """
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], index])
    scale = image_size / 128.0
    canvas = _background(rng, image_size)  # (S, S, 3)
    if rng.random() < 0.5:
        _clutter(rng, canvas)
    object_centric = rng.random() < stats.object_centric_fraction
    n_obj = 1 if object_centric else int(rng.integers(stats.scene_objects[0], stats.scene_objects[1] + 1))
    lo, hi = stats.object_centric_size if object_centric else stats.scene_size
    objects, boxes = [], []
    for _ in range(n_obj):
        for _attempt in range(30):  # rejection sampling for limited overlap
            size = rng.uniform(lo, hi) * scale
            half = size / 2
            cx, cy = rng.uniform(half, image_size - half, 2)
            box = [cx - half, cy - half, cx + half, cy + half]
            if _overlap_ok(box, boxes, stats.max_overlap):
                break
        else:
            continue  # no room left: fewer objects in this scene
        shape = SHAPES[rng.integers(len(SHAPES))]
        color = list(COLORS)[rng.integers(len(COLORS))]
        angle = math.radians(rng.uniform(-stats.max_rotation_deg, stats.max_rotation_deg))
        box_xyxy = _draw_object(canvas, rng, shape, COLORS[color], cx, cy, size, angle)
        boxes.append(box)
        objects.append({"category": shape, "color": color, "box_xyxy": [round(v, 2) for v in box_xyxy]})
    pairs = [(o["category"], o["color"]) for o in objects]
    captions: list[str] = []
    for _ in range(int(rng.integers(1, 4))):
        cap = _caption(rng, pairs, object_centric, stats)
        if cap not in captions:
            captions.append(cap)
    image = Image.fromarray(np.clip(canvas, 0, 255).round().astype(np.uint8), "RGB")
    return image, objects, captions, "object" if object_centric else "scene"


# ---- the files --------------------------------------------------------------------------------------------
def categories() -> list[dict]:
    """COCO category entries; id k+1 is SHAPES[k], each tagged with its OVD split."""
    return [{"id": k + 1, "name": n, "supercategory": "shape", "split": "novel" if n in NOVEL_SHAPES else "base"}
            for k, n in enumerate(SHAPES)]


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, separators=(",", ":")))
    os.replace(tmp, path)


def _render_one(job: tuple) -> tuple:
    """Renders image `index` and writes its PNG; returns (file name, objects, captions, kind)."""
    out, split, index, seed, image_size, stats = job
    img, objects, captions, kind = make_image(seed, split, index, image_size, stats)
    file_name = f"{split}_{index + 1:06d}.png"
    img.save(out / "images" / file_name, optimize=False)
    return file_name, objects, captions, kind


def _render_split(out: Path, split: str, n: int, seed: int, image_size: int, stats: WorldStats, progress: bool,
                  workers: int):
    try:
        from tqdm import tqdm
    except ImportError:  # the generator itself needs only numpy and PIL
        tqdm = None
    images, caps, anns = [], [], []
    jobs = [(out, split, i, seed, image_size, stats) for i in range(n)]
    pool = concurrent.futures.ProcessPoolExecutor(workers) if workers > 1 and n > 1 else None
    it = pool.map(_render_one, jobs, chunksize=32) if pool is not None else map(_render_one, jobs)  # in order
    if progress and tqdm is not None:
        it = tqdm(it, total=n, desc=f"toyworld {split}", unit="img")
    try:
        rendered = list(it)
    finally:
        if pool is not None:
            pool.shutdown()
    for i, (file_name, objects, captions, kind) in enumerate(rendered):
        image_id = i + 1
        images.append({"id": image_id, "file_name": file_name, "width": image_size, "height": image_size,
                       "kind": kind})
        for c in captions:
            caps.append({"id": len(caps) + 1, "image_id": image_id, "caption": c})
        for o in objects:
            x1, y1, x2, y2 = o["box_xyxy"]
            w, h = round(x2 - x1, 2), round(y2 - y1, 2)
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": SHAPES.index(o["category"]) + 1,
                         "bbox": [x1, y1, w, h], "area": round(w * h, 2), "iscrowd": 0, "color": o["color"]})
    return images, caps, anns


def generate(out_dir, *, seed: int = 0, num_train: int = 2000, num_val: int = 300, image_size: int = 128,
             stats: WorldStats = WorldStats(), progress: bool = False, workers: int = 1) -> dict:
    """Writes the toy world under `out_dir` and returns the written paths. `workers` processes render the images;
    every image depends only on (seed, split, index) and `stats`, so the files are the same for any number of
    workers. Every json's "info" records the seed and the stats.

    Files: images/{split}_{id:06d}.png, captions_{train,val}.json (COCO captions), instances_train_base.json
    (base categories' boxes only), instances_train_all.json, instances_val_all.json (COCO instances; every
    category carries "split": "base" | "novel"; every image carries "kind": "object" | "scene").
    """
    if num_train < 1 or num_val < 1 or image_size < 32:
        raise ValueError(f"need num_train >= 1, num_val >= 1, image_size >= 32; got {num_train}, {num_val}, "
                         f"{image_size}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    cats = categories()
    novel_ids = {c["id"] for c in cats if c["split"] == "novel"}
    paths = {"root": str(out), "images": str(out / "images")}
    info = {"seed": seed, "image_size": image_size, "stats": asdict(stats)}
    for split, n in (("train", num_train), ("val", num_val)):
        images, caps, anns = _render_split(out, split, n, seed, image_size, stats, progress, workers)
        cap_images = [{k: im[k] for k in ("id", "file_name", "width", "height")} for im in images]
        p = out / f"captions_{split}.json"
        _write_json(p, {"info": {"description": f"regionclip-min toy world, seed {seed}", **info},
                        "images": cap_images, "annotations": caps})
        paths[f"captions_{split}"] = str(p)
        variants = {"all": anns}
        if split == "train":
            variants["base"] = [a for a in anns if a["category_id"] not in novel_ids]
        for name, a in variants.items():
            p = out / f"instances_{split}_{name}.json"
            _write_json(p, {"info": {"description": f"regionclip-min toy world, seed {seed}, {name} categories", **info},
                            "images": images, "annotations": a, "categories": cats})
            paths[f"instances_{split}_{name}"] = str(p)
    return paths


def summarize(paths: dict) -> str:
    """A human-readable summary of a generated world: images, captions and boxes per split, categories."""
    lines = []
    cats = json.loads(Path(paths["instances_val_all"]).read_text())["categories"]
    names = {c["id"]: c["name"] for c in cats}
    base = [c["name"] for c in cats if c["split"] == "base"]
    novel = [c["name"] for c in cats if c["split"] == "novel"]
    lines.append(f"toy world at {paths['root']}")
    lines.append(f"categories: {len(cats)}  base ({len(base)}): {', '.join(base)}")
    lines.append(f"                novel ({len(novel)}): {', '.join(novel)}")
    lines.append(f"{'file':<28}{'images':>8}{'object':>8}{'scene':>8}{'captions':>10}{'boxes':>8}{'novel':>7}")
    for key in ("instances_train_all", "instances_train_base", "instances_val_all"):
        d = json.loads(Path(paths[key]).read_text())
        kinds = Counter(im.get("kind") for im in d["images"])
        split = "train" if "train" in key else "val"
        n_caps = len(json.loads(Path(paths[f"captions_{split}"]).read_text())["annotations"])
        n_novel = sum(names[a["category_id"]] in novel for a in d["annotations"])
        lines.append(f"{Path(paths[key]).name:<28}{len(d['images']):>8}{kinds['object']:>8}{kinds['scene']:>8}"
                     f"{n_caps:>10}{len(d['annotations']):>8}{n_novel:>7}")
    caps = json.loads(Path(paths["captions_train"]).read_text())["annotations"][:3]
    lines.append("example captions: " + " | ".join(c["caption"] for c in caps))
    return "\n".join(lines)


def parse_stats(text: str) -> WorldStats:
    """'' -> the default world; 'world-c' -> WORLD_C; 'key=value,...' -> the default world with those fields changed
    (ranges as lo:hi), e.g. 'object_centric_fraction=0.35,scene_size=26:56'. Raises ValueError naming a bad item."""
    text = text.strip()
    if text in ("", "default"):
        return WorldStats()
    if text == "world-c":
        return WORLD_C
    kinds = {f.name: f.type for f in fields(WorldStats)}
    changes = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, _, value = item.partition("=")
        if key not in kinds or not value:
            raise ValueError(f"world stats: expected key=value with keys {sorted(kinds)}, or 'world-c'; got {item!r}")
        try:
            if kinds[key].startswith("tuple"):
                lo, hi = value.split(":")
                cast = int if "int" in kinds[key] else float
                changes[key] = (cast(lo), cast(hi))
            else:
                changes[key] = float(value)
        except ValueError:
            raise ValueError(f"world stats: bad value in {item!r} (numbers; ranges as lo:hi)") from None
    return WorldStats(**changes)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description="Generate the regionclip-min toy world (docs/DESIGN.md §5): PNG images, "
                                            "COCO captions and COCO instances files with a base/novel split.")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--seed", type=int, default=0, help="world seed; same seed -> byte-identical files (default 0)")
    p.add_argument("--num-train", type=int, default=2000, help="training images (default 2000)")
    p.add_argument("--num-val", type=int, default=300, help="validation images (default 300)")
    p.add_argument("--image-size", type=int, default=128, help="image side in pixels (default 128)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="processes rendering images (default: one per core; the files do not depend on it)")
    p.add_argument("--stats", default="", help="change the world's statistics (WorldStats): 'world-c' for "
                   "docs/DESIGN.md's world C, or key=value pairs, e.g. "
                   "'object_centric_fraction=0.35,scene_size=26:56' (default: this project's world)")
    args = p.parse_args(argv)
    try:
        stats = parse_stats(args.stats)
    except ValueError as e:
        p.error(str(e))
    t0 = time.time()
    paths = generate(args.out, seed=args.seed, num_train=args.num_train, num_val=args.num_val,
                     image_size=args.image_size, stats=stats, progress=True, workers=args.workers)
    print(summarize(paths))
    print(f"generated in {time.time() - t0:.1f} s")
    return paths


if __name__ == "__main__":
    main()
