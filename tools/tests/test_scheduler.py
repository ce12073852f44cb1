"""Tests of unclip_tools.scheduler: the numpy UnCLIPScheduler against reference numbers and diffusers.

The light tests check the schedule, the timestep spacing and the step coefficients against the
values in the reference (§4) and need only numpy. The heavy test runs diffusers' own
UnCLIPScheduler (fed the same noise) on random inputs for every stage configuration.
"""

from __future__ import annotations

import numpy as np
import pytest

from unclip_tools.scheduler import (
    SchedulerConfig,
    UnclipScheduler,
    make_scheduler,
    resolve_backend,
    spaced_timesteps,
    squaredcos_cap_v2_betas,
)

# The three Karlo stages (reference §4 "Per-stage settings") plus combinations they do not use.
STAGE_CONFIGS: dict[str, dict] = {
    "prior": {"variance_type": "fixed_small_log", "prediction_type": "sample", "clip_sample_range": 5.0},
    "decoder": {"variance_type": "learned_range", "prediction_type": "epsilon"},
    "upsampler": {"variance_type": "fixed_small_log", "prediction_type": "epsilon"},
    "learned_range_sample_noclip": {"variance_type": "learned_range", "prediction_type": "sample", "clip_sample": False},
    "fixed_epsilon_range_2": {"variance_type": "fixed_small_log", "prediction_type": "epsilon", "clip_sample_range": 2.0},
}


def _coefficients(scheduler: UnclipScheduler, t: int, prev: int | None) -> tuple[float, float, float]:
    """(c_x0, c_xt, std) of one step, read off by stepping unit inputs (prediction_type=sample, no clip)."""
    one = np.ones((1, 1), dtype=np.float32)
    zero = np.zeros((1, 1), dtype=np.float32)
    c_x0 = scheduler.step(one, t, zero, prev, zero)[0].item()
    c_xt = scheduler.step(zero, t, one, prev, zero)[0].item()
    std = scheduler.step(zero, t, zero, prev, one)[0].item() if t > 0 else 0.0
    return c_x0, c_xt, std


def test_betas_and_alphas_cumprod_match_reference_values() -> None:
    """β and ᾱ at the reference's checkpoints (§4, T = 1000)."""
    betas = squaredcos_cap_v2_betas(1000)
    assert betas.dtype == np.float32
    np.testing.assert_allclose(betas[[0, 1, 998, 999]], [4.128422e-5, 4.614175e-5, 0.749999, 0.999], rtol=1e-5)
    assert (betas[:999] < 0.999).all()
    ac = UnclipScheduler().alphas_cumprod
    np.testing.assert_allclose(ac[[0, 500, 999]], [0.9999587, 0.4922850, 2.428735e-9], rtol=1e-5)


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        (2, [999, 0]),
        (7, [999, 832, 666, 500, 333, 166, 0]),
        (25, [999, 957, 916, 874, 832, 791, 749, 708, 666, 624, 583, 541, 500,
              458, 416, 375, 333, 291, 250, 208, 166, 125, 83, 42, 0]),
    ],
)
def test_set_timesteps_matches_reference_table(steps: int, expected: list[int]) -> None:
    """set_timesteps reproduces the §4 table (half-to-even rounding, 999 first, 0 last)."""
    timesteps = UnclipScheduler().set_timesteps(steps)
    assert timesteps.dtype == np.int64
    assert timesteps.tolist() == expected


def test_fifty_steps_and_one_step() -> None:
    """N = 50 spot checks; N = 1 is refused (diffusers divides by zero)."""
    timesteps = spaced_timesteps(1000, 50)
    assert timesteps[:4].tolist() == [999, 979, 958, 938] and timesteps[-3:].tolist() == [41, 20, 0]
    with pytest.raises(ValueError, match="at least 2"):
        spaced_timesteps(1000, 1)


def test_seven_step_coefficients_match_reference_table() -> None:
    """c_x0, c_xt and the fixed-small std for the 7-step super-res schedule (§4 table)."""
    scheduler = UnclipScheduler({"variance_type": "fixed_small_log", "prediction_type": "sample", "clip_sample": False})
    table = {
        (999, 832): (0.257333, 0.000228, 0.966323),
        (832, 666): (0.388176, 0.418943, 0.768185),
        (666, 500): (0.465541, 0.476002, 0.580410),
        (500, 333): (0.570934, 0.413958, 0.413549),
        (333, 166): (0.746956, 0.250952, 0.236961),
        (166, 0): (0.999450, 0.000549, 0.006425),
    }
    for (t, prev), expected in table.items():
        np.testing.assert_allclose(_coefficients(scheduler, t, prev), expected, atol=2e-6, err_msg=f"{t}->{prev}")
    # The final step keeps diffusers' float32 cancellation: 0.99947, not 1.
    c_x0, c_xt, std = _coefficients(scheduler, 0, None)
    assert abs(c_x0 - 0.999472) < 2e-6 and c_xt == 0.0 and std == 0.0


def test_final_step_draws_no_noise_and_other_steps_require_it() -> None:
    """At t = 0 the noise is ignored (may be None); at t > 0 it is required and shape-checked."""
    scheduler = UnclipScheduler(STAGE_CONFIGS["upsampler"])
    x = np.ones((1, 3, 2, 2), dtype=np.float32)
    a = scheduler.step(x, 0, x, None, None)[0]
    b = scheduler.step(x, 0, x, None, np.full_like(x, 100.0))[0]
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="needs noise"):
        scheduler.step(x, 500, x, 333, None)
    with pytest.raises(ValueError, match="shape"):
        scheduler.step(x, 500, x, 333, np.zeros((1, 3, 2, 3), dtype=np.float32))


def test_learned_range_interpolates_between_posterior_and_beta() -> None:
    """v = -1 gives the posterior std, v = +1 gives sqrt(β); the variance channels are split off."""
    fixed = UnclipScheduler({"variance_type": "fixed_small_log", "prediction_type": "epsilon"})
    learned = UnclipScheduler({"variance_type": "learned_range", "prediction_type": "epsilon"})
    zero = np.zeros((1, 3, 1, 1), dtype=np.float32)
    one = np.ones_like(zero)
    t, prev = 666, 500
    posterior_std = fixed.step(zero, t, zero, prev, one)[0]
    low = learned.step(np.concatenate([zero, -one], axis=1), t, zero, prev, one)[0]
    high = learned.step(np.concatenate([zero, one], axis=1), t, zero, prev, one)[0]
    np.testing.assert_allclose(low, posterior_std, rtol=1e-6)
    beta = 1 - learned.alphas_cumprod[t] / learned.alphas_cumprod[prev]
    np.testing.assert_allclose(high, np.sqrt(beta), rtol=1e-6)
    assert low.shape == zero.shape


def test_clip_range_and_prediction_types() -> None:
    """x0 is clipped to ±clip_sample_range; 'sample' passes the output through as x0."""
    prior = UnclipScheduler(STAGE_CONFIGS["prior"])
    out = np.array([[-9.0, -1.0, 0.5, 7.0]], dtype=np.float32)
    x0 = prior.step(out, 500, np.zeros_like(out), 333, np.zeros_like(out))[1]
    assert x0.tolist() == [[-5.0, -1.0, 0.5, 5.0]]
    eps = UnclipScheduler(STAGE_CONFIGS["upsampler"])
    x0 = eps.step(np.zeros((1, 1), np.float32), 999, np.full((1, 1), 0.5, np.float32), 832, np.zeros((1, 1), np.float32))[1]
    assert x0.item() == 1.0  # 0.5 / sqrt(ᾱ_999) is huge, clipped to 1


def test_config_validation_and_backend_names() -> None:
    """Unknown variance/prediction types and backends are refused with a message."""
    with pytest.raises(ValueError, match="variance_type"):
        SchedulerConfig.from_dict({"variance_type": "fixed_large"})
    with pytest.raises(ValueError, match="prediction_type"):
        SchedulerConfig.from_dict({"prediction_type": "v_prediction"})
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("jax")
    assert resolve_backend("numpy") == "numpy"
    assert isinstance(make_scheduler(STAGE_CONFIGS["decoder"], "numpy"), UnclipScheduler)


@pytest.mark.heavy
@pytest.mark.parametrize("stage", sorted(STAGE_CONFIGS))
@pytest.mark.parametrize("steps", [2, 7, 25])
def test_numpy_matches_diffusers(stage: str, steps: int) -> None:
    """The numpy port equals diffusers' UnCLIPScheduler (given the same noise) within 1e-6.

    Not bit for bit: torch's float32 sqrt/log/exp (MKL VML on CPU) are not correctly rounded,
    numpy's are, so results differ by an ulp or two. Inputs are unit-scale random arrays; the
    bound is 1e-6 absolute plus 1e-6 relative (for the few values far from unit scale).
    """
    pytest.importorskip("diffusers")
    from unclip_tools.scheduler import DiffusersUnclipScheduler

    config = STAGE_CONFIGS[stage]
    ours, theirs = make_scheduler(config, "numpy"), make_scheduler(config, "diffusers")
    assert isinstance(theirs, DiffusersUnclipScheduler)
    timesteps = ours.set_timesteps(steps)
    assert timesteps.tolist() == theirs.set_timesteps(steps).tolist()
    rng = np.random.default_rng(steps)
    learned = config["variance_type"] == "learned_range"
    shapes = [(2, 32)] if not learned else []
    shapes += [(2, 3, 4, 4)]
    for shape in shapes:
        for i, t in enumerate(timesteps):
            prev = None if i + 1 == len(timesteps) else int(timesteps[i + 1])
            out_shape = (shape[0], 2 * shape[1], *shape[2:]) if learned else shape
            model_output = rng.standard_normal(out_shape, dtype=np.float32)
            sample = rng.standard_normal(shape, dtype=np.float32)
            noise = rng.standard_normal(shape, dtype=np.float32)
            a = ours.step(model_output, int(t), sample, prev, noise)
            b = theirs.step(model_output, int(t), sample, prev, noise)
            for name, x, y in zip(("prev_sample", "pred_original_sample"), a, b):
                assert x.shape == y.shape == shape
                np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6, err_msg=f"{stage} N={steps} t={t} {name}")


@pytest.mark.heavy
def test_diffusers_backend_restores_randn_tensor() -> None:
    """The noise patch is local to one step: diffusers' randn_tensor is back afterwards, even on error."""
    pytest.importorskip("diffusers")
    from diffusers.schedulers import scheduling_unclip

    original = scheduling_unclip.randn_tensor
    scheduler = make_scheduler(STAGE_CONFIGS["upsampler"], "diffusers")
    x = np.zeros((1, 3, 2, 2), dtype=np.float32)
    scheduler.step(x, 500, x, 333, np.ones_like(x))
    assert scheduling_unclip.randn_tensor is original
    with pytest.raises(ValueError, match="shape"):
        scheduler.step(x, 500, x, 333, np.ones((1, 3, 2, 5), dtype=np.float32))
    assert scheduling_unclip.randn_tensor is original
