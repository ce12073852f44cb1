"""`python -m unclip_tools diffusers-agreement`: do diffusers and the stack draw the same images?

For a handful of fixed captions and seeds, the shapes model's images from diffusers'
`UnCLIPPipeline` (`shapes.diffusers_pipeline`, torch weights recovered from the ONNX graphs) are
set against the reference sampler's over the ONNX graphs (`sampler.py`: the numpy port of the same
loop, the oracle the Rust services match), with the same steps and guidance, two ways:

- replayed noise: the sampler replays every Gaussian draw diffusers made (recorded from
  `randn_tensor`), so any difference is arithmetic (torch against ONNX Runtime kernels, the
  prompt's "" encoding stored in tensors.safetensors against recomputed): the largest pixel
  difference is printed;
- independent noise: each draws from its own generator for the seed (torch's, numpy's), as the
  benchmark does, so the images differ by sampler noise; the colour/shape checker
  (`shapes.checker`; shape from the classifier of `train-shapes --phase classifier` when its
  `classifier.pt` is in --work) reads both, and the report counts the attributes on which the
  two readings agree and how often each matches the caption.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .. import UserError

KEYS = ("color", "background", "position", "size", "shape")
RANDN_MODULES = ("diffusers.schedulers.scheduling_unclip", "diffusers.pipelines.deprecated.unclip.pipeline_unclip")


class RecordedNoise:
    """Records every `randn_tensor` draw of the unCLIP pipeline and scheduler, in draw order."""

    def __init__(self) -> None:
        self.draws: list[np.ndarray] = []
        self._undo: list[Any] = []

    def __enter__(self) -> "RecordedNoise":
        for name in RANDN_MODULES:
            module = importlib.import_module(name)
            original = module.randn_tensor

            def randn_tensor(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
                tensor = _original(*args, **kwargs)
                self.draws.append(tensor.detach().cpu().numpy().copy())
                return tensor

            module.randn_tensor = randn_tensor
            self._undo.append((module, original))
        return self

    def __exit__(self, *exc: Any) -> None:
        for module, original in reversed(self._undo):
            module.randn_tensor = original
        self._undo.clear()


def captions(n: int) -> list[str]:
    """`unclip bench`'s four captions, then held-out captions of the quality report's split."""
    from ..bench import DEFAULT_PROMPTS
    from .quality import held_out_captions

    out = list(DEFAULT_PROMPTS[:n])
    if n > len(out):
        out += held_out_captions(n - len(out), split="report")
    return out


def reading(image: np.ndarray, caption: str, shape: str | None) -> dict[str, Any]:
    """What the checker sees (shape from the classifier, or None) and which attributes match."""
    from .checker import judge, read_image

    r = read_image(image)
    seen = {"color": r.color, "background": r.background, "position": r.position, "size": r.size, "shape": shape}
    ok = judge(image, caption, shape or "")
    return {"seen": seen, "correct": {k: bool(ok[k]) for k in KEYS if k != "shape" or shape is not None}}


def compare(model: Path, caption_list: list[str], seeds: list[int], work: Path | None, threads: int) -> dict[str, Any]:
    """Run both generators on every (caption, seed) and tally the comparisons."""
    import torch

    from ..sampler import ReplayNoise, UnclipSampler, to_uint8
    from .diffusers_pipeline import build

    classifier = None
    if work is not None and (work / "classifier.pt").exists():
        from .quality import load_classifier

        classifier = load_classifier(work)
    torch.set_num_threads(threads)
    shapes = build(model)
    sampler = UnclipSampler(model, scheduler_backend="numpy", threads=threads)

    def shape_of(images: list[np.ndarray]) -> list[str | None]:
        if classifier is None:
            return [None] * len(images)
        from .quality import classifier_input
        from .render import SHAPES

        with torch.no_grad():
            return [SHAPES[int(k)] for k in classifier(classifier_input(np.stack(images))).argmax(1).numpy()]

    cases = []
    for caption in caption_list:
        for seed in seeds:
            with RecordedNoise() as noise:
                ours = shapes.generate(caption, torch.Generator().manual_seed(seed))[0]
            replay = ReplayNoise(noise.draws)
            replayed = to_uint8(sampler.text_to_image_array(caption, noise_source=replay))[0]
            if replay.remaining:
                raise UserError(f"{replay.remaining} of diffusers' draws were not used by the sampler")
            independent = to_uint8(sampler.text_to_image_array(caption, seed=seed))[0]
            d_shape, s_shape = shape_of([ours, independent])
            d, s = reading(ours, caption, d_shape), reading(independent, caption, s_shape)
            cases.append({
                "caption": caption,
                "seed": seed,
                "replay_max_pixel_diff": int(np.abs(ours.astype(int) - replayed.astype(int)).max()),
                "diffusers": d,
                "sampler": s,
                "agree": {k: d["seen"][k] == s["seen"][k] for k in KEYS if classifier is not None or k != "shape"},
            })
    judged = [k for k in KEYS if classifier is not None or k != "shape"]
    n = len(cases)
    return {
        "model": f"{shapes.manifest['model_id']} {shapes.manifest['version']}",
        "cases": cases,
        "images": n,
        "shape_judged": classifier is not None,
        "replay_max_pixel_diff": max(c["replay_max_pixel_diff"] for c in cases),
        "agree": {k: sum(c["agree"][k] for c in cases) for k in judged},
        "agree_all": sum(all(c["agree"].values()) for c in cases),
        "correct": {
            who: {k: sum(c[who]["correct"][k] for c in cases) for k in judged} | {"all": sum(all(c[who]["correct"].values()) for c in cases)}
            for who in ("diffusers", "sampler")
        },
    }


def summary(r: dict[str, Any]) -> str:
    n = r["images"]
    keys = list(r["agree"])
    lines = [
        f"model {r['model']}: {n} images (caption x seed), diffusers UnCLIPPipeline against the reference sampler over ONNX",
        f"replayed noise: largest pixel difference {r['replay_max_pixel_diff']} (of 255) over all {n} images",
        "independent noise (torch's generator against numpy's), checker readings:",
        "| | " + " | ".join(keys) + " | all |",
        "|---" * (len(keys) + 2) + "|",
        "| the two agree | " + " | ".join(f"{r['agree'][k]}/{n}" for k in keys) + f" | {r['agree_all']}/{n} |",
    ]
    for who in ("diffusers", "sampler"):
        c = r["correct"][who]
        lines.append(f"| {who} matches the caption | " + " | ".join(f"{c[k]}/{n}" for k in keys) + f" | {c['all']}/{n} |")
    if not r["shape_judged"]:
        lines.append("shape not judged: no classifier.pt in --work (python -m unclip_tools train-shapes --work DIR --phase classifier)")
    for c in r["cases"]:
        differ = [k for k, same in c["agree"].items() if not same]
        if differ:
            lines.append(f"  differ on {', '.join(differ)}: {c['caption']!r} seed {c['seed']}: "
                         f"diffusers {c['diffusers']['seen']}, sampler {c['sampler']['seen']}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--model", type=Path, default=Path("models/shapes"), help="the shapes model repository")
    parser.add_argument("--captions", type=int, default=8, help="captions: unclip bench's four, then held-out ones (default 8)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1 per caption (default 2)")
    parser.add_argument("--work", type=Path, default=Path("runs/shapes"), help="training folder whose classifier.pt judges shapes, if present")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--json", action="store_true", help="print the full report (every case) as JSON")


def run(args: argparse.Namespace, name: str) -> int:
    if args.captions < 1 or args.seeds < 1:
        raise UserError("--captions and --seeds must be at least 1")
    r = compare(args.model, captions(args.captions), list(range(args.seeds)), args.work, args.threads)
    print(json.dumps(r, indent=2) if args.json else summary(r))
    return 0
