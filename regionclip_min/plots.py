"""Pictures a reader would rather look at than read (matplotlib): loss curves of a run, a 2-D map of region
embeddings, and per-concept heatmaps of the proposals' similarity.

    python -m regionclip_min.plots runs/toy/metrics.jsonl runs/toy-det/metrics.jsonl --out loss.png

`loss_curves` reads any run's `metrics.jsonl` (train_pretrain.py and train_detect.py write one). `embedding_map`
and `concept_heatmaps` take what `evaluation.encode_regions` and `demo.zero_shot_detections` compute, so they work
for any CLIP-style model and dataset; the toy benchmark draws all three for CLIP and RegionCLIP
(benchmarks/toy/benchmark.py `pictures`).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed or assumed
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def read_metrics(path) -> list[dict]:
    """The rows of a metrics.jsonl; SystemExit naming the file and line of a row that is not JSON."""
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}, line {n}: not a JSON object ({e.msg})") from None
    return rows


def _smooth(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last `window` values (the first ones over as many as there are)."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v - (values[i - window] if i >= window else 0.0)
        out.append(acc / min(i + 1, window))
    return out


def loss_curves(runs: dict[str, Path], out, *, smooth: int = 5) -> Path:
    """One panel per run (title -> its metrics.jsonl): every `loss_*` key and the weighted total against the step,
    thin as logged and thick as a trailing mean of `smooth` rows. Returns the PNG path."""
    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.2), squeeze=False)
    for ax, (title, path) in zip(axes[0], runs.items()):
        rows = read_metrics(path)
        keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k.startswith("loss") or k == "total"]
        for k in keys:
            pts = [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float)) and "step" in r]
            if not pts:
                continue
            steps, vals = zip(*pts)
            line, = ax.plot(steps, vals, lw=0.6, alpha=0.35)
            ax.plot(steps, _smooth(list(vals), smooth), lw=1.6, color=line.get_color(),
                    label=k.removeprefix("loss_"))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("loss")
    return _save(fig, out)


def pca_2d(x: torch.Tensor) -> torch.Tensor:
    """(N, D) -> (N, 2): the first two principal components of the rows (centred; SVD, so it is deterministic up
    to each axis's sign, which is fixed to make the largest-magnitude coordinate positive)."""
    xc = x.double() - x.double().mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(xc, full_matrices=False)
    y = xc @ v[:2].T  # (N, 2)
    sign = torch.sign(y.gather(0, y.abs().argmax(0, keepdim=True)))  # (1, 2)
    return (y * sign).float()


def embedding_map(models: dict[str, tuple[torch.Tensor, torch.Tensor]], names: list[str], novel: list[bool],
                  out) -> Path:
    """Side by side, one panel per model (title -> (embeddings (N, D), category index (N,))): the regions' first two
    principal components (each model's own PCA), coloured by category; novel categories drawn as crosses and named
    with '*' in the legend."""
    cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    fig, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models) + 1.6, 4.4), squeeze=False)
    for ax, (title, (emb, labels)) in zip(axes[0], models.items()):
        y = pca_2d(torch.nn.functional.normalize(emb.float(), dim=-1))
        for k, name in enumerate(names):
            m = labels == k
            if m.any():
                ax.scatter(y[m, 0], y[m, 1], s=16 if novel[k] else 9, marker="x" if novel[k] else "o",
                           color=cmap(k % cmap.N), alpha=0.85, linewidths=1.2 if novel[k] else 0,
                           label=f"{name}{'*' if novel[k] else ''}")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles, labels_ = axes[0][-1].get_legend_handles_labels()
    fig.legend(handles, labels_, loc="center right", fontsize=7, markerscale=1.5, frameon=False)
    fig.subplots_adjust(right=1 - 1.5 / fig.get_figwidth())
    return _save(fig, out, tight=False)


def heatmap(boxes: torch.Tensor, scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(H, W): at each pixel the highest score of the boxes (x1, y1, x2, y2 pixels, (R, 4)) that cover it, 0 where
    none does."""
    h, w = size
    out = torch.zeros(h, w)
    for (x1, y1, x2, y2), s in zip(boxes.round().long().tolist(), scores.tolist()):
        region = out[max(y1, 0):min(y2, h), max(x1, 0):min(x2, w)]
        region.copy_(torch.maximum(region, torch.tensor(float(s))))
    return out


def concept_heatmaps(rows: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]], names: list[str],
                     novel: list[bool], out) -> Path:
    """A grid: one row per (title, image (3, H, W) in [0, 1], proposals (R, 4) pixels, probabilities (R, V)), the
    image first and then, for each concept, the heatmap of its probability over the proposals (`heatmap`) on the
    faded image. Novel concepts are titled with '*'."""
    fig, axes = plt.subplots(len(rows), len(names) + 1, figsize=(1.25 * (len(names) + 1), 1.4 * len(rows)),
                             squeeze=False)
    for r, (title, image, boxes, prob) in enumerate(rows):
        img = image.permute(1, 2, 0).clamp(0, 1).numpy()
        axes[r][0].imshow(img)
        axes[r][0].set_ylabel(title, fontsize=6, rotation=0, ha="right", va="center")
        for k, name in enumerate(names):
            ax = axes[r][k + 1]
            ax.imshow(img * 0.35 + 0.65)
            ax.imshow(heatmap(boxes, prob[:, k], image.shape[-2:]).numpy(), cmap="magma", vmin=0, vmax=1, alpha=0.8)
            if r == 0:
                ax.set_title(f"{name}{'*' if novel[k] else ''}", fontsize=7, color="red" if novel[k] else "black")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, out)


def _save(fig, out, tight: bool = True) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description="Loss curves of runs, one panel each, from their metrics.jsonl.")
    p.add_argument("metrics", nargs="+", help="metrics.jsonl files (or run folders holding one)")
    p.add_argument("--out", default="loss_curves.png", help="PNG to write (default %(default)s)")
    p.add_argument("--smooth", type=int, default=5, help="trailing mean over this many logged rows (default 5)")
    args = p.parse_args(argv)
    runs = {}
    for m in map(Path, args.metrics):
        path = m / "metrics.jsonl" if m.is_dir() else m
        if not path.is_file():
            raise SystemExit(f"{path}: no such metrics file (train_pretrain.py and train_detect.py write "
                             f"<out_dir>/metrics.jsonl)")
        runs[str(path.parent)] = path
    out = loss_curves(runs, args.out, smooth=max(1, args.smooth))
    print(f"{out}: {len(runs)} run{'s' if len(runs) > 1 else ''}")
    return out


if __name__ == "__main__":
    main()
