"""diffusers' own `UnCLIPPipeline` driving the shapes model's torch modules (the diffusers baseline).

The weights are the ones recovered from the shipped ONNX graphs (`shapes.torch_weights`); the
sampling loop, the schedulers (`UnCLIPScheduler`), guidance, the noise (one torch generator) and
the output conversion are diffusers' (0.42). What the pipeline is handed:

- `prior`: diffusers' `PriorTransformer` itself, with clip_mean/std from tensors.safetensors;
- `text_proj`: diffusers' `UnCLIPTextProjModel` itself (the learned guidance embedding from
  tensors.safetensors);
- `tokenizer`: transformers' fast tokenizer over the repository's tokenizer.json ("!" pads);
- `text_encoder`, `decoder`, `super_res_first`/`super_res_last`: thin adapters around the
  project's own modules (`shapes.models`), presenting what the pipeline calls: a CLIP text output
  with `text_embeds` and `last_hidden_state`; `config.in_channels`/`sample_size`; a scalar
  timestep broadcast to the modules' per-sample [B]; results wrapped in diffusers' output
  classes (`.sample`). Both super-resolution entries are the stage's one network, as in the
  repository (its `first` and `last` name the same file).

The one gap: `UnCLIPPipeline` has a single super-resolution stage; the shapes model has two
(32 -> 64 -> 128). The pipeline runs text, prior, decoder and the 32 -> 64 stage and returns its
image; the 64 -> 128 stage then runs in `extra_super_res`, a line-for-line copy of the
pipeline's super-resolution block (bicubic antialiased upscaling, `prepare_latents`, the
`UnCLIPScheduler` loop, `first` on every step but the last), on the same generator, so the
noise continues in diffusers' draw order. Between the stages the image is clamped to [-1, 1],
as the stack does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .torch_weights import ShapesTorch


def _timesteps(timestep: Any, batch: int) -> torch.Tensor:
    """The pipeline's scalar timestep as the modules' int64 [batch]."""
    return torch.as_tensor(timestep, dtype=torch.int64).reshape(-1).expand(batch)


class _Adapter(nn.Module):
    """The `device` and `dtype` that diffusers' pipeline reads from every component (as
    ModelMixin and transformers' PreTrainedModel have them)."""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


class TextEncoderAdapter(_Adapter):
    """CLIPTextModelWithProjection's interface over `shapes.models.TextEncoder` (compact ids)."""

    def __init__(self, text: nn.Module):
        super().__init__()
        self.text = text

    def forward(self, input_ids: torch.Tensor) -> Any:
        from transformers.models.clip.modeling_clip import CLIPTextModelOutput

        text_embeds, last_hidden_state = self.text(input_ids)
        return CLIPTextModelOutput(text_embeds=text_embeds, last_hidden_state=last_hidden_state)


class DecoderAdapter(_Adapter):
    """UNet2DConditionModel's interface over `shapes.models.Decoder` (epsilon ++ variance)."""

    def __init__(self, decoder: nn.Module, sample_size: int):
        super().__init__()
        self.decoder = decoder
        self.config = SimpleNamespace(in_channels=3, sample_size=sample_size)

    def forward(self, sample, timestep, encoder_hidden_states, class_labels, attention_mask) -> Any:
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        out = self.decoder(sample, _timesteps(timestep, sample.shape[0]), encoder_hidden_states, class_labels, attention_mask)
        return UNet2DConditionOutput(sample=out)


class UpsamplerAdapter(_Adapter):
    """UNet2DModel's interface over `shapes.models.Upsampler`: [latents ++ upscaled] -> epsilon."""

    def __init__(self, upsampler: nn.Module, sample_size: int):
        super().__init__()
        self.upsampler = upsampler
        self.config = SimpleNamespace(in_channels=6, sample_size=sample_size)

    def forward(self, sample, timestep) -> Any:
        from diffusers.models.unets.unet_2d import UNet2DOutput

        return UNet2DOutput(sample=self.upsampler(sample, _timesteps(timestep, sample.shape[0])))


@dataclass
class ShapesDiffusers:
    """The pipeline (text, prior, decoder, first upsampler stage) and the later stages."""

    pipeline: Any  # diffusers.UnCLIPPipeline
    extra_stages: list[tuple[nn.Module, nn.Module, Any]]  # (first, last, UnCLIPScheduler) per stage after the first
    manifest: dict[str, Any]

    def generate(
        self,
        prompt: str,
        generator: torch.Generator,
        num_images: int = 1,
        prior_steps: int | None = None,
        decoder_steps: int | None = None,
        upsampler_steps: int | None = None,
        prior_guidance_scale: float | None = None,
        decoder_guidance_scale: float | None = None,
    ) -> np.ndarray:
        """Images uint8 [B, H, W, 3]; unset settings take the repository's defaults."""
        d = self.manifest["defaults"]
        upsampler_steps = upsampler_steps or d["upsampler_steps"]
        with torch.inference_mode():
            images = self.pipeline(
                prompt,
                num_images_per_prompt=num_images,
                prior_num_inference_steps=prior_steps or d["prior_steps"],
                decoder_num_inference_steps=decoder_steps or d["decoder_steps"],
                super_res_num_inference_steps=upsampler_steps,
                prior_guidance_scale=d["prior_guidance_scale"] if prior_guidance_scale is None else prior_guidance_scale,
                decoder_guidance_scale=d["decoder_guidance_scale"] if decoder_guidance_scale is None else decoder_guidance_scale,
                generator=generator,
                output_type="np",
            ).images
            if self.extra_stages:
                # Back to [-1, 1]: the stage result clamped, as the stack passes it on.
                image = torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1
                for first, last, scheduler in self.extra_stages:
                    image = extra_super_res(self.pipeline, first, last, scheduler, image.clamp(-1, 1), upsampler_steps, generator)
                # The pipeline's own post-processing and numpy_to_pil rounding.
                images = (image * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().numpy()
        return (images * 255).round().astype(np.uint8)


def extra_super_res(pipe: Any, first: nn.Module, last: nn.Module, scheduler: Any, image_small: torch.Tensor,
                    steps: int, generator: torch.Generator) -> torch.Tensor:
    """One more super-resolution stage: the "super res" block of `UnCLIPPipeline.__call__`
    (diffusers 0.42), line for line; returns the stage's latents, unclamped."""
    device = image_small.device
    scheduler.set_timesteps(steps, device=device)
    timesteps = scheduler.timesteps
    channels = first.config.in_channels // 2
    height = width = first.config.sample_size
    latents = pipe.prepare_latents((image_small.shape[0], channels, height, width), image_small.dtype, device, generator, None, scheduler)
    upscaled = F.interpolate(image_small, size=[height, width], mode="bicubic", align_corners=False, antialias=True)
    for i, t in enumerate(timesteps):
        unet = last if i == timesteps.shape[0] - 1 else first
        noise_pred = unet(sample=torch.cat([latents, upscaled], dim=1), timestep=t).sample
        prev_timestep = None if i + 1 == timesteps.shape[0] else timesteps[i + 1]
        latents = scheduler.step(noise_pred, t, latents, prev_timestep=prev_timestep, generator=generator).prev_sample
    return latents


def build(model_dir: Path, model: ShapesTorch | None = None) -> ShapesDiffusers:
    """`UnCLIPPipeline` over the shapes repository's torch weights (float32, CPU): `model`, or
    recovered from the graphs now."""
    from diffusers import UnCLIPPipeline, UnCLIPScheduler
    from transformers import PreTrainedTokenizerFast

    from .torch_weights import load

    model = model or load(model_dir)
    manifest = model.manifest
    components = manifest["components"]
    text = manifest["text"]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(model_dir / text["tokenizer"]),
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        pad_token="!",
        model_max_length=int(text["context_length"]),
    )
    decoder_size = int(next(t for t in components["decoder"]["inputs"] if t["name"] == "sample")["shape"][2])
    stages = []
    for stage in components["upsamplers"]:
        first, last = (UpsamplerAdapter(model.module(stage[part]["file"]), int(stage["output_size"])) for part in ("first", "last"))
        stages.append((first, last))

    def scheduler(stage: str) -> Any:
        return UnCLIPScheduler(**manifest["schedulers"][stage])

    pipeline = UnCLIPPipeline(
        prior=model.module("prior.onnx").prior,
        decoder=DecoderAdapter(model.module("decoder.onnx"), decoder_size),
        text_encoder=TextEncoderAdapter(model.module("text_encoder.onnx")),
        tokenizer=tokenizer,
        text_proj=model.module("text_proj.onnx").text_proj,
        super_res_first=stages[0][0],
        super_res_last=stages[0][1],
        prior_scheduler=scheduler("prior"),
        decoder_scheduler=scheduler("decoder"),
        super_res_scheduler=scheduler("upsampler"),
    )
    pipeline.set_progress_bar_config(disable=True)
    extra = [(first, last, scheduler("upsampler")) for first, last in stages[1:]]
    return ShapesDiffusers(pipeline, extra, manifest)
