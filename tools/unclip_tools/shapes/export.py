"""Export trained shapes checkpoints into a model repository (`models/shapes`).

    python -m unclip_tools export-shapes --work runs/shapes --out models/shapes

Uses the same graph exporter and manifest writer as the diffusers/Karlo exporter, so the shapes
model has exactly Karlo's component contracts: real CLIP ids in, per-sample [batch] timesteps,
bool masks, CFG and schedulers outside the graphs. Each upsampler stage was trained as a single
network, so its `first` and `last` entries name the same file.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .. import UserError

DEFAULTS = {
    "prior_steps": 25,
    "decoder_steps": 25,
    "upsampler_steps": 7,
    # Karlo uses 4; this prior overshoots above ~4 (8 collapses it), 2-3 is best (docs/shapes-model.md).
    "prior_guidance_scale": 3.0,
    # Karlo uses 8; on this decoder 8 leaves gray backgrounds mottled (colour 93.5% -> 100% at 5).
    "decoder_guidance_scale": 5.0,
}


def _schedulers() -> dict[str, Any]:
    base = {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2", "clip_sample": True}
    return {
        "prior": {**base, "variance_type": "fixed_small_log", "prediction_type": "sample", "clip_sample_range": 5.0},
        "decoder": {**base, "variance_type": "learned_range", "prediction_type": "epsilon", "clip_sample_range": 1.0},
        "upsampler": {**base, "variance_type": "fixed_small_log", "prediction_type": "epsilon", "clip_sample_range": 1.0},
    }


def graph_list(cfg: Any, text: Any, image: Any, prior: Any, text_proj: Any, decoder: Any, ups: list[Any]) -> list[Any]:
    """The repository's graphs (`export.Graph`: module, ONNX file, inputs, outputs, test inputs) in
    manifest order, for the given torch modules: the exporter traces them, and
    `shapes.torch_weights` traces fresh copies to map the shipped initializers back to them."""
    from ..export import Graph, TensorSpec
    from .tokenizer import CONTEXT_LENGTH, encode

    d, c, t_dim, s = cfg.embed_dim, cfg.cross_dim, cfg.time_embed_dim, cfg.base_size
    F, I, B = "float", "int64", "bool"

    def ts(b: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, 1000, b).astype(np.int64)

    def ids(b: int, rng: np.random.Generator) -> np.ndarray:
        return encode(["a red circle", "a small blue star in the top left on a white background", ""][:b] * b)[0][:b]

    def text_mask(b: int, n: int) -> np.ndarray:
        m = np.zeros((b, n), bool)
        m[:, : n - 70] = True
        return m

    def randn(*shape: int):
        return lambda b, rng: rng.standard_normal((b, *shape)).astype(np.float32)

    graphs = [
        Graph("text_encoder", "text_encoder.onnx", text, [TensorSpec("input_ids", I, ["batch", CONTEXT_LENGTH])],
              [TensorSpec("text_embeds", F, ["batch", d]), TensorSpec("last_hidden_state", F, ["batch", CONTEXT_LENGTH, d])],
              lambda b, rng: {"input_ids": ids(b, rng)}),
        Graph("image_encoder", "image_encoder.onnx", image, [TensorSpec("pixel_values", F, ["batch", 3, cfg.image_size, cfg.image_size])],
              [TensorSpec("image_embeds", F, ["batch", d])], lambda b, rng: {"pixel_values": randn(3, cfg.image_size, cfg.image_size)(b, rng)}),
        Graph("prior", "prior.onnx", prior,
              [TensorSpec("hidden_states", F, ["batch", d]), TensorSpec("timestep", I, ["batch"]), TensorSpec("proj_embedding", F, ["batch", d]),
               TensorSpec("encoder_hidden_states", F, ["batch", CONTEXT_LENGTH, d]), TensorSpec("attention_mask", B, ["batch", CONTEXT_LENGTH])],
              [TensorSpec("predicted_image_embedding", F, ["batch", d])],
              lambda b, rng: {"hidden_states": randn(d)(b, rng), "timestep": ts(b, rng), "proj_embedding": randn(d)(b, rng),
                              "encoder_hidden_states": randn(CONTEXT_LENGTH, d)(b, rng), "attention_mask": text_mask(b, CONTEXT_LENGTH)}),
        Graph("text_proj", "text_proj.onnx", text_proj,
              [TensorSpec("image_embeddings", F, ["batch", d]), TensorSpec("prompt_embeds", F, ["batch", d]),
               TensorSpec("text_encoder_hidden_states", F, ["batch", CONTEXT_LENGTH, d])],
              [TensorSpec("encoder_hidden_states", F, ["batch", CONTEXT_LENGTH + 4, c]), TensorSpec("additive_clip_time_embeddings", F, ["batch", t_dim])],
              lambda b, rng: {"image_embeddings": randn(d)(b, rng), "prompt_embeds": randn(d)(b, rng),
                              "text_encoder_hidden_states": randn(CONTEXT_LENGTH, d)(b, rng)}),
        Graph("decoder", "decoder.onnx", decoder,
              [TensorSpec("sample", F, ["batch", 3, s, s]), TensorSpec("timestep", I, ["batch"]),
               TensorSpec("encoder_hidden_states", F, ["batch", CONTEXT_LENGTH + 4, c]), TensorSpec("class_labels", F, ["batch", t_dim]),
               TensorSpec("attention_mask", B, ["batch", CONTEXT_LENGTH + 4])],
              [TensorSpec("out_sample", F, ["batch", 6, s, s])],
              lambda b, rng: {"sample": randn(3, s, s)(b, rng), "timestep": ts(b, rng), "encoder_hidden_states": randn(CONTEXT_LENGTH + 4, c)(b, rng),
                              "class_labels": randn(t_dim)(b, rng), "attention_mask": text_mask(b, CONTEXT_LENGTH + 4)}),
    ]
    sizes = [(s, 2 * s), (2 * s, 4 * s)]
    for k, (lo, hi) in enumerate(sizes):
        graphs.append(Graph(f"upsamplers[{k}]", f"upsampler_{k}.onnx", ups[k],
                            [TensorSpec("sample", F, ["batch", 6, hi, hi]), TensorSpec("timestep", I, ["batch"])],
                            [TensorSpec("out_sample", F, ["batch", 3, hi, hi])],
                            (lambda hi_: lambda b, rng: {"sample": randn(6, hi_, hi_)(b, rng), "timestep": ts(b, rng)})(hi)))

    return graphs


def build(work: Path, out: Path, defaults: dict[str, Any] | None = None, partial: bool = False, weights_float16: bool = True) -> dict[str, Any]:
    import torch
    from safetensors.numpy import save_file

    from ..export import export_graph
    from ..repository import FORMAT, load_manifest, write_manifest
    from .models import Decoder, PriorGraph, TextProjGraph, Upsampler, make_prior, make_text_proj
    from .tokenizer import CONTEXT_LENGTH, build_tokenizer, encode
    from .train import CLIP_MEAN, CLIP_STD, load_clip, load_config, phase_done

    for phase in ("clip", "prior", "decoder", "upsampler0", "upsampler1"):
        if not partial and not phase_done(work, phase):
            raise UserError(f"{work}: phase {phase!r} has not finished; run `python -m unclip_tools train-shapes --work {work}`")
    torch.set_num_threads(1)
    cfg = load_config(work)
    d, s = cfg.embed_dim, cfg.base_size
    clip = load_clip(work, cfg)

    def ema(name: str, key: str, module: torch.nn.Module) -> torch.nn.Module:
        ck = torch.load(work / f"{name}.pt", weights_only=False, map_location="cpu")
        module.load_state_dict(ck["ema"][key])
        return module.eval()

    prior = ema("prior", "prior", PriorGraph(make_prior(cfg)))
    decoder = ema("decoder", "decoder", Decoder(cfg))
    text_proj = ema("decoder", "text_proj", TextProjGraph(make_text_proj(cfg)))
    ups = [ema(f"upsampler{k}", f"upsampler{k}", Upsampler(cfg)) for k in range(2)]

    graphs = graph_list(cfg, clip.text, clip.image, prior, text_proj, decoder, ups)
    sizes = [(s, 2 * s), (2 * s, 4 * s)]

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="shapes-export-") as scratch:
        for g in graphs:
            export_graph(g, out, fp16=False, scratch=Path(scratch), weights_float16=weights_float16)
            print(f"exported {g.file}")
    build_tokenizer().save(str(out / "tokenizer.json"), pretty=False)  # compact: 1.7 MB instead of 3.6

    # Small tensors that live outside the graphs.
    stats = np.load(work / "prior_stats.npy")
    u_ids, u_mask = encode([""])
    with torch.no_grad():
        u_emb, u_hidden = clip.text(torch.from_numpy(u_ids))
    tensors = {
        "prior_clip_mean": stats[0].astype(np.float32),
        "prior_clip_std": stats[1].astype(np.float32),
        "decoder_cfg_embedding": text_proj.text_proj.learned_classifier_free_guidance_embeddings.detach().numpy().astype(np.float32),
        "uncond_input_ids": u_ids[0].astype(np.int64),
        "uncond_attention_mask": u_mask[0].astype(np.uint8),
        "uncond_text_embeds": u_emb[0].numpy().astype(np.float32),
        "uncond_last_hidden_state": u_hidden[0].numpy().astype(np.float32),
    }
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(out / "tensors.safetensors"))

    by_label = {g.label: g for g in graphs}
    components: dict[str, Any] = {k: by_label[k].manifest_entry("float32") for k in ("text_encoder", "image_encoder", "prior", "text_proj", "decoder")}
    components["upsamplers"] = [
        {"input_size": lo, "output_size": hi, "first": by_label[f"upsamplers[{k}]"].manifest_entry("float32"),
         "last": by_label[f"upsamplers[{k}]"].manifest_entry("float32")}
        for k, (lo, hi) in enumerate(sizes)
    ]
    manifest = {
        "format": FORMAT,
        "model_id": "shapes",
        "description": "Tiny unCLIP trained on procedurally rendered coloured shapes (tools/unclip_tools/shapes); "
        "real CLIP BPE tokenizer, Karlo component contracts, 32x32 decoder, upsamplers 32->64->128.",
        "embedding_dim": d,
        "text": {"tokenizer": "tokenizer.json", "context_length": CONTEXT_LENGTH, "pad_id": 0, "bos_id": 49406, "eos_id": 49407},
        "image_preprocess": {
            "size": cfg.image_size, "resize": "shortest_edge", "resample": "bicubic", "crop": "center",
            "rescale": 1 / 255, "mean": [float(x) for x in CLIP_MEAN], "std": [float(x) for x in CLIP_STD],
        },
        "components": components,
        "schedulers": _schedulers(),
        "defaults": {**DEFAULTS, **(defaults or {})},
        "tensors": {"file": "tensors.safetensors"},
    }
    written = write_manifest(out, manifest, check_graphs=True)
    load_manifest(out, check_graphs=True)
    print(f"wrote {out / 'manifest.json'}: shapes {written['version']}")
    return written


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--work", type=Path, default=Path("runs/shapes"), help="training folder of train-shapes")
    parser.add_argument("--out", type=Path, default=Path("models/shapes"), help="repository folder to (re)write")
    parser.add_argument("--partial", action="store_true", help="export the latest checkpoints of unfinished phases (previews)")
    parser.add_argument("--prior-guidance", type=float, default=None, help="default prior guidance scale to record")
    parser.add_argument("--decoder-guidance", type=float, default=None, help="default decoder guidance scale to record")
    parser.add_argument("--float32-weights", action="store_true",
                        help="store weights as float32 (default: float16 storage, float32 compute; half the size)")


def run(args: argparse.Namespace, name: str) -> int:
    if not args.work.is_dir():
        raise UserError(f"training folder {args.work} does not exist")
    defaults = {}
    if args.prior_guidance is not None:
        defaults["prior_guidance_scale"] = args.prior_guidance
    if args.decoder_guidance is not None:
        defaults["decoder_guidance_scale"] = args.decoder_guidance
    build(args.work, args.out, defaults, partial=args.partial, weights_float16=not args.float32_weights)
    return 0
