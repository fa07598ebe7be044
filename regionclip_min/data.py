"""Datasets and collate functions (the data of paper Sec. 3.3 and 4.1; docs/DESIGN.md §2, §3).

Pixels, boxes and flips are in transforms.py, the checks of bad input in data_checks.py. Here:
``ImageCaptionDataset``, the image-text pairs of pretraining, from a COCO captions json or a TSV of
``image_path<TAB>caption`` lines; ``DetectionDataset``, COCO instances as torchvision detection targets
(boxes xyxy float32 absolute pixels, labels int64 with background 0 and category k -> k + 1), optionally
restricted to a category subset such as the base split of open-vocabulary transfer; and the collate functions.

Bad input. Structural errors (json/TSV missing, not valid JSON, a required key missing) raise FileNotFoundError
or ValueError naming the file and entry. Per-sample problems (degenerate box, box outside the image, unknown
category or image id, empty caption, malformed TSV line, missing or unreadable image) raise ValueError
(FileNotFoundError for a missing image) if ``strict``; else the sample is skipped, counted in ``dataset.skipped``
(a Counter by kind; ``dataset.summary()``) and warned about once per kind. Annotations are checked on reading;
image files are only opened in ``__getitem__`` (a 100k-image dataset starts at once): a bad one makes the item
None, which the collate functions drop (under DataLoader workers it is counted in the worker's copy).

Left out: masks, keypoints, crowd regions (``iscrowd`` boxes are dropped), crop/scale-jitter augmentation,
LVIS federated-annotation fields, and making data (toyworld.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from regionclip_min.data_checks import CheckedDataset, box_xyxy, index_images, load_json, require
from regionclip_min.transforms import geometry, hflip, image_transform, uint8_to_input


def image_root_beside(json_path: str, root: str | None) -> str | None:
    """`root`, or when it is None the folder 'images/' beside the json if there is one (the toy world's layout)."""
    if root is None and (Path(json_path).parent / "images").is_dir():
        return str(Path(json_path).parent / "images")
    return root


class ImageCaptionDataset(CheckedDataset):
    """Image-text pairs for region-text pretraining (Sec. 3.3): one item per image, with all its captions.

    Args:
        path: a COCO captions json (``images`` [{id, file_name}], ``annotations`` [{image_id, caption}]), or a
            ``.tsv``/``.txt`` file of UTF-8 ``image_path<TAB>caption`` lines (the caption is all after the first
            tab; lines naming the same path are one item; blank lines are ignored).
        image_root: folder the (relative) image paths start from; default the folder of ``path``.
        image_size: S, the output side (see ``image_transform``); train: random horizontal flip.
        max_size: None: square S x S centre crops; a value: short side S, long side at most this, aspect kept.
        strict: raise at the first bad sample instead of skipping it.
        cache_images: keep each image, decoded, resized and cropped, as (3, S, S) uint8 in memory from its first
            read on (3 S^2 bytes per image: 0.4 GB for the toy world's 8,000 at 128 px), so later epochs skip PNG
            decoding; the items are identical. For many epochs over a small set in one process (num_workers 0:
            each worker would hold its own copy).

    Items: {"image": (3, S, S) float32 CLIP-normalised, "captions": list[str] (>= 1, stripped), "image_id": int
    (the json's id; for a TSV the item index)}, or None when the image is missing or unreadable (non-strict).
    """

    def __init__(self, path, image_root=None, *, image_size: int = 128, train: bool = False, strict: bool = False,
                 cache_images: bool = False, max_size: int | None = None):
        super().__init__(path, strict)
        self.image_root = Path(image_root) if image_root is not None else self.path.parent
        self.transform = image_transform(image_size, train=train, max_size=max_size)
        self.geometry = T.Compose(geometry(image_size, max_size))
        self._flip = T.RandomHorizontalFlip(0.5) if train else None
        self.cache: dict[int, tuple[torch.Tensor, tuple[int, int]]] | None = {} if cache_images else None
        self.items: list[tuple[Path, list[str], int, str]] = []  # (image path, captions, image id, where)
        if self.path.suffix.lower() == ".json":
            self._read_coco()
        elif self.path.suffix.lower() in (".tsv", ".txt"):
            self._read_tsv()
        else:
            raise ValueError(f"{self.path}: expected a .json (COCO captions) or .tsv/.txt (path<TAB>caption) file")
        self._warn_skipped()

    def _read_coco(self) -> None:
        data = load_json(self.path, ("images", "annotations"))
        by_id = {k: (i, entry["file_name"], []) for k, (i, entry) in index_images(data, (), self.path).items()}
        for i, ann in enumerate(data["annotations"]):
            require(ann, ("image_id", "caption"), self.path, f"annotations[{i}]")
            if ann["image_id"] not in by_id:
                self._ann_problem("unknown_image", i, ann, f"unknown image_id {ann['image_id']!r}")
            elif not isinstance(ann["caption"], str) or not ann["caption"].strip():
                self._ann_problem("caption_empty", i, ann, f"empty caption {ann['caption']!r}")
            else:
                by_id[ann["image_id"]][2].append(ann["caption"].strip())
        for image_id, (i, file_name, captions) in by_id.items():
            if captions:
                self.items.append((self.image_root / file_name, captions, image_id, f"images[{i}] of {self.path}"))
            else:
                self._problem("no_caption", f"{self.path}: images[{i}] (id {image_id}) has no usable caption")

    def _read_tsv(self) -> None:
        groups: dict[str, tuple[int, list[str]]] = {}  # path -> (first line number, captions)
        with open(self.path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                where = f"{self.path}: line {lineno}"
                try:
                    line = raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError as e:
                    self._problem("tsv_malformed", f"{where}: not valid UTF-8 ({e.reason} at byte {e.start})")
                    continue
                if not line.strip():
                    continue
                rel, tab, caption = line.partition("\t")
                if not tab or not rel.strip():
                    self._problem("tsv_malformed", f"{where}: expected 'image_path<TAB>caption', got {line[:80]!r}")
                elif not caption.strip():
                    self._problem("caption_empty", f"{where}: empty caption")
                else:
                    groups.setdefault(rel.strip(), (lineno, []))[1].append(caption.strip())
        for n, (rel, (lineno, captions)) in enumerate(groups.items()):
            self.items.append((self.image_root / rel, captions, n, f"line {lineno} of {self.path}"))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict | None:
        path, captions, image_id, where = self.items[index]
        if self.cache is not None and index in self.cache:
            pixels, orig_size = self.cache[index]  # (3, S, S) uint8; (width, height) before the resize and crop
            tensor = uint8_to_input(self._flip(pixels) if self._flip is not None else pixels)
        else:
            image = self._open_rgb(index, path, where)
            if image is None:
                return None
            tensor, orig_size = self.transform(image), image.size
            if self.cache is not None:  # this first read goes through the PIL pipeline; later reads use the cache
                self.cache[index] = (torch.from_numpy(np.array(self.geometry(image))).permute(2, 0, 1).contiguous(),
                                     image.size)
        return {"image": tensor, "captions": list(captions), "image_id": image_id, "orig_size": orig_size}

    def _kept(self) -> str:
        return f"{len(self.items)} images, {sum(len(c) for _, c, _, _ in self.items)} captions"

    def image_paths(self) -> list[Path]:
        return [p for p, _, _, _ in self.items]


def collate_image_caption(batch: list[dict | None]) -> dict | None:
    """Batch ImageCaptionDataset items, dropping None (bad images). Returns {"images": (B, 3, H, W) float32, images
    of other sizes zero-padded at the bottom and right (Detectron2's `ImageList.from_tensors`), "sizes": (B, 2)
    int64 [height, width] of each image before padding, "captions": B lists of str, "image_ids": (B,) int64,
    "orig_sizes": (B, 2) int64 [width, height] of the files}, or None when every item was dropped (skip the step)."""
    items = [b for b in batch if b is not None]
    if not items:
        return None
    h, w = (max(b["image"].shape[i] for b in items) for i in (1, 2))
    images = torch.zeros(len(items), 3, h, w)  # (B, 3, H, W); 0 = the mean colour after normalisation
    for i, b in enumerate(items):
        images[i, :, :b["image"].shape[1], :b["image"].shape[2]] = b["image"]
    return {"images": images,
            "sizes": torch.tensor([tuple(b["image"].shape[1:]) for b in items], dtype=torch.int64),  # (B, 2)
            "captions": [b["captions"] for b in items],
            "image_ids": torch.tensor([b["image_id"] for b in items], dtype=torch.int64),  # (B,)
            "orig_sizes": torch.tensor([b["orig_size"] for b in items], dtype=torch.int64)}  # (B, 2)


class DetectionDataset(CheckedDataset):
    """COCO instances as torchvision detection targets (open-vocabulary transfer and evaluation, Sec. 4.1).

    Labels follow docs/DESIGN.md §3: background 0; the kept categories are sorted by category id and
    ``category_names[k]`` (id ``category_ids[k]``) gets label k + 1.

    Args:
        instances_json: COCO instances json: ``images`` [{id, file_name, width, height, kind?}], ``annotations``
            [{image_id, category_id, bbox [x, y, w, h] pixels, iscrowd?}], ``categories`` [{id, name, split?}].
        image_root: folder of the images' file_name; default the json's folder.
        categories: keep only these: a list of names and/or ids, a split name ("base"/"novel") matched
            against each category's "split" field, or a predicate on each category entry (e.g.
            `splits.is_lvis_base`). Boxes of other categories are dropped (not counted as bad).
        min_size: if set, resize each image so its short side is min_size (bilinear) and scale its boxes, e.g.
            twice the CLIP input size to pool regions from 2x enlarged images (docs/DESIGN.md §5.1).
        hflip_prob: probability of a horizontal flip of image and boxes (training: 0.5).
        drop_empty: leave out images that keep no box (by default they stay, as negatives with boxes (0, 4)).
        strict: raise at the first bad sample instead of skipping it.

    Items: (image (3, H, W) float32 RGB in [0, 1], unnormalised (FasterRCNN normalises), target {"boxes": (N, 4)
    float32 xyxy absolute pixels of that image, "labels": (N,) int64 in 1..K, "image_id": int, "orig_size": (2,)
    int64 [height, width] before min_size}), or None for a bad image (non-strict). Also: ``category_splits``
    (None where absent), ``images`` (json entries), ``image_ids``, ``kinds`` (each image's "kind" or None),
    ``coco_json_path`` (for pycocotools).
    """

    def __init__(self, instances_json, image_root=None, *,
                 categories: str | Callable | Sequence[str | int] | None = None, min_size: int | None = None,
                 hflip_prob: float = 0.0, drop_empty: bool = False, strict: bool = False):
        super().__init__(instances_json, strict)
        self.coco_json_path = str(self.path)
        self.image_root = Path(image_root) if image_root is not None else self.path.parent
        self.min_size, self.hflip_prob = min_size, hflip_prob
        data = load_json(self.path, ("images", "annotations", "categories"))
        cats = {}
        for i, cat in enumerate(data["categories"]):
            require(cat, ("id", "name"), self.path, f"categories[{i}]")
            cats[cat["id"]] = cat
        self.category_ids = self._select(cats, categories)
        self.category_names = [cats[c]["name"] for c in self.category_ids]
        self.category_splits = [cats[c].get("split") for c in self.category_ids]
        self.category_frequencies = [cats[c].get("frequency") for c in self.category_ids]  # LVIS: r / c / f
        label_of = {cid: k + 1 for k, cid in enumerate(self.category_ids)}
        images = {k: (i, entry, [], []) for k, (i, entry) in  # id -> (json index, entry, boxes, labels)
                  index_images(data, ("width", "height"), self.path).items()}
        for k, (i, entry, _, _) in list(images.items()):
            w, h = entry["width"], entry["height"]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 1 for v in (w, h)):
                self._problem("image_zero_size", f"{self.path}: images[{i}] (id {k}): width x height {w!r} x {h!r} "
                              f"is not a positive size; the image and its boxes are left out")
                del images[k]
                self._bad_ids.add(k)
        for i, ann in enumerate(data["annotations"]):
            require(ann, ("image_id", "category_id", "bbox"), self.path, f"annotations[{i}]")
            box, kind, reason = None, "", ""
            if ann["category_id"] not in cats:
                kind, reason = "unknown_category", f"unknown category_id {ann['category_id']!r}"
            elif ann["image_id"] in self._bad_ids:
                continue  # its image was left out (counted once, as image_zero_size)
            elif ann["image_id"] not in images:
                kind, reason = "unknown_image", f"unknown image_id {ann['image_id']!r}"
            elif ann["category_id"] in label_of and not ann.get("iscrowd", 0):
                _, entry, boxes, labels = images[ann["image_id"]]
                box, kind, reason = box_xyxy(ann["bbox"], entry["width"], entry["height"])
            if box is not None:
                boxes.append(box)
                labels.append(label_of[ann["category_id"]])
            elif kind:
                self._ann_problem(kind, i, ann, reason)
        kept = [v for v in images.values() if v[2] or not drop_empty]
        self._json_index = [v[0] for v in kept]
        self.images = [v[1] for v in kept]
        self._boxes, self._labels = [v[2] for v in kept], [v[3] for v in kept]
        self.image_ids = [e["id"] for e in self.images]
        self.kinds = [e.get("kind") for e in self.images]
        self._warn_skipped()

    def image_labels(self) -> list[list[int]]:
        """Each image's box labels, read from the json (no image is opened): for repeat-factor sampling."""
        return [list(labels) for labels in self._labels]

    def _select(self, cats: dict, categories) -> list:
        """The kept category ids, sorted: all, those of a split (str), those a predicate keeps (callable on the
        category entry), or those named by name or id (list)."""
        if categories is None:
            return sorted(cats)
        if callable(categories):
            return sorted(cid for cid, c in cats.items() if categories(c))
        if isinstance(categories, str):
            chosen = {cid for cid, c in cats.items() if c.get("split") == categories}
            if not chosen:
                raise ValueError(f"{self.path}: no category has split {categories!r}")
            return sorted(chosen)
        by_name = {c["name"]: cid for cid, c in cats.items()}
        unknown = [c for c in categories if (by_name.get(c) if isinstance(c, str) else c) not in cats]
        if unknown:
            raise ValueError(f"{self.path}: categories= names {unknown}, not categories of this file")
        return sorted({by_name[c] if isinstance(c, str) else c for c in categories})

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict] | None:
        entry = self.images[index]
        width, height = entry["width"], entry["height"]
        where = f"images[{self._json_index[index]}] (id {entry['id']}) of {self.path}"
        image = self._open_rgb(index, self.image_root / entry["file_name"], where, (width, height))
        if image is None:
            return None
        boxes = torch.tensor(self._boxes[index], dtype=torch.float32).reshape(-1, 4)  # (N, 4) xyxy
        labels = torch.tensor(self._labels[index], dtype=torch.int64)  # (N,)
        if self.min_size is not None:
            scale = self.min_size / min(width, height)
            new_w, new_h = round(width * scale), round(height * scale)
            image = image.resize((new_w, new_h), Image.BILINEAR)
            boxes = boxes * torch.tensor([new_w / width, new_h / height] * 2)  # (N, 4)
        pixels = TF.to_tensor(image)  # (3, H, W) float32 in [0, 1]
        if self.hflip_prob > 0 and torch.rand(()) < self.hflip_prob:
            pixels, boxes = hflip(pixels, boxes)  # (3, H, W), (N, 4)
        target = {"boxes": boxes, "labels": labels, "image_id": entry["id"],
                  "orig_size": torch.tensor([height, width], dtype=torch.int64)}  # (2,)
        return pixels, target

    def _kept(self) -> str:
        return (f"{len(self.images)} images, {sum(len(b) for b in self._boxes)} boxes, "
                f"{len(self.category_ids)} categories")

    def image_paths(self) -> list[Path]:
        return [self.image_root / e["file_name"] for e in self.images]


def collate_detection(batch: list[tuple[torch.Tensor, dict] | None]) -> tuple[list[torch.Tensor], list[dict]]:
    """Batch DetectionDataset items as torchvision detectors take them, dropping None (bad images). Returns
    images: B tensors (3, H_i, W_i) (sizes may differ), targets: B dicts (boxes (N_i, 4), N_i may be 0)."""
    items = [b for b in batch if b is not None]
    return [image for image, _ in items], [target for _, target in items]
