"""The tables of the studies beside the headline (docs/RESULTS.md), from whatever runs exist:

    results/toy/transfers.{md,json}       transfer studies (fully supervised, RoI sampling) from CLIP and RegionCLIP,
                                          AP50 and AP over seeds (`benchmark.py transfers`)
    results/toy/summary-worlds.{md,json}  the paper's claims on each world instance (`benchmark.py seeds --worlds`)
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from benchmarks.toy.tables import _load, fmt_mean_std, mean_std
from regionclip_min.checkpoint import write_json

if TYPE_CHECKING:
    from benchmarks.toy.benchmark import Bench


# ---- transfers.md: transfer studies over seeds --------------------------------------------------------------------
AP_COLUMNS = [("ap50", "novel"), ("ap50", "base"), ("ap50", "all"), ("ap", "novel"), ("ap", "base"), ("ap", "all")]


def write_transfers(b: Bench, studies: list[tuple]) -> dict:
    """<results>/transfers.{md,json}: the toy preset's transfers (the headline table's) and each study of
    `studies` ((tag, what, args) as in rows.TRANSFER_STUDIES), from CLIP and from RegionCLIP, AP50 and AP
    (IoU 0.5:0.95) mean ± std over the seeds whose runs exist, and the mean training time of a run."""
    timings = _load(b.results / "timings.json") or {}
    rows, md = {}, [f"# Toy transfer studies (seeds {', '.join(map(str, b.seeds))}; mean ± std)", "",
                    "| transfer | from | AP50 novel | base | all | AP novel | base | all | seconds per run |",
                    "|---|---|---|---|---|---|---|---|---|"]
    for tag, what in [("", "the toy preset (the headline table's transfers)")] + [(t, w) for t, w, _ in studies]:
        for init, label in (("clip", "CLIP"), ("regionclip", "RegionCLIP")):
            names = [f"det-{init}{'-' + tag if tag else ''}-s{s}" for s in b.seeds]
            res = [r for r in (_load(b.runs / n / "results.json") for n in names) if r is not None]
            stat = {f"{g}.{k}": mean_std([100 * r[g][k] for r in res if not math.isnan(r[g][k])])
                    for g, k in AP_COLUMNS}
            secs = [timings[n]["seconds"] for n in names if n in timings]
            rows[f"{tag or 'preset'}/{init}"] = {"what": what, "from": label, **stat,
                                                  "seconds": mean_std(secs)}
            md.append(f"| {what} | {label} | " + " | ".join(fmt_mean_std(stat[f"{g}.{k}"]) for g, k in AP_COLUMNS)
                      + f" | {fmt_mean_std(mean_std(secs)) if secs else '—'} |")
    md += ["", f"Each transfer: `train_detect.py --preset toy`, {b.budget['detector_steps']} steps, the row's options "
           "changed; the fully supervised rows train on instances_train_all.json (every category's boxes, "
           "`--category_split all`), the others on the base boxes. Novel / base are the world's split in every row. "
           "Seconds: the run's wall time (training and evaluation) at 1 thread, two runs side by side."]
    write_json(b.results / "transfers.json", rows)
    (b.results / "transfers.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return rows


# ---- summary-worlds.md: the paper's two claims on each world instance ---------------------------------------------
CLAIMS = [("gt_top1.novel", "novel GT-box top-1"), ("ovd_ap50.novel", "OVD novel AP50"),
          ("rpn_ap50.all", "zero-shot RPN AP50 all")]  # (summary column, what the paper claims RegionCLIP raises)


def claim_reading(diff: float, spread: float) -> str:
    """How a RegionCLIP - CLIP difference reads against the larger seed std of the two rows."""
    if math.isnan(diff) or math.isnan(spread):
        return "one seed: not known"
    side = "holds" if diff > spread else "opposite" if diff < -spread else "within the std"
    return side + (", stable (std < 1/3 of it)" if side != "within the std" and spread < abs(diff) / 3 else "")


def write_worlds(b: Bench, benches: dict, tag: str = "full") -> dict:
    """<results>/summary-worlds{,-<tag>}.{md,json}: per world instance (benches: name -> its Bench, each with its
    summary written), the paper's two claims as RegionCLIP - CLIP and how each reads against the seed std."""
    stem = "summary" if tag == "full" else f"summary-{tag}"
    rows, md = [], [f"# The paper's claims on {len(benches)} toy-world instances (`make toy-seeds-worlds`)", "",
                    "| world | world seed | novel shapes | seeds | " + " | ".join(
                        f"{what}: CLIP | RegionCLIP | difference | reading" for _, what in CLAIMS) + " |",
                    "|---|---|---|---|" + "---|---|---|---|" * len(CLAIMS)]
    for name, bw in benches.items():
        summ = _load(bw.results / f"{stem}.json")
        if summ is None:
            continue
        row = {"world": name, "world_seed": bw.world["seed"], "novel": bw.world["novel"], "seeds": summ["seeds"]}
        cells = []
        for col, _ in CLAIMS:
            v = summ["verdict"][col]
            reading = claim_reading(v["regionclip_minus_clip"], v["seed_std"])
            row[col] = {"clip": summ["clip"][col], "regionclip": summ["regionclip"][col], "difference":
                        v["regionclip_minus_clip"], "seed_std": v["seed_std"], "reading": reading}
            cells += [fmt_mean_std(summ["clip"][col]), fmt_mean_std(summ["regionclip"][col]),
                      f"{v['regionclip_minus_clip']:+.1f}", reading]
        rows.append(row)
        md.append(f"| {name} | {bw.world['seed']} | {bw.world['novel'].replace(':', ', ')} | "
                  f"{len(summ['seeds'])} | " + " | ".join(cells) + " |")
    held = {col: sum(r[col]["reading"].startswith("holds") for r in rows) for col, _ in CLAIMS}
    md += ["", "Each world: its own toy world (seed, novel split; the other settings as the default world), its own "
           "stage 0, RPN, RegionCLIP runs and transfers, all with the default budget; each world's table is "
           "worlds/<name>/summary.md (the default world's is summary.md). 'holds': RegionCLIP beats CLIP by more "
           "than the larger seed std of the two rows; 'opposite': CLIP beats RegionCLIP by more than it; 'stable': "
           "that std is below a third of the difference.", "",
           "Worlds where the claim holds beyond the std: " + "; ".join(
               f"{what} {held[col]} of {len(rows)}" for col, what in CLAIMS) + "."]
    write_json(b.results / f"{stem}-worlds.json", {"worlds": rows, "holds": held})
    (b.results / f"{stem}-worlds.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return {"worlds": rows, "holds": held}
