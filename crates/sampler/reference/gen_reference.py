"""Regenerate the reference numbers hard-coded in `unclip-sampler`'s unit tests.

Run with a Python that has torch and diffusers (checked with torch 2.15, diffusers 0.42.1):

    python crates/sampler/reference/gen_reference.py

It prints Rust-ready literals. Inputs come from `pat`, a float32 pattern that the Rust tests
rebuild bit for bit (`crate::test_util::pat`), so no input arrays need to be pasted.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, UnCLIPScheduler


def pat(n: int, a: int, b: int, m: int, scale: float) -> np.ndarray:
    """((i*a + b) % m) / (m-1) * 2 - 1, times scale, all in float32 (mirrors the Rust helper)."""
    out = []
    for i in range(n):
        v = np.float32((i * a + b) % m) / np.float32(m - 1) * np.float32(2.0) - np.float32(1.0)
        out.append(v * np.float32(scale))
    return np.array(out, dtype=np.float32)


def lit(xs) -> str:
    return "[" + ", ".join(repr(float(np.float32(x))) for x in np.asarray(xs).reshape(-1)) + "]"


def schedule() -> None:
    s = UnCLIPScheduler()
    idx = [0, 1, 2, 10, 100, 250, 500, 750, 900, 998, 999]
    print("// schedule indices", idx)
    print("betas:", lit(s.betas[idx].numpy()))
    print("alphas_cumprod:", lit(s.alphas_cumprod[idx].numpy()))
    for n in [3, 64, 250, 1000]:
        s.set_timesteps(n)
        ts = s.timesteps.tolist()
        print(f"timesteps N={n}: head {ts[:6]} tail {ts[-6:]}")


def unclip_case(name, cfg, out, x, noise, t, prev) -> None:
    s = UnCLIPScheduler(**cfg)
    import diffusers.schedulers.scheduling_unclip as su

    su.randn_tensor = lambda shape, **kw: torch.from_numpy(noise.reshape(shape))
    r = s.step(torch.from_numpy(out), t, torch.from_numpy(x), prev_timestep=prev)
    print(f"// {name} t={t} prev={prev}")
    print("prev_sample:", lit(r.prev_sample.numpy()))
    print("pred_original_sample:", lit(r.pred_original_sample.numpy()))


def unclip_cases() -> None:
    prior = dict(variance_type="fixed_small_log", prediction_type="sample", clip_sample=True, clip_sample_range=5.0)
    out = pat(6, 5, 1, 11, 7.0).reshape(1, 6)
    x = pat(6, 3, 2, 7, 2.0).reshape(1, 6)
    noise = pat(6, 7, 3, 13, 1.3).reshape(1, 6)
    for t, p in [(999, 957), (42, 0), (0, None), (500, None)]:
        unclip_case("prior", prior, out, x, noise, t, p)

    dec = dict(variance_type="learned_range", prediction_type="epsilon", clip_sample=True, clip_sample_range=1.0)
    eps = pat(8, 5, 1, 11, 1.0)
    v = pat(8, 3, 1, 5, 1.2)
    x = pat(8, 7, 2, 9, 1.0).reshape(1, 2, 2, 2)
    noise = pat(8, 7, 3, 13, 1.3).reshape(1, 2, 2, 2)
    out = np.concatenate([eps.reshape(1, 2, 2, 2), v.reshape(1, 2, 2, 2)], axis=1)
    for t, p in [(999, 957), (500, 458), (42, 0), (0, None), (300, None)]:
        unclip_case("decoder", dec, out, x, noise, t, p)

    sr = dict(variance_type="fixed_small_log", prediction_type="epsilon", clip_sample=True, clip_sample_range=1.0)
    for t, p in [(999, 832), (166, 0), (0, None)]:
        unclip_case("super_res", sr, eps.reshape(1, 2, 2, 2), x, noise, t, p)
    noclip = dict(sr, clip_sample=False)
    unclip_case("super_res_noclip", noclip, eps.reshape(1, 2, 2, 2), x, noise, 832, 666)


def ddim_cases() -> None:
    eps = torch.from_numpy(pat(8, 5, 1, 11, 1.0).reshape(1, 2, 2, 2))
    x = torch.from_numpy(pat(8, 7, 2, 9, 1.0).reshape(1, 2, 2, 2))
    noise = torch.from_numpy(pat(8, 7, 3, 13, 1.3).reshape(1, 2, 2, 2))
    s = DDIMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample=True, clip_sample_range=1.0,
                      set_alpha_to_one=True, prediction_type="epsilon")
    s.set_timesteps(25)  # step ratio 40: t -> t - 40
    for t, eta, clipped in [(999, 0.0, False), (999, 0.5, False), (500, 1.0, True), (39, 0.0, False)]:
        r = s.step(eps, t, x, eta=eta, use_clipped_model_output=clipped, variance_noise=noise)
        print(f"// ddim t={t} prev={t - 40} eta={eta} clipped={clipped}")
        print("prev_sample:", lit(r.prev_sample.numpy()))
        print("pred_original_sample:", lit(r.pred_original_sample.numpy()))
    # q_sample (DDPM add_noise) at t = 500.
    q = s.add_noise(x, noise, torch.tensor([500]))
    print("// q_sample(x0=x, t=500, noise)")
    print("q:", lit(q.numpy()))


def resize_cases() -> None:
    for (h, w), (oh, ow) in [((4, 5), (8, 10)), ((8, 8), (3, 3)), ((5, 7), (3, 11))]:
        n = h * w
        x = (np.arange(n) * 7 % 13).astype(np.float32) / np.float32(13.0)
        t = torch.from_numpy(x.reshape(1, 1, h, w))
        y = F.interpolate(t, size=(oh, ow), mode="bicubic", align_corners=False, antialias=True)
        print(f"// resize {h}x{w} -> {oh}x{ow}")
        print("out:", lit(y.numpy()))


if __name__ == "__main__":
    torch.set_num_threads(1)
    schedule()
    unclip_cases()
    ddim_cases()
    resize_cases()
