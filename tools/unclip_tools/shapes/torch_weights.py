"""The shapes model's torch modules, with their weights recovered from the shipped ONNX graphs.

The training checkpoint (`runs/shapes`) is not kept in the repository, so the only copy of the
trained weights is the initializers of `models/shapes/*.onnx`. This module rebuilds the torch
modules of `shapes.models` (what `export-shapes` traced) and loads those initializers back into
them, without a second copy of the weights on disk:

1. each module is built fresh and every parameter is filled with distinct random values;
2. the module is traced with the exporter's own graph definition (`shapes.export.graph_list`,
   `export.export_graph`, same torch version), so the fresh graph has the shipped graph's nodes;
3. each fresh initializer is matched to the shipped one feeding the same node inputs, and to the
   parameter it was made from by its values: the parameter itself, its transpose (a Linear
   weight folded into a MatMul) or a reshape (a GroupNorm scale or shift as [C, 1, 1]);
4. the parameter takes the shipped value, read back through the float16 storage of
   `store_weights_float16` (so the torch weights are exactly the float16-rounded ones the graphs
   compute with).

Parameters no graph holds come from `tensors.safetensors` (the prior's clip_mean/std and the
text projection's learned guidance embedding); any other missing one is an error. The result
computes what the ONNX graphs compute (tools/tests/test_shapes_torch.py checks it).
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import UserError

# Parameters that no graph holds, and the tensors.safetensors entry that does.
FROM_TENSORS = {
    "prior.onnx": {"prior.clip_mean": "prior_clip_mean", "prior.clip_std": "prior_clip_std"},
    "text_proj.onnx": {"text_proj.learned_classifier_free_guidance_embeddings": "decoder_cfg_embedding"},
}
# Parameters no graph uses at all (CLIP's contrastive temperature lives outside the towers).
UNUSED: set[str] = set()


@dataclass
class ShapesTorch:
    """The recovered torch modules (eval mode, float32), keyed as the repository's graphs."""

    manifest: dict[str, Any]
    tensors: dict[str, np.ndarray]
    graphs: dict[str, Any]  # ONNX file name -> export.Graph whose .module holds the weights

    def module(self, file: str) -> Any:
        return self.graphs[file].module


def _consumers(model: Any) -> dict[str, set[tuple[str, int]]]:
    """Value name -> {(consuming node name, input index)}; a Cast of a float16 initializer is
    looked through, so both graphs key their weights by the node that uses them."""
    uses: dict[str, set[tuple[str, int]]] = {}
    for node in model.graph.node:
        for index, name in enumerate(node.input):
            uses.setdefault(name, set()).add((node.name, index))
    casts = {node.input[0]: node.output[0] for node in model.graph.node if node.op_type == "Cast"}
    out: dict[str, set[tuple[str, int]]] = {}
    for init in model.graph.initializer:
        name = casts.get(init.name, init.name)
        out[init.name] = uses.get(name, set())
    return out


def _initializers(model: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def _relation(param: np.ndarray, value: np.ndarray) -> str | None:
    """How an initializer of the fresh graph was made from a parameter, or None."""
    if param.shape == value.shape and np.array_equal(param, value):
        return "same"
    if param.ndim == 2 and param.T.shape == value.shape and np.array_equal(param.T, value):
        return "transpose"
    if param.size == value.size and np.array_equal(param.reshape(value.shape), value):
        return "reshape"
    return None


def recover_graph(graph: Any, shipped_path: Path, tensors: dict[str, np.ndarray], scratch: Path) -> dict[str, str]:
    """Load the weights of `shipped_path` into `graph.module`; returns parameter -> relation."""
    import onnx
    import torch

    from ..export import export_graph

    module = graph.module.eval()
    params = dict(module.named_parameters())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in params.values():
            p.copy_(torch.randn(p.shape, generator=generator))
    probes = {name: p.detach().numpy().copy() for name, p in params.items()}
    buffers = dict(module.named_buffers())

    export_graph(graph, scratch, fp16=False, scratch=scratch / "raw", weights_float16=False)
    fresh = onnx.load(str(scratch / graph.file))
    shipped = onnx.load(str(shipped_path))
    fresh_values, shipped_values = _initializers(fresh), _initializers(shipped)
    fresh_uses, shipped_uses = _consumers(fresh), _consumers(shipped)
    by_use = {frozenset(uses): name for name, uses in shipped_uses.items() if uses}

    found: dict[str, str] = {}
    state: dict[str, torch.Tensor] = {}
    for name, value in fresh_values.items():
        target = by_use.get(frozenset(fresh_uses[name]))
        if target is None:
            raise UserError(f"{shipped_path.name}: no initializer feeds the inputs {sorted(fresh_uses[name])} of {name}")
        stored = shipped_values[target]
        if stored.shape != value.shape:
            raise UserError(f"{shipped_path.name}: initializer {target} has shape {list(stored.shape)}, the module's graph "
                            f"{list(value.shape)}: not this module's graph")
        if stored.dtype == np.float16:
            stored = stored.astype(np.float32)
        if not np.issubdtype(value.dtype, np.floating):
            buffer = next((b for b in buffers if np.array_equal(buffers[b].numpy(), value)), None)
            if buffer is None or not np.array_equal(stored, value):
                raise UserError(f"{shipped_path.name}: integer initializer {target} differs from the module's")
            continue
        matches = [(p, r) for p, probe in probes.items() if (r := _relation(probe, value)) is not None]
        if not matches:
            # A constant the exporter made (norm scales of ones, shapes...): it must be the same.
            if stored.shape != value.shape or not np.allclose(stored, value):
                raise UserError(f"{shipped_path.name}: initializer {target} matches no parameter and differs from the traced one")
            continue
        if len(matches) > 1:
            raise UserError(f"{shipped_path.name}: initializer {target} matches several parameters {matches}")
        param, relation = matches[0]
        if param in found:
            raise UserError(f"{shipped_path.name}: parameter {param} is held by two initializers")
        if relation == "transpose":
            stored = stored.T
        state[param] = torch.from_numpy(np.array(stored.reshape(params[param].shape), np.float32))
        found[param] = relation
    for param, key in FROM_TENSORS.get(graph.file, {}).items():
        state[param] = torch.from_numpy(np.asarray(tensors[key], np.float32).reshape(params[param].shape))
        found[param] = f"tensors.safetensors:{key}"
    missing = sorted(set(params) - set(found) - UNUSED)
    if missing:
        raise UserError(f"{shipped_path.name}: no shipped value for the parameters {missing}")
    with torch.no_grad():
        for param, value in state.items():
            params[param].copy_(value)
    return found


def load(model_dir: Path, files: list[str] | None = None) -> ShapesTorch:
    """Rebuild the shapes modules of `model_dir` (all graphs, or only `files`) with its weights."""
    import torch
    from safetensors.numpy import load_file

    from ..repository import load_manifest
    from .export import graph_list
    from .models import Clip, Decoder, PriorGraph, ShapesConfig, TextProjGraph, Upsampler, make_prior, make_text_proj
    from .train import id_table

    manifest = load_manifest(model_dir, check_graphs=False)
    if manifest["model_id"] != "shapes":
        raise UserError(f"{model_dir}: model_id is {manifest['model_id']!r}; only the shapes model's modules are known here")
    cfg = ShapesConfig()
    if manifest["embedding_dim"] != cfg.embed_dim:
        raise UserError(f"{model_dir}: embedding_dim {manifest['embedding_dim']} != the shapes config's {cfg.embed_dim}")
    tensors = load_file(str(model_dir / manifest["tensors"]["file"]))
    torch.manual_seed(0)
    clip = Clip(cfg, id_table())
    graphs = graph_list(cfg, clip.text, clip.image, PriorGraph(make_prior(cfg)), TextProjGraph(make_text_proj(cfg)),
                        Decoder(cfg), [Upsampler(cfg), Upsampler(cfg)])
    wanted = {g.file: g for g in graphs if files is None or g.file in files}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="shapes-torch-") as scratch, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's warnings were read when the graphs were exported
            for g in wanted.values():
                folder = Path(scratch) / g.file
                (folder / "raw").mkdir(parents=True)
                recover_graph(g, model_dir / g.file, tensors, folder)
    finally:
        torch.set_num_threads(threads)
    for g in wanted.values():
        g.module.eval().requires_grad_(False)
    return ShapesTorch(manifest, tensors, wanted)
