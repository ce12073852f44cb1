"""Latency against offered load, and the cache-hit path: the figures of `scripts/bench-load`.

    python -m unclip_tools load-captions N
    python -m unclip_tools load-report --config LABEL=DIR ... [--cache DIR] [--plot FILE] [--json FILE]

`load-captions` prints N distinct captions of the shapes grammar, one per line, none of them one
of `unclip bench`'s default captions: requests that share nothing in the gateway's cache.

`load-report` reads the reports `scripts/bench-load` keeps and prints them as markdown tables.
Each configuration's DIR holds `capacity.json` (a closed-loop `unclip bench --json`: its
images per second, at one image per request, is the capacity) and `load-*.json` (open-loop
`unclip bench --rate R --json` reports, one per offered rate; their queueing time is the
latency minus the stage calls as the gateway timed them, so it counts waiting in the gateway,
not in a stage service's own queue, which is inside its calls). The cache DIR holds closed-loop
reports of one client: `fresh.json` (a new caption every request: CLIP, prior and decoder run),
`new-seed.json` (one caption, a new seed every request: the text encoding is cached) and
`repeat.json` (one caption and one seed: the text encoding and the prior sample are cached, only
the decoder runs). `--plot` draws p50 and p99 latency and the achieved rate against the offered
rate, one line per configuration, and the cache paths' p50 and p99 beside them (matplotlib,
tools/requirements-plot.txt).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import UserError
from .bench import DEFAULT_PROMPTS
from .shapes.render import BACKGROUNDS, COLORS, POSITIONS, SHAPES, SIZES, single_caption

# The cache comparison's reports: file stem, label, what the cache leaves to run.
CACHE_PATHS = [
    ("fresh", "new caption, new seed", "CLIP, prior, decoder"),
    ("new-seed", "same caption, new seed", "prior, decoder (text encoding cached)"),
    ("repeat", "same caption, same seed", "decoder (text encoding and prior sample cached)"),
]


def captions(n: int) -> list[str]:
    """`n` distinct fully specified single-object captions in a fixed shuffled order, none of
    them one of `unclip bench`'s default captions."""
    every = [
        single_caption(shape, color, size, position, background)
        for size, color, shape, position, background in itertools.product(SIZES, COLORS, SHAPES, POSITIONS, BACKGROUNDS)
    ]
    every = [c for c in every if c not in DEFAULT_PROMPTS]
    if not 1 <= n <= len(every):
        raise UserError(f"load-captions: N must be 1..={len(every)}, got {n}")
    random.Random(0).shuffle(every)
    return every[:n]


@dataclass
class Point:
    """One open-loop run of a configuration."""

    offered: float
    achieved: float
    sent: int
    ok: int
    p50: float
    p90: float
    p99: float
    queueing_p50: float
    refused: int


@dataclass
class Configuration:
    """A stack configuration's capacity and its open-loop runs, by offered rate."""

    label: str
    capacity: float
    points: list[Point]


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read the report {path}: {e}") from None


def configuration(label: str, folder: Path) -> Configuration:
    """The configuration of the reports in `folder` (capacity.json and load-*.json)."""
    capacity = read_json(folder / "capacity.json")
    if capacity.get("num_images", 1) != 1:
        raise UserError(f"{folder / 'capacity.json'}: capacity needs one image per request")
    points = []
    for file in sorted(folder.glob("load-*.json")):
        r = read_json(file)
        if "offered_rate" not in r:
            raise UserError(f"{file} is not an open-loop report (no offered_rate)")
        admitted = r.get("admitted_ms") or {}
        queueing = r.get("queueing_ms") or {}
        points.append(Point(
            offered=r["offered_rate"],
            achieved=r["achieved_rate"],
            sent=r["sent"],
            ok=r["ok"],
            p50=admitted.get("p50", math.nan),
            p90=admitted.get("p90", math.nan),
            p99=admitted.get("p99", math.nan),
            queueing_p50=queueing.get("p50", math.nan),
            refused=sum(r.get("refusals", {}).values()),
        ))
    if not points:
        raise UserError(f"no load-*.json reports in {folder}")
    points.sort(key=lambda p: p.offered)
    return Configuration(label, capacity["images_per_second"], points)


def cache_reports(folder: Path) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, what runs, report) of the cache paths, fresh first."""
    return [(label, runs, read_json(folder / f"{stem}.json")) for stem, label, runs in CACHE_PATHS]


def load_table(configs: list[Configuration]) -> str:
    rows = [
        "| configuration | capacity req/s | offered req/s | × capacity | achieved req/s | p50 ms | p90 ms | p99 ms | queueing p50 ms | refused |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in configs:
        for p in c.points:
            rows.append(
                f"| {c.label} | {c.capacity:.2f} | {p.offered:.2f} | {p.offered / c.capacity:.2f} | {p.achieved:.2f} | "
                f"{p.p50:.0f} | {p.p90:.0f} | {p.p99:.0f} | {p.queueing_p50:.0f} | {p.refused} of {p.sent} |"
            )
    return "\n".join(rows)


def cached_stages(report: dict[str, Any]) -> str:
    """The stages the cache answered in `report`, with their counts."""
    hits = [f"{name} {f['cached']}" for name, f in report["stages"].items() if f.get("cached")]
    return ", ".join(hits) or "none"


def cache_table(paths: list[tuple[str, str, dict[str, Any]]]) -> str:
    fresh = paths[0][2]["latency_ms"]
    rows = [
        "| path | what runs | requests | p50 ms | p99 ms | p50 saving | p99 saving | cache hits |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, runs, r in paths:
        lat = r["latency_ms"]

        def saving(q: str) -> str:
            if r is paths[0][2]:
                return "(the base)"
            ms = fresh[q] - lat[q]
            return f"{ms:.0f} ms ({ms / fresh[q]:.0%})"

        rows.append(f"| {label} | {runs} | {r['requests']} | {lat['p50']:.0f} | {lat['p99']:.0f} | "
                    f"{saving('p50')} | {saving('p99')} | {cached_stages(r)} |")
    return "\n".join(rows)


def summary(configs: list[Configuration], paths: list[tuple[str, str, dict[str, Any]]] | None) -> dict[str, Any]:
    """Everything the tables show, as one JSON-ready object."""
    out: dict[str, Any] = {
        "configurations": [
            {"label": c.label, "capacity_rps": c.capacity, "points": [vars(p) for p in c.points]} for c in configs
        ]
    }
    if paths:
        fresh = paths[0][2]["latency_ms"]
        out["cache"] = [
            {
                "path": label,
                "runs": runs,
                "p50_ms": r["latency_ms"]["p50"],
                "p99_ms": r["latency_ms"]["p99"],
                "p50_saving_ms": fresh["p50"] - r["latency_ms"]["p50"],
                "p99_saving_ms": fresh["p99"] - r["latency_ms"]["p99"],
            }
            for label, runs, r in paths
        ]
    return out


def plot(configs: list[Configuration], paths: list[tuple[str, str, dict[str, Any]]] | None, out: Path, note: str = "") -> None:
    """The PNG: latency (p50 solid, p99 dashed, log scale) and achieved rate against offered
    rate, one colour per configuration with its capacity dotted; the cache paths as bars."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 3 if paths else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.4), layout="constrained")
    latency, achieved = axes[0], axes[1]
    top = max(p.offered for c in configs for p in c.points)
    for c, colour in zip(configs, itertools.cycle(plt.rcParams["axes.prop_cycle"].by_key()["color"])):
        x = [p.offered for p in c.points]
        latency.plot(x, [p.p50 / 1000 for p in c.points], "o-", color=colour, label=f"{c.label} p50")
        latency.plot(x, [p.p99 / 1000 for p in c.points], "s--", color=colour, label=f"{c.label} p99")
        achieved.plot(x, [p.achieved for p in c.points], "o-", color=colour, label=c.label)
        for ax in (latency, achieved):
            ax.axvline(c.capacity, color=colour, linestyle=":", linewidth=1)
    achieved.plot([0, top], [0, top], color="gray", linestyle="--", linewidth=1, label="offered")
    latency.set(xlabel="offered rate (requests/s)", ylabel="latency (s)", yscale="log",
                title="latency (dotted: closed-loop capacity)")
    achieved.set(xlabel="offered rate (requests/s)", ylabel="achieved rate (requests/s)",
                 title="achieved against offered", xlim=(0, top * 1.05), ylim=(0, top * 1.05))
    latency.legend(fontsize="small")
    achieved.legend(fontsize="small")
    # Plain seconds on the log scale, not powers of ten.
    seconds = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
    latency.yaxis.set_major_formatter(seconds)
    latency.yaxis.set_minor_formatter(seconds)
    latency.tick_params(axis="y", which="minor", labelsize="x-small")
    for ax in (latency, achieved):
        ax.grid(True, which="both", alpha=0.3)
    if paths:
        bars = axes[2]
        labels = [label.replace(", ", ",\n") for label, _, _ in paths]
        xs = range(len(paths))
        p50 = [r["latency_ms"]["p50"] for _, _, r in paths]
        p99 = [r["latency_ms"]["p99"] for _, _, r in paths]
        bars.bar([x - 0.2 for x in xs], p50, width=0.4, label="p50")
        bars.bar([x + 0.2 for x in xs], p99, width=0.4, label="p99")
        for x, value in zip(xs, p50):
            bars.annotate(f"{value:.0f}", (x - 0.2, value), ha="center", va="bottom", fontsize="small")
        bars.set_xticks(list(xs), labels, fontsize="small")
        bars.set(ylabel="latency (ms)", title="cache paths, 1 client")
        bars.legend(fontsize="small")
        bars.grid(True, axis="y", alpha=0.3)
    if note:
        fig.suptitle(note, fontsize="medium")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    if name == "load-captions":
        parser.add_argument("n", type=int, help="how many captions")
        return
    parser.add_argument("--config", action="append", required=True, metavar="LABEL=DIR",
                        help="a configuration's reports: DIR/capacity.json and DIR/load-*.json (repeat for several)")
    parser.add_argument("--cache", type=Path, metavar="DIR", help="the cache paths' reports: fresh, new-seed, repeat .json")
    parser.add_argument("--plot", type=Path, metavar="FILE", help="also draw the figures to this PNG")
    parser.add_argument("--note", default="", help="a line above the plot: the machine and its load")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the tables' figures as JSON")


def run(args: argparse.Namespace, name: str) -> int:
    if name == "load-captions":
        print("\n".join(captions(args.n)))
        return 0
    configs = []
    for item in args.config:
        label, sep, folder = item.rpartition("=")
        if not sep or not label:
            raise UserError(f"--config takes LABEL=DIR, got {item!r}")
        configs.append(configuration(label, Path(folder)))
    paths = cache_reports(args.cache) if args.cache else None
    print(load_table(configs))
    if paths:
        print()
        print(cache_table(paths))
    if args.json:
        args.json.write_text(json.dumps(summary(configs, paths), indent=2) + "\n")
    if args.plot:
        plot(configs, paths, args.plot, args.note)
    return 0
