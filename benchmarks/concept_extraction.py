"""Measures regionclip_min.concepts.noun_phrases against hand-labelled captions (micro precision / recall).

    python benchmarks/concept_extraction.py                      # tests/data/concept_captions.tsv
    python benchmarks/concept_extraction.py --errors             # also list every miss and false alarm
    python benchmarks/concept_extraction.py --coco-captions data/toy/captions_train.json   # + pool of a corpus

micro P = sum_i |pred_i & gold_i| / sum_i |pred_i|,   micro R = sum_i |pred_i & gold_i| / sum_i |gold_i|
(each caption's prediction and label are sets of concept strings; sections are marked "# ---- name").
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from regionclip_min import concepts  # noqa: E402

DEFAULT_TSV = Path(__file__).resolve().parents[1] / "tests" / "data" / "concept_captions.tsv"


def load_labelled(path: str | Path) -> list[tuple[str, str, set[str]]]:
    """(section, caption, expected concept set) for each labelled line of the TSV."""
    rows, section = [], "all"
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith("# ----"):
            section = line.removeprefix("# ----").strip()
        if not line.strip() or line.startswith("#"):
            continue
        caption, labels = line.split("\t")
        rows.append((section, caption, {c.strip() for c in labels.split(";") if c.strip()}))
    return rows


def score(rows) -> dict[str, float]:
    """Micro precision / recall of noun_phrases over the rows, and the per-caption errors."""
    tp = n_pred = n_gold = 0
    errors = []
    for _, caption, gold in rows:
        pred = set(concepts.noun_phrases(caption))
        tp, n_pred, n_gold = tp + len(pred & gold), n_pred + len(pred), n_gold + len(gold)
        if pred != gold:
            errors.append((caption, sorted(pred - gold), sorted(gold - pred)))
    return {"precision": tp / max(n_pred, 1), "recall": tp / max(n_gold, 1), "captions": len(rows),
            "errors": errors}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labels", default=str(DEFAULT_TSV), help="hand-labelled TSV (caption<TAB>a; b; c)")
    ap.add_argument("--errors", action="store_true", help="print each caption whose concepts differ")
    ap.add_argument("--coco-captions", default=None, help="optional COCO captions json: print its concept pool")
    ap.add_argument("--min-count", type=int, default=1, help="pool threshold for --coco-captions")
    args = ap.parse_args(argv)

    rows = load_labelled(args.labels)
    print(f"backend: {concepts.backend()}")
    result = {}
    for section in dict.fromkeys(s for s, _, _ in rows):
        r = score([row for row in rows if row[0] == section])
        print(f"{section:>12}: {r['captions']:3d} captions  P {r['precision']:.3f}  R {r['recall']:.3f}")
    t0 = time.perf_counter()
    r = score(rows)
    dt = time.perf_counter() - t0
    print(f"{'all':>12}: {r['captions']:3d} captions  P {r['precision']:.3f}  R {r['recall']:.3f}  "
          f"({r['captions'] / dt:.0f} captions/s)")
    result.update(precision=r["precision"], recall=r["recall"], captions=r["captions"])
    if args.errors:
        for caption, extra, missed in r["errors"]:
            print(f"  {caption!r}\n      extra {extra}  missed {missed}")
    if args.coco_captions:
        anns = json.loads(Path(args.coco_captions).read_text())["annotations"]
        pool = concepts.build_concept_pool([a["caption"] for a in anns], min_count=args.min_count)
        print(f"pool of {len(anns)} captions (min_count {args.min_count}): {len(pool)} concepts: {pool}")
        result["pool"] = pool
    return result


if __name__ == "__main__":
    main()
