"""Inpainting evaluation through a running gateway: held-out (image, mask, prompt) cases.

    python -m unclip_tools inpaint-eval --gateway 127.0.0.1:50050 --n 50 --out docs/shapes-inpainting.json

Each case (seed 7000 + i, none shared with the quality report's seeds) renders a scene with one
small object, masks a square of random side (40…88 px of 128) around another named position, and
prompts for an object of another colour there. Per case it measures, on the returned image:

- object in mask, right colour: pixels inside the mask far from the background (the checker's
  threshold), at least 12 of them, whose median is nearest the prompt's colour;
- kept area unchanged: the largest absolute difference outside the mask (0 = exact);
- seam: the mean colour jump between each pixel just inside the mask edge and its neighbour just
  outside, against the same jump in a true render of the finished scene (the object drawn there
  by the renderer), so a jump the scene itself has is not counted as a seam.

Counts come with Wilson 95% intervals. numpy, scipy, PIL and grpcio (stubs compiled from proto/).
Without --gateway it starts a local stack over --model (`unclip stack`) for the run.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checker import wilson
from .gateway import ROOT, Gateway, connect
from .render import BACKGROUNDS, COLORS, POSITIONS, SHAPES, render, scene_from_caption, single_caption

SIDE = 128


@dataclass
class Case:
    """One inpainting case: the input, the keep mask (True = kept) and the prompt."""

    image: np.ndarray  # uint8 [128, 128, 3]
    keep: np.ndarray  # bool [128, 128]
    prompt: str
    color: str
    truth: np.ndarray  # the renderer's picture of the finished scene


def make_case(i: int, first_seed: int = 7000) -> Case:
    rng = np.random.default_rng(first_seed + i)
    names = list(POSITIONS)
    pos_a, pos_b = rng.choice(names, 2, replace=False)
    bg = str(rng.choice(list(BACKGROUNDS)))
    colors = [c for c in COLORS if np.linalg.norm(np.subtract(COLORS[c], BACKGROUNDS[bg])) > 120]
    col_a, col_b = rng.choice(colors, 2, replace=False)
    shape_a, shape_b = rng.choice(SHAPES), rng.choice(SHAPES)
    base_caption = single_caption(str(shape_a), str(col_a), "small", str(pos_a), bg)
    prompt = single_caption(str(shape_b), str(col_b), "small", str(pos_b), bg)
    image = np.asarray(render(scene_from_caption(base_caption, i)).convert("RGB"))
    # The finished scene: both objects, drawn by the renderer (the seam baseline).
    other = np.asarray(render(scene_from_caption(prompt, i)).convert("RGB"))
    side = int(rng.integers(40, 89))
    cx, cy = (np.array(POSITIONS[str(pos_b)]) * SIDE).astype(int)
    x0, y0 = int(np.clip(cx - side // 2, 0, SIDE - side)), int(np.clip(cy - side // 2, 0, SIDE - side))
    keep = np.ones((SIDE, SIDE), bool)
    keep[y0 : y0 + side, x0 : x0 + side] = False
    truth = np.where(keep[..., None], image, other)
    return Case(image, keep, prompt, str(col_b), truth)


def seam_jump(img: np.ndarray, keep: np.ndarray) -> float:
    """Mean |colour difference| between mask-edge pixels and their outside neighbours."""
    px = img.astype(np.float32)
    jumps = []
    for axis in (0, 1):
        for shift in (1, -1):
            nb_keep = np.roll(keep, shift, axis=axis)
            nb_px = np.roll(px, shift, axis=axis)
            edge = ~keep & nb_keep
            # np.roll wraps around; drop the wrapped row/column.
            sl = [slice(None), slice(None)]
            sl[axis] = 0 if shift == 1 else -1
            edge[tuple(sl)] = False
            if edge.any():
                jumps.append(np.abs(px[edge] - nb_px[edge]).mean(axis=-1))
    return float(np.concatenate(jumps).mean()) if jumps else 0.0


def judge_case(case: Case, out: np.ndarray) -> dict:
    """The three measurements of one returned image."""
    px = out.astype(np.float32)
    bg = np.array(BACKGROUNDS[case.prompt.rsplit(" on a ", 1)[1].removesuffix(" background")], np.float32)
    inside = ~case.keep & (np.linalg.norm(px - bg, axis=-1) > 60.0)
    found = None
    if inside.sum() >= 12:
        med = np.median(px[inside], axis=0)
        found = min(COLORS, key=lambda c: np.linalg.norm(med - np.array(COLORS[c], np.float32)))
    kept_diff = int(np.abs(out.astype(np.int16) - case.image.astype(np.int16))[case.keep].max())
    return {
        "object_right_colour": found == case.color,
        "found_colour": found,
        "kept_max_diff": kept_diff,
        "seam": seam_jump(out, case.keep),
        "seam_truth": seam_jump(case.truth, case.keep),
    }


def proportion(hits: int, n: int) -> dict:
    """A share with its count and 95% Wilson interval, as the report prints it."""
    return {"hits": hits, "share": hits / n, "ci95": list(wilson(hits, n))}


def summarise(results: list[dict]) -> dict:
    n = len(results)
    ok = sum(r["object_right_colour"] for r in results)
    kept = sum(r["kept_max_diff"] == 0 for r in results)
    return {
        "cases": n,
        "object_right_colour": proportion(ok, n),
        "kept_exact": proportion(kept, n),
        "seam_mean": float(np.mean([r["seam"] for r in results])),
        "seam_truth_mean": float(np.mean([r["seam_truth"] for r in results])),
    }


def evaluate(gateway: Gateway, n: int, seed: int, first: int = 0) -> list[dict]:
    """Cases first…first+n−1 through `gateway`, one result per case."""
    results = []
    for i in range(first, first + n):
        case = make_case(i)
        out = gateway.inpaint(case.image, case.keep, case.prompt, seed)
        r = judge_case(case, out) | {"case": i, "prompt": case.prompt, "masked_pixels": int((~case.keep).sum())}
        results.append(r)
        print(json.dumps(r), flush=True)
    return results


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--gateway", default=None, help="host:port of a running unclip-gateway (default: start a local stack)")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "shapes", help="model of the local stack")
    parser.add_argument("--unclip", type=Path, default=ROOT / "target" / "release" / "unclip", help="the unclip binary")
    parser.add_argument("--n", type=int, default=50, help="cases")
    parser.add_argument("--first", type=int, default=0, help="first case")
    parser.add_argument("--seed", type=int, default=11, help="sampling seed of every request")
    parser.add_argument("--out", type=Path, default=None, help="write the per-case and summary JSON here")


def run(args: argparse.Namespace, name: str) -> int:
    with connect(args.gateway, args.model, args.unclip) as gateway:
        info = gateway.info()
        results = evaluate(gateway, args.n, args.seed, args.first)
    summary = summarise(results) | {"model_version": info.model.version}
    print(json.dumps(summary, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps({"summary": summary, "cases": results}, indent=2) + "\n")
    return 0
