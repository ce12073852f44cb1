"""The shapes unCLIP's networks, each with Karlo's input/output contract (torch, training only).

- CLIP towers: transformers' CLIP text/vision models (64 wide, 4 layers). The text tower reads
  real CLIP ids through a compact embedding table (see `tokenizer.compact_vocabulary`).
- Prior: diffusers' PriorTransformer (4 layers), predicting the clean normalised embedding.
- Text projection: diffusers' UnCLIPTextProjModel (4 extra context tokens).
- Decoder: a lean convolutional UNet at 32x32 with cross-attention to the 81 context tokens at
  16x16 and 8x8, predicting epsilon and the learned-range variance value (6 channels).
- Upsamplers: a small fully convolutional UNet (no attention, no text), trained on crops.

Every network takes a per-sample int64 timestep of shape [B].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ShapesConfig:
    """Widths of every network; stored in checkpoints so that export rebuilds the same graphs."""

    vocab_rows: int = 128
    embed_dim: int = 64  # CLIP width == projection == image embedding (Karlo contract)
    clip_layers: int = 4
    clip_heads: int = 4
    image_size: int = 64  # CLIP vision input
    patch_size: int = 8
    prior_layers: int = 4
    prior_heads: int = 4
    prior_head_dim: int = 32
    time_embed_dim: int = 256  # decoder time embedding (T)
    cross_dim: int = 128  # decoder context width (C)
    dec_channels: tuple[int, int, int] = (32, 64, 128)
    up_channels: tuple[int, int] = (32, 64)
    base_size: int = 32


# ---------------------------------------------------------------------------------------------
# CLIP


def clip_configs(cfg: ShapesConfig):
    from transformers import CLIPTextConfig, CLIPVisionConfig

    text = CLIPTextConfig(
        vocab_size=cfg.vocab_rows,
        hidden_size=cfg.embed_dim,
        intermediate_size=cfg.embed_dim * 4,
        num_hidden_layers=cfg.clip_layers,
        num_attention_heads=cfg.clip_heads,
        max_position_embeddings=77,
        projection_dim=cfg.embed_dim,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,  # compact row of <|endoftext|>; not 2, which selects HF's legacy argmax pooling
    )
    vision = CLIPVisionConfig(
        hidden_size=cfg.embed_dim,
        intermediate_size=cfg.embed_dim * 4,
        num_hidden_layers=cfg.clip_layers,
        num_attention_heads=cfg.clip_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        projection_dim=cfg.embed_dim,
    )
    return text, vision


class TextEncoder(nn.Module):
    """CLIP text tower over real CLIP ids: (text_embeds [B,D], last_hidden_state [B,77,D])."""

    def __init__(self, cfg: ShapesConfig, id_table: torch.Tensor):
        super().__init__()
        from transformers import CLIPTextModelWithProjection

        self.register_buffer("id_table", id_table.to(torch.int64), persistent=True)
        self.clip = CLIPTextModelWithProjection(clip_configs(cfg)[0])

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.id_table[input_ids]
        out = self.clip(input_ids=rows)
        return out.text_embeds, out.last_hidden_state


class ImageEncoder(nn.Module):
    """CLIP image tower: pixel_values [B,3,S,S] (CLIP-normalised) -> image_embeds [B,D].

    A small CNN (CLIP has convolutional image towers too, its ResNets). The first tower, a
    4-layer ViT with 8-pixel patches, learned colour, size and position but not the shape, even
    with a loss that asked for it (a linear head read it 27% of the time): a 14-pixel object
    spans two or three patches and the tiny transformer never resolved its outline. The CNN keeps
    a 4x4 grid before the projection, so position survives too.
    """

    def __init__(self, cfg: ShapesConfig):
        super().__init__()

        def conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, k, stride=stride, padding=(k - stride + 1) // 2), nn.GroupNorm(8, cout), nn.SiLU())

        self.net = nn.Sequential(
            conv(3, 32, 4, 2),  # 64 -> 32
            conv(32, 48, 3, 2),  # -> 16
            conv(48, 64),
            conv(64, 96, 3, 2),  # -> 8
            conv(96, 96),
            conv(96, 128, 3, 2),  # -> 4
        )
        side = cfg.image_size // 16
        self.proj = nn.Sequential(nn.Flatten(), nn.Linear(128 * side * side, 256), nn.SiLU(), nn.Linear(256, cfg.embed_dim))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.proj(self.net(pixel_values))


class Clip(nn.Module):
    def __init__(self, cfg: ShapesConfig, id_table: torch.Tensor):
        super().__init__()
        self.text = TextEncoder(cfg, id_table)
        self.image = ImageEncoder(cfg)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))


# ---------------------------------------------------------------------------------------------
# Prior and text projection (diffusers classes)


def make_prior(cfg: ShapesConfig):
    from diffusers import PriorTransformer

    return PriorTransformer(
        num_attention_heads=cfg.prior_heads,
        attention_head_dim=cfg.prior_head_dim,
        num_layers=cfg.prior_layers,
        embedding_dim=cfg.embed_dim,
        num_embeddings=77,
        additional_embeddings=4,
    )


def make_text_proj(cfg: ShapesConfig):
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

    return UnCLIPTextProjModel(
        clip_extra_context_tokens=4,
        clip_embeddings_dim=cfg.embed_dim,
        time_embed_dim=cfg.time_embed_dim,
        cross_attention_dim=cfg.cross_dim,
    )


class PriorGraph(nn.Module):
    """The prior with the contract's input names and a [B] timestep."""

    def __init__(self, prior: nn.Module):
        super().__init__()
        self.prior = prior

    def forward(self, hidden_states, timestep, proj_embedding, encoder_hidden_states, attention_mask):
        return self.prior(
            hidden_states,
            timestep=timestep,
            proj_embedding=proj_embedding,
            encoder_hidden_states=encoder_hidden_states,
            attention_mask=attention_mask,
        ).predicted_image_embedding


class TextProjGraph(nn.Module):
    """The text projection without the CFG prepend (that happens in the sampler)."""

    def __init__(self, text_proj: nn.Module):
        super().__init__()
        self.text_proj = text_proj

    def forward(self, image_embeddings, prompt_embeds, text_encoder_hidden_states):
        return self.text_proj(
            image_embeddings=image_embeddings,
            prompt_embeds=prompt_embeds,
            text_encoder_hidden_states=text_encoder_hidden_states,
            do_classifier_free_guidance=False,
        )


# ---------------------------------------------------------------------------------------------
# Convolutional UNets


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding, cos then sin (diffusers' flip_sin_to_cos=True, shift 0)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.to(torch.float32)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, ch // 4), ch)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the embedding as a scale-shift of the second norm."""

    def __init__(self, cin: int, cout: int, emb_dim: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class CrossAttention(nn.Module):
    """Spatial queries (with a learned position embedding) attend to the context tokens."""

    def __init__(self, ch: int, ctx_dim: int, side: int, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.norm = _norm(ch)
        self.pos = nn.Parameter(torch.randn(1, ch, side, side) * 0.02)
        self.q = nn.Linear(ch, ch)
        self.kv = nn.Linear(ctx_dim, 2 * ch)
        self.out = nn.Linear(ch, ch)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.q((self.norm(x) + self.pos).flatten(2).transpose(1, 2))  # [B,HW,C]
        k, v = self.kv(ctx).chunk(2, dim=-1)  # [B,N,C]
        d = c // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, -1, self.heads, d).transpose(1, 2)

        att = split(q) @ split(k).transpose(-1, -2) / math.sqrt(d) + bias[:, None, None, :]
        o = (att.softmax(-1) @ split(v)).transpose(1, 2).reshape(b, h * w, c)
        return x + self.out(o).transpose(1, 2).reshape(b, c, h, w)


class Decoder(nn.Module):
    """32x32 base decoder: (sample, timestep, encoder_hidden_states, class_labels, attention_mask)
    -> out_sample [B,6,H,W] = (epsilon, learned-range variance value)."""

    def __init__(self, cfg: ShapesConfig):
        super().__init__()
        c1, c2, c3 = cfg.dec_channels
        t = cfg.time_embed_dim
        s = cfg.base_size
        self.c1 = c1
        self.time = nn.Sequential(nn.Linear(c1, t), nn.SiLU(), nn.Linear(t, t))
        self.conv_in = nn.Conv2d(3, c1, 3, padding=1)
        self.d1 = ResBlock(c1, c1, t)
        self.down1 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.d2 = ResBlock(c2, c2, t)
        self.a2 = CrossAttention(c2, cfg.cross_dim, s // 2)
        self.down2 = nn.Conv2d(c2, c3, 3, stride=2, padding=1)
        self.m1 = ResBlock(c3, c3, t)
        self.am = CrossAttention(c3, cfg.cross_dim, s // 4)
        self.m2 = ResBlock(c3, c3, t)
        self.u3 = ResBlock(2 * c3, c3, t)
        self.up2 = nn.Conv2d(c3, c2, 3, padding=1)
        self.u2 = ResBlock(2 * c2, c2, t)
        self.au = CrossAttention(c2, cfg.cross_dim, s // 2)
        self.up1 = nn.Conv2d(c2, c1, 3, padding=1)
        self.u1 = ResBlock(2 * c1, c1, t)
        self.out = nn.Sequential(_norm(c1), nn.SiLU(), nn.Conv2d(c1, 6, 3, padding=1))

    def forward(self, sample, timestep, encoder_hidden_states, class_labels, attention_mask):
        emb = self.time(timestep_embedding(timestep, self.c1)) + class_labels
        bias = (1.0 - attention_mask.to(sample.dtype)) * -10000.0  # [B,81]
        ctx = encoder_hidden_states
        h1 = self.d1(self.conv_in(sample), emb)
        h2 = self.a2(self.d2(self.down1(h1), emb), ctx, bias)
        h3 = self.down2(h2)
        m = self.m2(self.am(self.m1(h3, emb), ctx, bias), emb)
        u = self.u3(torch.cat([m, h3], 1), emb)
        u = self.up2(F.interpolate(u, scale_factor=2.0, mode="nearest"))
        u = self.au(self.u2(torch.cat([u, h2], 1), emb), ctx, bias)
        u = self.up1(F.interpolate(u, scale_factor=2.0, mode="nearest"))
        u = self.u1(torch.cat([u, h1], 1), emb)
        return self.out(u)


class InpaintDecoder(Decoder):
    """The decoder with GLIDE's inpainting inputs: (sample, timestep, encoder_hidden_states,
    class_labels, attention_mask, masked_image [B,3,H,W], mask [B,1,H,W]) -> out_sample.

    `mask` is 1 where the pixel is known (kept) and 0 where it is to be generated; `masked_image`
    is the known image times the mask (0 where generated). Both enter through four extra input
    channels of the first convolution, concatenated after the sample's three.
    """

    EXTRA_CHANNELS = 4

    def __init__(self, cfg: ShapesConfig):
        super().__init__(cfg)
        c1 = cfg.dec_channels[0]
        self.conv_in = nn.Conv2d(3 + self.EXTRA_CHANNELS, c1, 3, padding=1)

    @classmethod
    def from_decoder_state(cls, cfg: ShapesConfig, state: dict) -> "InpaintDecoder":
        """The plain decoder's weights with the extra input channels zero-initialised, so that
        the new network starts out computing exactly what the plain decoder does."""
        net = cls(cfg)
        state = dict(state)
        w = state["conv_in.weight"]
        state["conv_in.weight"] = torch.cat([w, torch.zeros(w.shape[0], cls.EXTRA_CHANNELS, *w.shape[2:], dtype=w.dtype)], 1)
        net.load_state_dict(state)
        return net

    def forward(self, sample, timestep, encoder_hidden_states, class_labels, attention_mask, masked_image, mask):
        x = torch.cat([sample, masked_image, mask], 1)
        return super().forward(x, timestep, encoder_hidden_states, class_labels, attention_mask)


class Upsampler(nn.Module):
    """Super-resolution UNet: sample [B,6,H,W] (noisy image ++ upsampled low-res) -> epsilon."""

    def __init__(self, cfg: ShapesConfig):
        super().__init__()
        c1, c2 = cfg.up_channels
        t = c1 * 4
        self.c1 = c1
        self.time = nn.Sequential(nn.Linear(c1, t), nn.SiLU(), nn.Linear(t, t))
        self.conv_in = nn.Conv2d(6, c1, 3, padding=1)
        self.d1 = ResBlock(c1, c1, t)
        self.down = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.m1 = ResBlock(c2, c2, t)
        self.m2 = ResBlock(c2, c2, t)
        self.up = nn.Conv2d(c2, c1, 3, padding=1)
        self.u1 = ResBlock(2 * c1, c1, t)
        self.out = nn.Sequential(_norm(c1), nn.SiLU(), nn.Conv2d(c1, 3, 3, padding=1))

    def forward(self, sample, timestep):
        emb = self.time(timestep_embedding(timestep, self.c1))
        h1 = self.d1(self.conv_in(sample), emb)
        m = self.m2(self.m1(self.down(h1), emb), emb)
        u = self.up(F.interpolate(m, scale_factor=2.0, mode="nearest"))
        return self.out(self.u1(torch.cat([u, h1], 1), emb))
