"""The shipped shapes model: a valid repository, Karlo's tokenisation, and it draws what it is asked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from unclip_tools.repository import load_manifest
from unclip_tools.shapes.render import parse_caption
from unclip_tools.shapes.tokenizer import build_tokenizer

MODEL = Path(__file__).resolve().parents[2] / "models" / "shapes"
pytestmark = pytest.mark.skipif(not (MODEL / "manifest.json").exists(), reason="models/shapes not exported yet")


def test_repository_is_valid() -> None:
    manifest = load_manifest(MODEL, check_graphs=True)
    assert manifest["model_id"] == "shapes"
    assert [u["output_size"] for u in manifest["components"]["upsamplers"]] == [64, 128]


def test_tokenizer_is_clip_bpe_with_karlo_padding() -> None:
    """The shipped tokenizer.json tokenises like OpenAI's CLIP BPE, padded with "!" = 0 to 77."""
    tok = Tokenizer.from_file(str(MODEL / "tokenizer.json"))
    enc = tok.encode("a photo of a cat")
    assert enc.ids[:8] == [49406, 320, 1125, 539, 320, 2368, 49407, 0]
    assert len(enc.ids) == 77 and sum(enc.attention_mask) == 7
    long = tok.encode(" ".join(["word"] * 100))
    assert len(long.ids) == 77 and long.ids[-1] == 49407 and long.overflowing
    assert tok.to_str() == build_tokenizer().to_str()


@pytest.mark.parametrize(
    "caption, seed",
    [
        ("a large red circle in the center on a white background", 1),
        ("a large blue square in the top left on a black background", 2),
        ("a large yellow star in the bottom right on a gray background", 3),
    ],
)
def test_draws_what_it_is_asked(caption: str, seed: int) -> None:
    """Colour, background and position of the generated object, read by the model-free checker."""
    from unclip_tools.sampler import UnclipSampler
    from unclip_tools.shapes.checker import read_image

    sampler = UnclipSampler(MODEL, scheduler_backend="numpy", check_graphs=False)
    img = np.asarray(sampler.text_to_image(caption, seed=seed)[0].convert("RGB"))
    assert img.shape == (128, 128, 3)
    want = parse_caption(caption)
    got = read_image(img)
    assert (got.color, got.background, got.position) == (want["color"], want["background"], want["position"])


@pytest.mark.heavy
def test_quality_report_text_is_what_its_generator_makes_of_its_figures() -> None:
    """docs/shapes-quality.md is `quality.markdown` of docs/shapes-quality.json, with the defaults
    its reproduce line names: the prose and the figures cannot drift apart."""
    pytest.importorskip("torch")
    import argparse
    import json

    from unclip_tools.shapes import quality

    docs = MODEL.parents[1] / "docs"
    figures = json.loads((docs / "shapes-quality.json").read_text())
    assert figures["model_version"] == load_manifest(MODEL)["version"]
    parser = argparse.ArgumentParser()
    quality.add_arguments(parser, "quality-report")
    text = quality.markdown(figures, parser.parse_args(["--split", figures["split"]]), "shapes-quality.png")
    assert (docs / "shapes-quality.md").read_text() == text


def test_best_of_keeps_the_candidate_closest_to_the_prompt() -> None:
    """best_of = 3: per image, the prior candidate (candidate c drawn from seed + k + c * 2**32)
    whose embedding has the highest dot product with the prompt's; the rest of the run is the
    plain one's."""
    from unclip_tools.sampler import SeededNoise, UnclipSampler, best_of_k

    sampler = UnclipSampler(MODEL, scheduler_backend="numpy", check_graphs=False, threads=1)
    caption = "a small green star in the top right on a black background"
    fast = {"prior_steps": 3, "decoder_steps": 2, "upsampler_steps": 2}
    seen: dict[str, np.ndarray] = {}

    def trace(event: str, values: dict) -> None:
        if event == "image_embeds":
            seen.update(values)

    sampler.text_to_image_array(caption, num_images=2, seed=5, best_of=3, trace=trace, **fast)
    cond = sampler.encode_text([caption]).repeat_interleave(2)
    candidates = [sampler.sample_prior(cond, 3, None, SeededNoise(5 + (c << 32), 2), cfg=True) for c in range(3)]
    expected, picks = best_of_k(candidates, cond.text_embeds)
    np.testing.assert_array_equal(seen["image_embeds"], expected)
    np.testing.assert_array_equal(seen["best_of_picks"], picks)
    scores = np.stack([np.sum(c * cond.text_embeds, axis=1) for c in candidates])
    assert np.all(np.sum(expected * cond.text_embeds, axis=1) >= scores.max(axis=0) - 1e-6)
    with pytest.raises(Exception, match="best-of must be at least 1"):
        sampler.text_to_image_array(caption, best_of=0, **fast)
