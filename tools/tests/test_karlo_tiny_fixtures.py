"""Replay the diffusers recordings in models/karlo-tiny/fixtures against the ONNX graphs.

Light: numpy, onnxruntime, pillow and tokenizers only. Every model call of every full-trace case
is fed through its graph and must reproduce diffusers' outputs within 1e-4; the recordings are
also checked for the properties fixtures/README.md promises (draw order, step chaining, guidance,
final image), the tokenizer and the image preprocessing are checked against them, and a float32
numpy UnCLIPScheduler replays every scheduler step. Replay cases (noise draws and stage values
only) are checked for their structure here and replayed free-running in test_sampler.py. The
numpy code here doubles as a reference for reading the fixtures from another language.
"""

from __future__ import annotations

import json
import math
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

TOOLS = Path(__file__).resolve().parents[1]
KARLO_TINY = TOOLS.parent / "models" / "karlo-tiny"
FIXTURES = KARLO_TINY / "fixtures"
MANIFEST = json.loads((KARLO_TINY / "manifest.json").read_text())
INDEX = json.loads((FIXTURES / "index.json").read_text())
CASES = [entry["case"] for entry in INDEX["cases"]]
REPLAY_CASES = [entry["case"] for entry in INDEX.get("replay_cases", [])]
STAGE_STEPS = {"prior": "prior_num_inference_steps", "decoder": "decoder_num_inference_steps",
               "upsampler": "super_res_num_inference_steps"}
GRAPH_TOLERANCE = 1e-4


class Case:
    """One recorded pipeline call: its JSON and its arrays, with references resolved."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
        with np.load(FIXTURES / self.data["arrays"]) as arrays:
            self.arrays = {key: arrays[key] for key in arrays.files}

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, ref: Any) -> np.ndarray:
        """A tensor reference: a key, or {"concat": [k1, k2], "axis": a}."""
        if isinstance(ref, str):
            return self.arrays[ref]
        return np.concatenate([self.get(part) for part in ref["concat"]], axis=ref["axis"])

    def value(self, name: str) -> np.ndarray:
        return self.get(self.data["values"][name])

    def steps(self, stage: str) -> list[dict[str, Any]]:
        return [step for step in self.data["scheduler_steps"] if step["stage"] == stage]

    def calls(self, component: str) -> list[dict[str, Any]]:
        return [call for call in self.data["model_calls"] if call["component"].startswith(component)]


@lru_cache(maxsize=None)
def load_case(name: str) -> Case:
    return Case(name)


def graph_specs() -> dict[str, dict[str, Any]]:
    specs = {}
    components = MANIFEST["components"]
    for name in ("text_encoder", "image_encoder", "prior", "text_proj", "decoder"):
        specs[name] = components[name]
    for i, stage in enumerate(components["upsamplers"]):
        specs[f"upsamplers[{i}].first"] = stage["first"]
        specs[f"upsamplers[{i}].last"] = stage["last"]
    return specs


@lru_cache(maxsize=None)
def session(component: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    path = KARLO_TINY / graph_specs()[component]["file"]
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# --- model calls through the graphs ------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_every_model_call_replays_through_its_graph(name: str) -> None:
    """Feed each recorded model call's inputs to its ONNX graph; outputs must match diffusers'."""
    case = load_case(name)
    worst = 0.0
    for call in case["model_calls"]:
        spec = graph_specs()[call["component"]]
        inputs = {k: v for k, v in call["inputs"].items() if not isinstance(v, int)}
        feed = {k: case.get(v) for k, v in inputs.items()}
        batch = next(iter(feed.values())).shape[0]
        if "timestep" in call["inputs"]:
            feed["timestep"] = np.full(batch, call["inputs"]["timestep"], dtype=np.int64)
        assert sorted(feed) == sorted(t["name"] for t in spec["inputs"]), call["component"]
        names = [t["name"] for t in spec["outputs"]]
        for output, got in zip(names, session(call["component"]).run(names, feed)):
            want = case.get(call["outputs"][output])
            assert got.shape == want.shape, (call["index"], output)
            diff = float(np.abs(got - want).max())
            assert diff <= GRAPH_TOLERANCE, f"{name} call {call['index']} {call['component']}.{output}: {diff:.3g}"
            worst = max(worst, diff)
    print(f"{name}: {len(case['model_calls'])} calls, max |onnx - diffusers| = {worst:.2e}")


# --- structure promised by fixtures/README.md --------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_recording_structure(name: str) -> None:
    case = load_case(name)
    settings = case["settings"]
    batch = settings["batch"]
    text_to_image = case["kind"] == "text_to_image"
    stages = ["prior", "decoder", "upsampler"] if text_to_image else ["decoder", "upsampler"]
    keys = {"prior": "prior_num_inference_steps", "decoder": "decoder_num_inference_steps",
            "upsampler": "super_res_num_inference_steps"}

    # One event stream: seq numbers 0..n-1 shared by noise, model calls and scheduler steps.
    seqs = sorted(r["seq"] for part in ("noise", "model_calls", "scheduler_steps") for r in case[part])
    assert seqs == list(range(len(seqs)))

    # Draw order: per stage, the initial latents, then one draw per step except the last.
    expected = []
    for stage in stages:
        expected.append((stage, "initial_latents", None))
        expected += [(stage, "step", i) for i in range(settings[keys[stage]] - 1)]
    assert [(n["stage"], n["kind"], n["step"]) for n in case["noise"]] == expected
    assert len(case["noise"]) == len(stages) + sum(settings[keys[s]] - 1 for s in stages)

    for stage in stages:
        steps = case.steps(stage)
        assert [s["timestep"] for s in steps] == case["timesteps"][stage]
        assert steps[0]["timestep"] == 999 and steps[-1]["timestep"] == 0
        initial = [n for n in case["noise"] if n["stage"] == stage and n["kind"] == "initial_latents"][0]
        assert steps[0]["sample"] == initial["tensor"]
        for step, following in zip(steps, steps[1:]):
            assert following["sample"] == step["prev_sample"]
            assert step["prev_timestep"] == following["timestep"]
            assert step["noise"] == [n["tensor"] for n in case["noise"]
                                     if n["stage"] == stage and n["step"] == step["step"]][0]
        assert steps[-1]["prev_timestep"] is None and steps[-1]["noise"] is None

    # Guidance: prior on the whole x0 prediction, decoder on epsilon only, variance from cond.
    if text_to_image:
        for call, step in zip(case.calls("prior"), case.steps("prior")):
            out = case.get(call["outputs"]["predicted_image_embedding"])
            uncond, cond = out[:batch], out[batch:]
            guided = uncond + np.float32(settings["prior_guidance_scale"]) * (cond - uncond)
            np.testing.assert_allclose(case.get(step["model_output"]), guided, atol=1e-6)
    scale = np.float32(settings["decoder_guidance_scale"])
    for call, step in zip(case.calls("decoder"), case.steps("decoder")):
        out = case.get(call["outputs"]["out_sample"])
        assert out.shape[0] == 2 * batch
        uncond, cond = out[:batch], out[batch:]
        guided = np.concatenate([uncond[:, :3] + scale * (cond[:, :3] - uncond[:, :3]), cond[:, 3:]], axis=1)
        np.testing.assert_allclose(case.get(step["model_output"]), guided, atol=1e-6)
        mask = case.get(call["inputs"]["attention_mask"])
        assert mask[:, :4].all() and mask.shape == (2 * batch, 81)
    # The upsampler: `first` on every step but the last, no guidance.
    upsampler_calls = case.calls("upsamplers")
    assert [c["component"] for c in upsampler_calls] == (
        ["upsamplers[0].first"] * (len(upsampler_calls) - 1) + ["upsamplers[0].last"])
    for call, step in zip(upsampler_calls, case.steps("upsampler")):
        assert call["outputs"]["out_sample"] == step["model_output"]

    # The decoder result, the upsampled image and the final image.
    image_small = np.clip(case.get(case.steps("decoder")[-1]["prev_sample"]), -1, 1)
    np.testing.assert_array_equal(case.value("image_small"), image_small)
    assert case.value("image_upscaled").shape == (batch, 3, 64, 64)
    final = case.get(case.steps("upsampler")[-1]["prev_sample"])
    image = np.clip(final * 0.5 + 0.5, 0, 1).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(case.value("image"), image, atol=1e-6)


# --- replay cases ------------------------------------------------------------------------------


def test_index_separates_full_traces_and_replays() -> None:
    """"cases" holds full traces only, "replay_cases" the replays; together they cover the issue's grid."""
    replays = INDEX["replay_cases"]
    assert len(REPLAY_CASES) >= 4 and not set(REPLAY_CASES) & set(CASES), (CASES, REPLAY_CASES)
    for entry in INDEX["cases"]:
        assert "trace" not in entry, entry
        assert "trace" not in load_case(entry["case"]).data, entry["case"]
    for entry in replays:
        assert entry["trace"] == "replay", entry
        full = {k: v for k, v in entry.items() if k != "trace"}
        assert sorted(full) == sorted(INDEX["cases"][0]), f"{entry['case']}: index fields {sorted(full)}"
        case = load_case(entry["case"])
        assert case["trace"] == "replay" and case["case"] == entry["case"] and case["arrays"] == entry["arrays"]
        assert case["settings"]["seed"] == entry["seed"]
        assert entry["steps"] == [case["settings"][k] for k in STAGE_STEPS.values() if k in case["settings"]]
    # Both prompts x both seeds at 25/25/7 and at 2/2/2 (single-prompt text-to-image cases).
    for steps in ([25, 25, 7], [2, 2, 2]):
        seen = set()
        for entry in INDEX["cases"] + replays:
            settings = load_case(entry["case"])["settings"]
            if entry["kind"] == "text_to_image" and entry["steps"] == steps and settings["batch"] == 1:
                seen.add((settings["prompt"][0], entry["seed"]))
        prompts = {p for p, _ in seen}
        assert len(prompts) == 2 and seen == {(p, s) for p in prompts for s in (0, 1)}, (steps, sorted(seen))


@pytest.mark.parametrize("name", REPLAY_CASES)
def test_replay_case_structure(name: str) -> None:
    """A replay case: every noise draw in order with its shape, the stage values, no model calls or steps."""
    case = load_case(name)
    settings = case["settings"]
    batch = settings["batch"]
    assert case["kind"] == "text_to_image"
    for key in ("model_calls", "scheduler_steps", "text_encoder_calls"):
        assert key not in case.data, f"{name}: a replay case has no {key}"

    # The same values as a full case of its kind, with the shapes fixtures/README.md gives.
    full = load_case(next(c for c in CASES if load_case(c)["kind"] == case["kind"]))
    assert sorted(case["values"]) == sorted(full["values"]), name
    shapes = {"prompt_input_ids": (batch, 77), "prompt_attention_mask": (batch, 77),
              "prompt_text_embeds": (batch, 32), "prompt_last_hidden_state": (batch, 77, 32),
              "uncond_text_embeds": (batch, 32), "uncond_last_hidden_state": (batch, 77, 32),
              "prior_latents": (batch, 32), "image_embeddings": (batch, 32), "image_small": (batch, 3, 32, 32),
              "image_upscaled": (batch, 3, 64, 64), "image": (batch, 64, 64, 3)}
    assert sorted(shapes) == sorted(case["values"]), name
    for value, shape in shapes.items():
        assert case.value(value).shape == shape, f"{name}: {value} has shape {case.value(value).shape}"
    assert case.value("prompt_input_ids").dtype == np.int64 and case.value("prompt_attention_mask").dtype == np.bool_
    assert np.abs(case.value("image_small")).max() <= 1.0
    assert 0.0 <= case.value("image").min() and case.value("image").max() <= 1.0

    # Draw order and shapes: per stage the initial latents, then one draw per step but the last.
    latents = {"prior": (batch, 32), "decoder": (batch, 3, 32, 32), "upsampler": (batch, 3, 64, 64)}
    expected = []
    for stage, shape in latents.items():
        steps = settings[STAGE_STEPS[stage]]
        timesteps = case["timesteps"][stage]
        assert len(timesteps) == steps and timesteps[0] == 999 and timesteps[-1] == 0, (name, stage, timesteps)
        assert timesteps == sorted(timesteps, reverse=True), (name, stage)
        expected.append((stage, "initial_latents", None, shape))
        expected += [(stage, "step", i, shape) for i in range(steps - 1)]
    noise = case["noise"]
    assert [(n["stage"], n["kind"], n["step"], tuple(n["shape"])) for n in noise] == expected, name
    assert [n["index"] for n in noise] == list(range(len(noise)))
    seqs = [n["seq"] for n in noise]
    assert seqs == sorted(set(seqs)), f"{name}: noise seq numbers must increase"
    for n in noise:
        assert case.get(n["tensor"]).shape == tuple(n["shape"]), (name, n["index"])
        assert case.get(n["tensor"]).dtype == np.float32
    # The draws are standard normal (one loose check over all of them) and all distinct.
    draws = np.concatenate([case.get(n["tensor"]).ravel() for n in noise])
    assert abs(float(draws.mean())) < 0.05 and abs(float(draws.std()) - 1.0) < 0.05, name
    assert len({n["tensor"] for n in noise}) == len(noise), f"{name}: repeated noise draws"

    # The npz holds exactly the referenced tensors.
    referenced = {n["tensor"] for n in noise} | set(case["values"].values())
    assert referenced == set(case.arrays), f"{name}: unreferenced arrays {sorted(set(case.arrays) - referenced)}"


def test_text_to_image_matches_the_diffusers_test_slice() -> None:
    """diffusers' test_unclip ("horse", seed 0, 2/2/2 steps) expects this slice within 1e-2."""
    image = load_case("t2i_horse_seed0_steps2-2-2").value("image")
    expected = [0.9997, 0.9988, 0.0028, 0.9997, 0.9984, 0.9965, 0.0029, 0.9986, 0.0025]
    assert np.abs(image[0, -3:, -3:, -1].flatten() - expected).max() < 1e-2


# --- tokenizer, tensors and image preprocessing ------------------------------------------------


def test_tokenizer_json_reproduces_the_recorded_ids() -> None:
    """tokenizer.json (tokenizers, as the Rust services load it) gives diffusers' ids and masks."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(KARLO_TINY / MANIFEST["text"]["tokenizer"]))
    seen = 0
    for name in CASES + REPLAY_CASES:
        case = load_case(name)
        prompts = case["settings"].get("prompt", [""] * case["settings"]["batch"])
        encodings = tokenizer.encode_batch(prompts)
        np.testing.assert_array_equal(np.array([e.ids for e in encodings]), case.value("prompt_input_ids"))
        np.testing.assert_array_equal(np.array([e.attention_mask for e in encodings], dtype=bool),
                                      case.value("prompt_attention_mask"))
        seen += len(prompts)
    assert seen >= 3 + len(REPLAY_CASES)
    long = tokenizer.encode("x " * 200)
    assert len(long.ids) == 77 and long.ids[0] == MANIFEST["text"]["bos_id"] and long.ids[-1] == MANIFEST["text"]["eos_id"]


def test_uncond_tensors_match_the_recorded_encodings_of_the_empty_prompt() -> None:
    from safetensors.numpy import load_file

    tensors = load_file(str(KARLO_TINY / MANIFEST["tensors"]["file"]))
    case = load_case("t2i_horse_seed0_steps2-2-2")
    uncond = case["model_calls"][case["text_encoder_calls"]["uncond"]]
    np.testing.assert_array_equal(case.get(uncond["inputs"]["input_ids"])[0], tensors["uncond_input_ids"])
    np.testing.assert_allclose(case.value("uncond_text_embeds")[0], tensors["uncond_text_embeds"], atol=1e-5)
    np.testing.assert_allclose(case.value("uncond_last_hidden_state")[0], tensors["uncond_last_hidden_state"],
                               atol=1e-5)
    text_proj = case.calls("text_proj")[0]
    image_embeddings = case.get(text_proj["inputs"]["image_embeddings"])
    np.testing.assert_array_equal(image_embeddings[0], tensors["decoder_cfg_embedding"])
    prior_latents = case.value("prior_latents")
    np.testing.assert_allclose(case.value("image_embeddings"),
                               prior_latents * tensors["prior_clip_std"] + tensors["prior_clip_mean"], atol=1e-6)


def test_image_preprocess_recipe_reproduces_pixel_values() -> None:
    """The manifest's image_preprocess, done with Pillow, gives the processor's pixel values."""
    from PIL import Image

    pre = MANIFEST["image_preprocess"]
    case = load_case("variation_seed0_steps2-2")
    image = Image.open(FIXTURES / case["settings"]["image"]).convert("RGB")
    width, height = image.size
    size = pre["size"]
    scale = size / min(width, height)
    # transformers' shortest-edge rule: the short side becomes `size`, the long side int(long * scale).
    new = (size, int(height * scale)) if width <= height else (int(width * scale), size)
    resized = np.asarray(image.resize(new, resample=Image.Resampling.BICUBIC), dtype=np.float32)
    top, left = (resized.shape[0] - size) // 2, (resized.shape[1] - size) // 2
    crop = resized[top : top + size, left : left + size]
    pixels = (crop * np.float32(pre["rescale"]) - np.float32(pre["mean"])) / np.float32(pre["std"])
    np.testing.assert_allclose(pixels.transpose(2, 0, 1)[None], case.value("pixel_values"), atol=1e-5)


# --- scheduler steps in numpy ------------------------------------------------------------------


class NumpyUnCLIPScheduler:
    """UnCLIPScheduler.step (diffusers 0.42) in float32 numpy, from the manifest's scheduler config."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        steps = config["num_train_timesteps"]

        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = [min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999) for i in range(steps)]
        self.betas = np.array(betas, dtype=np.float32)
        self.alphas = np.float32(1) - self.betas
        self.alphas_cumprod = np.cumprod(self.alphas, dtype=np.float32)

    def step(self, model_output: np.ndarray, t: int, sample: np.ndarray, prev_t: int | None,
             noise: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        f = np.float32
        variance_v = None
        if model_output.shape[1] == 2 * sample.shape[1] and self.config["variance_type"] == "learned_range":
            model_output, variance_v = np.split(model_output, 2, axis=1)
        prev = t - 1 if prev_t is None else prev_t
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_prev = self.alphas_cumprod[prev] if prev >= 0 else f(1)
        beta_prod_t, beta_prod_prev = f(1) - alpha_prod_t, f(1) - alpha_prod_prev
        if prev == t - 1:
            beta, alpha = self.betas[t], self.alphas[t]
        else:
            beta = f(1) - alpha_prod_t / alpha_prod_prev
            alpha = f(1) - beta
        if self.config["prediction_type"] == "epsilon":
            x0 = (sample - np.sqrt(beta_prod_t) * model_output) / np.sqrt(alpha_prod_t)
        else:
            x0 = model_output
        if self.config["clip_sample"]:
            limit = f(self.config["clip_sample_range"])
            x0 = np.clip(x0, -limit, limit)
        mean = (np.sqrt(alpha_prod_prev) * beta / beta_prod_t) * x0 + (np.sqrt(alpha) * beta_prod_prev / beta_prod_t) * sample
        if t == 0:
            return mean, x0
        variance = beta_prod_prev / beta_prod_t * beta
        if self.config["variance_type"] == "fixed_small_log":
            std = np.exp(f(0.5) * np.log(max(variance, f(1e-20))))
        else:
            frac = (variance_v + f(1)) / f(2)
            std = np.exp(f(0.5) * (frac * np.log(beta) + (f(1) - frac) * np.log(variance)))
        return mean + std * noise, x0


@pytest.mark.parametrize("name", CASES)
def test_every_scheduler_step_replays_in_numpy(name: str) -> None:
    """Teacher-forced: recorded model_output, sample and noise in, recorded outputs out."""
    case = load_case(name)
    schedulers = {stage: NumpyUnCLIPScheduler(config) for stage, config in MANIFEST["schedulers"].items()}
    for step in case["scheduler_steps"]:
        noise = None if step["noise"] is None else case.get(step["noise"])
        sample = case.get(step["sample"])
        prev_sample, x0 = schedulers[step["stage"]].step(case.get(step["model_output"]), step["timestep"], sample,
                                                         step["prev_timestep"], noise)
        where = f"{name} {step['stage']} step {step['step']} (t={step['timestep']})"
        # x0 = (x - sqrt(1 - a) eps) / sqrt(a): at t = 999, 1/sqrt(a) ~ 2e4 magnifies float32 rounding.
        scale = 1.0 / math.sqrt(float(schedulers[step["stage"]].alphas_cumprod[step["timestep"]]))
        np.testing.assert_allclose(x0, case.get(step["pred_original_sample"]), atol=1e-5 * scale, err_msg=where)
        np.testing.assert_allclose(prev_sample, case.get(step["prev_sample"]), atol=2e-5, err_msg=where)


if __name__ == "__main__":  # pragma: no cover - a quick manual run
    sys.exit(pytest.main([__file__, "-q"]))
