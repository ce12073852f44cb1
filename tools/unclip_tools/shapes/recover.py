"""Recover the shapes model's torch weights from a model repository's ONNX graphs.

    python -m unclip_tools recover-shapes --model models/shapes --work runs/recovered

The training checkpoints of the shipped model are not in the repository; its weights live on as
the graphs' initializers (the EMA copies, stored as float16 behind Casts, see `export.py`). This
command rebuilds every network of `models.py`, loads those initializers into it and checks each
one against ONNX Runtime on random inputs, then writes a work folder that `train-shapes`,
`train-inpaint` and `export-shapes` read: one finished checkpoint per phase (`modules` and `ema`
hold the same recovered weights), `config.json` and `prior_stats.npy`.

How names are matched: the same module, with fresh random weights, is traced to ONNX by the same
exporter; initializers that carry a parameter's name map directly, and the anonymous ones the
tracer makes (GroupNorm scales reshaped to [C,1,1], Linear weights transposed for MatMul) are
matched by value against every parameter of the fresh module, transposed or reshaped.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np

from .. import UserError

SUFFIX = "__float16"
# float16 storage rounds each weight (relative error < 2^-11); the graphs then agree with torch
# to about this much on unit-scale inputs.
TOLERANCE = 2e-3


def _onnx_weights(path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return {i.name.removesuffix(SUFFIX): numpy_helper.to_array(i).astype(np.float32) if numpy_helper.to_array(i).dtype == np.float16
            else numpy_helper.to_array(i) for i in model.graph.initializer}


def _trace(module, inputs: dict[str, np.ndarray], path: Path) -> None:
    import torch

    from ..export import OPSET

    names = list(inputs)
    with torch.no_grad():
        torch.onnx.export(
            module.eval(),
            tuple(torch.from_numpy(inputs[n]) for n in names),
            str(path),
            input_names=names,
            dynamic_axes={n: {0: "batch"} for n in names},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )


def load_from_onnx(module, onnx_path: Path, make_inputs: Callable[[int], dict[str, np.ndarray]], label: str,
                   unused: tuple[str, ...] = ()) -> float:
    """Loads `onnx_path`'s initializers into `module` (in place); returns the largest |ONNX - torch|
    difference on random inputs (raises when it exceeds TOLERANCE or a weight finds no home).
    `unused` names parameters the graph does not use (the caller sets them)."""
    import onnxruntime as ort
    import torch

    shipped = _onnx_weights(onnx_path)
    state = module.state_dict()
    # Distinct random values per tensor so that value matching is unambiguous.
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for v in state.values():
            if v.dtype.is_floating_point:
                v.copy_(torch.randn(v.shape, generator=gen))
    with tempfile.TemporaryDirectory(prefix="recover-") as tmp:
        fresh_path = Path(tmp) / "fresh.onnx"
        _trace(module, make_inputs(2), fresh_path)
        fresh = _onnx_weights(fresh_path)
    if set(fresh) != set(shipped):
        raise UserError(f"{label}: the traced graph's initializers differ from {onnx_path}'s: "
                        f"only traced {sorted(set(fresh) - set(shipped))[:5]}, only shipped {sorted(set(shipped) - set(fresh))[:5]}")
    new_state = {k: v.clone() for k, v in state.items()}
    found: set[str] = set()
    for name, value in fresh.items():
        if name in state:
            new_state[name] = torch.from_numpy(np.array(shipped[name])).to(state[name].dtype).reshape(state[name].shape)
            found.add(name)
            continue
        hit = None
        for key, p in state.items():
            if not p.dtype.is_floating_point or p.numel() != value.size:
                continue
            pv = p.numpy()
            if np.array_equal(pv.reshape(value.shape), value):
                hit = (key, lambda a, s=p.shape: a.reshape(s))
            elif pv.ndim == 2 and value.ndim == 2 and np.array_equal(pv.T, value):
                hit = (key, lambda a: a.T)
            if hit:
                break
        if hit is None:
            raise UserError(f"{label}: initializer {name} {value.shape} matches no parameter")
        key, undo = hit
        new_state[key] = torch.from_numpy(np.array(undo(shipped[name]))).to(state[key].dtype)
        found.add(key)
    missing = [k for k, v in state.items() if v.dtype.is_floating_point and k not in found and k not in unused]
    # Parameters the tracer folded away entirely would be unrecoverable; none are expected.
    if missing:
        raise UserError(f"{label}: no initializer carries {missing[:5]}")
    module.load_state_dict(new_state)
    module.eval()
    inputs = make_inputs(3)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    outs = session.run(None, inputs)
    with torch.no_grad():
        ref = module(*(torch.from_numpy(inputs[i.name]) for i in session.get_inputs()))
    ref = ref if isinstance(ref, (tuple, list)) else (ref,)
    diff = max(float(np.abs(o - r.numpy()).max()) for o, r in zip(outs, ref))
    if diff > TOLERANCE:
        raise UserError(f"{label}: recovered weights differ from {onnx_path} by {diff:.2e} (> {TOLERANCE})")
    return diff


def recover(model: Path, work: Path) -> dict[str, float]:
    """Rebuilds every network from `model`'s graphs into the work folder `work`; returns the
    largest ONNX/torch difference per graph."""
    import torch
    from safetensors.numpy import load_file

    from .models import Clip, Decoder, PriorGraph, ShapesConfig, TextProjGraph, Upsampler, make_prior, make_text_proj
    from .tokenizer import encode
    from .train import id_table

    torch.set_num_threads(1)
    cfg = ShapesConfig()
    d, c, t_dim, s = cfg.embed_dim, cfg.cross_dim, cfg.time_embed_dim, cfg.base_size
    rng = np.random.default_rng(0)

    def randn(*shape: int) -> Callable[[int], np.ndarray]:
        return lambda b: rng.standard_normal((b, *shape)).astype(np.float32)

    def ts(b: int) -> np.ndarray:
        return rng.integers(0, 1000, b).astype(np.int64)

    def mask(b: int, n: int) -> np.ndarray:
        m = np.zeros((b, n), bool)
        m[:, : n - 70] = True
        return m

    def ids(b: int) -> np.ndarray:
        return encode(["a red circle", "a small blue star in the top left on a white background", "", "a green cross"][:b])[0]

    clip = Clip(cfg, id_table())
    decoder, text_proj = Decoder(cfg), TextProjGraph(make_text_proj(cfg))
    prior = PriorGraph(make_prior(cfg))
    ups = [Upsampler(cfg) for _ in range(2)]
    jobs = [
        ("text_encoder", clip.text, lambda b: {"input_ids": ids(b)}),
        ("image_encoder", clip.image, lambda b: {"pixel_values": randn(3, cfg.image_size, cfg.image_size)(b)}),
        ("prior", prior, lambda b: {"hidden_states": randn(d)(b), "timestep": ts(b), "proj_embedding": randn(d)(b),
                                    "encoder_hidden_states": randn(77, d)(b), "attention_mask": mask(b, 77)}),
        ("text_proj", text_proj, lambda b: {"image_embeddings": randn(d)(b), "prompt_embeds": randn(d)(b),
                                            "text_encoder_hidden_states": randn(77, d)(b)}),
        ("decoder", decoder, lambda b: {"sample": randn(3, s, s)(b), "timestep": ts(b), "encoder_hidden_states": randn(81, c)(b),
                                        "class_labels": randn(t_dim)(b), "attention_mask": mask(b, 81)}),
    ]
    for k, hi in enumerate((2 * s, 4 * s)):
        jobs.append((f"upsampler_{k}", ups[k], (lambda hi_: lambda b: {"sample": randn(6, hi_, hi_)(b), "timestep": ts(b)})(hi)))
    diffs = {}
    unused = {"prior": ("prior.clip_mean", "prior.clip_std"), "text_proj": ("text_proj.learned_classifier_free_guidance_embeddings",)}
    for name, module, make in jobs:
        diffs[name] = load_from_onnx(module, model / f"{name}.onnx", make, name, unused.get(name, ()))
        print(f"[recover] {name}: max |onnx - torch| {diffs[name]:.2e}", flush=True)

    # The learned CFG image embedding is a parameter of text_proj that the graph never uses (the
    # sampler prepends it); it ships in tensors.safetensors.
    tensors = load_file(str(model / "tensors.safetensors"))
    with torch.no_grad():
        text_proj.text_proj.learned_classifier_free_guidance_embeddings.copy_(torch.from_numpy(tensors["decoder_cfg_embedding"]))
        # Likewise the prior's embedding statistics (the sampler normalises outside the graph).
        prior.prior.clip_mean.copy_(torch.from_numpy(tensors["prior_clip_mean"])[None])
        prior.prior.clip_std.copy_(torch.from_numpy(tensors["prior_clip_std"])[None])

    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    np.save(work / "prior_stats.npy", np.stack([tensors["prior_clip_mean"], tensors["prior_clip_std"]]))

    def save(phase: str, modules: dict) -> None:
        sd = {k: m.state_dict() for k, m in modules.items()}
        torch.save({"modules": sd, "ema": sd, "step": 0, "done": True, "steps": 0, "recovered_from": str(model),
                    "torch_rng": torch.get_rng_state(), "opt": None}, work / f"{phase}.pt")

    # The CLIP logit scale is in no graph: back to its initial value (training from here re-learns it).
    with torch.no_grad():
        clip.logit_scale.fill_(float(np.log(1 / 0.07)))
    save("clip", {"clip": clip})
    save("prior", {"prior": prior})
    save("decoder", {"decoder": decoder, "text_proj": text_proj})
    for k in range(2):
        save(f"upsampler{k}", {f"upsampler{k}": ups[k]})
    (work / "recovered.json").write_text(json.dumps({"model": str(model), "max_abs_diff": diffs}, indent=2) + "\n")
    return diffs


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--model", type=Path, default=Path("models/shapes"), help="shapes model repository to read")
    parser.add_argument("--work", type=Path, default=Path("runs/recovered"), help="work folder to write checkpoints into")


def run(args: argparse.Namespace, name: str) -> int:
    if not (args.model / "manifest.json").exists():
        raise UserError(f"{args.model} is not a model repository (no manifest.json)")
    recover(args.model, args.work)
    return 0
