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
from pathlib import Path

import torch
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
