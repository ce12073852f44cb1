"""The shapes renderer and caption grammar: deterministic, invertible, clear about bad words."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from unclip_tools import UserError
from unclip_tools.shapes.render import (
    BACKGROUNDS,
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    held_out_combos,
    is_held_out,
    parse_caption,
    random_scene,
    render,
    scene_from_caption,
)

TOOLS = Path(__file__).resolve().parents[1]


def _digest(seed: int, n: int) -> str:
    h = hashlib.sha256()
    for i in range(n):
        scene = random_scene(seed, i)
        h.update(scene.caption.encode())
        h.update(np.asarray(render(scene, 64)).tobytes())
    return h.hexdigest()


def test_vocabulary_meets_the_brief() -> None:
    """At least 6 shapes, 8 colours, 4 backgrounds, 2 sizes, 5 positions."""
    assert (len(SHAPES), len(COLORS), len(BACKGROUNDS), len(SIZES), len(POSITIONS)) >= (6, 8, 4, 2, 5)


def test_renderer_is_deterministic() -> None:
    """The same stream renders the same captions and pixels twice, in one process."""
    assert _digest(5, 20) == _digest(5, 20)
    assert _digest(5, 20) != _digest(6, 20)


def test_renderer_is_deterministic_across_processes() -> None:
    """A fresh interpreter (different hash seed) renders the same bytes."""
    code = "from tests.test_shapes_render import _digest; print(_digest(5, 20))"
    out = subprocess.run([sys.executable, "-c", code], cwd=TOOLS, capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PYTHONPATH": str(TOOLS)})
    assert out.stdout.strip() == _digest(5, 20)


def test_captions_parse_back_to_the_scene() -> None:
    """Every generated caption states attributes that the scene really has."""
    for i in range(300):
        scene = random_scene(11, i)
        attrs = parse_caption(scene.caption)
        obj = scene.objects[0]
        assert attrs["shape"] == obj.shape and attrs["color"] == obj.color
        if "background" in attrs:
            assert attrs["background"] == scene.background
        if "position" in attrs:
            assert attrs["position"] == obj.position
        if "relation" in attrs:
            assert attrs["relation"] == scene.relation and attrs["shape_b"] == scene.objects[1].shape


def test_training_stream_never_shows_a_held_out_caption() -> None:
    """Fully specified held-out combinations never appear as training captions."""
    held = held_out_combos()
    assert 150 <= len(held) <= 300
    for i in range(2000):
        scene = random_scene(20261127, i)
        a = parse_caption(scene.caption)
        if {"size", "position", "background"} <= a.keys():
            assert not is_held_out(a["shape"], a["color"], a["size"], a["position"], a["background"])


def test_two_object_caption() -> None:
    scene = scene_from_caption("a red square above a blue circle on a white background")
    assert [o.color for o in scene.objects] == ["red", "blue"]
    assert scene.objects[0].cy < scene.objects[1].cy


@pytest.mark.parametrize("caption, word", [("a red blob", "blob"), ("a mauve circle", "mauve")])
def test_unknown_words_are_named(caption: str, word: str) -> None:
    with pytest.raises(UserError, match=word):
        parse_caption(caption)


def test_cli_reports_unknown_word_without_traceback(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "unclip_tools", "render", "--caption", "a red blob", "--out", str(tmp_path / "x.png")],
                         cwd=TOOLS, capture_output=True, text=True)
    assert out.returncode == 2
    assert "unknown word 'blob'" in out.stderr and "Traceback" not in out.stderr


def test_cli_renders_png(tmp_path: Path) -> None:
    out = tmp_path / "x.png"
    subprocess.run([sys.executable, "-m", "unclip_tools", "render", "--caption", "a large green star in the center", "--out", str(out)],
                   cwd=TOOLS, check=True, capture_output=True)
    from PIL import Image

    img = np.asarray(Image.open(out))
    assert img.shape == (128, 128, 3)
    assert tuple(img[64, 64]) == COLORS["green"]


def test_judge_counts_a_blank_image_wrong_for_every_attribute() -> None:
    """The checker's "no object" outcome: a blank image of the right background is not a right
    background; a true render is right on every attribute."""
    from unclip_tools.shapes.checker import judge
    from unclip_tools.shapes.render import scene_from_caption, single_caption

    caption = single_caption("circle", "red", "large", "center", "white")
    blank = np.full((128, 128, 3), BACKGROUNDS["white"], np.uint8)
    assert judge(blank, caption, "circle") == {k: False for k in ("color", "background", "position", "size", "shape")} | {"no_object": True}
    truth = np.asarray(render(scene_from_caption(caption, 0)).convert("RGB"))
    assert judge(truth, caption, "circle") == {k: True for k in ("color", "background", "position", "size", "shape")} | {"no_object": False}


def test_read_shape_reads_every_shape_without_a_model() -> None:
    """The model-free shape reader names the drawn shape for every shape, size, position and
    tilt the renderer makes, also after a round trip through the decoder's 32 px, and finds
    nothing in a blank image."""
    from PIL import Image

    from unclip_tools.shapes.checker import read_shape
    from unclip_tools.shapes.render import SHAPES, SIZES, random_scene, scene_from_caption, single_caption

    for i, shape in enumerate(SHAPES):
        for size in SIZES:
            caption = single_caption(shape, "blue", size, ("center", "top left", "bottom right")[i % 3], ("white", "black")[i % 2])
            img = render(scene_from_caption(caption, i))
            assert read_shape(np.asarray(img)) == shape, caption
            blurry = img.resize((32, 32), Image.Resampling.BICUBIC).resize((128, 128), Image.Resampling.BICUBIC)
            assert read_shape(np.asarray(blurry)) == shape, f"{caption} at 32 px"
    assert read_shape(np.full((128, 128, 3), BACKGROUNDS["gray"], np.uint8)) is None
    # Random training scenes (tilted, jittered): single objects only.
    scenes = [s for s in (random_scene(5, i) for i in range(60)) if s.relation is None]
    assert all(read_shape(np.asarray(render(s))) == s.objects[0].shape for s in scenes)


def test_wilson_interval() -> None:
    """Known values of the Wilson score interval (z = 1.96)."""
    from unclip_tools.shapes.checker import wilson

    lo, hi = wilson(187, 200)
    assert (round(lo, 4), round(hi, 4)) == (0.892, 0.9616)
    assert wilson(0, 50)[0] == 0.0 and round(wilson(0, 50)[1], 4) == 0.0714
    assert wilson(50, 50)[1] == 1.0
