"""`python -m unclip_tools diffusers-bench`: diffusers' own `UnCLIPPipeline` on `unclip bench`'s requests.

The baseline people would actually reach for: the same components run by diffusers in torch, on
the same requests as `unclip bench` (prompt i in turn, seed `seed + i * num_images`, warm-up
requests first), with the repository's default steps and guidance scales, each request timed
from the call to its images encoded as PNG. The report has `unclip bench --json`'s fields, so
`scripts/bench --diffusers` sets it beside the stack's.

Which weights: karlo-tiny's are diffusers' own tiny test components, rebuilt seed for seed by
`unclip_tools.karlo_tiny` (the repository was exported from exactly that pipeline). The shapes
model's networks are this project's own torch modules (not diffusers classes) and no training
checkpoint is kept in the repository, so it is refused with a message saying so.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path

from . import UserError
from .bench import DEFAULT_PROMPTS, report, table


def _pipeline(model: Path):
    manifest = json.loads((model / "manifest.json").read_text())
    if manifest["model_id"] != "karlo-tiny":
        raise UserError(
            f"{model}: diffusers-bench runs karlo-tiny only (model_id {manifest['model_id']!r}): the shapes "
            "model's torch networks are not diffusers classes and its training checkpoint is not kept"
        )
    from .karlo_tiny import build_text_to_image_pipeline

    return manifest, build_text_to_image_pipeline()


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--model", type=Path, default=Path("models/karlo-tiny"), help="model repository folder (karlo-tiny)")
    parser.add_argument("--requests", type=int, default=20, help="measured requests (default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="requests sent first and not counted (default 2)")
    parser.add_argument("--num-images", type=int, default=1, help="images per request (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first request; request i uses seed + i * num_images")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads (default: the CPU count)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")


def run(args: argparse.Namespace, name: str) -> int:
    if args.requests < 1 or args.warmup < 0 or args.num_images < 1:
        raise UserError("--requests must be at least 1, --warmup 0 or more and --num-images 1 or more")
    manifest, pipe = _pipeline(args.model)
    import torch

    torch.set_num_threads(args.threads)
    pipe.set_progress_bar_config(disable=True)
    d = manifest["defaults"]

    def one(i: int) -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            images = pipe(
                DEFAULT_PROMPTS[i % len(DEFAULT_PROMPTS)],
                num_images_per_prompt=args.num_images,
                prior_num_inference_steps=d["prior_steps"],
                decoder_num_inference_steps=d["decoder_steps"],
                super_res_num_inference_steps=d["upsampler_steps"],
                prior_guidance_scale=d["prior_guidance_scale"],
                decoder_guidance_scale=d["decoder_guidance_scale"],
                generator=torch.Generator().manual_seed(args.seed + i * args.num_images),
                output_type="pil",
            ).images
        for image in images:
            image.save(io.BytesIO(), format="PNG")
        return time.perf_counter() - started

    for i in range(args.warmup):
        one(i)
    latencies = []
    started = time.perf_counter()
    for i in range(args.warmup, args.warmup + args.requests):
        latencies.append(one(i))
    model = f"{manifest['model_id']} {manifest['version']} (diffusers {__import__('diffusers').__version__}, torch {torch.__version__})"
    r = report(model, latencies, {}, time.perf_counter() - started, args.num_images)
    print(json.dumps(r, indent=2) if args.json else table(r))
    return 0
