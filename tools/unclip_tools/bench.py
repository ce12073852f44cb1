"""`python -m unclip_tools bench`: the Python baseline of `unclip bench`.

Runs the reference sampler (Python over the same ONNX graphs with onnxruntime) on the same
requests `unclip bench` sends to the gateway: prompt i of the list in turn, seed
`seed + i * num_images`, warm-up requests first and not counted. Each request is timed from the
call to its images encoded as PNG (what the gateway answers with). Requests run one after
another: the sampler holds one set of sessions. The report has the fields of `unclip bench
--json` (stage names mapped to the gateway's), so `scripts/bench` can set them side by side.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import time
from pathlib import Path

from . import UserError
from .scheduler import BACKENDS

# The captions `unclip bench` sends by default (crates/cli/src/bench.rs, DEFAULT_PROMPTS).
DEFAULT_PROMPTS = [
    "a small red circle in the top left on a white background",
    "a large blue square in the center on a black background",
    "a small yellow star in the bottom right on a gray background",
    "a large green triangle in the top right on a white background",
]

# Reference-sampler timing keys -> the gateway's stage names.
STAGE_NAMES = {"text": "clip.encode_text", "prior": "prior.sample", "decoder": "decoder.decode"}


def stage_name(key: str) -> str:
    """"upsampler0" -> "decoder.upsample[0]"; the others by STAGE_NAMES."""
    if key.startswith("upsampler"):
        return f"decoder.upsample[{key[len('upsampler'):]}]"
    return STAGE_NAMES.get(key, key)


def pipeline_order(stage: str) -> tuple[int, str]:
    """Sort key: stage calls in the order a request makes them, upsamplers by stage."""
    order = ["clip.encode_text", "clip.encode_image", "prior.sample", "decoder.invert", "decoder.decode"]
    return (order.index(stage), "") if stage in order else (len(order), stage)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile, as `unclip bench` computes it."""
    rank = math.ceil(q * len(sorted_values))
    return sorted_values[min(max(rank, 1), len(sorted_values)) - 1]


def report(model: str, latencies_s: list[float], stage_seconds: dict[str, list[float]], wall: float, num_images: int) -> dict:
    """The report of the measured requests, in `unclip bench --json`'s shape."""
    ms = sorted(x * 1000.0 for x in latencies_s)
    images = len(ms) * num_images
    return {
        "model": model,
        "requests": len(ms),
        "failures": 0,
        "first_failure": None,
        "concurrency": 1,
        "num_images": num_images,
        "images": images,
        "wall_seconds": wall,
        "images_per_second": images / wall if wall > 0 else 0.0,
        "latency_ms": {
            "mean": sum(ms) / len(ms),
            "p50": percentile(ms, 0.5),
            "p90": percentile(ms, 0.9),
            "p99": percentile(ms, 0.99),
            "max": ms[-1],
        },
        "stages": {
            name: {"calls": len(v), "mean_seconds": sum(v) / len(v), "cached": 0}
            for name, v in sorted(stage_seconds.items())
        },
    }


def table(r: dict) -> str:
    """The report as `unclip bench` prints it."""
    lat = r["latency_ms"]
    lines = [
        f"model {r['model']}: {r['requests']} requests of {r['num_images']} image(s), 1 at a time (reference sampler)",
        f"throughput  {r['images_per_second']:.2f} images/s ({r['images']} images in {r['wall_seconds']:.2f} s)",
        f"latency ms  mean {lat['mean']:.0f}  p50 {lat['p50']:.0f}  p90 {lat['p90']:.0f}  p99 {lat['p99']:.0f}  max {lat['max']:.0f}",
        "stage calls (mean seconds per call):",
    ]
    for name, f in r["stages"].items():
        lines.append(f"  {name:<22} {f['calls']:>4} calls  {f['mean_seconds']:>8.4f} s")
    return "\n".join(lines)


def comparison(runs: list[tuple[str, dict]]) -> str:
    """A markdown table setting reports side by side: throughput, latency, stage means."""
    stages = sorted({name for _, r in runs for name in r["stages"]}, key=pipeline_order)
    head = ["run", "images/s", "p50 ms", "p90 ms"] + [f"{s} s" for s in stages]
    rows = [head, ["---"] * len(head)]
    for label, r in runs:
        lat = r.get("latency_ms") or {}
        row = [label, f"{r['images_per_second']:.2f}", f"{lat.get('p50', float('nan')):.0f}", f"{lat.get('p90', float('nan')):.0f}"]
        for stage in stages:
            f = r["stages"].get(stage)
            row.append(f"{f['mean_seconds']:.4f}" if f and f["calls"] else "cached" if f else "")
        rows.append(row)
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def ratios(runs: list[tuple[str, dict]], pairs: list[str]) -> list[str]:
    """One line per "NUM/DEN" pair of labels: NUM's throughput over DEN's, and p50 latencies."""
    by_label = dict(runs)
    lines = []
    for pair in pairs:
        num, sep, den = pair.partition("/")
        if not sep or "/" in den:
            raise UserError(f"--ratio takes NUM/DEN (two labels of --compare), got {pair!r}")
        for label in (num, den):
            if label not in by_label:
                raise UserError(f"--ratio {pair!r}: no report labelled {label!r}")
        a, b = by_label[num], by_label[den]
        speed = a["images_per_second"] / b["images_per_second"] if b["images_per_second"] > 0 else float("inf")
        latency = a["latency_ms"]["p50"] / b["latency_ms"]["p50"] if b["latency_ms"]["p50"] > 0 else float("inf")
        lines.append(f"{num} / {den}: {speed:.2f}x the images/s, {latency:.2f}x the p50 latency")
    return lines


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--model", type=Path, default=Path("models/shapes"), help="model repository folder")
    parser.add_argument("--requests", type=int, default=20, help="measured requests (default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="requests sent first and not counted (default 2)")
    parser.add_argument("--prompt", action="append", default=None, help="a caption (repeat for several; default: four shapes captions)")
    parser.add_argument("--num-images", type=int, default=1, help="images per request (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first request; request i uses seed + i * num_images")
    parser.add_argument("--prior-steps", type=int, default=None)
    parser.add_argument("--decoder-steps", type=int, default=None)
    parser.add_argument("--upsampler-steps", type=int, default=None)
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="onnxruntime intra-op threads (default: the CPU count)"
    )
    parser.add_argument(
        "--scheduler", choices=BACKENDS, default="numpy", help="who computes scheduler steps (default numpy: no torch overhead)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument(
        "--compare",
        nargs="+",
        metavar="LABEL=FILE",
        help="run nothing: print a table of these reports, labelled (LABEL may hold =, FILE may not) (from --json here or `unclip bench --json`)",
    )
    parser.add_argument(
        "--ratio",
        action="append",
        default=[],
        metavar="NUM/DEN",
        help="with --compare: also print NUM's throughput over DEN's (two labels; repeat for more pairs)",
    )


def run(args: argparse.Namespace, name: str) -> int:
    if args.compare:
        runs = []
        for item in args.compare:
            label, sep, file = item.rpartition("=")
            if not sep:
                raise UserError(f"--compare takes LABEL=FILE, got {item!r}")
            try:
                runs.append((label, json.loads(Path(file).read_text())))
            except (OSError, ValueError) as e:
                raise UserError(f"cannot read the report {file}: {e}") from None
        lines = ratios(runs, args.ratio)  # checked before the table is printed
        print(comparison(runs))
        if lines:
            print()
            print("\n".join(lines))
        return 0

    from .sampler import UnclipSampler

    if args.requests < 1:
        raise UserError(f"--requests must be at least 1, got {args.requests}")
    if args.warmup < 0 or args.num_images < 1 or args.seed < 0:
        raise UserError("--warmup must be 0 or more, --num-images 1 or more and --seed non-negative")
    prompts = args.prompt or DEFAULT_PROMPTS
    sampler = UnclipSampler(args.model, scheduler_backend=args.scheduler, threads=args.threads)
    model = f"{sampler.manifest['model_id']} {sampler.manifest['version']}"

    def one(i: int) -> float:
        started = time.perf_counter()
        images = sampler.text_to_image(
            prompts[i % len(prompts)],
            num_images=args.num_images,
            seed=args.seed + i * args.num_images,
            prior_steps=args.prior_steps,
            decoder_steps=args.decoder_steps,
            upsampler_steps=args.upsampler_steps,
        )
        for image in images:
            image.save(io.BytesIO(), format="PNG")
        return time.perf_counter() - started

    for i in range(args.warmup):
        one(i)
    latencies: list[float] = []
    stage_seconds: dict[str, list[float]] = {}
    started = time.perf_counter()
    for i in range(args.warmup, args.warmup + args.requests):
        latencies.append(one(i))
        for key, seconds in sampler.timings.items():
            stage_seconds.setdefault(stage_name(key), []).append(seconds)
    r = report(model, latencies, stage_seconds, time.perf_counter() - started, args.num_images)
    print(json.dumps(r, indent=2) if args.json else table(r))
    return 0
