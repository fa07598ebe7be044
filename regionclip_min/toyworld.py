"""A procedural toy world in which every stage of RegionCLIP can be run and measured on a CPU.

Why it exists (docs/DESIGN.md §5): no pretrained CLIP and no real dataset can be downloaded where this project is
built, so stage 0 trains a tiny CLIP on this world's captions and RegionCLIP (paper Sec. 3) is then run on top of it.

What the world holds, mirroring web image-caption corpora and detection data (docs/DESIGN.md §5.1 "world C", with the
changes of docs/RESULTS.md "Why the world is shaped as it is": half the images object-centric, colour named less
often, larger scene objects):
  - 12 shape categories in 6 colours on textured / noisy backgrounds, with unannotated clutter (thin lines, dots);
  - object-centric images (50%): one large object, 60-110 px at 128 px (about half the frame or more);
  - scenes (50%): 2-4 smaller objects, 32-64 px, varied position, rotation within +-15 deg, some overlap;
  - 1-3 captions per image from varied templates, with plurals, articles, filler nouns ("photo", "picture",
    "image", "background"), a colour adjective in ~15% of mentions, and in ~30% of scenes only a subset of
    the objects mentioned, as real captions do;
  - a base/novel split (3 of 12 novel; `WorldStats.novel`, by default heart, hexagon, arrow). Novel shapes
    appear in captions (the pretraining corpus) but their boxes are absent from `instances_train_base.json`, as
    in the open-vocabulary detection protocol.

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
from PIL import Image

from regionclip_min.toyshapes import background, clutter, draw_object, overlap_ok

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
    world C with three settings changed after a stage 0 of world C failed on other seeds (docs/RESULTS.md "Why the
    world is shaped as it is": with 35% object-centric images and colour in 30% of mentions a seed-2 stage 0
    reached 40% whole-image top-1, seed 0 98%; with 26-56 px scene objects its regions were named right 16-34% of
    the time). `WORLD_C` is the original, for comparison (`--stats world-c`)."""
    object_centric_fraction: float = 0.5  # world C: 0.35
    object_centric_size: tuple[float, float] = (60, 110)  # side of the one object of an object-centric image
    scene_size: tuple[float, float] = (32, 64)  # side of each scene object; world C: (26, 56)
    scene_objects: tuple[int, int] = (2, 4)  # objects per scene (fewer if no room is left)
    max_rotation_deg: float = 15.0
    color_mention_prob: float = 0.15  # a mention names the colour; world C: 0.3
    subset_mention_prob: float = 0.3  # a scene's caption names only some of its shapes
    max_overlap: float = 0.25  # intersection / smaller box area allowed between two objects of a scene
    novel: tuple[str, ...] = NOVEL_SHAPES  # the OVD split: shapes whose boxes instances_train_base.json leaves out


WORLD_C = WorldStats(object_centric_fraction=0.35, scene_size=(26, 56), color_mention_prob=0.3)
_SPLIT_CODE = {"train": 0, "val": 1}


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
    canvas = background(rng, image_size)  # (S, S, 3)
    if rng.random() < 0.5:
        clutter(rng, canvas)
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
            if overlap_ok(box, boxes, stats.max_overlap):
                break
        else:
            continue  # no room left: fewer objects in this scene
        shape = SHAPES[rng.integers(len(SHAPES))]
        color = list(COLORS)[rng.integers(len(COLORS))]
        angle = math.radians(rng.uniform(-stats.max_rotation_deg, stats.max_rotation_deg))
        box_xyxy = draw_object(canvas, rng, shape, COLORS[color], cx, cy, size, angle)
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
def categories(novel: tuple[str, ...] = NOVEL_SHAPES) -> list[dict]:
    """COCO category entries; id k+1 is SHAPES[k], each tagged with its OVD split ("novel" for the `novel` shapes)."""
    return [{"id": k + 1, "name": n, "supercategory": "shape", "split": "novel" if n in novel else "base"}
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
    cats = categories(stats.novel)
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
    (ranges as lo:hi, the novel shapes as a:b:c), e.g. 'object_centric_fraction=0.35,scene_size=26:56' or
    'novel=star:pentagon:ring'. Raises ValueError naming a bad item."""
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
            if key == "novel":
                changes[key] = _novel_shapes(value)
            elif kinds[key].startswith("tuple"):
                lo, hi = value.split(":")
                cast = int if "int" in kinds[key] else float
                changes[key] = (cast(lo), cast(hi))
            else:
                changes[key] = float(value)
        except ValueError as e:
            raise ValueError(f"world stats: bad value in {item!r} ({e})" if key == "novel" else
                             f"world stats: bad value in {item!r} (numbers; ranges as lo:hi)") from None
    return WorldStats(**changes)


def _novel_shapes(value: str) -> tuple[str, ...]:
    """'a:b:c' -> the novel shapes (a, b, c), in SHAPES order; ValueError unless 1-11 distinct shape names."""
    names = [v.strip() for v in value.split(":") if v.strip()]
    unknown = [n for n in names if n not in SHAPES]
    if unknown or not 1 <= len(set(names)) < len(SHAPES) or len(set(names)) != len(names):
        raise ValueError(f"novel shapes must be 1 to {len(SHAPES) - 1} distinct names of {', '.join(SHAPES)}, "
                         f"separated by ':'" + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
    return tuple(n for n in SHAPES if n in names)


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
                   "'object_centric_fraction=0.35,scene_size=26:56'; the base/novel split as novel=a:b:c, e.g. "
                   "'novel=star:pentagon:ring' (default: this project's world, novel heart:hexagon:arrow)")
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
