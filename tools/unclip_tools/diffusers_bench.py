"""`python -m unclip_tools diffusers-bench`: diffusers' own `UnCLIPPipeline` on `unclip bench`'s requests.

The baseline people would actually reach for: the same components run by diffusers in torch, on
the same requests as `unclip bench` (prompt i in turn, seed `seed + i * num_images`, warm-up
requests first), with the repository's default steps and guidance scales, each request timed
from the call to its images encoded as PNG. The report has `unclip bench --json`'s fields, so
`scripts/bench --diffusers` sets it beside the stack's.

Which weights: karlo-tiny's are diffusers' own tiny test components, rebuilt seed for seed by
`unclip_tools.karlo_tiny` (the repository was exported from exactly that pipeline). The shapes
model's are recovered from its ONNX graphs into the project's torch modules
(`shapes.torch_weights`; no training checkpoint is kept) and run by `UnCLIPPipeline` through thin
adapters; its second upsampler stage, which `UnCLIPPipeline` has no place for, runs after the
pipeline in a copy of the pipeline's super-resolution block on the same generator
(`shapes.diffusers_pipeline`). Building the shapes pipeline (tracing each graph once to map its
weights) is not timed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from . import UserError
from .bench import DEFAULT_PROMPTS, report, table


def _generator(model: Path) -> tuple[dict, Callable[..., list]]:
    """The manifest and a function (prompt, num_images, generator) -> PIL images that runs
    diffusers' UnCLIPPipeline on the model with the repository's default steps and guidance."""
    try:
        manifest = json.loads((model / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {model / 'manifest.json'}: {e}") from None
    d = manifest["defaults"]
    if manifest["model_id"] == "shapes":
        from PIL import Image

        from .shapes.diffusers_pipeline import build

        shapes = build(model)

        def shapes_images(prompt: str, num_images: int, generator: Any) -> list:
            return [Image.fromarray(x) for x in shapes.generate(prompt, generator, num_images=num_images)]

        return manifest, shapes_images
    if manifest["model_id"] != "karlo-tiny":
        raise UserError(f"{model}: diffusers-bench knows karlo-tiny and shapes, not model_id {manifest['model_id']!r}")
    from .karlo_tiny import build_text_to_image_pipeline

    pipe = build_text_to_image_pipeline()
    pipe.set_progress_bar_config(disable=True)

    def karlo_images(prompt: str, num_images: int, generator: Any) -> list:
        return pipe(
            prompt,
            num_images_per_prompt=num_images,
            prior_num_inference_steps=d["prior_steps"],
            decoder_num_inference_steps=d["decoder_steps"],
            super_res_num_inference_steps=d["upsampler_steps"],
            prior_guidance_scale=d["prior_guidance_scale"],
            decoder_guidance_scale=d["decoder_guidance_scale"],
            generator=generator,
            output_type="pil",
        ).images

    return manifest, karlo_images


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--model", type=Path, default=Path("models/karlo-tiny"), help="model repository folder (karlo-tiny or shapes)")
    parser.add_argument("--requests", type=int, default=20, help="measured requests (default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="requests sent first and not counted (default 2)")
    parser.add_argument("--num-images", type=int, default=1, help="images per request (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first request; request i uses seed + i * num_images")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads (default: the CPU count)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")


def run(args: argparse.Namespace, name: str) -> int:
    if args.requests < 1 or args.warmup < 0 or args.num_images < 1:
        raise UserError("--requests must be at least 1, --warmup 0 or more and --num-images 1 or more")
    manifest, images_of = _generator(args.model)
    import torch

    torch.set_num_threads(args.threads)

    def one(i: int) -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            images = images_of(
                DEFAULT_PROMPTS[i % len(DEFAULT_PROMPTS)],
                args.num_images,
                torch.Generator().manual_seed(args.seed + i * args.num_images),
            )
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
