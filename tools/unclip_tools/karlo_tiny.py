"""Build diffusers' tiny unCLIP test pipelines, export them and record parity fixtures.

`python -m unclip_tools karlo-tiny --out models/karlo-tiny` does three things:

1. builds the randomly initialised "dummy" components that diffusers' own unCLIP tests use
   (`tests/pipelines/unclip/test_unclip.py`, `test_unclip_image_variation.py`), seed for seed,
   plus a locally built substitute for the hub tokenizer `hf-internal-testing/tiny-random-clip`;
2. saves both pipelines with `save_pretrained` (the Karlo layout) and runs the exporter on them,
   so the exporter is exercised end to end;
3. runs diffusers' own pipelines and records every noise draw, model call and scheduler step
   into `fixtures/`, for replay by the Rust services and the Python tests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from . import UserError
from diffusers import (
    PriorTransformer,
    UnCLIPImageVariationPipeline,
    UnCLIPPipeline,
    UnCLIPScheduler,
    UNet2DConditionModel,
    UNet2DModel,
)
from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

# The constants of diffusers' tests (reference §6).
TEXT_EMBEDDER_HIDDEN_SIZE = 32
TIME_INPUT_DIM = 32
BLOCK_OUT_CHANNELS_0 = TIME_INPUT_DIM
TIME_EMBED_DIM = TIME_INPUT_DIM * 4
CROSS_ATTENTION_DIM = 100
CONTEXT_LENGTH = 77


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table (same order as CLIP's vocab)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def build_tokenizer() -> CLIPTokenizer:
    """A stand-in for `hf-internal-testing/tiny-random-clip`, which needs the hub.

    A CLIP byte-level BPE tokenizer with no merges: the 256 byte symbols, the same 256 with the
    end-of-word suffix `</w>`, then `<|startoftext|>` (512) and `<|endoftext|>` (513) — 514 tokens,
    all below the text encoder's vocab_size of 1000. Every word becomes one token per byte. As in
    Karlo, padding uses "!", which is byte symbol 0, so pad id = 0. The tiny text config has
    eos_token_id = 2, so CLIP pools by argmax of the ids; EOS (513) is the largest id, so that
    picks the EOS position, as real CLIP does.
    """
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(
        vocab={token: i for i, token in enumerate(vocab)},
        merges=[],
        pad_token="!",
        model_max_length=CONTEXT_LENGTH,
    )


def build_text_encoder() -> CLIPTextModelWithProjection:
    """diffusers' `dummy_text_encoder`."""
    torch.manual_seed(0)
    config = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=2,
        hidden_size=TEXT_EMBEDDER_HIDDEN_SIZE,
        projection_dim=TEXT_EMBEDDER_HIDDEN_SIZE,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=5,
        pad_token_id=1,
        vocab_size=1000,
    )
    return CLIPTextModelWithProjection(config)


def build_image_encoder() -> CLIPVisionModelWithProjection:
    """diffusers' `dummy_image_encoder` (variation tests)."""
    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=TEXT_EMBEDDER_HIDDEN_SIZE,
        projection_dim=TEXT_EMBEDDER_HIDDEN_SIZE,
        num_hidden_layers=5,
        num_attention_heads=4,
        image_size=32,
        intermediate_size=37,
        patch_size=1,
    )
    return CLIPVisionModelWithProjection(config)


def build_prior() -> PriorTransformer:
    """diffusers' `dummy_prior`."""
    torch.manual_seed(0)
    return PriorTransformer(
        num_attention_heads=2, attention_head_dim=12, embedding_dim=TEXT_EMBEDDER_HIDDEN_SIZE, num_layers=1
    )


def build_text_proj() -> UnCLIPTextProjModel:
    """diffusers' `dummy_text_proj`."""
    torch.manual_seed(0)
    return UnCLIPTextProjModel(
        clip_embeddings_dim=TEXT_EMBEDDER_HIDDEN_SIZE,
        time_embed_dim=TIME_EMBED_DIM,
        cross_attention_dim=CROSS_ATTENTION_DIM,
    )


def build_decoder() -> UNet2DConditionModel:
    """diffusers' `dummy_decoder`: 32 px, 6 output channels (epsilon ++ learned range)."""
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=32,
        in_channels=3,
        out_channels=6,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=(BLOCK_OUT_CHANNELS_0, BLOCK_OUT_CHANNELS_0 * 2),
        layers_per_block=1,
        cross_attention_dim=CROSS_ATTENTION_DIM,
        attention_head_dim=4,
        resnet_time_scale_shift="scale_shift",
        class_embed_type="identity",
    )


def _super_res(seed: int) -> UNet2DModel:
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=64,
        layers_per_block=1,
        down_block_types=("ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D"),
        up_block_types=("ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"),
        block_out_channels=(BLOCK_OUT_CHANNELS_0, BLOCK_OUT_CHANNELS_0 * 2),
        in_channels=6,
        out_channels=3,
    )


def build_super_res_first() -> UNet2DModel:
    """diffusers' `dummy_super_res_first` (seed 0)."""
    return _super_res(0)


def build_super_res_last() -> UNet2DModel:
    """diffusers' `dummy_super_res_last`: seed 1, so that it differs from the first."""
    return _super_res(1)


def build_schedulers() -> dict[str, UnCLIPScheduler]:
    """The three schedulers of the tests (the same settings as Karlo's)."""
    return {
        "prior_scheduler": UnCLIPScheduler(
            variance_type="fixed_small_log", prediction_type="sample", num_train_timesteps=1000, clip_sample_range=5.0
        ),
        "decoder_scheduler": UnCLIPScheduler(
            variance_type="learned_range", prediction_type="epsilon", num_train_timesteps=1000
        ),
        "super_res_scheduler": UnCLIPScheduler(
            variance_type="fixed_small_log", prediction_type="epsilon", num_train_timesteps=1000
        ),
    }


def build_text_to_image_pipeline() -> UnCLIPPipeline:
    """The components of `UnCLIPPipelineFastTests.get_dummy_components`, as a pipeline."""
    schedulers = build_schedulers()
    return UnCLIPPipeline(
        prior=build_prior(),
        decoder=build_decoder(),
        text_proj=build_text_proj(),
        text_encoder=build_text_encoder(),
        tokenizer=build_tokenizer(),
        super_res_first=build_super_res_first(),
        super_res_last=build_super_res_last(),
        **schedulers,
    )


def build_image_variation_pipeline() -> UnCLIPImageVariationPipeline:
    """The components of `UnCLIPImageVariationPipelineFastTests.get_dummy_components`."""
    schedulers = build_schedulers()
    return UnCLIPImageVariationPipeline(
        decoder=build_decoder(),
        text_encoder=build_text_encoder(),
        tokenizer=build_tokenizer(),
        text_proj=build_text_proj(),
        feature_extractor=CLIPImageProcessor(crop_size=32, size=32),
        image_encoder=build_image_encoder(),
        super_res_first=build_super_res_first(),
        super_res_last=build_super_res_last(),
        decoder_scheduler=schedulers["decoder_scheduler"],
        super_res_scheduler=schedulers["super_res_scheduler"],
    )


# ---------------------------------------------------------------------------------------------
# Fixture recording
# ---------------------------------------------------------------------------------------------

FIXTURES_FORMAT = "unclip-fixtures/1"
PROMPTS = ("horse", "A red cube on a blue sphere, 2 shadows!")
# The fixture cases, in two forms (fixtures/README.md). FULL: every noise draw, model call and
# scheduler step. A full 25/25/7 trace takes about 3.8 MB even with every repeated tensor stored
# once (per step: the decoder's 6-channel output for the CFG pair, the guided output, noise,
# prev_sample and pred_original_sample), so the 10 MB budget holds one. REPLAY: the noise draws
# and the stage values only (about 0.7 MB at 25/25/7), for free-running replays; the other three
# default-steps cases and the batch-2 case take this form.
FULL, REPLAY = "full", "replay"
# (name, prompts, seed, (prior, decoder, upsampler) steps, form)
TEXT_TO_IMAGE_CASES: tuple[tuple[str, tuple[str, ...], int, tuple[int, int, int], str], ...] = (
    ("t2i_horse_seed0_steps25-25-7", (PROMPTS[0],), 0, (25, 25, 7), FULL),
    ("t2i_horse_seed0_steps2-2-2", (PROMPTS[0],), 0, (2, 2, 2), FULL),
    ("t2i_horse_seed1_steps2-2-2", (PROMPTS[0],), 1, (2, 2, 2), FULL),
    ("t2i_red-cube_seed0_steps2-2-2", (PROMPTS[1],), 0, (2, 2, 2), FULL),
    ("t2i_red-cube_seed1_steps2-2-2", (PROMPTS[1],), 1, (2, 2, 2), FULL),
    ("t2i_batch2_seed0_steps2-2-2", PROMPTS, 0, (2, 2, 2), REPLAY),
    ("t2i_horse_seed1_steps25-25-7", (PROMPTS[0],), 1, (25, 25, 7), REPLAY),
    ("t2i_red-cube_seed0_steps25-25-7", (PROMPTS[1],), 0, (25, 25, 7), REPLAY),
    ("t2i_red-cube_seed1_steps25-25-7", (PROMPTS[1],), 1, (25, 25, 7), REPLAY),
)
# (name, seed, (decoder, upsampler) steps, form)
VARIATION_CASES: tuple[tuple[str, int, tuple[int, int], str], ...] = (
    ("variation_seed0_steps2-2", 0, (2, 2), FULL),
)
VARIATION_IMAGE = "variation_input.png"
# 48x40: not square and not 32 px, so the image processor's resize and center crop both act.
VARIATION_IMAGE_SIZE = (48, 40)  # (width, height)


class TensorStore:
    """Content-addressed arrays: each distinct (dtype, shape, bytes) is stored once as "tNNNN"."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        self._keys: dict[bytes, str] = {}

    def put(self, tensor: torch.Tensor | np.ndarray) -> str:
        array = tensor.detach().cpu().numpy() if isinstance(tensor, torch.Tensor) else np.asarray(tensor)
        if array.dtype.kind == "f":
            array = array.astype(np.float32)
        elif array.dtype.kind in "iu":
            array = array.astype(np.int64)
        array = np.ascontiguousarray(array)
        digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode() + array.tobytes()).digest()
        key = self._keys.get(digest)
        if key is None:
            key = f"t{len(self.arrays):04d}"
            self._keys[digest] = key
            self.arrays[key] = array
        return key

    def halves(self, tensor: torch.Tensor, axis: int) -> dict[str, Any]:
        """Store the two halves of `tensor` along `axis`; the reference is their concatenation."""
        first, second = torch.chunk(tensor, 2, dim=axis)
        return {"concat": [self.put(first), self.put(second)], "axis": axis}


class PipelineRecorder:
    """Records one diffusers unCLIP pipeline call: noise draws, model calls, scheduler steps.

    Noise: `randn_tensor` is replaced in the scheduler module and in both pipeline modules (the
    only places the unCLIP pipelines draw from). Model calls: forward hooks on every network.
    Scheduler steps: each scheduler instance's `step` is wrapped. Every record carries `seq`, its
    position in the one stream of events, so the interleaving can be reconstructed.
    """

    MODULES = (
        "diffusers.schedulers.scheduling_unclip",
        "diffusers.pipelines.deprecated.unclip.pipeline_unclip",
        "diffusers.pipelines.deprecated.unclip.pipeline_unclip_image_variation",
    )

    def __init__(self, pipeline: Any, stages: list[str]) -> None:
        self.pipeline = pipeline
        self.initial_stages = list(stages)  # stage of each prepare_latents draw, in order
        self.store = TensorStore()
        self.noise: list[dict[str, Any]] = []
        self.model_calls: list[dict[str, Any]] = []
        self.scheduler_steps: list[dict[str, Any]] = []
        self.values: dict[str, Any] = {}
        self._seq = 0
        self._stage_step: dict[str, int] = {}
        self._current_step: dict[str, Any] | None = None
        self._undo: list[Callable[[], None]] = []

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq - 1

    # -- installation -------------------------------------------------------------------------

    def __enter__(self) -> "PipelineRecorder":
        import importlib

        for name in self.MODULES:
            module = importlib.import_module(name)
            original = module.randn_tensor
            module.randn_tensor = self._wrap_randn(original, from_scheduler="scheduling" in name)
            self._undo.append(lambda m=module, o=original: setattr(m, "randn_tensor", o))
        p = self.pipeline
        labels = {
            "text_encoder": "text_encoder",
            "image_encoder": "image_encoder",
            "prior": "prior",
            "text_proj": "text_proj",
            "decoder": "decoder",
            "super_res_first": "upsamplers[0].first",
            "super_res_last": "upsamplers[0].last",
        }
        for attribute, label in labels.items():
            module = getattr(p, attribute, None)
            if module is not None:
                handle = module.register_forward_hook(self._hook(label), with_kwargs=True)
                self._undo.append(handle.remove)
        for attribute, stage in (("prior_scheduler", "prior"), ("decoder_scheduler", "decoder"),
                                 ("super_res_scheduler", "upsampler")):
            scheduler = getattr(p, attribute, None)
            if scheduler is not None:
                scheduler.step = self._wrap_step(scheduler, stage)
                self._undo.append(lambda s=scheduler: s.__dict__.pop("step", None))
        return self

    def __exit__(self, *exc: Any) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()

    # -- noise --------------------------------------------------------------------------------

    def _wrap_randn(self, original: Callable[..., torch.Tensor], from_scheduler: bool) -> Callable[..., torch.Tensor]:
        def randn_tensor(*args: Any, **kwargs: Any) -> torch.Tensor:
            tensor = original(*args, **kwargs)
            if from_scheduler:
                step = self._current_step
                if step is None:
                    raise RuntimeError("scheduler noise drawn outside a scheduler step")
                entry = {"stage": step["stage"], "kind": "step", "step": step["step"]}
            else:
                if not self.initial_stages:
                    raise RuntimeError("more initial latents drawn than expected")
                entry = {"stage": self.initial_stages.pop(0), "kind": "initial_latents", "step": None}
            entry = {"seq": self._next_seq(), "index": len(self.noise), **entry,
                     "shape": list(tensor.shape), "tensor": self.store.put(tensor)}
            self.noise.append(entry)
            if from_scheduler:
                self._current_step["noise"] = entry["tensor"]
            return tensor

        return randn_tensor

    # -- scheduler steps ----------------------------------------------------------------------

    def _wrap_step(self, scheduler: Any, stage: str) -> Callable[..., Any]:
        original = type(scheduler).step.__get__(scheduler)

        def step(model_output, timestep, sample, prev_timestep=None, generator=None, return_dict=True):
            index = self._stage_step.get(stage, 0)
            self._stage_step[stage] = index + 1
            record: dict[str, Any] = {"seq": self._next_seq(), "stage": stage, "step": index,
                                      "timestep": int(timestep),
                                      "prev_timestep": None if prev_timestep is None else int(prev_timestep),
                                      "model_output": self.store.put(model_output),
                                      "sample": self.store.put(sample), "noise": None}
            self._current_step = record
            try:
                out = original(model_output, timestep, sample, prev_timestep=prev_timestep, generator=generator,
                               return_dict=True)
            finally:
                self._current_step = None
            record["prev_sample"] = self.store.put(out.prev_sample)
            record["pred_original_sample"] = self.store.put(out.pred_original_sample)
            self.scheduler_steps.append(record)
            return out if return_dict else (out.prev_sample, out.pred_original_sample)

        return step

    # -- model calls --------------------------------------------------------------------------

    def _hook(self, label: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            store = self.store
            inputs: dict[str, Any]
            if label == "text_encoder":
                inputs = {"input_ids": store.put(args[0] if args else kwargs["input_ids"])}
                outputs = {"text_embeds": store.put(output.text_embeds),
                           "last_hidden_state": store.put(output.last_hidden_state)}
            elif label == "image_encoder":
                pixels = args[0] if args else kwargs["pixel_values"]
                inputs = {"pixel_values": store.put(pixels)}
                outputs = {"image_embeds": store.put(output.image_embeds)}
                self.values["pixel_values"] = inputs["pixel_values"]
            elif label == "prior":
                hidden = args[0] if args else kwargs["hidden_states"]
                cfg = kwargs["proj_embedding"].shape[0] == 2 * self.batch and hidden.shape[0] == 2 * self.batch
                inputs = {"hidden_states": store.halves(hidden, 0) if cfg else store.put(hidden),
                          "timestep": int(kwargs["timestep"]),
                          "proj_embedding": store.put(kwargs["proj_embedding"]),
                          "encoder_hidden_states": store.put(kwargs["encoder_hidden_states"]),
                          "attention_mask": store.put(kwargs["attention_mask"])}
                outputs = {"predicted_image_embedding": store.put(output.predicted_image_embedding)}
            elif label == "text_proj":
                image = kwargs["image_embeddings"]
                self.values["image_embeddings"] = store.put(image)
                if kwargs["do_classifier_free_guidance"]:
                    # The graph is exported without the CFG flag: record the input it receives,
                    # [learned CFG embedding x B ; image embeddings].
                    learned = module.learned_classifier_free_guidance_embeddings.unsqueeze(0).expand(image.shape[0], -1)
                    image_ref: Any = {"concat": [store.put(learned), store.put(image)], "axis": 0}
                else:
                    image_ref = store.put(image)
                inputs = {"image_embeddings": image_ref,
                          "prompt_embeds": store.put(kwargs["prompt_embeds"]),
                          "text_encoder_hidden_states": store.put(kwargs["text_encoder_hidden_states"])}
                outputs = {"encoder_hidden_states": store.put(output[0]),
                           "additive_clip_time_embeddings": store.put(output[1])}
            elif label == "decoder":
                sample = kwargs["sample"]
                cfg = sample.shape[0] == 2 * self.batch
                inputs = {"sample": store.halves(sample, 0) if cfg else store.put(sample),
                          "timestep": int(kwargs["timestep"]),
                          "encoder_hidden_states": store.put(kwargs["encoder_hidden_states"]),
                          "class_labels": store.put(kwargs["class_labels"]),
                          "attention_mask": store.put(kwargs["attention_mask"])}
                outputs = {"out_sample": store.put(output.sample)}
            else:  # upsamplers: [noisy latents ++ upsampled decoder image] along channels
                sample = kwargs["sample"]
                inputs = {"sample": store.halves(sample, 1), "timestep": int(kwargs["timestep"])}
                self.values.setdefault("image_upscaled", inputs["sample"]["concat"][1])
                outputs = {"out_sample": store.put(output.sample)}
            self.model_calls.append({"seq": self._next_seq(), "index": len(self.model_calls), "component": label,
                                     "inputs": inputs, "outputs": outputs})

        return hook

    batch = 1  # images in the call (prompts x num_images_per_prompt); set before running


def _timestep_lists(steps: list[dict[str, Any]]) -> dict[str, list[int]]:
    lists: dict[str, list[int]] = {}
    for step in steps:
        lists.setdefault(step["stage"], []).append(step["timestep"])
    return lists


def record_case(pipeline: Any, kind: str, call: dict[str, Any], seed: int,
                batch: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Run the pipeline once under a recorder; returns (case JSON, arrays by key)."""
    stages = ["prior", "decoder", "upsampler"] if kind == "text_to_image" else ["decoder", "upsampler"]
    generator = torch.Generator(device="cpu").manual_seed(seed)
    recorder = PipelineRecorder(pipeline, stages)
    recorder.batch = batch
    with recorder, torch.no_grad():
        image = pipeline(**call, generator=generator, output_type="np").images
    store = recorder.store
    steps = recorder.scheduler_steps
    calls = recorder.model_calls

    # Named pointers into the recording, for tests that need one stage's input or output.
    text_calls = [c for c in calls if c["component"] == "text_encoder"]
    if len(text_calls) != 2:
        raise RuntimeError(f"expected 2 text encoder calls (prompt, then \"\"), got {len(text_calls)}")
    prompts = call.get("prompt", [""] * batch)
    tokens = pipeline.tokenizer(prompts, padding="max_length", max_length=pipeline.tokenizer.model_max_length,
                                truncation=True, return_tensors="np")
    cond, uncond = text_calls
    values: dict[str, Any] = {
        "prompt_input_ids": store.put(tokens.input_ids),
        "prompt_attention_mask": store.put(tokens.attention_mask.astype(bool)),
        "prompt_text_embeds": cond["outputs"]["text_embeds"],
        "prompt_last_hidden_state": cond["outputs"]["last_hidden_state"],
        "uncond_text_embeds": uncond["outputs"]["text_embeds"],
        "uncond_last_hidden_state": uncond["outputs"]["last_hidden_state"],
    }
    if cond["inputs"]["input_ids"] != values["prompt_input_ids"]:
        raise RuntimeError("the pipeline tokenized the prompt differently from the recorder")
    if kind == "text_to_image":
        values["prior_latents"] = [s for s in steps if s["stage"] == "prior"][-1]["prev_sample"]
    values.update(recorder.values)  # pixel_values, image_embeddings, image_upscaled
    last_decoder = [s for s in steps if s["stage"] == "decoder"][-1]
    values["image_small"] = store.put(np.clip(store.arrays[last_decoder["prev_sample"]], -1.0, 1.0))
    values["image"] = store.put(image)

    settings = {key: value for key, value in call.items() if key != "image"}
    settings.update({"seed": seed, "batch": batch, "output_type": "np",
                     "generator": "torch.Generator('cpu').manual_seed(seed)"})
    case = {
        "pipeline": "UnCLIPPipeline" if kind == "text_to_image" else "UnCLIPImageVariationPipeline",
        "settings": settings,
        "timesteps": _timestep_lists(steps),
        "text_encoder_calls": {"cond": cond["index"], "uncond": uncond["index"]},
        "noise": recorder.noise,
        "model_calls": calls,
        "scheduler_steps": steps,
        "values": values,
    }
    return case, store.arrays


def replay_form(case: dict[str, Any], arrays: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A full recording reduced to its replay form: noise draws, values, settings and timesteps.

    The model calls and scheduler steps (and `text_encoder_calls`, which points into the model
    calls) are left out: a replay reproduces them by running the loops on the recorded draws.
    The kept tensors are stored anew, so the npz holds only them: the noise first, in draw order,
    then the values in their order. Noise records keep their `seq` from the full recording.
    """
    store = TensorStore()

    def keep(ref: Any) -> Any:
        if isinstance(ref, str):
            return store.put(arrays[ref])
        return {**ref, "concat": [keep(part) for part in ref["concat"]]}

    replay: dict[str, Any] = {}
    for key, value in case.items():
        if key == "noise":
            replay[key] = [{**entry, "tensor": keep(entry["tensor"])} for entry in value]
        elif key == "values":
            replay[key] = {name: keep(ref) for name, ref in value.items()}
        elif key not in ("text_encoder_calls", "model_calls", "scheduler_steps"):
            replay[key] = value
        if key == "kind":
            replay["trace"] = REPLAY
    return replay, store.arrays


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed, but byte-for-byte reproducible (fixed zip timestamps, sorted keys)."""
    import io
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key in sorted(arrays):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue())


def variation_input_image() -> Any:
    """The variation fixture's input: seeded uniform noise, 48x40 RGB (numpy seed 0)."""
    from PIL import Image

    width, height = VARIATION_IMAGE_SIZE
    pixels = np.random.default_rng(0).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def record_fixtures(folder: Path, pipeline_dir: Path,
                    variation_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run diffusers' pipelines on the fixture cases; write `<case>.json` + `<case>.npz` per case.

    Returns the index entries of the full-trace cases and of the replay cases (index.json's
    "cases" and "replay_cases").
    """
    from PIL import Image

    from .export import load_image_variation_pipeline, load_text_to_image_pipeline

    folder.mkdir(parents=True, exist_ok=True)
    text_to_image = load_text_to_image_pipeline(pipeline_dir)
    variation = load_image_variation_pipeline(variation_dir)
    for pipe in (text_to_image, variation):
        pipe.set_progress_bar_config(disable=True)

    cases: list[tuple[str, str, Any, dict[str, Any], int, int, str]] = []
    for name, prompts, seed, steps, form in TEXT_TO_IMAGE_CASES:
        call = {"prompt": list(prompts), "num_images_per_prompt": 1, "prior_num_inference_steps": steps[0],
                "decoder_num_inference_steps": steps[1], "super_res_num_inference_steps": steps[2],
                "prior_guidance_scale": 4.0, "decoder_guidance_scale": 8.0}
        cases.append((name, "text_to_image", text_to_image, call, seed, len(prompts), form))
    variation_input_image().save(folder / VARIATION_IMAGE)
    image = Image.open(folder / VARIATION_IMAGE).convert("RGB")
    for name, seed, steps, form in VARIATION_CASES:
        call = {"image": image, "num_images_per_prompt": 1, "decoder_num_inference_steps": steps[0],
                "super_res_num_inference_steps": steps[1], "decoder_guidance_scale": 8.0}
        cases.append((name, "image_variation", variation, call, seed, 1, form))

    full: list[dict[str, Any]] = []
    replay: list[dict[str, Any]] = []
    for name, kind, pipe, call, seed, batch, form in cases:
        case, arrays = record_case(pipe, kind, call, seed, batch)
        if kind == "image_variation":
            case["settings"]["image"] = VARIATION_IMAGE
        case = {"format": FIXTURES_FORMAT, "case": name, "kind": kind, "arrays": f"{name}.npz", **case}
        entry = {"case": name, "kind": kind, "json": f"{name}.json", "arrays": f"{name}.npz",
                 "seed": seed, "steps": [s for k, s in call.items() if k.endswith("_num_inference_steps")]}
        recorded = (f"{len(case['model_calls'])} model calls, {len(case['scheduler_steps'])} scheduler steps, "
                    f"{len(case['noise'])} noise draws")
        if form == REPLAY:
            case, arrays = replay_form(case, arrays)
            replay.append({**entry, "trace": REPLAY})
            recorded += f"; kept in replay form: {len(case['noise'])} noise draws, {len(case['values'])} values"
        else:
            full.append(entry)
        (folder / f"{name}.json").write_text(json.dumps(case, indent=1) + "\n")
        save_npz(folder / f"{name}.npz", arrays)
        print(f"recorded {name}: {recorded}, {len(arrays)} arrays")
    return full, replay


# ---------------------------------------------------------------------------------------------
# Documentation written next to the model and the fixtures
# ---------------------------------------------------------------------------------------------

MODEL_README = """\
# karlo-tiny

diffusers' tiny unCLIP test model — the randomly initialised "dummy components" of diffusers'
unCLIP tests — in this project's model repository format (docs/model-repository.md). Its images
are noise; it exists so that the services, the reference sampler and CI can run the whole unCLIP
pipeline in seconds and compare with diffusers step by step (fixtures/README.md).

Written by `python -m unclip_tools karlo-tiny --out models/karlo-tiny` (needs
tools/requirements.txt); do not edit by hand, every file is hashed in manifest.json. Check it with
`python -m unclip_tools verify models/karlo-tiny`.

## Components

Built exactly as `tests/pipelines/unclip/test_unclip.py` and `test_unclip_image_variation.py`
build them (torch.manual_seed(0) before each model, seed 1 for the last upsampler):

| graph | model | sizes |
|---|---|---|
| text_encoder | CLIPTextModelWithProjection, 5 layers, width 32, 4 heads, vocab 1000 | D = 32, L = 77 |
| image_encoder | CLIPVisionModelWithProjection, 5 layers, width 32, 32 px, patch 1 | S = 32 |
| prior | PriorTransformer, 1 layer, 2 heads x 12 | 77 + 4 tokens |
| text_proj | UnCLIPTextProjModel, 4 extra tokens | C = 100, T = 128, N = 81 |
| decoder | UNet2DConditionModel, channels (32, 64), simple cross-attention | 32 px, 6 output channels |
| upsampler_0_first / _last | UNet2DModel, channels (32, 64), attention in the mid block | 32 -> 64 px |

Schedulers are Karlo's (prior: fixed_small_log, sample, clip 5.0; decoder: learned_range,
epsilon; upsampler: fixed_small_log, epsilon); defaults are diffusers' (25/25/7 steps, guidance
4.0/8.0). Freshly initialised parameters that are zeros: the prior's clip_mean and clip_std (so
every text-to-image image embedding is exactly 0) and the learned CFG embedding of text_proj.

## Tokenizer (a substitute)

diffusers' tests load `hf-internal-testing/tiny-random-clip` from the Hugging Face hub, which
cannot be reached here. `karlo_tiny.build_tokenizer` builds a stand-in locally: a CLIP
byte-level BPE tokenizer (transformers' CLIPTokenizer: NFC, whitespace folding, lower-casing,
CLIP's split regex, byte-level alphabet, `</w>` end-of-word suffix) with **no merges**, so every
byte of a word is one token. Vocabulary (514 tokens, all below the text encoder's 1000):

| ids | tokens |
|---|---|
| 0-255 | the 256 byte symbols in CLIP's order ("!" = 0, so pad id = 0 as in Karlo) |
| 256-511 | the same symbols with `</w>` (last byte of a word) |
| 512 | `<|startoftext|>` (BOS) |
| 513 | `<|endoftext|>` (EOS, also the unknown token) |

Padding uses "!" (id 0), model_max_length is 77. The tiny text config has eos_token_id = 2, so
CLIP pools at argmax(ids); EOS is the largest id, so that is the EOS position, as with real CLIP.
"horse" encodes as [512, 71, 78, 81, 82, 324, 513, 0, ...]. With this tokenizer diffusers' own
test (prompt "horse", seed 0, 2/2/2 steps) gives the image slice
[0.9997, 0.9977, 0.0026, 0.9997, 0.998, 0.9965, 0.003, 0.9988, 0.0024], within the test's 1e-2 of
the hub tokenizer's expected values.
"""

FIXTURES_README = """\
# karlo-tiny parity fixtures

Recordings of diffusers' own unCLIP pipelines running the karlo-tiny weights of this repository
(diffusers 0.42.1, torch 2.15, CPU, float32), in two forms: full traces (every noise draw, every
model call and every scheduler step, in order) and replays (the noise draws and the stage
results only). Written by `python -m unclip_tools karlo-tiny --out models/karlo-tiny`
(tools/unclip_tools/karlo_tiny.py); replayed through the ONNX graphs by
tools/tests/test_karlo_tiny_fixtures.py (full traces; also a worked example of reading them),
tools/tests/test_sampler.py and the services' tests (both forms). Files are hashed in
../manifest.json: regenerate, do not edit.

## Files

- `index.json`: `{"format": "unclip-fixtures/1", "cases": [{"case", "kind", "json", "arrays", "seed", "steps"}],
  "replay_cases": [{..., "trace": "replay"}]}`: `cases` lists the full traces, `replay_cases`
  the replays (same fields plus `"trace": "replay"`)
- `<case>.json`: what happened; tensors appear as references (below)
- `<case>.npz`: the tensors, a zip of `t0000.npy`, `t0001.npy`, ... (numpy's `np.load`, Rust's
  `ndarray_npy::NpzReader`; key `t0000` is member `t0000.npy`)
- `variation_input.png`: the variation cases' input, 48x40 RGB noise (numpy `default_rng(0)`);
  not square and not 32 px, so the image processor's resize and centre crop both act

## Cases

{cases}

The 2/2/2 cases cover both prompts and both seeds, `t2i_batch2_*` runs both prompts in one call
(B = 2), and the default-steps (25/25/7) cases cover both prompts and both seeds too.

## Two forms: full traces and replays

The folder has a budget of 10 MB (`du -b`; now {total}). A **full trace** of a default-steps
case takes {full_size} even with every repeated tensor stored once: per step it holds the
decoder's 6-channel output for the CFG pair, the guided output, the noise, `prev_sample` and
`pred_original_sample`, float32 values that barely compress. So one default-steps case is a
full trace (`{full_case}`) and the other three are **replays**, of {replay_size} each
(mostly their noise: 25 decoder draws of 12 KB, 7 upsampler draws of 48 KB); the batch-2 case
is a replay too ({batch_size}; 1.2 MB as a full trace), to stay within the budget.

A replay case (`"trace": "replay"` in its JSON and its index entry) has the keys of a full case
except `model_calls`, `scheduler_steps` and `text_encoder_calls` (which points into the model
calls): `format`, `case`, `kind`, `trace`, `arrays`, `pipeline`, `settings`, `timesteps`, `noise`
(every draw, in order, same records as below; `seq` keeps its number from the full recording,
whose gaps were the model calls and scheduler steps) and `values` (the same names as below).
Its npz holds only those tensors: the noise draws first, then the values. It is checked by
running the whole loops on the recorded draws (free running, "Replaying" below) and comparing
the stage results with `values`.

## Tensors and references

Every distinct tensor is stored once, so one key can be referenced many times: the
`encoder_hidden_states`, `class_labels` and masks of all decoder calls are one key each, and a
step's `sample` is the key of the previous step's `prev_sample`. Floats are float32, ids int64,
masks bool. A reference is one of:

- a string: a key of the npz;
- `{"concat": [k1, k2], "axis": a}`: `np.concatenate([t[k1], t[k2]], axis=a)`. Used for the
  CFG-doubled latents of the prior and decoder (`[x; x]` on axis 0), the upsampler input
  (`[noisy latents, upsampled image]` on axis 1) and the text projection's `image_embeddings`
  (`[learned CFG embedding repeated B times; image embeddings]` on axis 0);
- an integer, only for a model call's `timestep`: the pipeline passes one 0-d tensor, the graphs
  take int64 `[batch]`, so feed `np.full(batch, t, np.int64)`.

## `<case>.json`

| key | content |
|---|---|
| `format`, `case`, `kind`, `arrays` | "unclip-fixtures/1"; the case name; "text_to_image" or "image_variation"; its npz |
| `trace` | replay cases only: "replay" (full traces have no `trace` key) |
| `pipeline` | the diffusers class that ran (UnCLIPPipeline, UnCLIPImageVariationPipeline) |
| `settings` | the call: prompt list, steps per stage, guidance scales, num_images_per_prompt, `seed` (`torch.Generator('cpu').manual_seed(seed)`), `batch` B = images in the call, output_type "np"; variation: `image` = the PNG |
| `timesteps` | per stage ("prior", "decoder", "upsampler"): the timesteps in the order run |
| `text_encoder_calls` | full traces only: indices into `model_calls` of the prompt's ("cond") and of ""'s ("uncond") text-encoder call |
| `noise` | every `randn_tensor` draw, in draw order |
| `model_calls` | full traces only: every network call, in call order |
| `scheduler_steps` | full traces only: every `UnCLIPScheduler.step`, in order |
| `values` | named intermediate tensors (below) |

Every record of `noise`, `model_calls` and `scheduler_steps` has `seq`, its position in one
event stream shared by the three lists: sort on it to see how they interleave.

### `noise`

`{"seq", "index", "stage", "kind", "step", "shape", "tensor"}`; `stage` is "prior", "decoder" or
"upsampler"; `kind` is "initial_latents" (`step` null) or "step" (`step` = index of the scheduler
step within its stage that drew it). Draw order (all from the one generator): prior initial
latents `[B,32]`; one `[B,32]` per prior step except the last (t = 0); decoder initial latents
`[B,3,32,32]`; one per decoder step except the last; upsampler initial latents `[B,3,64,64]`;
one per upsampler step except the last. The variation pipeline has no prior draws. A decoder
step's noise has the latents' 3 channels, not the model output's 6.

### `model_calls`

`{"seq", "index", "component", "inputs": {name: ref}, "outputs": {name: ref}}`. `component` is
the graph's label in the manifest (`text_encoder`, `image_encoder`, `prior`, `text_proj`,
`decoder`, `upsamplers[0].first`, `upsamplers[0].last`); input and output names are the graph's
(docs/model-repository.md). Order: text encoder on the prompt(s), text encoder on "" (no
attention mask, ids `[B,77]`), [variation: image encoder], prior once per step, text projection
once, decoder once per step, upsampler once per step (`first` on every step but the last,
`last` on the last).

- Classifier-free guidance batches are `2B` rows: rows `0..B-1` are the **unconditional** half
  ("" text; for the decoder also the learned CFG image embedding), rows `B..2B-1` the conditional
  half. The prior's `proj_embedding`, `encoder_hidden_states` and `attention_mask` are
  `[uncond; cond]` CLIP outputs and tokenizer masks.
- `text_proj`: the pipeline calls it with `do_classifier_free_guidance=True` and `[B,32]` image
  embeddings; text_proj.onnx has no such flag, so the recorded input is what the graph must be
  given: `[decoder_cfg_embedding x B; image embeddings]` (`decoder_cfg_embedding` is in
  ../tensors.safetensors).
- The decoder's `attention_mask` is the prior's mask with 4 `true` columns prepended (the 4
  extra context tokens of the text projection): `[2B,81]`.

### `scheduler_steps`

`{"seq", "stage", "step", "timestep", "prev_timestep", "model_output", "sample", "noise",
"prev_sample", "pred_original_sample"}`. `prev_timestep` is the next timestep of the stage, null
on the last step (the scheduler then uses t - 1 = -1, i.e. alpha_prod_prev = 1). `noise` is the
draw used by this step, null on the last step (t = 0 draws nothing). `sample` is `[B,...]` (not
doubled). `model_output` is what the pipeline passes to `step`:

- prior: the guided x0 prediction `u + 4.0 * (c - u)` over the halves of the prior output;
- decoder: `[u_eps + 8.0 * (c_eps - u_eps), c_var]`, `[B,6,32,32]`: channels 0-2 guided epsilon,
  channels 3-5 the conditional half's variance values (learned range);
- upsampler: the model output unchanged (no guidance).

Step i's `prev_sample` is step i+1's `sample`; the first step's `sample` is the stage's initial
latents.

### `values`

| name | shape | what |
|---|---|---|
| `prompt_input_ids` | int64 `[B,77]` | tokenizer ids of the prompts (pad "!" = 0, truncated at 77) |
| `prompt_attention_mask` | bool `[B,77]` | true for BOS..EOS |
| `prompt_text_embeds`, `prompt_last_hidden_state` | `[B,32]`, `[B,77,32]` | CLIP encodings of the prompts |
| `uncond_text_embeds`, `uncond_last_hidden_state` | `[B,32]`, `[B,77,32]` | CLIP encodings of "" |
| `pixel_values` | `[B,3,32,32]` | variation only: the image processor's output for the PNG |
| `prior_latents` | `[B,32]` | text-to-image only: the prior loop's result, before `* clip_std + clip_mean` |
| `image_embeddings` | `[B,32]` | the decoder's image embedding (text-to-image: un-normalised prior result, all zeros for this model; variation: image encoder output) |
| `image_small` | `[B,3,32,32]` | decoder result clamped to [-1, 1] |
| `image_upscaled` | `[B,3,64,64]` | `image_small` upsampled: bicubic, a = -0.5, antialias, half-pixel (PIL-style), not clamped |
| `image` | `[B,64,64,3]` | the pipeline's output: `clamp(x / 2 + 0.5, 0, 1)` of the last upsampler `prev_sample`, NHWC |

For variation cases the "prompt" is "" for every image, so the prompt and uncond values are equal.

## Replaying

1. **Graphs**: resolve each model call's inputs, broadcast `timestep`, run the graph of
   `component`, compare every output. The Python test requires 1e-4 (seen: about 3e-6).
2. **Scheduler steps** (teacher forcing): feed `model_output`, `sample`, `timestep`,
   `prev_timestep` and `noise` to the step function; compare `prev_sample` and
   `pred_original_sample` (UnCLIPScheduler works in float32; expect 1e-6-level differences).
3. **Whole loop**: take the initial latents and the step noise from `noise` in order instead of
   a random generator. Every stage then agrees closely, but the final image may drift (up to
   ~0.06 seen): at t = 999 epsilon errors are multiplied by 1/sqrt(alpha_prod_999), about
   2e4, before x0 is clipped. Use per-step comparisons for tight checks.
4. **Replay cases**: the whole loop of 3. on the recorded draws, its stage results compared
   with `values`. A step's epsilon gain, c_x0 * sqrt(1 - alpha_prod_t) / sqrt(alpha_prod_t), is
   largest on a stage's first step: about 1.3e3 for the decoder at 25 steps (999 -> 957), 5.2e3
   for the upsampler at 7 steps (999 -> 832), 2e4 at 2 steps (999 -> 0). Seen with the ONNX
   graphs (Python reference sampler and the Rust services): `prior_latents` within 3e-6;
   at 25/25/7 `image_small` and `image_upscaled` within about 5e-5, `image` within 4e-5 except
   in `t2i_red-cube_seed1_*` (3e-3, with 0.3% of its values more than 1e-4 off); at 2/2/2
   within 6e-6.
   The tests hold a stage to 1e-4 where its largest gain is below 2000, else to 1e-4 + gain x
   3e-6 (the graphs' agreement with torch) with at most 1% of the values more than 1e-4 off.
"""


def _case_size(folder: Path, entry: dict[str, Any]) -> int:
    """Bytes of a case's JSON and npz (apparent size, as `du -b` counts it)."""
    return (folder / entry["json"]).stat().st_size + (folder / entry["arrays"]).stat().st_size


def _cases_table(index: list[dict[str, Any]], folder: Path) -> str:
    rows = ["| case | form | pipeline | prompts (B) | seed | steps | json + npz |", "|---|---|---|---|---|---|---|"]
    for entry in index:
        case = json.loads((folder / entry["json"]).read_text())
        settings = case["settings"]
        prompts = ", ".join(json.dumps(p) for p in settings.get("prompt", [])) or f"image {settings.get('image')}"
        rows.append(f"| `{entry['case']}` | {entry.get('trace', FULL)} | {case['pipeline']} | {prompts} "
                    f"({settings['batch']}) | {entry['seed']} | {'/'.join(map(str, entry['steps']))} | "
                    f"{_case_size(folder, entry) / 1e6:.2f} MB |")
    return "\n".join(rows)


def fixtures_readme(full: list[dict[str, Any]], replay: list[dict[str, Any]], folder: Path) -> str:
    """fixtures/README.md, with the cases table and the measured sizes filled in."""
    megabytes = lambda n: f"{n / 1e6:.2f} MB"  # noqa: E731
    default_steps = [25, 25, 7]
    (full_default,) = [e for e in full if e["steps"] == default_steps]
    replay_default = [_case_size(folder, e) for e in replay if e["steps"] == default_steps]
    (batch,) = [e for e in replay if e["case"].startswith("t2i_batch2_")]
    smallest, largest = megabytes(min(replay_default)), megabytes(max(replay_default))
    replay_size = smallest if smallest == largest else f"{smallest} to {largest}"
    others = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name != "README.md")
    text = ""
    for _ in range(3):  # the total includes this README itself
        text = (FIXTURES_README.replace("{cases}", _cases_table(full + replay, folder))
                .replace("{total}", megabytes(others + len(text.encode())))
                .replace("{full_size}", megabytes(_case_size(folder, full_default)))
                .replace("{full_case}", full_default["case"])
                .replace("{replay_size}", replay_size)
                .replace("{batch_size}", megabytes(_case_size(folder, batch))))
    return text


# ---------------------------------------------------------------------------------------------
# The `karlo-tiny` command
# ---------------------------------------------------------------------------------------------

FIXTURES_BUDGET = 10 * 1000 * 1000  # bytes, on disk (du)


def _disk_usage(folder: Path) -> int:
    """Bytes on disk as du counts them (allocated blocks), for the fixtures budget."""
    return sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())


def build_karlo_tiny(out: Path) -> dict[str, Any]:
    """Build, save, export and record; `out` is replaced only once everything has succeeded."""
    from .export import export_repository, quiet_libraries
    from .repository import MANIFEST, load_manifest, write_manifest

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise UserError(f"--out {out} is not empty and holds no {MANIFEST}; refusing to replace it")
    staging = out.with_name(out.name + ".new")
    if staging.exists():
        shutil.rmtree(staging)
    torch.set_num_threads(1)
    quiet_libraries()
    with tempfile.TemporaryDirectory(prefix="karlo-tiny-") as tmp:
        pipeline_dir, variation_dir = Path(tmp) / "pipeline", Path(tmp) / "variation-pipeline"
        build_text_to_image_pipeline().save_pretrained(pipeline_dir)
        build_image_variation_pipeline().save_pretrained(variation_dir)
        print(f"saved the tiny pipelines (save_pretrained) under {tmp}")
        export_repository(pipeline_dir, staging, "karlo-tiny", variation_dir=variation_dir)
        fixtures = staging / "fixtures"
        full, replay = record_fixtures(fixtures, pipeline_dir, variation_dir)
    index = {"format": FIXTURES_FORMAT, "cases": full, "replay_cases": replay}
    (fixtures / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    (fixtures / "README.md").write_text(fixtures_readme(full, replay, fixtures))
    (staging / "README.md").write_text(MODEL_README)
    # Every file is hashed: git must never rewrite line endings in this folder.
    (staging / ".gitattributes").write_text("# files are hashed in manifest.json: keep bytes as they are\n* -text\n")
    used = _disk_usage(fixtures)
    if used > FIXTURES_BUDGET:
        raise UserError(f"fixtures take {used / 1e6:.1f} MB on disk, over the {FIXTURES_BUDGET / 1e6:.0f} MB budget")
    manifest = json.loads((staging / MANIFEST).read_text())
    written = write_manifest(staging, manifest, check_graphs=False)
    load_manifest(staging, check_graphs=True)
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    print(f"fixtures: {len(full)} full traces, {len(replay)} replays, {used / 1e6:.1f} MB on disk")
    print(f"wrote {out}: karlo-tiny {written['version']}, {len(written['files'])} files")
    return written


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """Arguments of `python -m unclip_tools karlo-tiny`."""
    parser.add_argument("--out", type=Path, required=True,
                        help="repository folder to (re)create, e.g. models/karlo-tiny; an existing repository there is replaced")


def run(args: argparse.Namespace, name: str) -> int:
    """Build the tiny model repository with its fixtures."""
    build_karlo_tiny(args.out)
    return 0
