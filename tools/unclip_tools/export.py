"""Export diffusers unCLIP pipelines (the Karlo layout) into a model repository.

`python -m unclip_tools export --pipeline DIR [--variation-pipeline DIR] --out DIR --model-id ID
[--fp16]` reads an `UnCLIPPipeline` saved with `save_pretrained` (and optionally the image encoder
and image processor of an `UnCLIPImageVariationPipeline`) and writes the repository described in
docs/model-repository.md:

- one ONNX graph per network (legacy TorchScript exporter, opset 17), dynamic batch, static
  spatial sizes, `timestep` an int64 `[batch]` input (one value per sample), masks as bool inputs;
  classifier-free guidance, the schedulers, the prior's clip_mean/std, the bicubic upsampling and
  the RNG all stay outside the graphs, so the text projection is exported without its CFG prepend;
- `tokenizer.json` with padding and truncation to the context length built in;
- `tensors.safetensors` with the vectors the sampling loop needs, the CLIP encodings of "" among
  them (computed here by running the text encoder);
- `manifest.json` (via `repository.write_manifest`).

It then reloads the repository with `repository.load_manifest` and runs every graph against the
torch module on random inputs at batch 1 and 3, with a different timestep per sample, failing if
any output differs by more than the tolerance.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from . import UserError
from .repository import FORMAT, load_manifest, write_manifest

OPSET = 17
# Graphs whose weights exceed this are saved with one external data file, `<name>.onnx.data`.
# Protobuf cannot hold more than 2 GiB; staying well below keeps every reader happy.
EXTERNAL_DATA_THRESHOLD = 1 << 30
# Largest accepted |onnxruntime - torch| difference in the post-export check. float16 graphs are
# compared with the float32 torch modules, relative to the output's magnitude.
FP32_TOLERANCE = 1e-3
FP16_RELATIVE_TOLERANCE = 2e-2
TOKENIZER_FILE = "tokenizer.json"
TENSORS_FILE = "tensors.safetensors"
# Timesteps fed to the graphs: one per sample, all different, covering both ends of the schedule.
CHECK_TIMESTEPS = {1: [321], 2: [999, 0], 3: [999, 500, 0]}
CHECK_PROMPTS = [
    "a photo of a horse",
    "",
    "an oil painting of a lighthouse on a cliff at dusk, waves crashing below, seagulls circling the "
    "lamp, dramatic clouds, long exposure, every detail lovingly rendered by a patient hand",
]


@dataclass
class TensorSpec:
    """One graph input or output as the manifest describes it."""

    name: str
    dtype: str  # "float" (the repository's float dtype), "int64" or "bool"
    shape: list[int | str]  # "batch" is the dynamic dimension

    def manifest_entry(self, float_dtype: str) -> dict[str, Any]:
        return {"name": self.name, "dtype": float_dtype if self.dtype == "float" else self.dtype, "shape": self.shape}


@dataclass
class Graph:
    """A network to export: the torch wrapper, its ONNX file name, its interface, test inputs."""

    label: str  # "decoder", "upsamplers[0].first", ...
    file: str
    module: nn.Module
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    # batch size, rng -> input arrays (floats as float32) keyed by input name
    make_inputs: Callable[[int, np.random.Generator], dict[str, np.ndarray]]

    def manifest_entry(self, float_dtype: str) -> dict[str, Any]:
        return {
            "file": self.file,
            "inputs": [t.manifest_entry(float_dtype) for t in self.inputs],
            "outputs": [t.manifest_entry(float_dtype) for t in self.outputs],
        }


# ---------------------------------------------------------------------------------------------
# Loading the pipelines
# ---------------------------------------------------------------------------------------------


def _model_index(folder: Path, expected: str) -> dict[str, Any]:
    path = Path(folder) / "model_index.json"
    if not path.is_file():
        raise UserError(f"{folder} is not a saved diffusers pipeline (no model_index.json)")
    index = json.loads(path.read_text())
    if index.get("_class_name") != expected:
        raise UserError(f"{folder} holds a {index.get('_class_name')}, expected {expected}")
    return index


def _load_parts(folder: Path, names: list[str]) -> dict[str, Any]:
    """Load pipeline components one by one.

    `DiffusionPipeline.from_pretrained` cannot load these folders in diffusers 0.42: the text
    projection's class is no longer importable from the library named in model_index.json.
    """
    from diffusers import PriorTransformer, UnCLIPScheduler, UNet2DConditionModel, UNet2DModel
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
    from transformers import CLIPImageProcessor, CLIPTextModelWithProjection, CLIPTokenizer
    from transformers import CLIPVisionModelWithProjection

    loaders: dict[str, Callable[[str], Any]] = {
        "prior": lambda sub: PriorTransformer.from_pretrained(folder, subfolder=sub),
        "decoder": lambda sub: UNet2DConditionModel.from_pretrained(folder, subfolder=sub),
        "text_proj": lambda sub: UnCLIPTextProjModel.from_pretrained(folder, subfolder=sub),
        "super_res_first": lambda sub: UNet2DModel.from_pretrained(folder, subfolder=sub),
        "super_res_last": lambda sub: UNet2DModel.from_pretrained(folder, subfolder=sub),
        "text_encoder": lambda sub: CLIPTextModelWithProjection.from_pretrained(folder, subfolder=sub),
        "image_encoder": lambda sub: CLIPVisionModelWithProjection.from_pretrained(folder, subfolder=sub),
        "tokenizer": lambda sub: CLIPTokenizer.from_pretrained(folder, subfolder=sub),
        "feature_extractor": lambda sub: CLIPImageProcessor.from_pretrained(folder, subfolder=sub),
    }
    parts: dict[str, Any] = {}
    for name in names:
        if not (Path(folder) / name).is_dir():
            raise UserError(f"{folder} has no {name}/ folder")
        if name.endswith("_scheduler"):
            parts[name] = UnCLIPScheduler.from_pretrained(folder, subfolder=name)
        else:
            part = loaders[name](name)
            parts[name] = part.eval() if isinstance(part, nn.Module) else part
    return parts


def load_text_to_image_pipeline(folder: Path) -> Any:
    """An `UnCLIPPipeline` from a folder written by `save_pretrained` (Karlo's layout), in float32."""
    from diffusers import UnCLIPPipeline

    _model_index(folder, "UnCLIPPipeline")
    names = ["prior", "decoder", "text_proj", "text_encoder", "tokenizer", "super_res_first", "super_res_last",
             "prior_scheduler", "decoder_scheduler", "super_res_scheduler"]
    return UnCLIPPipeline(**_load_parts(folder, names))


def load_image_variation_pipeline(folder: Path) -> Any:
    """An `UnCLIPImageVariationPipeline` from a `save_pretrained` folder, in float32."""
    from diffusers import UnCLIPImageVariationPipeline

    _model_index(folder, "UnCLIPImageVariationPipeline")
    names = ["decoder", "text_encoder", "tokenizer", "text_proj", "feature_extractor", "image_encoder",
             "super_res_first", "super_res_last", "decoder_scheduler", "super_res_scheduler"]
    return UnCLIPImageVariationPipeline(**_load_parts(folder, names))


def load_image_encoder(folder: Path) -> tuple[Any, Any]:
    """Only the CLIP image encoder and its image processor of a variation pipeline folder."""
    _model_index(folder, "UnCLIPImageVariationPipeline")
    parts = _load_parts(folder, ["image_encoder", "feature_extractor"])
    return parts["image_encoder"], parts["feature_extractor"]


# ---------------------------------------------------------------------------------------------
# Graph wrappers: fixed argument order and names, CFG and post-processing left out
# ---------------------------------------------------------------------------------------------


class TextEncoderGraph(nn.Module):
    """CLIP text tower: ids -> (projected pooled embedding, final-LayerNorm sequence). No mask, as in the pipeline."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(input_ids=input_ids)
        return out.text_embeds, out.last_hidden_state


class ImageEncoderGraph(nn.Module):
    """CLIP vision tower: preprocessed pixels -> projected image embedding (not normalised)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).image_embeds


class PriorGraph(nn.Module):
    """PriorTransformer: predicts the normalised image embedding x0 (no CFG, no clip_mean/std)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, hidden_states, timestep, proj_embedding, encoder_hidden_states, attention_mask):
        return self.model(
            hidden_states,
            timestep=timestep,
            proj_embedding=proj_embedding,
            encoder_hidden_states=encoder_hidden_states,
            attention_mask=attention_mask,
        ).predicted_image_embedding


class TextProjGraph(nn.Module):
    """UnCLIPTextProjModel with do_classifier_free_guidance=False: the caller prepends the CFG embedding."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image_embeddings, prompt_embeds, text_encoder_hidden_states):
        return self.model(
            image_embeddings=image_embeddings,
            prompt_embeds=prompt_embeds,
            text_encoder_hidden_states=text_encoder_hidden_states,
            do_classifier_free_guidance=False,
        )


class DecoderGraph(nn.Module):
    """UNet2DConditionModel; the mask goes to `attention_mask` (unCLIP's simple cross-attention)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, sample, timestep, encoder_hidden_states, class_labels, attention_mask):
        return self.model(
            sample=sample,
            timestep=timestep,
            encoder_hidden_states=encoder_hidden_states,
            class_labels=class_labels,
            attention_mask=attention_mask,
        ).sample


class UpsamplerGraph(nn.Module):
    """UNet2DModel super-resolution step: [noisy latents ++ upsampled image] -> epsilon."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, sample, timestep):
        return self.model(sample=sample, timestep=timestep).sample


# ---------------------------------------------------------------------------------------------
# Building the graph list
# ---------------------------------------------------------------------------------------------


def _text_mask(batch: int, length: int) -> np.ndarray:
    """Masks as a tokenizer makes them: true for BOS..EOS, then false; lengths 2, 7, full, ..."""
    lengths = [2, 7, length]
    mask = np.zeros((batch, length), dtype=bool)
    for i in range(batch):
        mask[i, : lengths[i % len(lengths)]] = True
    return mask


def _timesteps(batch: int) -> np.ndarray:
    values = CHECK_TIMESTEPS.get(batch) or list(np.linspace(999, 0, batch).round().astype(int))
    return np.asarray(values, dtype=np.int64)


def build_graphs(pipeline: Any, image_encoder: Any | None, tokenizer_ids: Callable[[list[str]], np.ndarray]) -> list[Graph]:
    """The graphs of a repository, in manifest order, with their specs and test-input makers."""
    text_config = pipeline.text_encoder.config
    dim = pipeline.prior.config.embedding_dim
    length = text_config.max_position_embeddings
    extra = pipeline.text_proj.clip_extra_context_tokens
    context = length + extra
    cross = pipeline.decoder.config.cross_attention_dim
    time_dim = pipeline.text_proj.embedding_proj.out_features
    size = pipeline.decoder.config.sample_size
    up_size = pipeline.super_res_first.config.sample_size
    for name, width in (("text encoder hidden size", text_config.hidden_size),
                        ("text encoder projection_dim", text_config.projection_dim),
                        ("text_proj clip_embeddings_dim", pipeline.text_proj.embedding_proj.in_features)):
        if width != dim:
            raise UserError(f"{name} is {width}, but the prior's embedding_dim is {dim}; unCLIP needs them equal")
    if pipeline.prior.config.num_embeddings != length:
        raise UserError(f"prior num_embeddings {pipeline.prior.config.num_embeddings} != text context {length}")

    def normal(rng: np.random.Generator, *shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    def text_encoder_inputs(b: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        prompts = [CHECK_PROMPTS[i % len(CHECK_PROMPTS)] for i in range(b)]
        return {"input_ids": tokenizer_ids(prompts)}

    def prior_inputs(b: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {
            "hidden_states": normal(rng, b, dim),
            "timestep": _timesteps(b),
            "proj_embedding": normal(rng, b, dim),
            "encoder_hidden_states": normal(rng, b, length, dim),
            "attention_mask": _text_mask(b, length),
        }

    def text_proj_inputs(b: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {
            "image_embeddings": normal(rng, b, dim),
            "prompt_embeds": normal(rng, b, dim),
            "text_encoder_hidden_states": normal(rng, b, length, dim),
        }

    def decoder_inputs(b: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        mask = np.concatenate([np.ones((b, extra), dtype=bool), _text_mask(b, length)], axis=1)
        return {
            "sample": normal(rng, b, 3, size, size),
            "timestep": _timesteps(b),
            "encoder_hidden_states": normal(rng, b, context, cross),
            "class_labels": normal(rng, b, time_dim),
            "attention_mask": mask,
        }

    def upsampler_inputs(b: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"sample": normal(rng, b, 6, up_size, up_size), "timestep": _timesteps(b)}

    B = "batch"
    graphs = [
        Graph("text_encoder", "text_encoder.onnx", TextEncoderGraph(pipeline.text_encoder),
              [TensorSpec("input_ids", "int64", [B, length])],
              [TensorSpec("text_embeds", "float", [B, dim]), TensorSpec("last_hidden_state", "float", [B, length, dim])],
              text_encoder_inputs),
    ]
    if image_encoder is not None:
        pixels = image_encoder.config.image_size
        if image_encoder.config.projection_dim != dim:
            raise UserError(f"image encoder projection_dim {image_encoder.config.projection_dim} != embedding_dim {dim}")
        graphs.append(
            Graph("image_encoder", "image_encoder.onnx", ImageEncoderGraph(image_encoder),
                  [TensorSpec("pixel_values", "float", [B, 3, pixels, pixels])],
                  [TensorSpec("image_embeds", "float", [B, dim])],
                  lambda b, rng: {"pixel_values": normal(rng, b, 3, pixels, pixels)})
        )
    graphs += [
        Graph("prior", "prior.onnx", PriorGraph(pipeline.prior),
              [TensorSpec("hidden_states", "float", [B, dim]), TensorSpec("timestep", "int64", [B]),
               TensorSpec("proj_embedding", "float", [B, dim]),
               TensorSpec("encoder_hidden_states", "float", [B, length, dim]),
               TensorSpec("attention_mask", "bool", [B, length])],
              [TensorSpec("predicted_image_embedding", "float", [B, dim])],
              prior_inputs),
        Graph("text_proj", "text_proj.onnx", TextProjGraph(pipeline.text_proj),
              [TensorSpec("image_embeddings", "float", [B, dim]), TensorSpec("prompt_embeds", "float", [B, dim]),
               TensorSpec("text_encoder_hidden_states", "float", [B, length, dim])],
              [TensorSpec("encoder_hidden_states", "float", [B, context, cross]),
               TensorSpec("additive_clip_time_embeddings", "float", [B, time_dim])],
              text_proj_inputs),
        Graph("decoder", "decoder.onnx", DecoderGraph(pipeline.decoder),
              [TensorSpec("sample", "float", [B, 3, size, size]), TensorSpec("timestep", "int64", [B]),
               TensorSpec("encoder_hidden_states", "float", [B, context, cross]),
               TensorSpec("class_labels", "float", [B, time_dim]),
               TensorSpec("attention_mask", "bool", [B, context])],
              [TensorSpec("out_sample", "float", [B, 6, size, size])],
              decoder_inputs),
    ]
    for part, model in (("first", pipeline.super_res_first), ("last", pipeline.super_res_last)):
        if model.config.in_channels != 6 or model.config.out_channels != 3:
            raise UserError(f"super_res_{part} must map 6 channels to 3, has {model.config.in_channels}->"
                            f"{model.config.out_channels}")
        graphs.append(
            Graph(f"upsamplers[0].{part}", f"upsampler_0_{part}.onnx", UpsamplerGraph(model),
                  [TensorSpec("sample", "float", [B, 6, up_size, up_size]), TensorSpec("timestep", "int64", [B])],
                  [TensorSpec("out_sample", "float", [B, 3, up_size, up_size])],
                  upsampler_inputs)
        )
    return graphs


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------


def _to_torch(arrays: dict[str, np.ndarray], float_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    out = {}
    for name, array in arrays.items():
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        out[name] = tensor.to(float_dtype) if tensor.is_floating_point() else tensor
    return out


def _initializer_bytes(model: Any) -> int:
    import onnx.numpy_helper

    total = 0
    for tensor in model.graph.initializer:
        total += len(tensor.raw_data) if tensor.HasField("raw_data") else onnx.numpy_helper.to_array(tensor).nbytes
    return total


def _declare_shapes(model: Any, graph: Graph) -> None:
    """Write the spec's shapes into the graph's inputs and outputs.

    The tracer leaves some output dimensions unnamed or symbolic (CLIP's sequence length, for
    one); the declared shapes are what loaders see, and `check_repository` confirms that the
    outputs really have them.
    """
    specs = {t.name: t for t in graph.inputs + graph.outputs}
    for value in list(model.graph.input) + list(model.graph.output):
        spec = specs.get(value.name)
        if spec is None:
            continue
        shape = value.type.tensor_type.shape
        shape.ClearField("dim")
        for dim in spec.shape:
            entry = shape.dim.add()
            if isinstance(dim, str):
                entry.dim_param = dim
            else:
                entry.dim_value = dim


def store_weights_float16(model: Any, min_elements: int = 1024) -> int:
    """Store the float32 initializers of at least `min_elements` values as float16, each behind a
    Cast back to float32; returns how many were converted.

    The file holds half the bytes, while the graph still takes, computes and returns float32
    (ONNX Runtime folds the casts into float32 weights when it builds the session). The only
    change is the rounding of each weight to float16 (relative error below 2^-11), so unlike
    `fp16` this suits CPUs, which lack fast float16 kernels. Small tensors (biases, norms) stay
    float32.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    casts = []
    for init in model.graph.initializer:
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < min_elements:
            continue
        name = init.name
        weights = numpy_helper.to_array(init)
        if not np.all(np.abs(weights) <= np.finfo(np.float16).max):
            continue  # would overflow float16: keep it exact
        init.CopyFrom(numpy_helper.from_array(weights.astype(np.float16), f"{name}__float16"))
        casts.append(helper.make_node("Cast", [f"{name}__float16"], [name], to=TensorProto.FLOAT, name=f"{name}__cast"))
    if casts:
        nodes = list(model.graph.node)
        del model.graph.node[:]
        model.graph.node.extend(casts + nodes)
        onnx.checker.check_model(model)
    return len(casts)


def export_graph(graph: Graph, out_dir: Path, fp16: bool, scratch: Path, weights_float16: bool = False) -> list[str]:
    """Export one graph into `out_dir`; returns the files written (graph, and data file if any).

    `weights_float16` keeps float32 inputs, outputs and arithmetic but stores the large weights
    as float16 ([`store_weights_float16`]). The graph is always traced in float32. For float16, onnxruntime's converter (the one from
    onnxconverter-common) then rewrites weights and float inputs/outputs to float16 and keeps the
    few precision-sensitive operators in float32 behind Cast nodes. Tracing a `.half()` module
    instead gives invalid graphs: transformers' CLIP upcasts its softmax, and the tracer emits
    LayerNormalization nodes with mixed float32/float16 operands.
    """
    import onnx

    example = _to_torch(graph.make_inputs(2, np.random.default_rng(0)), torch.float32)
    input_names = [t.name for t in graph.inputs]
    output_names = [t.name for t in graph.outputs]
    raw = scratch / graph.file
    graph.module.eval()
    with torch.no_grad():
        torch.onnx.export(
            graph.module,
            tuple(example[name] for name in input_names),
            str(raw),
            input_names=input_names,
            output_names=output_names,
            dynamic_axes={name: {0: "batch"} for name in input_names + output_names},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    if fp16:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(str(raw), keep_io_types=False)
    else:
        model = onnx.load(str(raw))  # pulls in external data the exporter may have scattered
        if weights_float16:
            store_weights_float16(model)
    _declare_shapes(model, graph)
    target = out_dir / graph.file
    if _initializer_bytes(model) > EXTERNAL_DATA_THRESHOLD:
        data = graph.file + ".data"
        onnx.save_model(model, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data, size_threshold=1024)
        written = [graph.file, data]
    else:
        onnx.save_model(model, str(target))
        written = [graph.file]
    del model
    gc.collect()
    return written


def save_tokenizer(tokenizer: Any, path: Path, context_length: int) -> None:
    """Write the pipeline tokenizer as a fast tokenizer.json that pads and truncates to the context."""
    from tokenizers import Tokenizer

    if not getattr(tokenizer, "is_fast", False) or not hasattr(tokenizer, "backend_tokenizer"):
        raise UserError("the pipeline's tokenizer has no fast (tokenizers) backend to save as tokenizer.json")
    if tokenizer.pad_token_id is None:
        raise UserError("the pipeline's tokenizer has no pad token")
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.enable_truncation(max_length=context_length, strategy="longest_first", direction="right")
    backend.enable_padding(direction="right", pad_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token,
                           length=context_length)
    backend.save(str(path))


def encode_uncond(pipeline: Any, context_length: int) -> dict[str, np.ndarray]:
    """Tokens and CLIP encodings of "" — the unconditional branch — exactly as the pipeline makes them."""
    tokens = pipeline.tokenizer([""], padding="max_length", max_length=context_length, truncation=True,
                                return_tensors="pt")
    with torch.no_grad():
        out = pipeline.text_encoder(tokens.input_ids)
    return {
        "uncond_input_ids": tokens.input_ids[0].numpy().astype(np.int64),
        "uncond_attention_mask": tokens.attention_mask[0].numpy().astype(np.uint8),
        "uncond_text_embeds": out.text_embeds[0].float().numpy(),
        "uncond_last_hidden_state": out.last_hidden_state[0].float().numpy(),
    }


def _image_preprocess(processor: Any, pixels: int) -> dict[str, Any]:
    """The manifest's image_preprocess from a CLIPImageProcessor; only the standard CLIP recipe is accepted."""
    config = processor.to_dict()
    size = (config.get("size") or {}).get("shortest_edge")
    crop = config.get("crop_size") or {}
    problems = []
    if size is None:
        problems.append(f"size {config.get('size')} is not a shortest_edge size")
    if crop.get("height") != size or crop.get("width") != size:
        problems.append(f"crop_size {crop} differs from the resize size {size}")
    if size != pixels:
        problems.append(f"size {size} differs from the image encoder's {pixels}")
    if int(config.get("resample", 3)) != 3:
        problems.append(f"resample {config.get('resample')} is not bicubic (3)")
    for flag in ("do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb"):
        if config.get(flag, True) is False:
            problems.append(f"{flag} is false")
    if problems:
        raise UserError("unsupported image processor settings: " + "; ".join(problems))
    return {
        "size": int(size),
        "resize": "shortest_edge",
        "resample": "bicubic",
        "crop": "center",
        "rescale": float(config["rescale_factor"]),
        "mean": [float(v) for v in config["image_mean"]],
        "std": [float(v) for v in config["image_std"]],
    }


def _scheduler_entry(scheduler: Any) -> dict[str, Any]:
    config = scheduler.config
    return {
        "num_train_timesteps": int(config.num_train_timesteps),
        "beta_schedule": str(config.beta_schedule),
        "variance_type": str(config.variance_type),
        "prediction_type": str(config.prediction_type),
        "clip_sample": bool(config.clip_sample),
        "clip_sample_range": float(config.clip_sample_range),
    }


def _pipeline_defaults() -> dict[str, Any]:
    """Steps and guidance scales: the defaults of `UnCLIPPipeline.__call__`."""
    from diffusers import UnCLIPPipeline

    params = inspect.signature(UnCLIPPipeline.__call__).parameters
    return {
        "prior_steps": int(params["prior_num_inference_steps"].default),
        "decoder_steps": int(params["decoder_num_inference_steps"].default),
        "upsampler_steps": int(params["super_res_num_inference_steps"].default),
        "prior_guidance_scale": float(params["prior_guidance_scale"].default),
        "decoder_guidance_scale": float(params["decoder_guidance_scale"].default),
    }


def _check_pooling(pipeline: Any) -> None:
    """CLIP pools at argmax(ids) when eos_token_id == 2 (legacy configs), else at the first EOS."""
    eos_config = pipeline.text_encoder.config.eos_token_id
    eos = pipeline.tokenizer.eos_token_id
    if eos_config == 2:
        if eos != max(pipeline.tokenizer.get_vocab().values()):
            raise UserError(f"the text encoder pools at argmax(ids) but EOS ({eos}) is not the largest token id")
    elif eos_config != eos:
        raise UserError(f"the text encoder pools at eos_token_id {eos_config}, the tokenizer's EOS is {eos}")


def quiet_libraries() -> None:
    """Silence the libraries' progress bars, deprecation notes and tracer warnings; errors still show."""
    import warnings

    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx.*")


def export_repository(
    pipeline_dir: Path,
    out_dir: Path,
    model_id: str,
    variation_dir: Path | None = None,
    fp16: bool = False,
    check: bool = True,
) -> dict[str, Any]:
    """Export the pipeline(s) into `out_dir` (absent or empty), write and verify the manifest."""
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    quiet_libraries()
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"--out {out_dir} exists and is not an empty folder")
    if not model_id or any(c.isspace() for c in model_id):
        raise UserError(f"--model-id must be a non-empty word, got {model_id!r}")

    started = time.monotonic()
    pipeline = load_text_to_image_pipeline(Path(pipeline_dir))
    image_encoder, processor = (None, None)
    if variation_dir is not None:
        image_encoder, processor = load_image_encoder(Path(variation_dir))
    _check_pooling(pipeline)
    length = pipeline.text_encoder.config.max_position_embeddings
    if pipeline.tokenizer.model_max_length != length:
        raise UserError(f"tokenizer model_max_length {pipeline.tokenizer.model_max_length} != text encoder "
                        f"max_position_embeddings {length}")

    def tokenizer_ids(prompts: list[str]) -> np.ndarray:
        ids = pipeline.tokenizer(prompts, padding="max_length", max_length=length, truncation=True,
                                 return_tensors="np").input_ids
        return ids.astype(np.int64)

    graphs = build_graphs(pipeline, image_encoder, tokenizer_ids)
    float_dtype = "float16" if fp16 else "float32"
    preprocess = _image_preprocess(processor, image_encoder.config.image_size) if image_encoder is not None else None
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="unclip-export-") as scratch:
        for graph in graphs:
            t0 = time.monotonic()
            written = export_graph(graph, out_dir, fp16, Path(scratch))
            size = sum((out_dir / f).stat().st_size for f in written)
            print(f"exported {' + '.join(written)} ({size / 1e6:.1f} MB, {time.monotonic() - t0:.1f} s)")

    save_tokenizer(pipeline.tokenizer, out_dir / TOKENIZER_FILE, length)
    from safetensors.numpy import save_file

    dim = pipeline.prior.config.embedding_dim
    tensors = {
        "prior_clip_mean": pipeline.prior.clip_mean.detach().float().reshape(dim).numpy(),
        "prior_clip_std": pipeline.prior.clip_std.detach().float().reshape(dim).numpy(),
        "decoder_cfg_embedding": pipeline.text_proj.learned_classifier_free_guidance_embeddings.detach()
        .float().reshape(dim).numpy(),
        **encode_uncond(pipeline, length),
    }
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(out_dir / TENSORS_FILE))

    by_label = {g.label: g for g in graphs}
    components: dict[str, Any] = {}
    for label in ("text_encoder", "image_encoder", "prior", "text_proj", "decoder"):
        if label in by_label:
            components[label] = by_label[label].manifest_entry(float_dtype)
    components["upsamplers"] = [{
        "input_size": pipeline.decoder.config.sample_size,
        "output_size": pipeline.super_res_first.config.sample_size,
        "first": by_label["upsamplers[0].first"].manifest_entry(float_dtype),
        "last": by_label["upsamplers[0].last"].manifest_entry(float_dtype),
    }]
    import diffusers

    sources = "UnCLIPPipeline" + (" + the image encoder of UnCLIPImageVariationPipeline" if image_encoder else "")
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "model_id": model_id,
        "description": f"{model_id}: {sources}, exported from diffusers {diffusers.__version__} "
                       f"(ONNX opset {OPSET}, {float_dtype} graphs)",
        "embedding_dim": dim,
        "text": {
            "tokenizer": TOKENIZER_FILE,
            "context_length": length,
            "pad_id": int(pipeline.tokenizer.pad_token_id),
            "bos_id": int(pipeline.tokenizer.bos_token_id),
            "eos_id": int(pipeline.tokenizer.eos_token_id),
        },
    }
    if preprocess is not None:
        manifest["image_preprocess"] = preprocess
    manifest.update({
        "components": components,
        "schedulers": {
            "prior": _scheduler_entry(pipeline.prior_scheduler),
            "decoder": _scheduler_entry(pipeline.decoder_scheduler),
            "upsampler": _scheduler_entry(pipeline.super_res_scheduler),
        },
        "defaults": _pipeline_defaults(),
        "tensors": {"file": TENSORS_FILE},
    })
    written = write_manifest(out_dir, manifest, check_graphs=False)
    load_manifest(out_dir, check_graphs=True)
    print(f"wrote {out_dir / 'manifest.json'}: {model_id} {written['version']}")
    if check:
        check_repository(out_dir, graphs, pipeline, fp16)
    print(f"done in {time.monotonic() - started:.0f} s")
    return written


def check_repository(out_dir: Path, graphs: list[Graph], pipeline: Any, fp16: bool) -> dict[str, float]:
    """Run every graph with onnxruntime and torch at batch 1 and 3; fail on a difference above tolerance.

    float16 graphs get float16 inputs; the torch reference runs in float32 on the same (rounded)
    values. Also checks that tokenizer.json produces the pipeline tokenizer's ids and masks.
    Returns the largest difference per graph.
    """
    import onnxruntime as ort
    from tokenizers import Tokenizer

    length = pipeline.text_encoder.config.max_position_embeddings
    fast = Tokenizer.from_file(str(out_dir / TOKENIZER_FILE))
    reference = pipeline.tokenizer(CHECK_PROMPTS, padding="max_length", max_length=length, truncation=True)
    for prompt, encoding, ids, mask in zip(CHECK_PROMPTS, fast.encode_batch(CHECK_PROMPTS), reference.input_ids,
                                           reference.attention_mask):
        if encoding.ids != list(ids) or encoding.attention_mask != list(mask):
            raise UserError(f"tokenizer.json disagrees with the pipeline tokenizer on {prompt[:40]!r}")
    print(f"check tokenizer.json: same ids and masks as the pipeline tokenizer on {len(CHECK_PROMPTS)} prompts")

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, min(torch.get_num_threads(), 4))
    options.log_severity_level = 3
    worst: dict[str, float] = {}
    np_float = np.float16 if fp16 else np.float32
    for graph in graphs:
        session = ort.InferenceSession(str(out_dir / graph.file), options, providers=["CPUExecutionProvider"])
        diffs = []
        for batch in (1, 3):
            arrays = graph.make_inputs(batch, np.random.default_rng(1000 + batch))
            feed = {k: v.astype(np_float) if v.dtype == np.float32 else v for k, v in arrays.items()}
            got = session.run([t.name for t in graph.outputs], feed)
            with torch.no_grad():
                inputs = _to_torch({k: v.astype(np.float32) if v.dtype == np_float else v for k, v in feed.items()},
                                   torch.float32)
                want = graph.module(*(inputs[t.name] for t in graph.inputs))
            want = want if isinstance(want, tuple) else (want,)
            for spec, g, w in zip(graph.outputs, got, want):
                w = w.float().numpy()
                declared = tuple(batch if isinstance(d, str) else d for d in spec.shape)
                if g.shape != w.shape or g.shape != declared:
                    raise UserError(f"{graph.file}: output '{spec.name}' has shape {g.shape}, torch gives {w.shape}, "
                                    f"the manifest declares {declared}")
                diff = float(np.abs(g.astype(np.float32) - w).max())
                tol = FP16_RELATIVE_TOLERANCE * max(1.0, float(np.abs(w).max())) if fp16 else FP32_TOLERANCE
                if not np.isfinite(diff) or diff > tol:
                    raise UserError(f"{graph.file}: output '{spec.name}' differs from torch by {diff:.3g} at batch "
                                    f"{batch} (tolerance {tol:.3g})")
                diffs.append(diff)
        worst[graph.label] = max(diffs)
        print(f"check {graph.file}: max |onnxruntime - torch| = {worst[graph.label]:.2e} (batch 1 and 3)")
        del session
    return worst


# ---------------------------------------------------------------------------------------------
# The `export` command
# ---------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """Arguments of `python -m unclip_tools export`."""
    parser.add_argument("--pipeline", type=Path, required=True,
                        help="UnCLIPPipeline folder saved with save_pretrained (e.g. karlo-v1-alpha)")
    parser.add_argument("--variation-pipeline", type=Path,
                        help="UnCLIPImageVariationPipeline folder; its image encoder and image processor are added")
    parser.add_argument("--out", type=Path, required=True, help="repository folder to create (absent or empty)")
    parser.add_argument("--model-id", required=True, help="the manifest's model_id, e.g. karlo-v1-alpha")
    parser.add_argument("--fp16", action="store_true", help="float16 weights and float inputs/outputs")
    parser.add_argument("--no-check", action="store_true",
                        help="skip running the graphs against torch after the export (the manifest is still verified)")


def run(args: argparse.Namespace, name: str) -> int:
    """Run the export; a failed check leaves the written folder for inspection and exits non-zero."""
    for flag, folder in (("--pipeline", args.pipeline), ("--variation-pipeline", args.variation_pipeline)):
        if folder is not None and not folder.is_dir():
            raise UserError(f"{flag} {folder} is not a folder")
    export_repository(args.pipeline, args.out, args.model_id, variation_dir=args.variation_pipeline,
                      fp16=args.fp16, check=not args.no_check)
    return 0


__all__ = [
    "export_repository",
    "load_text_to_image_pipeline",
    "load_image_variation_pipeline",
    "load_image_encoder",
    "save_tokenizer",
    "encode_uncond",
]
