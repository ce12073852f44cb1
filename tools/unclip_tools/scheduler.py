"""UnCLIPScheduler in numpy, plus a wrapper that runs diffusers' own, both with explicit noise.

The reference sampler (`unclip_tools.sampler`) and the parity tests need the DDPM-style scheduler
that diffusers uses for unCLIP (`diffusers.UnCLIPScheduler`, 0.42.1) without torch, and they need
to control every noise draw. This module provides:

- `UnclipScheduler`: a numpy port that reproduces diffusers' float32 arithmetic operation by
  operation (schedule, `set_timesteps`, `step` for both variance types, both prediction types and
  the x0 clip range; reference §4). Its `step` takes the noise as an argument instead of drawing it.
- `DiffusersUnclipScheduler`: the same interface around `diffusers.UnCLIPScheduler`. diffusers'
  `step` draws its noise itself through `randn_tensor`; for the duration of one `step` call the
  module-level `randn_tensor` of `diffusers.schedulers.scheduling_unclip` is replaced by a function
  that returns the caller's noise, and restored afterwards (so do not step two diffusers-backed
  schedulers from different threads at once).
- `make_scheduler(config, backend)`: builds either from a manifest's scheduler entry
  (docs/model-repository.md, "schedulers").

The interface shared by both backends is `Scheduler`:
`set_timesteps(n) -> int64 array` and
`step(model_output, t, sample, prev_timestep, noise) -> (prev_sample, pred_original_sample)`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Protocol

import numpy as np

Backend = Literal["diffusers", "numpy", "auto"]
BACKENDS: tuple[str, ...] = ("auto", "diffusers", "numpy")
VARIANCE_TYPES = ("fixed_small_log", "learned_range")
PREDICTION_TYPES = ("epsilon", "sample")

_ONE = np.float32(1.0)
_HALF = np.float32(0.5)


@dataclass(frozen=True)
class SchedulerConfig:
    """The fields of a manifest scheduler entry (the same names as diffusers' config)."""

    num_train_timesteps: int = 1000
    variance_type: str = "fixed_small_log"
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    prediction_type: str = "epsilon"
    beta_schedule: str = "squaredcos_cap_v2"

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> "SchedulerConfig":
        """Build from a manifest entry; unknown keys are ignored, bad values raise ValueError."""
        known = {k: config[k] for k in cls.__dataclass_fields__ if k in config}
        out = cls(**known)
        out.validate()
        return out

    def validate(self) -> None:
        if self.beta_schedule != "squaredcos_cap_v2":
            raise ValueError(f"beta_schedule must be 'squaredcos_cap_v2', got {self.beta_schedule!r}")
        if self.variance_type not in VARIANCE_TYPES:
            raise ValueError(f"variance_type must be one of {VARIANCE_TYPES}, got {self.variance_type!r}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        if self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be at least 2, got {self.num_train_timesteps}")

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class Scheduler(Protocol):
    """What the sampler needs from a scheduler, whichever backend computes it."""

    config: SchedulerConfig

    def set_timesteps(self, num_inference_steps: int) -> np.ndarray:
        """Space `num_inference_steps` timesteps (int64, descending, 999 ... 0) and remember them."""
        ...

    def step(
        self,
        model_output: np.ndarray,
        timestep: int,
        sample: np.ndarray,
        prev_timestep: int | None,
        noise: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One reverse step: (x_{prev}, predicted x0). `noise` (latent-shaped) is used only when t > 0."""
        ...


# ---------------------------------------------------------------------------------------------
# Pure schedule functions
# ---------------------------------------------------------------------------------------------


def squaredcos_cap_v2_betas(num_train_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """diffusers' `betas_for_alpha_bar` (cosine): computed in Python floats, stored as float32."""

    def alpha_bar(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [
        min(1 - alpha_bar((i + 1) / num_train_timesteps) / alpha_bar(i / num_train_timesteps), max_beta)
        for i in range(num_train_timesteps)
    ]
    return np.asarray(betas, dtype=np.float32)


def spaced_timesteps(num_train_timesteps: int, num_inference_steps: int) -> np.ndarray:
    """UnCLIPScheduler.set_timesteps: round(k * (T-1)/(N-1)) for k < N, reversed; int64.

    numpy's round is half-to-even, exactly as diffusers uses it. N must be at least 2 (N = 1
    divides by zero in diffusers).
    """
    if num_inference_steps < 2:
        raise ValueError(f"the number of inference steps must be at least 2, got {num_inference_steps}")
    step_ratio = (num_train_timesteps - 1) / (num_inference_steps - 1)
    return (np.arange(0, num_inference_steps) * step_ratio).round()[::-1].copy().astype(np.int64)


# ---------------------------------------------------------------------------------------------
# The numpy backend
# ---------------------------------------------------------------------------------------------


class UnclipScheduler:
    """A numpy port of diffusers' UnCLIPScheduler with the noise passed in.

    Every quantity is float32 and computed with the same operations in the same order as
    diffusers (reference §4), so results agree with diffusers to float32 rounding of the
    transcendental functions (log/exp), not merely to the formula. Two details matter:
    `alphas_cumprod` is accumulated in float64 and rounded per element, as torch's CPU cumprod
    does, and the final-step coefficient keeps diffusers' float32 cancellation (0.99947, not 1).
    """

    def __init__(self, config: SchedulerConfig | dict[str, Any] | None = None) -> None:
        if config is None:
            config = SchedulerConfig()
        elif isinstance(config, dict):
            config = SchedulerConfig.from_dict(config)
        else:
            config.validate()
        self.config: SchedulerConfig = config
        self.betas: np.ndarray = squaredcos_cap_v2_betas(config.num_train_timesteps)
        self.alphas: np.ndarray = _ONE - self.betas
        # torch's CPU cumprod accumulates float32 in double; a float32 numpy cumprod differs by ~1 ulp.
        self.alphas_cumprod: np.ndarray = np.cumprod(self.alphas.astype(np.float64)).astype(np.float32)
        self.init_noise_sigma: float = 1.0
        self.timesteps: np.ndarray = np.arange(config.num_train_timesteps, dtype=np.int64)[::-1].copy()

    def set_timesteps(self, num_inference_steps: int) -> np.ndarray:
        self.timesteps = spaced_timesteps(self.config.num_train_timesteps, num_inference_steps)
        return self.timesteps.copy()

    def step(
        self,
        model_output: np.ndarray,
        timestep: int,
        sample: np.ndarray,
        prev_timestep: int | None = None,
        noise: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.config
        t = int(timestep)
        model_output = np.asarray(model_output, dtype=np.float32)
        sample = np.asarray(sample, dtype=np.float32)

        # 1. learned_range models emit [output, v] along dim 1.
        predicted_variance: np.ndarray | None = None
        if cfg.variance_type == "learned_range" and model_output.shape[1] == sample.shape[1] * 2:
            channels = sample.shape[1]
            model_output, predicted_variance = model_output[:, :channels], model_output[:, channels:]

        # 2.-3. Schedule values at t and at the previous (respaced) timestep.
        prev = t - 1 if prev_timestep is None else int(prev_timestep)
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev] if prev >= 0 else _ONE
        beta_prod_t = _ONE - alpha_prod_t
        beta_prod_t_prev = _ONE - alpha_prod_t_prev
        if prev == t - 1:
            beta = self.betas[t]
            alpha = self.alphas[t]
        else:
            beta = _ONE - alpha_prod_t / alpha_prod_t_prev
            alpha = _ONE - beta

        # 4.-5. Predicted x0, clipped.
        if cfg.prediction_type == "epsilon":
            pred_original_sample = (sample - np.sqrt(beta_prod_t) * model_output) / np.sqrt(alpha_prod_t)
        else:
            pred_original_sample = model_output
        if cfg.clip_sample:
            limit = np.float32(cfg.clip_sample_range)
            pred_original_sample = np.clip(pred_original_sample, -limit, limit)

        # 6. Posterior mean.
        pred_original_sample_coeff = (np.sqrt(alpha_prod_t_prev) * beta) / beta_prod_t
        current_sample_coeff = np.sqrt(alpha) * beta_prod_t_prev / beta_prod_t
        pred_prev_sample = pred_original_sample_coeff * pred_original_sample + current_sample_coeff * sample

        # 7. Noise, only while t > 0.
        if t > 0:
            if noise is None:
                raise ValueError(f"step at t={t} needs noise of shape {model_output.shape}")
            noise = np.asarray(noise, dtype=np.float32)
            if noise.shape != model_output.shape:
                raise ValueError(f"noise has shape {noise.shape}, the step needs {model_output.shape}")
            variance = beta_prod_t_prev / beta_prod_t * beta
            if cfg.variance_type == "fixed_small_log":
                log_variance = _log32(np.maximum(variance, np.float32(1e-20)))
                std: np.ndarray | np.float32 = _exp32(_HALF * log_variance)
            else:
                if predicted_variance is None:
                    raise ValueError(
                        "learned_range needs a model output with twice the sample's channels "
                        f"(got {model_output.shape[1]} for {sample.shape[1]})"
                    )
                min_log = _log32(variance)
                max_log = _log32(beta)
                frac = (predicted_variance + _ONE) / np.float32(2)
                log_variance = frac * max_log + (_ONE - frac) * min_log
                std = _exp32(_HALF * log_variance)
            pred_prev_sample = pred_prev_sample + std * noise

        return np.asarray(pred_prev_sample, dtype=np.float32), np.asarray(pred_original_sample, dtype=np.float32)


def _log32(x: np.ndarray | np.float32) -> Any:
    """float32 log, rounded from float64 (correctly rounded, like torch's to within 1 ulp)."""
    return np.log(np.asarray(x, dtype=np.float64)).astype(np.float32)


def _exp32(x: np.ndarray | np.float32) -> Any:
    """float32 exp, rounded from float64."""
    return np.exp(np.asarray(x, dtype=np.float64)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# The diffusers backend
# ---------------------------------------------------------------------------------------------


class DiffusersUnclipScheduler:
    """`diffusers.UnCLIPScheduler` behind the `Scheduler` interface, fed the caller's noise."""

    def __init__(self, config: SchedulerConfig | dict[str, Any]) -> None:
        import torch  # noqa: F401  (diffusers needs it; fail here with a clear ImportError)
        from diffusers import UnCLIPScheduler as _Diffusers

        if isinstance(config, dict):
            config = SchedulerConfig.from_dict(config)
        self.config: SchedulerConfig = config
        self._impl = _Diffusers(**config.as_dict())
        self.timesteps: np.ndarray = self._impl.timesteps.numpy().copy()

    def set_timesteps(self, num_inference_steps: int) -> np.ndarray:
        if num_inference_steps < 2:
            raise ValueError(f"the number of inference steps must be at least 2, got {num_inference_steps}")
        self._impl.set_timesteps(num_inference_steps)
        self.timesteps = self._impl.timesteps.numpy().astype(np.int64).copy()
        return self.timesteps.copy()

    def step(
        self,
        model_output: np.ndarray,
        timestep: int,
        sample: np.ndarray,
        prev_timestep: int | None = None,
        noise: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        import torch

        out = torch.from_numpy(np.ascontiguousarray(model_output, dtype=np.float32))
        x = torch.from_numpy(np.ascontiguousarray(sample, dtype=np.float32))
        # The pipeline passes 0-d int64 tensors taken from `timesteps`; do the same.
        t = torch.tensor(int(timestep), dtype=torch.int64)
        prev = None if prev_timestep is None else torch.tensor(int(prev_timestep), dtype=torch.int64)
        with _noise_from(noise):
            prev_sample, pred_original = self._impl.step(out, t, x, prev_timestep=prev, return_dict=False)
        return prev_sample.numpy().astype(np.float32), pred_original.numpy().astype(np.float32)


@contextlib.contextmanager
def _noise_from(noise: np.ndarray | None) -> Iterator[None]:
    """Make diffusers' scheduler module return `noise` from `randn_tensor` while the block runs."""
    import torch
    from diffusers.schedulers import scheduling_unclip

    def fake_randn_tensor(shape: Any, generator: Any = None, device: Any = None, dtype: Any = None, **_: Any) -> Any:
        if noise is None:
            raise ValueError(f"the scheduler drew noise of shape {tuple(shape)} but none was given")
        if tuple(shape) != tuple(noise.shape):
            raise ValueError(f"noise has shape {tuple(noise.shape)}, the step needs {tuple(shape)}")
        return torch.from_numpy(np.ascontiguousarray(noise, dtype=np.float32)).to(dtype=dtype or torch.float32)

    original = scheduling_unclip.randn_tensor
    scheduling_unclip.randn_tensor = fake_randn_tensor
    try:
        yield
    finally:
        scheduling_unclip.randn_tensor = original


# ---------------------------------------------------------------------------------------------
# Choosing a backend
# ---------------------------------------------------------------------------------------------


def diffusers_available() -> bool:
    """Whether diffusers (and torch) can be imported, without importing them."""
    try:
        return importlib.util.find_spec("diffusers") is not None and importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def resolve_backend(backend: str) -> str:
    """"auto" -> "diffusers" when importable, else "numpy"; other names are checked and returned."""
    if backend not in BACKENDS:
        raise ValueError(f"scheduler backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        return "diffusers" if diffusers_available() else "numpy"
    return backend


def make_scheduler(config: dict[str, Any] | SchedulerConfig, backend: str = "auto") -> Scheduler:
    """A scheduler for a manifest entry, computed by diffusers or by the numpy port."""
    if resolve_backend(backend) == "diffusers":
        return DiffusersUnclipScheduler(config)
    return UnclipScheduler(config)
