"""The toy world's pictures (toyworld.py writes the world): the 12 shapes as polygons in unit coordinates, drawn
with PIL at any position, size and angle, the textured backgrounds, and the unannotated clutter (thin lines, dots).
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

SUPERSAMPLE = 2  # shapes are drawn at 2x and downsampled, for anti-aliased edges

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


def draw_object(canvas: np.ndarray, rng, shape: str, color, cx: float, cy: float, size: float, angle: float):
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


def background(rng, size: int) -> np.ndarray:
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


def clutter(rng, canvas: np.ndarray):
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


def overlap_ok(box, boxes, max_overlap: float) -> bool:
    for b in boxes:
        iw = min(box[2], b[2]) - max(box[0], b[0])
        ih = min(box[3], b[3]) - max(box[1], b[1])
        if iw > 0 and ih > 0:
            smaller = min((box[2] - box[0]) * (box[3] - box[1]), (b[2] - b[0]) * (b[3] - b[1]))
            if iw * ih > max_overlap * smaller:
                return False
    return True
