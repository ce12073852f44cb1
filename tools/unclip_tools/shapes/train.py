"""Training of the shapes unCLIP: one resumable command, about 80 minutes on 2 CPU cores.

    python -m unclip_tools train-shapes --work runs/shapes

Phases, each checkpointed every few hundred steps into the work folder and skipped once done,
so the same command resumes after an interruption:

    data        render the training scenes once (cached as .npy)
    clip        CLIP text + image towers, contrastive (captions may match several images)
    prior       PriorTransformer on frozen CLIP: x0 prediction of the normalised image embedding
    decoder     text projection + 32x32 decoder: epsilon + learned-range variance (hybrid loss)
    upsampler0  32 -> 64 super-resolution, on crops, blur/noise-corrupted conditioning
    upsampler1  64 -> 128 likewise
    classifier  a shape classifier on renderer ground truth, used only by the quality report

With `--jobs 2` (default) two processes run side by side, one thread each: clip -> prior ->
decoder, and upsampler0 -> upsampler1 -> classifier.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .. import UserError

PHASES = ("data", "clip", "prior", "decoder", "upsampler0", "upsampler1", "classifier")
CHAINS = (("clip", "decoder"), ("upsampler0", "prior", "upsampler1", "classifier"))
TEXT_TRAIN_LEN = 24  # captions are at most ~18 tokens; see encode_text
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)

# Steps per phase, sized for ~80 minutes on the project's 2-core machine.
DEFAULT_STEPS = {"clip": 1500, "prior": 5000, "decoder": 6000, "upsampler0": 3000, "upsampler1": 3000, "classifier": 800}
BATCH = {"clip": 128, "prior": 64, "decoder": 64, "upsampler0": 32, "upsampler1": 32, "classifier": 64}
LR = {"clip": 1e-3, "prior": 4e-4, "decoder": 5e-4, "upsampler0": 5e-4, "upsampler1": 5e-4, "classifier": 2e-3}
N_IMAGES = 30000
OFFSET_NOISE = 0.15  # see train_decoder
AUX_WEIGHT = 1.0  # see train_clip
DATA_SEED = 20261127


# ---------------------------------------------------------------------------------------------
# Data


def attribute_vocabulary() -> list[str]:
    """Every word the caption grammar can produce (for the compact embedding table)."""
    from .render import BACKGROUNDS, COLORS, POSITIONS, RELATIONS, SHAPES, SIZES

    words = ["a", "an", "in", "the", "on", "background"]
    words += list(SHAPES) + list(COLORS) + list(BACKGROUNDS) + list(SIZES)
    words += [w for p in POSITIONS for w in p.split()] + [w for r in RELATIONS for w in r.split()]
    return list(dict.fromkeys(words))


class Dataset:
    """Rendered scenes as uint8 arrays plus their attributes; captions are drawn per batch."""

    def __init__(self, folder: Path):
        self.img128 = np.load(folder / "img128.npy", mmap_mode="r")
        self.img64 = np.load(folder / "img64.npy")
        self.img32 = np.load(folder / "img32.npy")
        self.attrs = json.loads((folder / "attrs.json").read_text())

    def __len__(self) -> int:
        return len(self.attrs)

    def caption(self, i: int, rng: np.random.Generator) -> str:
        """A caption of image i that states a random subset of its attributes (shape and colour always)."""
        from .render import single_caption, two_caption

        a = self.attrs[i]
        if a["kind"] == "two":
            return two_caption((a["color"], a["shape"]), a["relation"], (a["color_b"], a["shape_b"]), a["background"] if rng.random() < 0.6 else None)
        return single_caption(
            a["shape"],
            a["color"],
            a["size"] if rng.random() < 0.75 else None,
            a["position"] if rng.random() < 0.75 else None,
            a["background"] if rng.random() < 0.75 else None,
        )

    def match_row(self, caption_attrs: dict[str, str], idx: np.ndarray) -> np.ndarray:
        """Which of the images `idx` satisfy everything a caption states (bool per image)."""
        if not hasattr(self, "_codes"):
            keys = ("kind", "shape", "color", "background", "size", "position", "relation", "shape_b", "color_b")
            self._codes = {k: np.array([a.get(k, "") for a in self.attrs]) for k in keys}
        ok = self._codes["kind"][idx] == ("two" if "relation" in caption_attrs else "single")
        for k, v in caption_attrs.items():
            ok &= self._codes[k][idx] == v
        return ok


def render_dataset(folder: Path, n: int = N_IMAGES) -> None:
    from .render import downsample, random_scene, render

    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "attrs.json").exists():
        return
    t0 = time.time()
    img128 = np.zeros((n, 128, 128, 3), np.uint8)
    img64 = np.zeros((n, 64, 64, 3), np.uint8)
    img32 = np.zeros((n, 32, 32, 3), np.uint8)
    attrs = []
    for i in range(n):
        scene = random_scene(DATA_SEED, i, train=True)
        im = render(scene, 128)
        img128[i] = np.asarray(im)
        img64[i] = np.asarray(downsample(im, 64))
        img32[i] = np.asarray(downsample(im, 32))
        o = scene.objects[0]
        a = {"shape": o.shape, "color": o.color, "background": scene.background}
        if scene.relation:
            a.update(kind="two", relation=scene.relation, shape_b=scene.objects[1].shape, color_b=scene.objects[1].color)
        else:
            a.update(kind="single", size=o.size, position=o.position)
        attrs.append(a)
    np.save(folder / "img128.npy", img128)
    np.save(folder / "img64.npy", img64)
    np.save(folder / "img32.npy", img32)
    (folder / "attrs.json").write_text(json.dumps(attrs))
    print(f"[data] rendered {n} scenes in {time.time() - t0:.0f}s", flush=True)


def clip_pixels(img64_uint8: np.ndarray):
    """uint8 [B,64,64,3] -> CLIP-normalised float tensor [B,3,64,64]."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(img64_uint8)).float().div_(255.0)
    x = (x - torch.from_numpy(CLIP_MEAN)) / torch.from_numpy(CLIP_STD)
    return x.permute(0, 3, 1, 2).contiguous()


def to_signed(img_uint8: np.ndarray):
    """uint8 [B,H,W,3] -> float [B,3,H,W] in [-1, 1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(img_uint8)).float().div_(127.5).sub_(1.0).permute(0, 3, 1, 2).contiguous()


# ---------------------------------------------------------------------------------------------
# Diffusion helpers (training side)


def alphas_cumprod():
    import torch

    def abar(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = torch.tensor([min(1 - abar((i + 1) / 1000) / abar(i / 1000), 0.999) for i in range(1000)], dtype=torch.float64)
    return betas, torch.cumprod(1 - betas, 0)


def normal_kl(mean1, logvar1, mean2, logvar2):
    import torch

    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


class Ema:
    """Exponential moving average of a model's weights (what gets exported)."""

    def __init__(self, model, decay: float = 0.999):
        import copy

        self.model = copy.deepcopy(model).eval()
        self.decay = decay
        for p in self.model.parameters():
            p.requires_grad_(False)

    def update(self, model, step: int) -> None:
        import torch

        d = min(self.decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for e, p in zip(self.model.state_dict().values(), model.state_dict().values()):
                if e.dtype.is_floating_point:
                    e.mul_(d).add_(p.detach(), alpha=1 - d)
                else:
                    e.copy_(p)


# ---------------------------------------------------------------------------------------------
# Checkpointing


class Phase:
    """One resumable training phase: modules, optimiser, step counter, checkpoint file."""

    def __init__(self, work: Path, name: str, modules: dict, steps: int, lr: float, ema: bool = True):
        import torch

        self.work, self.name, self.modules, self.steps = work, name, modules, steps
        params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        self.lr = lr
        self.emas = {k: Ema(m) for k, m in modules.items()} if ema else {}
        self.step = 0
        self.path = work / f"{name}.pt"
        if self.path.exists():
            ck = torch.load(self.path, weights_only=False)
            for k, m in modules.items():
                m.load_state_dict(ck["modules"][k])
            for k, e in self.emas.items():
                e.model.load_state_dict(ck["ema"][k])
            if ck.get("opt") is not None:  # None in checkpoints rebuilt by recover-shapes
                self.opt.load_state_dict(ck["opt"])
            self.step = ck["step"]
            torch.set_rng_state(ck["torch_rng"])
            print(f"[{name}] resumed at step {self.step}", flush=True)
        self.t0 = time.time()
        self._start = self.step
        self.loss_avg = None

    def lr_at(self, step: int) -> float:
        warm = 200
        if step < warm:
            return self.lr * (step + 1) / warm
        frac = (step - warm) / max(1, self.steps - warm)
        return self.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))

    def update(self, loss) -> None:
        import torch

        for g in self.opt.param_groups:
            g["lr"] = self.lr_at(self.step)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in self.opt.param_groups for p in g["params"]], 1.0)
        self.opt.step()
        self.step += 1
        for k, e in self.emas.items():
            e.update(self.modules[k], self.step)
        v = float(loss.detach())
        if self.step % 100 == 0 and (self.work / "chain1.done").exists() and torch.get_num_threads() < (os.cpu_count() or 1):
            torch.set_num_threads(os.cpu_count() or 1)  # the other chain finished: take its core
        self.loss_avg = v if self.loss_avg is None else 0.98 * self.loss_avg + 0.02 * v
        if self.step % 100 == 0 or self.step == self.steps:
            rate = (time.time() - self.t0) / max(1, self.step - self._start)
            print(f"[{self.name}] step {self.step}/{self.steps} loss {self.loss_avg:.4f} ({rate:.2f}s/step)", flush=True)
        if self.step % 250 == 0 or self.step == self.steps:
            self.save()

    def save(self) -> None:
        import torch

        ck = {
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "ema": {k: e.model.state_dict() for k, e in self.emas.items()},
            "opt": self.opt.state_dict(),
            "step": self.step,
            "torch_rng": torch.get_rng_state(),
            "done": self.step >= self.steps,
            "steps": self.steps,
        }
        tmp = self.path.with_suffix(".tmp")
        torch.save(ck, tmp)
        os.replace(tmp, self.path)

    def final(self, key: str):
        """The weights to export: the EMA copy when there is one."""
        return self.emas[key].model if key in self.emas else self.modules[key]


def phase_done(work: Path, name: str, steps: int | None = None) -> bool:
    """Whether a phase reached `steps` (default: the target it was trained towards)."""
    import torch

    p = work / f"{name}.pt"
    if not p.exists():
        return False
    ck = torch.load(p, weights_only=False, map_location="cpu")
    return ck["step"] >= steps if steps is not None else bool(ck.get("done"))


def load_config(work: Path):
    from .models import ShapesConfig

    cfg_path = work / "config.json"
    if cfg_path.exists():
        d = json.loads(cfg_path.read_text())
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return ShapesConfig(**d)
    cfg = ShapesConfig()
    cfg_path.write_text(json.dumps(asdict(cfg), indent=2))
    return cfg


def id_table():
    import torch

    from .tokenizer import compact_vocabulary

    return torch.from_numpy(compact_vocabulary(attribute_vocabulary()))


def load_clip(work: Path, cfg):
    """The trained CLIP (EMA-free; contrastive training uses plain weights), frozen."""
    import torch

    from .models import Clip

    clip = Clip(cfg, id_table())
    ck = torch.load(work / "clip.pt", weights_only=False)
    clip.load_state_dict(ck["modules"]["clip"])
    clip.eval()
    for p in clip.parameters():
        p.requires_grad_(False)
    return clip


def encode_text(clip, captions: list[str]):
    """(text_embeds, last_hidden_state, mask) for a list of captions with the frozen text tower."""
    import torch

    from .tokenizer import encode

    ids, mask = encode(captions)
    # The text tower is causal, so positions after the end-of-text token change nothing before
    # it, and the prior and decoder mask them out: running only the first TEXT_TRAIN_LEN tokens
    # and zero-filling the rest gives the same training signal ~3x cheaper.
    n = TEXT_TRAIN_LEN if not mask[:, TEXT_TRAIN_LEN:].any() else ids.shape[1]
    with torch.no_grad():
        emb, hidden = clip.text(torch.from_numpy(ids[:, :n]))
    hidden = torch.nn.functional.pad(hidden, (0, 0, 0, ids.shape[1] - n))
    return emb, hidden, torch.from_numpy(mask)


# ---------------------------------------------------------------------------------------------
# Phases


def attribute_labels(ds: Dataset) -> tuple[list[str], list[int], np.ndarray]:
    """Attribute names, their class counts, and every image's attributes as class indices [N, A]
    (-100 where an attribute does not apply)."""
    from .render import BACKGROUNDS, COLORS, POSITIONS, RELATIONS, SHAPES, SIZES

    classes = {
        "shape": list(SHAPES),
        "color": list(COLORS),
        "background": list(BACKGROUNDS),
        "size": list(SIZES),
        "position": list(POSITIONS),
        "relation": list(RELATIONS),
        "shape_b": list(SHAPES),
        "color_b": list(COLORS),
    }
    names = list(classes)
    labels = np.full((len(ds), len(names)), -100, dtype=np.int64)
    for i, a in enumerate(ds.attrs):
        for j, k in enumerate(names):
            if k in a:
                labels[i, j] = classes[k].index(a[k])
    return names, [len(classes[k]) for k in names], labels


def train_clip(work: Path, ds: Dataset, cfg, steps: int) -> None:
    """Contrastive CLIP plus linear attribute heads on the image embedding.

    Contrastive training alone left the shape out of the 64-wide image embedding (a linear probe
    read it 39% of the time, colour, size and position 97-100%): captions that differ only in
    shape are rare in a batch, so telling shapes apart barely lowers the loss. The decoder draws
    from that embedding, so it drew blobs. Heads that must read every rendered attribute from the
    embedding (cross-entropy, weight AUX_WEIGHT) put the shape in; they are used only in training.
    """
    import torch
    import torch.nn.functional as F

    from .models import Clip
    from .render import parse_caption
    from .tokenizer import encode

    clip = Clip(cfg, id_table())
    names, n_classes, labels = attribute_labels(ds)
    heads = torch.nn.ModuleDict({k: torch.nn.Linear(cfg.embed_dim, n) for k, n in zip(names, n_classes)})
    ph = Phase(work, "clip", {"clip": clip, "heads": heads}, steps, LR["clip"], ema=False)
    rng = np.random.default_rng([1, ph.step])
    while ph.step < ph.steps:
        idx = rng.choice(len(ds), BATCH["clip"], replace=False)
        caps = [ds.caption(int(i), rng) for i in idx]
        ids, _ = encode(caps)
        t_emb, _ = clip.text(torch.from_numpy(ids[:, :TEXT_TRAIN_LEN]))  # causal: same pooled output
        i_emb = clip.image(clip_pixels(ds.img64[np.sort(idx)][np.argsort(np.argsort(idx))]))
        t_n, i_n = F.normalize(t_emb, dim=-1), F.normalize(i_emb, dim=-1)
        logits = clip.logit_scale.clamp(max=math.log(100)).exp() * t_n @ i_n.T  # [text, image]
        # Several images may satisfy a caption that leaves attributes out: every match is a positive.
        target = torch.from_numpy(np.stack([ds.match_row(parse_caption(cap), idx) for cap in caps]).astype(np.float32))
        loss_t = -(target / target.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
        loss_i = -(target.T / target.T.sum(1, keepdim=True) * logits.T.log_softmax(1)).sum(1).mean()
        y = torch.from_numpy(labels[idx])
        aux = torch.stack(
            [F.cross_entropy(heads[k](i_emb), y[:, j], ignore_index=-100) for j, k in enumerate(names) if (y[:, j] >= 0).any()]
        ).mean()
        ph.update((loss_t + loss_i) / 2 + AUX_WEIGHT * aux)
    ph.save()


def image_embeddings(work: Path, ds: Dataset, clip) -> np.ndarray:
    """CLIP image embeddings of every training image (cached)."""
    import torch

    path = work / "image_embeds.npy"
    if path.exists():
        return np.load(path)
    out = []
    with torch.no_grad():
        for s in range(0, len(ds), 500):
            out.append(clip.image(clip_pixels(ds.img64[s : s + 500])).numpy())
    emb = np.concatenate(out).astype(np.float32)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, emb)
    os.replace(tmp, path)  # the prior and the decoder may compute it at the same time
    return emb


def train_prior(work: Path, ds: Dataset, cfg, steps: int) -> None:
    import torch

    from .models import PriorGraph, make_prior

    clip = load_clip(work, cfg)
    emb = image_embeddings(work, ds, clip)
    mean, std = emb.mean(0), emb.std(0) + 1e-6
    np.save(work / "prior_stats.npy", np.stack([mean, std]))
    target_all = torch.from_numpy((emb - mean) / std)
    u_emb, u_hidden, u_mask = encode_text(clip, [""])
    prior = PriorGraph(make_prior(cfg))
    ph = Phase(work, "prior", {"prior": prior}, steps, LR["prior"])
    _, abar = alphas_cumprod()
    abar = abar.float()
    rng = np.random.default_rng([2, ph.step])
    while ph.step < ph.steps:
        idx = rng.choice(len(ds), BATCH["prior"], replace=False)
        t_emb, hidden, mask = encode_text(clip, [ds.caption(int(i), rng) for i in idx])
        drop = torch.from_numpy(rng.random(len(idx)) < 0.1)
        t_emb = torch.where(drop[:, None], u_emb, t_emb)
        hidden = torch.where(drop[:, None, None], u_hidden, hidden)
        mask = torch.where(drop[:, None], u_mask, mask)
        x0 = target_all[idx]
        t = torch.from_numpy(rng.integers(0, 1000, len(idx)))
        a = abar[t][:, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * torch.randn_like(x0)
        pred = prior(xt, t, t_emb, hidden, mask)
        ph.update(((pred - x0) ** 2).mean())
    ph.save()



class DecoderSchedule:
    """The decoders' training schedule: noising and guided-diffusion's hybrid loss (the noise MSE
    plus the variational bound on the learned variance range, with the mean frozen so that only
    the variance head learns from it). Shared by the decoder and the inpainting decoder."""

    def __init__(self) -> None:
        import torch

        self.betas, self.abar = alphas_cumprod()
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.abar[:-1]])
        post_var = self.betas * (1 - abar_prev) / (1 - self.abar)
        self.post_logvar_clipped = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
        self.c0 = self.betas * abar_prev.sqrt() / (1 - self.abar)
        self.ct = (1 - abar_prev) * (1 - self.betas).sqrt() / (1 - self.abar)

    @staticmethod
    def _at(v, t):
        return v[t].float()[:, None, None, None]

    def noised(self, x0, noise, t):
        """`x0` noised with `noise` to steps `t`."""
        a = self._at(self.abar, t)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def hybrid_loss(self, out, noise, xt, x0, t):
        """The loss of a decoder output `out` (noise, variance range) for `xt`, noised from `x0`."""
        import torch

        f = self._at
        eps, v = out[:, :3], out[:, 3:]
        mse = ((eps - noise) ** 2).mean()
        frac = (v + 1) / 2
        logvar = frac * torch.log(f(self.betas, t)) + (1 - frac) * f(self.post_logvar_clipped, t)
        abar = f(self.abar, t)
        x0_pred = ((xt - (1 - abar).sqrt() * eps.detach()) / abar.sqrt()).clamp(-1, 1)
        mean_pred = f(self.c0, t) * x0_pred + f(self.ct, t) * xt
        mean_true = f(self.c0, t) * x0 + f(self.ct, t) * xt
        kl = normal_kl(mean_true, f(self.post_logvar_clipped, t), mean_pred, logvar).mean(dim=(1, 2, 3)) / math.log(2.0)
        return mse + kl.mean()

def train_decoder(work: Path, ds: Dataset, cfg, steps: int) -> None:
    import torch

    from .models import Decoder, TextProjGraph, make_text_proj

    clip = load_clip(work, cfg)
    emb_all = torch.from_numpy(image_embeddings(work, ds, clip))
    u_emb, u_hidden, u_mask = encode_text(clip, [""])
    dec = Decoder(cfg)
    tp = TextProjGraph(make_text_proj(cfg))
    ph = Phase(work, "decoder", {"decoder": dec, "text_proj": tp}, steps, LR["decoder"])
    schedule = DecoderSchedule()
    rng = np.random.default_rng([3, ph.step])
    cfg_emb = tp.text_proj.learned_classifier_free_guidance_embeddings
    while ph.step < ph.steps:
        idx = rng.choice(len(ds), BATCH["decoder"], replace=False)
        b = len(idx)
        t_emb, hidden, mask = encode_text(clip, [ds.caption(int(i), rng) for i in idx])
        drop_text = torch.from_numpy(rng.random(b) < 0.5)
        t_emb = torch.where(drop_text[:, None], u_emb, t_emb)
        hidden = torch.where(drop_text[:, None, None], u_hidden, hidden)
        mask = torch.where(drop_text[:, None], u_mask, mask)
        drop_img = torch.from_numpy(rng.random(b) < 0.1)
        img_emb = torch.where(drop_img[:, None], cfg_emb[None].expand(b, -1), emb_all[idx])
        ehs, add_emb = tp(img_emb, t_emb, hidden)
        dmask = torch.cat([torch.ones(b, 4, dtype=torch.bool), mask], 1)
        x0 = to_signed(ds.img32[np.sort(idx)][np.argsort(np.argsort(idx))])
        t = torch.from_numpy(rng.integers(0, 1000, b))
        # Offset noise: a per-image, per-channel constant added to epsilon. Without it the model
        # reads the background colour off the low frequencies of x_t (which carry it at every t
        # but the last few) and never learns to take it from the conditioning, so sampling from
        # pure noise paints random backgrounds. Predicting the offset requires knowing the true
        # mean colour, i.e. using the CLIP embedding and the text.
        noise = torch.randn_like(x0) + OFFSET_NOISE * torch.randn(b, 3, 1, 1)
        xt = schedule.noised(x0, noise, t)
        out = dec(xt, t, ehs, add_emb, dmask)
        ph.update(schedule.hybrid_loss(out, noise, xt, x0, t))
    ph.save()


def blur(x, sigma):
    """Per-sample gaussian blur of [B,3,H,W] with per-sample sigmas (pixels); 0 leaves it alone."""
    import torch
    import torch.nn.functional as F

    out = []
    for xi, s in zip(x, sigma):
        if s < 0.05:
            out.append(xi)
            continue
        r = 3
        k = torch.exp(-(torch.arange(-r, r + 1, dtype=torch.float32) ** 2) / (2 * s * s))
        k = k / k.sum()
        xi = F.conv2d(F.pad(xi[:, None], (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
        xi = F.conv2d(F.pad(xi, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
        out.append(xi[:, 0])
    return torch.stack(out)


def train_upsampler(work: Path, ds: Dataset, cfg, steps: int, stage: int) -> None:
    import torch
    import torch.nn.functional as F

    from .models import Upsampler

    name = f"upsampler{stage}"
    hi_all, lo_all = (ds.img64, ds.img32) if stage == 0 else (ds.img128, ds.img64)
    side = hi_all.shape[1]
    crop = 32
    net = Upsampler(cfg)
    ph = Phase(work, name, {name: net}, steps, LR[name])
    _, abar = alphas_cumprod()
    abar = abar.float()
    rng = np.random.default_rng([4 + stage, ph.step])
    while ph.step < ph.steps:
        idx = np.sort(rng.choice(len(ds), BATCH[name], replace=False))
        hi = to_signed(hi_all[idx])
        lo = to_signed(lo_all[idx])
        # Corrupt the conditioning like the paper: blur, then a little noise.
        lo = blur(lo, rng.uniform(0.0, 0.8, len(idx)))
        lo = lo + torch.randn_like(lo) * torch.from_numpy(rng.uniform(0, 0.04, len(idx))).float()[:, None, None, None]
        up = F.interpolate(lo, size=(side, side), mode="bicubic", align_corners=False, antialias=True)
        ys, xs = rng.integers(0, side - crop + 1, 2)
        hi, up = hi[:, :, ys : ys + crop, xs : xs + crop], up[:, :, ys : ys + crop, xs : xs + crop]
        t = torch.from_numpy(rng.integers(0, 1000, len(idx)))
        a = abar[t][:, None, None, None]
        # Offset noise, as for the decoder: it makes the network take low frequencies (flat
        # colours) from the conditioning image instead of from x_t. Steps 3000-4000 of the
        # shipped upsamplers were a fine-tune with it after washed-out backgrounds showed up.
        noise = torch.randn_like(hi) + OFFSET_NOISE * torch.randn(len(idx), 3, 1, 1)
        xt = a.sqrt() * hi + (1 - a).sqrt() * noise
        pred = net(torch.cat([xt, up], 1), t)
        ph.update(((pred - noise) ** 2).mean())
    ph.save()


def train_classifier(work: Path, ds: Dataset, cfg, steps: int) -> None:
    """Shape classifier on single-object renderer ground truth (never on CLIP), for the report."""
    import torch
    import torch.nn.functional as F

    from .quality import ShapeClassifier, classifier_input
    from .render import SHAPES

    single = np.array([i for i, a in enumerate(ds.attrs) if a["kind"] == "single"])
    labels = np.array([SHAPES.index(ds.attrs[i]["shape"]) for i in single])
    net = ShapeClassifier()
    ph = Phase(work, "classifier", {"classifier": net}, steps, LR["classifier"], ema=False)
    rng = np.random.default_rng([9, ph.step])
    while ph.step < ph.steps:
        pick = np.sort(rng.choice(len(single), BATCH["classifier"], replace=False))
        x = classifier_input(np.asarray(ds.img128[single[pick]]))
        # Light augmentation towards generated images: blur and noise.
        x = blur(x, rng.uniform(0, 1.2, len(pick)))
        x = x + 0.05 * torch.randn_like(x)
        loss = F.cross_entropy(net(x), torch.from_numpy(labels[pick]))
        ph.update(loss)
    ph.save()


def run_phase(work: Path, name: str, steps: int) -> None:
    import torch

    torch.manual_seed(PHASES.index(name))
    if phase_done(work, name, steps):
        print(f"[{name}] already done", flush=True)
        return
    if name in ("prior", "decoder") and not phase_done(work, "clip"):
        print(f"[{name}] waiting for clip to finish", flush=True)
        while not phase_done(work, "clip"):
            time.sleep(15)
    cfg = load_config(work)
    ds = Dataset(work / "data")
    t0 = time.time()
    if name == "clip":
        train_clip(work, ds, cfg, steps)
    elif name == "prior":
        train_prior(work, ds, cfg, steps)
    elif name == "decoder":
        train_decoder(work, ds, cfg, steps)
    elif name in ("upsampler0", "upsampler1"):
        train_upsampler(work, ds, cfg, steps, int(name[-1]))
    elif name == "classifier":
        train_classifier(work, ds, cfg, steps)
    print(f"[{name}] finished in {time.time() - t0:.0f}s", flush=True)


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--work", type=Path, default=Path("runs/shapes"), help="checkpoint folder (resumes from it)")
    parser.add_argument("--phase", choices=("all",) + PHASES, default="all", help="run one phase only")
    parser.add_argument("--jobs", type=int, choices=(1, 2), default=2, help="parallel processes (one thread each when 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per process")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every phase's step count (e.g. 0.02 for a smoke run)")


def run(args: argparse.Namespace, name: str) -> int:
    try:
        import torch
    except ImportError as e:
        raise UserError("training needs torch: pip install -r tools/requirements.txt") from e
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    steps = {k: max(2, int(v * args.scale)) for k, v in DEFAULT_STEPS.items()}
    if args.phase == "data" or args.phase == "all":
        render_dataset(work / "data", N_IMAGES if args.scale >= 1 else max(512, int(N_IMAGES * args.scale)))
    load_config(work)
    if args.phase not in ("all", "data"):
        torch.set_num_threads(args.threads or (1 if args.jobs == 2 else os.cpu_count() or 1))
        run_phase(work, args.phase, steps[args.phase])
        return 0
    if args.phase == "data":
        return 0
    if args.jobs == 1:
        torch.set_num_threads(args.threads or os.cpu_count() or 1)
        for chain in CHAINS:
            for ph in chain:
                run_phase(work, ph, steps[ph])
        return 0
    # Two chains side by side, one process (and one thread) each.
    procs = []
    for chain in CHAINS:
        cmd = " && ".join(
            f"{sys.executable} -m unclip_tools train-shapes --work {work} --phase {ph} --jobs 2 --threads {args.threads or 1} --scale {args.scale}"
            for ph in chain
        )
        if chain is CHAINS[1]:
            cmd += f" && touch {work / 'chain1.done'}"
        procs.append(subprocess.Popen(["bash", "-c", cmd], env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}))
    codes = [p.wait() for p in procs]  # chain 1 marks itself done so that chain 0 can take its core
    if any(codes):
        raise UserError(f"a training chain failed (exit codes {codes}); re-run the same command to resume")
    return 0
