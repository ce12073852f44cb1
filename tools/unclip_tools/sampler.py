"""The reference sampler: unCLIP text-to-image and image variations over a model repository.

This is the project's Python oracle for what the Rust services must compute, and the baseline
they are benchmarked against. It runs the ONNX graphs of a model repository
(docs/model-repository.md) with onnxruntime on the CPU and implements, in numpy, exactly the
sampling loop of diffusers' `UnCLIPPipeline` and `UnCLIPImageVariationPipeline` (reference §1,
§3, §7):

- text: the prompt through the tokenizer and the CLIP text encoder; the unconditional branch is
  the CLIP encoding of "" stored in `tensors.safetensors`; the CFG batch is [uncond; cond];
- prior: UnCLIPScheduler loop over the normalised image embedding, CFG on the whole x0
  prediction, then `x * clip_std + clip_mean`;
- decoder: text projection with the learned CFG image embedding prepended for the uncond half,
  the text mask left-padded with True for the extra context tokens, CFG on the epsilon channels
  only (the variance channels come from the cond half), the result clamped to [-1, 1];
- upsamplers: PIL-style bicubic upsampling of the stage input (`resize_bicubic`), then an
  UnCLIPScheduler loop without guidance over [latents ++ upscaled], the `first` graph on every
  step but the last and the `last` graph on the final step;
- output: round(clamp(x * 0.5 + 0.5, 0, 1) * 255) as 8-bit RGB.

Guidance is on for both stages when either scale is above 1, as in diffusers. Every graph
`timestep` input is int64 `[batch]`.

Noise comes from a `NoiseSource`, called once per draw in diffusers' order (reference §11):
prior latents, one draw per prior step except the last, decoder latents, decoder step draws, then
per upsampler stage its latents and step draws. The default, `SeededNoise`, gives image k its own
`numpy.random.default_rng(seed + k)`, so image k of a batch equals the same image generated
alone; `ReplayNoise` replays recorded draws (the parity fixtures).

`python -m unclip_tools generate ...` and `python -m unclip_tools vary ...` are the command
lines (`add_arguments` / `run`).
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from . import UserError
from .repository import load_manifest
from .scheduler import BACKENDS, Scheduler, diffusers_available, make_scheduler, resolve_backend

# A trace callback receives (event, values); see `UnclipSampler` for the events.
Trace = Callable[[str, dict[str, Any]], None]

_NP_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "bool": np.bool_}


# ---------------------------------------------------------------------------------------------
# Noise
# ---------------------------------------------------------------------------------------------


class NoiseSource(Protocol):
    """Supplies every Gaussian draw of a sampling run, in diffusers' order.

    `name` says which draw it is: "prior_latents", "prior_noise_{i}", "decoder_latents",
    "decoder_noise_{i}", "upsampler{s}_latents", "upsampler{s}_noise_{i}" (i is the step index,
    s the upsampler stage). `shape` is the full batch shape; the result must be float32 of it.
    """

    def __call__(self, name: str, shape: tuple[int, ...]) -> np.ndarray: ...


class SeededNoise:
    """Image k draws from its own `numpy.random.default_rng(seed + k)`.

    Each draw of shape [B, ...] stacks one standard-normal draw of shape [...] per image, so the
    images of a batch do not share a stream and image k alone reproduces image k of a batch.
    """

    def __init__(self, seed: int, num_images: int) -> None:
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.seed = seed
        self._rngs = [np.random.default_rng(seed + k) for k in range(num_images)]

    def __call__(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if shape[0] != len(self._rngs):
            raise ValueError(f"{name}: batch {shape[0]} but noise was seeded for {len(self._rngs)} images")
        return np.stack([rng.standard_normal(shape[1:], dtype=np.float32) for rng in self._rngs])


class ReplayNoise:
    """Replays recorded draws: either a sequence consumed in order, or a mapping by draw name.

    `names` lists the draws requested so far; `remaining` counts sequence entries not yet used
    (a complete replay ends with 0).
    """

    def __init__(self, draws: Sequence[np.ndarray] | Mapping[str, np.ndarray]) -> None:
        self._by_name = dict(draws) if isinstance(draws, Mapping) else None
        self._queue = None if isinstance(draws, Mapping) else list(draws)
        self.names: list[str] = []

    @property
    def remaining(self) -> int:
        return 0 if self._queue is None else len(self._queue)

    def __call__(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        self.names.append(name)
        if self._by_name is not None:
            if name not in self._by_name:
                raise ValueError(f"no recorded draw named {name}")
            value = self._by_name[name]
        else:
            assert self._queue is not None
            if not self._queue:
                raise ValueError(f"{name}: the recorded draws are used up")
            value = self._queue.pop(0)
        value = np.asarray(value, dtype=np.float32)
        if tuple(value.shape) != tuple(shape):
            raise ValueError(f"{name}: recorded draw has shape {tuple(value.shape)}, expected {tuple(shape)}")
        return value


# ---------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------


def best_of_k(candidates: Sequence[np.ndarray], text_embeds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the candidate embedding with the highest dot product with that row's text
    embedding (ties keep the earlier candidate); returns (chosen [B, D], candidate index [B])."""
    scores = np.stack([np.sum(c * text_embeds, axis=1) for c in candidates])
    picks = np.argmax(scores, axis=0)
    chosen = np.stack([candidates[p][row] for row, p in enumerate(picks)])
    return chosen, picks


@dataclass
class TextEncoding:
    """CLIP text encodings of a batch of prompts, as the prior and the text projection take them."""

    text_embeds: np.ndarray  # [B, D] float32: the projected pooled EOS token
    last_hidden_state: np.ndarray  # [B, L, D] float32
    attention_mask: np.ndarray  # [B, L] bool: true for BOS, tokens, EOS

    @property
    def batch(self) -> int:
        return int(self.text_embeds.shape[0])

    def __getitem__(self, index: int) -> np.ndarray:
        """Tuple-style access, (text_embeds, last_hidden_state, attention_mask)[index]."""
        return (self.text_embeds, self.last_hidden_state, self.attention_mask)[index]

    def repeat_interleave(self, n: int) -> "TextEncoding":
        """Each prompt n times in a row (diffusers' num_images_per_prompt)."""
        return TextEncoding(
            np.repeat(self.text_embeds, n, axis=0),
            np.repeat(self.last_hidden_state, n, axis=0),
            np.repeat(self.attention_mask, n, axis=0),
        )

    @staticmethod
    def concat(parts: Iterable["TextEncoding"]) -> "TextEncoding":
        parts = list(parts)
        return TextEncoding(
            np.concatenate([p.text_embeds for p in parts]),
            np.concatenate([p.last_hidden_state for p in parts]),
            np.concatenate([p.attention_mask for p in parts]),
        )


def guide(uncond: np.ndarray, cond: np.ndarray, scale: float) -> np.ndarray:
    """Classifier-free guidance: uncond + s * (cond - uncond), in float32 as torch computes it."""
    return uncond + np.float32(scale) * (cond - uncond)


def resize_bicubic(images: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize [B, C, H, W] float32 images with PIL's BICUBIC, one channel at a time.

    PIL's bicubic is Keys' cubic with a = -0.5, half-pixel centres, and the taps that fall
    outside the image dropped with the weights renormalised; it is what torch's
    `F.interpolate(mode="bicubic", align_corners=False, antialias=True)` computes (reference
    §2.5). Working on float32 "F" images keeps it exact; the result is not clamped.
    """
    height, width = (size, size) if isinstance(size, int) else size
    images = np.asarray(images, dtype=np.float32)
    batch, channels = images.shape[:2]
    out = np.empty((batch, channels, height, width), dtype=np.float32)
    for b in range(batch):
        for c in range(channels):
            plane = Image.fromarray(np.ascontiguousarray(images[b, c]))
            out[b, c] = np.asarray(plane.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    return out


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] -> [B, H, W, 3] uint8, exactly as diffusers' pipeline + numpy_to_pil."""
    x = np.asarray(images, dtype=np.float32) * np.float32(0.5) + np.float32(0.5)
    x = np.clip(x, np.float32(0.0), np.float32(1.0)).transpose(0, 2, 3, 1)
    return (x * np.float32(255)).round().astype(np.uint8)


def to_pil(images: np.ndarray) -> list[Image.Image]:
    """[B, 3, H, W] in [-1, 1] -> RGB PIL images."""
    return [Image.fromarray(pixels) for pixels in to_uint8(images)]


def clip_preprocess(image: Image.Image, config: Mapping[str, Any]) -> np.ndarray:
    """CLIP image preprocessing as transformers' `CLIPImageProcessor` (PIL backend) does it.

    RGB (alpha composited over white), shortest edge resized to `size` with PIL bicubic on the
    8-bit image (the long edge becomes int(size * long / short)), center crop (top/left rounded
    down), x * rescale in float64 stored as float32, then (x - mean) / std in float32.
    Returns [3, size, size] float32.
    """
    size = int(config["size"])
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba).convert("RGB")
    else:
        image = image.convert("RGB")
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    new_height, new_width = (new_long, size) if width <= height else (size, new_long)
    image = image.resize((new_width, new_height), Image.Resampling.BICUBIC)
    pixels = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
    top, left = (new_height - size) // 2, (new_width - size) // 2
    pixels = pixels[:, top : top + size, left : left + size]
    x = (pixels.astype(np.float64) * float(config["rescale"])).astype(np.float32)
    mean = np.asarray(config["mean"], dtype=np.float32)[:, None, None]
    std = np.asarray(config["std"], dtype=np.float32)[:, None, None]
    return ((x - mean) / std).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# ONNX graphs
# ---------------------------------------------------------------------------------------------


class OnnxGraph:
    """One graph of the repository: casts inputs to the manifest's dtypes, returns float32 outputs."""

    def __init__(self, path: Path, spec: Mapping[str, Any], threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.file = spec["file"]
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_dtypes = {t["name"]: _NP_DTYPES[t["dtype"]] for t in spec["inputs"]}
        self.output_names = [t["name"] for t in spec["outputs"]]

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        feed = {name: np.ascontiguousarray(inputs[name], dtype=dtype) for name, dtype in self.input_dtypes.items()}
        outputs = self.session.run(self.output_names, feed)
        return {
            name: (value.astype(np.float32) if np.issubdtype(value.dtype, np.floating) else value)
            for name, value in zip(self.output_names, outputs)
        }


def _timestep(t: int, batch: int) -> np.ndarray:
    """The int64 [batch] timestep input of every graph."""
    return np.full((batch,), int(t), dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# The sampler
# ---------------------------------------------------------------------------------------------


def _noise(noise_source: NoiseSource | None, seed: int, count: int) -> NoiseSource:
    """The caller's noise source, else per-image seeded generators (seed must be non-negative)."""
    if noise_source is not None:
        return noise_source
    if seed < 0:
        raise UserError(f"seed must be non-negative, got {seed}")
    return SeededNoise(seed, count)


class UnclipSampler:
    """unCLIP over a model repository: text-to-image and image variations.

    `scheduler_backend` picks who computes the scheduler steps: "numpy" (this package's port),
    "diffusers" (diffusers' UnCLIPScheduler fed our noise) or "auto" (diffusers when it can be
    imported). `threads` is onnxruntime's intra-op thread count. Graphs are opened on first use.

    The per-stage methods (`encode_text`, `sample_prior`, `decode`, `upsample`) and the one-call
    model wrappers (`prior_output`, `decoder_output`, `upsampler_output`) are public so that
    tests can teacher-force single steps. When a `trace` callback is given, the loops report:
    "prior_step", "decoder_step", "upsampler_step" (keys: stage, i, t, prev_t, sample,
    model_input, model_output, guided, noise, prev_sample, pred_original_sample),
    "text_proj" (image_embeddings, encoder_hidden_states, additive_clip_time_embeddings,
    attention_mask), "image_embeds", "image_small", "upscaled" (stage, image) and "image".
    `timings` holds the seconds per stage of the last call.
    """

    def __init__(
        self,
        repo_folder: str | Path,
        scheduler_backend: str = "auto",
        threads: int = 1,
        check_graphs: bool = True,
    ) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        folder = Path(repo_folder)
        if not folder.is_dir():
            raise UserError(f"model folder {folder} does not exist")
        if threads < 1:
            raise UserError(f"threads must be at least 1, got {threads}")
        if scheduler_backend not in BACKENDS:
            raise UserError(f"scheduler must be one of {', '.join(BACKENDS)}, got {scheduler_backend!r}")
        if scheduler_backend == "diffusers" and not diffusers_available():
            raise UserError("the diffusers scheduler backend needs torch and diffusers (tools/requirements.txt)")
        self.folder = folder
        self.manifest: dict[str, Any] = load_manifest(folder, check_graphs=check_graphs)
        self.threads = threads
        self.scheduler_backend = resolve_backend(scheduler_backend)
        self.tokenizer = Tokenizer.from_file(str(folder / self.manifest["text"]["tokenizer"]))
        self.tensors: dict[str, np.ndarray] = load_file(str(folder / self.manifest["tensors"]["file"]))
        self.schedulers: dict[str, Scheduler] = {
            stage: make_scheduler(self.manifest["schedulers"][stage], self.scheduler_backend)
            for stage in ("prior", "decoder", "upsampler")
        }
        components = self.manifest["components"]
        self.embedding_dim: int = int(self.manifest["embedding_dim"])
        self.context_length: int = int(self.manifest["text"]["context_length"])
        decoder_in = {t["name"]: t["shape"] for t in components["decoder"]["inputs"]}
        self.decoder_resolution: int = int(decoder_in["sample"][2])
        self.decoder_context: int = int(decoder_in["attention_mask"][1])
        self.upsampler_sizes: list[int] = [int(stage["output_size"]) for stage in components["upsamplers"]]
        self.defaults: dict[str, Any] = dict(self.manifest["defaults"])
        self.timings: dict[str, float] = {}
        self._graphs: dict[str, OnnxGraph] = {}

    # -- graphs ---------------------------------------------------------------------------------

    def _spec(self, key: str) -> Mapping[str, Any]:
        components = self.manifest["components"]
        if key.startswith("upsamplers["):
            index, part = key[len("upsamplers[") :].split("].")
            return components["upsamplers"][int(index)][part]
        if key not in components:
            raise UserError(f"model {self.manifest['model_id']} has no {key} component")
        return components[key]

    def graph(self, key: str) -> OnnxGraph:
        """The session for "text_encoder", "prior", ..., "upsamplers[0].first"; opened once."""
        spec = self._spec(key)
        cache_key = spec["file"]  # first and last may share one file
        if cache_key not in self._graphs:
            self._graphs[cache_key] = OnnxGraph(self.folder / spec["file"], spec, self.threads)
        return self._graphs[cache_key]

    @property
    def has_image_encoder(self) -> bool:
        return "image_encoder" in self.manifest["components"]

    # -- text -----------------------------------------------------------------------------------

    def tokenize(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """ids int64 [B, L] and mask bool [B, L]; tokenizer.json pads and truncates to L."""
        encodings = self.tokenizer.encode_batch(list(prompts))
        ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encodings], dtype=bool)
        if ids.shape != (len(prompts), self.context_length):
            raise UserError(f"tokenizer produced shape {ids.shape}, expected ({len(prompts)}, {self.context_length})")
        for prompt, encoding in zip(prompts, encodings):
            if encoding.overflowing:
                warnings.warn(f"prompt truncated to {self.context_length} tokens: {prompt[:60]!r}...", stacklevel=2)
        return ids, mask

    def encode_text(self, prompts: Sequence[str]) -> TextEncoding:
        """Tokenize and run the CLIP text encoder (no attention mask, as diffusers)."""
        ids, mask = self.tokenize(prompts)
        out = self.graph("text_encoder")(input_ids=ids)
        return TextEncoding(out["text_embeds"], out["last_hidden_state"], mask)

    def uncond_text(self, batch: int) -> TextEncoding:
        """The CLIP encoding of "" from tensors.safetensors, repeated `batch` times."""
        t = self.tensors
        return TextEncoding(
            np.repeat(t["uncond_text_embeds"][None].astype(np.float32), batch, axis=0),
            np.repeat(t["uncond_last_hidden_state"][None].astype(np.float32), batch, axis=0),
            np.repeat(t["uncond_attention_mask"][None].astype(bool), batch, axis=0),
        )

    def _cfg_text(self, cond: TextEncoding, cfg: bool) -> TextEncoding:
        return TextEncoding.concat([self.uncond_text(cond.batch), cond]) if cfg else cond

    # -- prior ----------------------------------------------------------------------------------

    def prior_output(
        self, latents: np.ndarray, t: int, text: TextEncoding, guidance_scale: float, cfg: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """One prior call: (raw output [2B or B, D], guided x0 prediction [B, D]).

        `text` is the CFG batch ([uncond; cond]) when `cfg`, else the cond batch.
        """
        model_input = np.concatenate([latents, latents]) if cfg else latents
        raw = self.graph("prior")(
            hidden_states=model_input,
            timestep=_timestep(t, model_input.shape[0]),
            proj_embedding=text.text_embeds,
            encoder_hidden_states=text.last_hidden_state,
            attention_mask=text.attention_mask,
        )["predicted_image_embedding"]
        if not cfg:
            return raw, raw
        uncond, cond = np.split(raw, 2)
        return raw, guide(uncond, cond, guidance_scale)

    def sample_prior(
        self,
        cond: TextEncoding | str | Sequence[str],
        steps: int | None = None,
        guidance_scale: float | None = None,
        noise: NoiseSource | None = None,
        cfg: bool | None = None,
        trace: Trace | None = None,
        *,
        num_images: int = 1,
        seed: int = 0,
    ) -> np.ndarray:
        """The prior loop; returns raw-scale CLIP image embeddings [B, D].

        `cond` is a cond text batch, or prompt(s) to encode (each repeated `num_images` times).
        None steps / guidance_scale take the manifest defaults; without `noise`, batch image k
        draws from default_rng(seed + k). `cfg` defaults to guidance_scale > 1 (text_to_image
        passes the pipeline-wide decision: either scale above 1).
        """
        if not isinstance(cond, TextEncoding):
            prompts = [cond] if isinstance(cond, str) else list(cond)
            cond = self.encode_text(prompts).repeat_interleave(num_images)
        settings = self._settings(prior_steps=steps, prior_guidance_scale=guidance_scale)
        steps, guidance_scale = int(settings["prior_steps"]), float(settings["prior_guidance_scale"])
        noise = _noise(noise, seed, cond.batch)
        cfg = guidance_scale > 1.0 if cfg is None else cfg
        text = self._cfg_text(cond, cfg)
        scheduler = self.schedulers["prior"]
        timesteps = scheduler.set_timesteps(steps)
        latents = noise("prior_latents", (cond.batch, self.embedding_dim)).astype(np.float32)
        for i, t in enumerate(timesteps):
            raw, guided = self.prior_output(latents, int(t), text, guidance_scale, cfg)
            latents = self._step(scheduler, "prior", i, timesteps, latents, raw, guided, noise, trace)
        clip_std = self.tensors["prior_clip_std"].astype(np.float32)
        clip_mean = self.tensors["prior_clip_mean"].astype(np.float32)
        image_embeds = latents * clip_std + clip_mean
        if trace:
            trace("image_embeds", {"image_embeds": image_embeds})
        return image_embeds

    # -- decoder --------------------------------------------------------------------------------

    def decoder_conditioning(
        self, image_embeds: np.ndarray, text: TextEncoding, cfg: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Text projection and decoder mask: (encoder_hidden_states, additive time emb, mask).

        With `cfg`, `text` is the [uncond; cond] batch and the learned CFG image embedding is
        prepended to `image_embeds` ([B, D] -> [2B, D]), as UnCLIPTextProjModel does.
        """
        if cfg:
            learned = self.tensors["decoder_cfg_embedding"].astype(np.float32)
            image_embeddings = np.concatenate([np.repeat(learned[None], image_embeds.shape[0], axis=0), image_embeds])
        else:
            image_embeddings = image_embeds
        out = self.graph("text_proj")(
            image_embeddings=image_embeddings,
            prompt_embeds=text.text_embeds,
            text_encoder_hidden_states=text.last_hidden_state,
        )
        extra = self.decoder_context - self.context_length
        mask = np.concatenate([np.ones((text.batch, extra), dtype=bool), text.attention_mask], axis=1)
        return out["encoder_hidden_states"], out["additive_clip_time_embeddings"], mask

    def decoder_output(
        self,
        latents: np.ndarray,
        t: int,
        encoder_hidden_states: np.ndarray,
        additive_clip_time_embeddings: np.ndarray,
        attention_mask: np.ndarray,
        guidance_scale: float,
        cfg: bool,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One decoder call: (raw [2B or B, 6, H, W], guided [B, 6, H, W]).

        Guidance touches only the epsilon channels; the variance channels are the cond half's.
        """
        model_input = np.concatenate([latents, latents]) if cfg else latents
        raw = self.graph("decoder")(
            sample=model_input,
            timestep=_timestep(t, model_input.shape[0]),
            encoder_hidden_states=encoder_hidden_states,
            class_labels=additive_clip_time_embeddings,
            attention_mask=attention_mask,
        )["out_sample"]
        if not cfg:
            return raw, raw
        channels = latents.shape[1]
        uncond, cond = np.split(raw, 2)
        eps = guide(uncond[:, :channels], cond[:, :channels], guidance_scale)
        return raw, np.concatenate([eps, cond[:, channels:]], axis=1)

    def decode(
        self,
        image_embeds: np.ndarray,
        cond: TextEncoding,
        steps: int,
        guidance_scale: float,
        noise: NoiseSource,
        cfg: bool | None = None,
        trace: Trace | None = None,
    ) -> np.ndarray:
        """The decoder loop; returns the small image [B, 3, H, W] clamped to [-1, 1]."""
        cfg = guidance_scale > 1.0 if cfg is None else cfg
        text = self._cfg_text(cond, cfg)
        hidden, additive, mask = self.decoder_conditioning(image_embeds, text, cfg)
        if trace:
            trace(
                "text_proj",
                {
                    "image_embeddings": image_embeds,
                    "encoder_hidden_states": hidden,
                    "additive_clip_time_embeddings": additive,
                    "attention_mask": mask,
                },
            )
        scheduler = self.schedulers["decoder"]
        timesteps = scheduler.set_timesteps(steps)
        size = self.decoder_resolution
        latents = noise("decoder_latents", (cond.batch, 3, size, size)).astype(np.float32)
        for i, t in enumerate(timesteps):
            raw, guided = self.decoder_output(latents, int(t), hidden, additive, mask, guidance_scale, cfg)
            latents = self._step(scheduler, "decoder", i, timesteps, latents, raw, guided, noise, trace)
        image_small = np.clip(latents, np.float32(-1.0), np.float32(1.0))
        if trace:
            trace("image_small", {"image": image_small})
        return image_small

    # -- upsamplers -----------------------------------------------------------------------------

    def upsampler_output(self, stage: int, latents: np.ndarray, upscaled: np.ndarray, t: int, last: bool) -> np.ndarray:
        """One upsampler call on [latents ++ upscaled]; `last` picks the stage's `last` graph."""
        model_input = np.concatenate([latents, upscaled], axis=1)
        graph = self.graph(f"upsamplers[{stage}].{'last' if last else 'first'}")
        return graph(sample=model_input, timestep=_timestep(t, model_input.shape[0]))["out_sample"]

    def upsample(
        self, image: np.ndarray, steps: int, noise: NoiseSource, trace: Trace | None = None
    ) -> np.ndarray:
        """Every upsampler stage in turn; returns the last stage's result [B, 3, U, U], unclamped.

        Between stages (cascades longer than Karlo's one) the stage result is clamped to [-1, 1]
        before being upsampled again, as the decoder's result is.
        """
        scheduler = self.schedulers["upsampler"]
        latents = image
        for stage, size in enumerate(self.upsampler_sizes):
            started = time.perf_counter()
            if stage > 0:
                image = np.clip(latents, np.float32(-1.0), np.float32(1.0))
            upscaled = resize_bicubic(image, size)
            if trace:
                trace("upscaled", {"stage": stage, "image": upscaled})
            timesteps = scheduler.set_timesteps(steps)
            latents = noise(f"upsampler{stage}_latents", (image.shape[0], 3, size, size)).astype(np.float32)
            for i, t in enumerate(timesteps):
                out = self.upsampler_output(stage, latents, upscaled, int(t), last=i == len(timesteps) - 1)
                latents = self._step(scheduler, f"upsampler{stage}", i, timesteps, latents, out, out, noise, trace, stage)
            self.timings[f"upsampler{stage}"] = time.perf_counter() - started
        return latents

    # -- the shared step ------------------------------------------------------------------------

    def _step(
        self,
        scheduler: Scheduler,
        stage: str,
        i: int,
        timesteps: np.ndarray,
        latents: np.ndarray,
        raw: np.ndarray,
        guided: np.ndarray,
        noise: NoiseSource,
        trace: Trace | None,
        stage_index: int | None = None,
    ) -> np.ndarray:
        t = int(timesteps[i])
        prev_t = None if i + 1 == len(timesteps) else int(timesteps[i + 1])
        # The scheduler draws only while t > 0 (never on the final t = 0 step).
        step_noise = noise(f"{stage}_noise_{i}", latents.shape).astype(np.float32) if t > 0 else None
        prev_sample, pred_original = scheduler.step(guided, t, latents, prev_t, step_noise)
        if trace:
            event = "upsampler_step" if stage.startswith("upsampler") else f"{stage}_step"
            trace(
                event,
                {
                    "stage": stage if stage_index is None else stage_index,
                    "i": i,
                    "t": t,
                    "prev_t": prev_t,
                    "sample": latents,
                    "model_output": raw,
                    "guided": guided,
                    "noise": step_noise,
                    "prev_sample": prev_sample,
                    "pred_original_sample": pred_original,
                },
            )
        return prev_sample

    # -- whole pipelines ------------------------------------------------------------------------

    def _settings(self, **given: Any) -> dict[str, Any]:
        """Fill None arguments from the manifest defaults and check them."""
        out = {key: (self.defaults[key] if value is None else value) for key, value in given.items()}
        for key in ("prior_steps", "decoder_steps", "upsampler_steps"):
            if key in out and int(out[key]) < 2:
                raise UserError(f"{key.replace('_', '-')} must be at least 2, got {out[key]}")
        return out

    def text_to_image_array(
        self,
        prompt: str | Sequence[str],
        num_images: int = 1,
        seed: int = 0,
        prior_steps: int | None = None,
        decoder_steps: int | None = None,
        upsampler_steps: int | None = None,
        prior_guidance_scale: float | None = None,
        decoder_guidance_scale: float | None = None,
        noise_source: NoiseSource | None = None,
        trace: Trace | None = None,
        best_of: int = 1,
    ) -> np.ndarray:
        """Text-to-image; returns the final latents [B, 3, U, U] (before the output conversion).

        `prompt` may be a list; each prompt gets `num_images` images in a row (B = prompts x
        num_images, as diffusers' num_images_per_prompt), and batch image k uses seed + k.
        `best_of` > 1 samples that many prior candidates per image and keeps the one closest to
        the prompt (the paper's reranking, as the prior service does): candidate 0 is the plain
        run, candidate c draws from seed + k + c * 2**32, so the decoder's draws do not change.
        """
        s = self._settings(
            prior_steps=prior_steps,
            decoder_steps=decoder_steps,
            upsampler_steps=upsampler_steps,
            prior_guidance_scale=prior_guidance_scale,
            decoder_guidance_scale=decoder_guidance_scale,
        )
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise UserError("at least one prompt is needed")
        if num_images < 1:
            raise UserError(f"num-images must be at least 1, got {num_images}")
        if best_of < 1:
            raise UserError(f"best-of must be at least 1, got {best_of}")
        if best_of > 1 and noise_source is not None:
            raise UserError("best-of needs seeded noise: a given noise source has no candidates' draws")
        noise = _noise(noise_source, seed, len(prompts) * num_images)
        cfg = s["prior_guidance_scale"] > 1.0 or s["decoder_guidance_scale"] > 1.0
        self.timings = {}

        started = time.perf_counter()
        cond = self.encode_text(prompts).repeat_interleave(num_images)
        self.timings["text"] = time.perf_counter() - started

        started = time.perf_counter()
        image_embeds = self.sample_prior(cond, s["prior_steps"], s["prior_guidance_scale"], noise, cfg, trace)
        if best_of > 1:
            others = [
                self.sample_prior(
                    cond, s["prior_steps"], s["prior_guidance_scale"], SeededNoise(seed + (c << 32), cond.batch), cfg
                )
                for c in range(1, best_of)
            ]
            image_embeds, picks = best_of_k([image_embeds, *others], cond.text_embeds)
            if trace:
                trace("image_embeds", {"image_embeds": image_embeds, "best_of_picks": picks})
        self.timings["prior"] = time.perf_counter() - started

        started = time.perf_counter()
        image_small = self.decode(image_embeds, cond, s["decoder_steps"], s["decoder_guidance_scale"], noise, cfg, trace)
        self.timings["decoder"] = time.perf_counter() - started

        image = self.upsample(image_small, s["upsampler_steps"], noise, trace)
        if trace:
            trace("image", {"image": image})
        return image

    def text_to_image(
        self,
        prompt: str | Sequence[str],
        num_images: int = 1,
        seed: int = 0,
        prior_steps: int | None = None,
        decoder_steps: int | None = None,
        upsampler_steps: int | None = None,
        prior_guidance_scale: float | None = None,
        decoder_guidance_scale: float | None = None,
        noise_source: NoiseSource | None = None,
        trace: Trace | None = None,
        best_of: int = 1,
    ) -> list[Image.Image]:
        """Generate `num_images` images per prompt; batch image k uses seed + k. None = manifest default."""
        return to_pil(
            self.text_to_image_array(
                prompt,
                num_images,
                seed,
                prior_steps,
                decoder_steps,
                upsampler_steps,
                prior_guidance_scale,
                decoder_guidance_scale,
                noise_source,
                trace,
                best_of,
            )
        )

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """CLIP image embeddings [N, D] (raw scale, not normalised) of PIL images."""
        if not self.has_image_encoder:
            raise UserError(f"model {self.manifest['model_id']} has no image_encoder, so it cannot make variations")
        config = self.manifest["image_preprocess"]
        pixels = np.stack([clip_preprocess(image, config) for image in images])
        return self.graph("image_encoder")(pixel_values=pixels)["image_embeds"]

    encode_image = encode_images

    def variation_array(
        self,
        image: Image.Image,
        num_images: int = 1,
        seed: int = 0,
        decoder_steps: int | None = None,
        upsampler_steps: int | None = None,
        decoder_guidance_scale: float | None = None,
        noise_source: NoiseSource | None = None,
        trace: Trace | None = None,
    ) -> np.ndarray:
        """Image variation; returns the final latents [B, 3, U, U].

        No prior: the CLIP image embedding conditions the decoder directly, and both text halves
        are the encoding of "" (so guidance only contrasts the learned CFG embedding with the
        image's). Guidance is on when decoder_guidance_scale > 1.
        """
        s = self._settings(
            decoder_steps=decoder_steps, upsampler_steps=upsampler_steps, decoder_guidance_scale=decoder_guidance_scale
        )
        if num_images < 1:
            raise UserError(f"num-images must be at least 1, got {num_images}")
        noise = _noise(noise_source, seed, num_images)
        self.timings = {}

        started = time.perf_counter()
        image_embeds = np.repeat(self.encode_images([image]), num_images, axis=0)
        self.timings["image_encoder"] = time.perf_counter() - started
        if trace:
            trace("image_embeds", {"image_embeds": image_embeds})

        started = time.perf_counter()
        cond = self.uncond_text(num_images)
        cfg = s["decoder_guidance_scale"] > 1.0
        image_small = self.decode(image_embeds, cond, s["decoder_steps"], s["decoder_guidance_scale"], noise, cfg, trace)
        self.timings["decoder"] = time.perf_counter() - started

        out = self.upsample(image_small, s["upsampler_steps"], noise, trace)
        if trace:
            trace("image", {"image": out})
        return out

    def variation(
        self,
        image: Image.Image,
        num_images: int = 1,
        seed: int = 0,
        decoder_steps: int | None = None,
        upsampler_steps: int | None = None,
        decoder_guidance_scale: float | None = None,
        noise_source: NoiseSource | None = None,
        trace: Trace | None = None,
    ) -> list[Image.Image]:
        """`num_images` variations of `image`; image k uses seed + k. None = manifest default."""
        return to_pil(
            self.variation_array(
                image, num_images, seed, decoder_steps, upsampler_steps, decoder_guidance_scale, noise_source, trace
            )
        )


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """Arguments of `generate` (text-to-image) and `vary` (image variations)."""
    parser.add_argument("--model", type=Path, required=True, help="model repository folder (holds manifest.json)")
    if name == "generate":
        parser.add_argument("--prompt", required=True, help="the text to draw")
    else:
        parser.add_argument("--image", type=Path, required=True, help="the image to make variations of")
    parser.add_argument(
        "--out", type=Path, required=True, help="output PNG; with --num-images N > 1, OUT_0.png ... OUT_{N-1}.png"
    )
    parser.add_argument("--seed", type=int, default=None, help="image k uses seed + k (default: random, printed)")
    parser.add_argument("--num-images", type=int, default=1, help="how many images (default 1)")
    if name == "generate":
        parser.add_argument("--prior-steps", type=int, default=None, help="prior steps (default: the manifest's)")
    parser.add_argument("--decoder-steps", type=int, default=None, help="decoder steps (default: the manifest's)")
    parser.add_argument("--upsampler-steps", type=int, default=None, help="steps per upsampler (default: the manifest's)")
    if name == "generate":
        parser.add_argument("--prior-guidance", type=float, default=None, help="prior CFG scale (default: the manifest's)")
        parser.add_argument(
            "--best-of", type=int, default=1, help="prior candidates per image, the one closest to the prompt kept (default 1)"
        )
    parser.add_argument("--decoder-guidance", type=float, default=None, help="decoder CFG scale (default: the manifest's)")
    parser.add_argument(
        "--scheduler", choices=BACKENDS, default="auto", help="who computes scheduler steps (auto: diffusers if installed)"
    )
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")


def output_paths(out: Path, count: int) -> list[Path]:
    """OUT itself for one image, else OUT_0.ext, OUT_1.ext, ..."""
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{k}{out.suffix}") for k in range(count)]


def _check_args(args: argparse.Namespace, name: str) -> None:
    """Reject what would fail late, before any model is loaded."""
    if not args.model.is_dir():
        raise UserError(f"model folder {args.model} does not exist")
    out_dir = args.out.parent if str(args.out.parent) else Path(".")
    if not out_dir.is_dir():
        raise UserError(f"output folder {out_dir} does not exist")
    if args.out.suffix.lower() not in Image.registered_extensions():
        raise UserError(f"output {args.out} needs an image extension such as .png")
    if args.num_images < 1:
        raise UserError(f"--num-images must be at least 1, got {args.num_images}")
    for key in ("prior_steps", "decoder_steps", "upsampler_steps"):
        value = getattr(args, key, None)
        if value is not None and value < 2:
            raise UserError(f"--{key.replace('_', '-')} must be at least 2, got {value}")
    if args.seed is not None and args.seed < 0:
        raise UserError(f"--seed must be non-negative, got {args.seed}")
    if args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")
    if getattr(args, "best_of", 1) < 1:
        raise UserError(f"--best-of must be at least 1, got {args.best_of}")


def load_image(path: Path) -> Image.Image:
    """Open and decode an image file, or raise UserError."""
    if not path.is_file():
        raise UserError(f"image {path} does not exist")
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UserError(f"cannot decode image {path}: {e}") from None


def run(args: argparse.Namespace, name: str) -> int:
    """Run `generate` or `vary`, write the images, print the seed and the time per stage."""
    _check_args(args, name)
    image = load_image(args.image) if name == "vary" else None
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)

    started = time.perf_counter()
    sampler = UnclipSampler(args.model, scheduler_backend=args.scheduler, threads=args.threads)
    load_seconds = time.perf_counter() - started

    started = time.perf_counter()
    if name == "generate":
        images = sampler.text_to_image(
            args.prompt,
            num_images=args.num_images,
            seed=seed,
            prior_steps=args.prior_steps,
            decoder_steps=args.decoder_steps,
            upsampler_steps=args.upsampler_steps,
            prior_guidance_scale=args.prior_guidance,
            decoder_guidance_scale=args.decoder_guidance,
            best_of=args.best_of,
        )
    else:
        assert image is not None
        images = sampler.variation(
            image,
            num_images=args.num_images,
            seed=seed,
            decoder_steps=args.decoder_steps,
            upsampler_steps=args.upsampler_steps,
            decoder_guidance_scale=args.decoder_guidance,
        )
    total = time.perf_counter() - started

    paths = output_paths(args.out, len(images))
    for picture, path in zip(images, paths):
        try:
            picture.save(path)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot write {path}: {e}") from None
    manifest = sampler.manifest
    print(f"model {manifest['model_id']} {manifest['version']}, scheduler {sampler.scheduler_backend}, seed {seed}")
    stages = ", ".join(f"{stage} {seconds:.2f}s" for stage, seconds in sampler.timings.items())
    print(f"load {load_seconds:.2f}s; {stages}; total {total:.2f}s")
    for path in paths:
        print(f"wrote {path}")
    sys.stdout.flush()
    return 0
