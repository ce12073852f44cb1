"""The shapes model's torch weights recovered from its ONNX graphs, and diffusers' pipeline over them.

Heavy: needs torch, diffusers, transformers and onnx (tools/requirements.txt); skipped when they
are missing. Checks that every recovered module computes what its shipped graph computes, that
the recovery refuses a graph that is not the module's, and that diffusers' `UnCLIPPipeline`
driving those modules draws the reference sampler's image when both use the same noise.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.heavy
torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")
pytest.importorskip("onnx")

TOOLS = Path(__file__).resolve().parents[1]
if str(TOOLS) not in sys.path:  # `import unclip_tools` without installing the package
    sys.path.insert(0, str(TOOLS))

import onnxruntime as ort  # noqa: E402

from unclip_tools import UserError  # noqa: E402
from unclip_tools.shapes import torch_weights  # noqa: E402

SHAPES = TOOLS.parent / "models" / "shapes"
if not (SHAPES / "manifest.json").is_file():
    pytest.skip("models/shapes is missing", allow_module_level=True)

FILES = ["text_encoder.onnx", "image_encoder.onnx", "prior.onnx", "text_proj.onnx", "decoder.onnx", "upsampler_0.onnx", "upsampler_1.onnx"]
# Seen: at most 6e-6 (outputs up to ~6): float32 rounding between torch's and ONNX Runtime's kernels.
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def recovered() -> torch_weights.ShapesTorch:
    torch.set_num_threads(1)
    return torch_weights.load(SHAPES)


@pytest.mark.parametrize("file", FILES)
def test_recovered_module_reproduces_the_onnx_graph(recovered: torch_weights.ShapesTorch, file: str) -> None:
    """On random inputs at batch 1 and 3 (a timestep per sample), torch equals ONNX Runtime."""
    graph = recovered.graphs[file]
    session = ort.InferenceSession(str(SHAPES / file), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        inputs = graph.make_inputs(batch, np.random.default_rng(100 + batch))
        want = session.run([t.name for t in graph.outputs], inputs)
        with torch.no_grad():
            got = graph.module(*[torch.from_numpy(inputs[t.name]) for t in graph.inputs])
        got = got if isinstance(got, tuple) else (got,)
        assert len(got) == len(want)
        for spec, w, g in zip(graph.outputs, want, got):
            assert g.shape == w.shape, spec.name
            diff = float(np.abs(g.numpy() - w).max())
            assert diff <= TOLERANCE, f"{file} {spec.name} batch {batch}: max |torch - onnx| = {diff}"


def test_float16_weights_are_read_back_exactly(recovered: torch_weights.ShapesTorch) -> None:
    """A weight stored as float16 comes back as exactly that float16 value, and a parameter the
    graph lacks (clip_mean) comes from tensors.safetensors."""
    import onnx
    from onnx import numpy_helper

    stored = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(SHAPES / "decoder.onnx")).graph.initializer}
    weight = recovered.module("decoder.onnx").d1.conv1.weight.numpy()
    assert stored["d1.conv1.weight__float16"].dtype == np.float16
    np.testing.assert_array_equal(weight, stored["d1.conv1.weight__float16"].astype(np.float32))
    prior = recovered.module("prior.onnx").prior
    np.testing.assert_array_equal(prior.clip_mean.numpy().ravel(), recovered.tensors["prior_clip_mean"])


def test_recovery_refuses_another_modules_graph(tmp_path: Path) -> None:
    """Loading the decoder's module from an upsampler graph fails, naming the graph."""
    from unclip_tools.shapes.export import graph_list
    from unclip_tools.shapes.models import Clip, Decoder, PriorGraph, ShapesConfig, TextProjGraph, Upsampler, make_prior, make_text_proj
    from unclip_tools.shapes.train import id_table

    cfg = ShapesConfig()
    clip = Clip(cfg, id_table())
    graphs = graph_list(cfg, clip.text, clip.image, PriorGraph(make_prior(cfg)), TextProjGraph(make_text_proj(cfg)),
                        Decoder(cfg), [Upsampler(cfg), Upsampler(cfg)])
    decoder = next(g for g in graphs if g.file == "decoder.onnx")
    (tmp_path / "raw").mkdir()
    with pytest.raises(UserError, match="upsampler_0.onnx"):
        torch_weights.recover_graph(decoder, SHAPES / "upsampler_0.onnx", {}, tmp_path)


def test_diffusers_pipeline_with_replayed_noise_draws_the_reference_image(recovered: torch_weights.ShapesTorch) -> None:
    """UnCLIPPipeline (+ the second upsampler stage) over the recovered modules, and the
    reference sampler over the ONNX graphs fed diffusers' own draws, give the same pixels
    (within 4 of 255, 3 seen over 16 captions and seeds: float32 kernels differ, and the uncond
    encoding is stored, not recomputed)."""
    from unclip_tools.sampler import ReplayNoise, UnclipSampler, to_uint8
    from unclip_tools.shapes.diffusers_agreement import RecordedNoise
    from unclip_tools.shapes.diffusers_pipeline import build

    caption = "a large green triangle in the top right on a white background"
    # The repository's steps: with only a few, the images stay noisy and a difference in the
    # last float32 bit can move a pixel a long way.
    steps = {"prior_steps": 25, "decoder_steps": 25, "upsampler_steps": 7}
    shapes = build(SHAPES, recovered)
    with RecordedNoise() as noise:
        got = shapes.generate(caption, torch.Generator().manual_seed(11), num_images=2, **steps)
    assert got.shape == (2, 128, 128, 3)
    # prior latents + 24 step draws, decoder likewise, each upsampler stage latents + 6 step draws
    assert len(noise.draws) == 25 + 25 + 7 + 7
    replay = ReplayNoise(noise.draws)
    want = to_uint8(UnclipSampler(SHAPES, scheduler_backend="numpy").text_to_image_array(caption, num_images=2, noise_source=replay, **steps))
    assert replay.remaining == 0
    assert int(np.abs(got.astype(int) - want.astype(int)).max()) <= 4
    assert not np.array_equal(got[0], got[1])  # two images, not one twice
