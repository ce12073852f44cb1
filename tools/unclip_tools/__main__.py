"""Command line entry point: `python -m unclip_tools <command> ...`.

Each command lives in its own module and registers itself through `add_parser`; modules that
need torch are imported only when their command runs, so the light commands work without it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import UserError

# command name -> (module, one-line help). The module provides add_arguments(parser) and run(args).
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("unclip_tools.sampler", "generate images from a prompt with the reference sampler"),
    "vary": ("unclip_tools.sampler", "generate variations of an image with the reference sampler"),
    "export": ("unclip_tools.export", "export diffusers UnCLIP pipelines (Karlo layout) to a model repository"),
    "karlo-tiny": ("unclip_tools.karlo_tiny", "build diffusers' tiny test unCLIP, export it and record parity fixtures"),
    "verify": ("unclip_tools.repository", "check a model repository: manifest, hashes, graphs"),
    "render": ("unclip_tools.shapes.render", "render shapes-dataset captions to PNG"),
    "train-shapes": ("unclip_tools.shapes.train", "train the tiny shapes unCLIP (resumable)"),
    "recover-shapes": ("unclip_tools.shapes.recover", "recover the shapes networks' torch weights from a model repository's ONNX graphs"),
    "train-inpaint": ("unclip_tools.shapes.inpaint_train", "fine-tune the shapes inpainting decoder (GLIDE's extra mask channels; resumable)"),
    "export-inpaint": ("unclip_tools.shapes.inpaint_train", "add the trained decoder_inpaint graph to a shapes model repository"),
    "export-shapes": ("unclip_tools.shapes.export", "export trained shapes checkpoints to models/shapes"),
    "bench": ("unclip_tools.bench", "time the reference sampler on unclip bench's requests (the Python baseline)"),
    "load-captions": ("unclip_tools.bench_load", "print N distinct shapes captions (requests that share nothing in the cache)"),
    "load-report": ("unclip_tools.bench_load", "tables and plot of scripts/bench-load's reports: latency against offered load, cache paths"),
    "diffusers-bench": ("unclip_tools.diffusers_bench", "time diffusers' UnCLIPPipeline on unclip bench's requests (karlo-tiny, shapes)"),
    "diffusers-agreement": ("unclip_tools.shapes.diffusers_agreement", "shapes: diffusers' UnCLIPPipeline against the reference sampler (replayed noise, checker)"),
    "quality-report": ("unclip_tools.shapes.quality", "score generated images against captions and write the report"),
    "inpaint-eval": ("unclip_tools.shapes.inpaint_eval", "inpainting cases through a running gateway: object in mask, kept area, seam"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unclip_tools", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    # Parse only the command name first, then let its module define the rest.
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints usage / error and exits
        return 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    cmd_parser = argparse.ArgumentParser(prog=f"python -m unclip_tools {name}", description=COMMANDS[name][1])
    module.add_arguments(cmd_parser, name)
    args = cmd_parser.parse_args(argv[1:])
    try:
        return int(module.run(args, name) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
