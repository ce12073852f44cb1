"""Deterministic procedural renderer of coloured shapes with captions: the shapes model's world.

A *scene* is one or two objects on a flat background. Every attribute has a closed vocabulary
(shape, object colour, background colour, size, position, spatial relation), so a caption can be
parsed back into the attributes it states, and an image can be checked against them without any
model. The same `Scene` renders bit-identically for the same seed on every machine (pure PIL
polygon drawing, supersampled 4x, then PIL's antialiased bicubic down to the target sizes).

`python -m unclip_tools render --caption "a red circle" --seed 3 --out x.png` renders one caption.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .. import UserError

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (40, 170, 60),
    "blue": (40, 70, 225),
    "yellow": (245, 220, 40),
    "orange": (245, 140, 20),
    "purple": (140, 50, 185),
    "pink": (250, 130, 195),
    "cyan": (40, 205, 225),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
    "brown": (110, 70, 40),
}
SIZES = {"small": 0.11, "large": 0.19}  # radius as a fraction of the image side
POSITIONS: dict[str, tuple[float, float]] = {  # centre (x, y) as fractions of the image side
    "center": (0.5, 0.5),
    "top left": (0.3, 0.3),
    "top right": (0.7, 0.3),
    "bottom left": (0.3, 0.7),
    "bottom right": (0.7, 0.7),
}
RELATIONS: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    # relation -> (centre of the first object, centre of the second)
    "above": ((0.5, 0.28), (0.5, 0.72)),
    "below": ((0.5, 0.72), (0.5, 0.28)),
    "left of": ((0.28, 0.5), (0.72, 0.5)),
    "right of": ((0.72, 0.5), (0.28, 0.5)),
}
TWO_OBJECT_RADIUS = 0.15
JITTER = 0.03  # max centre offset, fraction of the side
SUPERSAMPLE = 4


@dataclass(frozen=True)
class Obj:
    """One object of a scene: what it is, and where it is drawn (fractions of the side)."""

    shape: str
    color: str
    cx: float
    cy: float
    radius: float
    rotation: float = 0.0  # small random tilt in radians, never stated in captions
    size: str | None = None  # "small"/"large" for single-object scenes
    position: str | None = None  # named position for single-object scenes


@dataclass(frozen=True)
class Scene:
    """A rendered picture's full description; `caption` says some or all of it."""

    background: str
    objects: tuple[Obj, ...]
    relation: str | None = None
    caption: str = ""
    stated: frozenset[str] = field(default_factory=frozenset)  # attributes the caption states


def _polygon(shape: str, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]] | None:
    """Outline of a shape as a polygon, or None for the circle (drawn as an ellipse)."""

    def ring(n: int, radius: float, phase: float) -> list[tuple[float, float]]:
        return [
            (cx + radius * math.cos(phase + rot + 2 * math.pi * k / n), cy + radius * math.sin(phase + rot + 2 * math.pi * k / n))
            for k in range(n)
        ]

    if shape == "circle":
        return None
    if shape == "square":
        return ring(4, r * 1.22, math.pi / 4)  # side ~1.72 r: area close to the circle's
    if shape == "diamond":
        return ring(4, r * 1.25, 0.0)
    if shape == "triangle":
        # centroid-centred equilateral triangle pointing up, nudged down to balance its box
        pts = ring(3, r * 1.3, -math.pi / 2)
        return [(x, y + 0.2 * r) for x, y in pts]
    if shape == "star":
        outer, inner = r * 1.3, r * 0.55
        pts: list[tuple[float, float]] = []
        for k in range(10):
            rad = outer if k % 2 == 0 else inner
            a = -math.pi / 2 + rot + math.pi * k / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        return pts
    if shape == "cross":
        a, b = r * 1.15, r * 0.42  # arm half-length, half-width
        base = [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b)]
        c, s = math.cos(rot), math.sin(rot)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in base]
    raise UserError(f"unknown shape {shape!r}; known shapes: {', '.join(SHAPES)}")


def render(scene: Scene, size: int = 128) -> Image.Image:
    """Draw a scene as an RGB image of `size`x`size` pixels (antialiased by supersampling)."""
    big = size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        cx, cy, r = o.cx * big, o.cy * big, o.radius * big
        poly = _polygon(o.shape, cx, cy, r, o.rotation)
        if poly is None:
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=COLORS[o.color])
        else:
            draw.polygon(poly, fill=COLORS[o.color])
    return img.resize((size, size), Image.Resampling.BOX)


def downsample(img: Image.Image, size: int) -> Image.Image:
    """The low-resolution view used for the decoder and upsampler conditioning (PIL bicubic)."""
    return img.resize((size, size), Image.Resampling.BICUBIC)


# ---------------------------------------------------------------------------------------------
# Random scenes and captions


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


def _jitter(rng: np.random.Generator) -> float:
    return float(rng.uniform(-JITTER, JITTER))


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def single_caption(shape: str, color: str, size: str | None, position: str | None, background: str | None) -> str:
    words = [article(size or color)] + ([size] if size else []) + [color, shape]
    if position:
        words += ["in the", position]
    if background:
        words += ["on a", background, "background"]
    return " ".join(words)


def two_caption(a: tuple[str, str], relation: str, b: tuple[str, str], background: str | None) -> str:
    text = f"{article(a[0])} {a[0]} {a[1]} {relation} {article(b[0])} {b[0]} {b[1]}"
    if background:
        text += f" on a {background} background"
    return text


def full_combo_key(shape: str, color: str, size: str, position: str, background: str) -> str:
    return f"{shape}|{color}|{size}|{position}|{background}"


def is_held_out(shape: str, color: str, size: str, position: str, background: str) -> bool:
    """About 1 in 9 of the fully specified single-object combinations never appear in training."""
    digest = hashlib.sha256(full_combo_key(shape, color, size, position, background).encode()).digest()
    return digest[0] % 9 == 0


def held_out_combos() -> list[tuple[str, str, str, str, str]]:
    return [
        (s, c, z, p, b)
        for s in SHAPES
        for c in COLORS
        for z in SIZES
        for p in POSITIONS
        for b in BACKGROUNDS
        if is_held_out(s, c, z, p, b)
    ]


def make_single(shape: str, color: str, size: str, position: str, background: str, rng: np.random.Generator, stated: frozenset[str]) -> Scene:
    px, py = POSITIONS[position]
    obj = Obj(
        shape=shape,
        color=color,
        cx=px + _jitter(rng),
        cy=py + _jitter(rng),
        radius=SIZES[size] * float(rng.uniform(0.92, 1.08)),
        rotation=float(rng.uniform(-0.12, 0.12)),
        size=size,
        position=position,
    )
    caption = single_caption(
        shape,
        color,
        size if "size" in stated else None,
        position if "position" in stated else None,
        background if "background" in stated else None,
    )
    return Scene(background=background, objects=(obj,), caption=caption, stated=stated | {"shape", "color"})


def random_scene(seed: int, index: int, two_object_fraction: float = 0.2, train: bool = True) -> Scene:
    """Scene number `index` of the stream `seed`: deterministic, and never a held-out combination
    when `train` is set (captions that state everything are redrawn until they are not held out)."""
    rng = _rng(seed, index)
    background = str(rng.choice(list(BACKGROUNDS)))
    if rng.random() < two_object_fraction:
        relation = str(rng.choice(list(RELATIONS)))
        (ax, ay), (bx, by) = RELATIONS[relation]
        colors = [c for c in COLORS]
        ca = str(rng.choice(colors))
        cb = str(rng.choice([c for c in colors if c != ca]))
        sa, sb = str(rng.choice(SHAPES)), str(rng.choice(SHAPES))
        objs = tuple(
            Obj(shape=s, color=c, cx=x + _jitter(rng), cy=y + _jitter(rng), radius=TWO_OBJECT_RADIUS * float(rng.uniform(0.92, 1.08)), rotation=float(rng.uniform(-0.12, 0.12)))
            for s, c, x, y in ((sa, ca, ax, ay), (sb, cb, bx, by))
        )
        state_bg = rng.random() < 0.6
        caption = two_caption((ca, sa), relation, (cb, sb), background if state_bg else None)
        stated = {"shape", "color", "relation"} | ({"background"} if state_bg else set())
        return Scene(background=background, objects=objs, relation=relation, caption=caption, stated=frozenset(stated))
    while True:
        shape = str(rng.choice(SHAPES))
        color = str(rng.choice(list(COLORS)))
        size = str(rng.choice(list(SIZES)))
        position = str(rng.choice(list(POSITIONS)))
        stated = frozenset(k for k, p in (("size", 0.75), ("position", 0.75), ("background", 0.75)) if rng.random() < p)
        if train and len(stated) == 3 and is_held_out(shape, color, size, position, background):
            continue
        return make_single(shape, color, size, position, background, rng, stated)


# ---------------------------------------------------------------------------------------------
# Caption parsing: the inverse of the caption grammar, used by the checker and `render`.

_COLOR_RE = "|".join(COLORS)
_SHAPE_RE = "|".join(SHAPES)
_SINGLE = re.compile(
    rf"^an? (?:(?P<size>{'|'.join(SIZES)}) )?(?P<color>{_COLOR_RE}) (?P<shape>{_SHAPE_RE})"
    rf"(?: in the (?P<position>{'|'.join(POSITIONS)}))?(?: on an? (?P<bg>{'|'.join(BACKGROUNDS)}) background)?$"
)
_TWO = re.compile(
    rf"^an? (?P<ca>{_COLOR_RE}) (?P<sa>{_SHAPE_RE}) (?P<rel>{'|'.join(RELATIONS)}) an? (?P<cb>{_COLOR_RE}) (?P<sb>{_SHAPE_RE})"
    rf"(?: on an? (?P<bg>{'|'.join(BACKGROUNDS)}) background)?$"
)


def parse_caption(caption: str) -> dict[str, str]:
    """Attributes a caption states. Raises UserError naming the first unknown word."""
    text = " ".join(caption.lower().strip().rstrip(".").split())
    m = _SINGLE.match(text)
    if m:
        return {k: v for k, v in {"shape": m["shape"], "color": m["color"], "size": m["size"], "position": m["position"], "background": m["bg"]}.items() if v}
    m = _TWO.match(text)
    if m:
        out = {"shape": m["sa"], "color": m["ca"], "relation": m["rel"], "shape_b": m["sb"], "color_b": m["cb"]}
        if m["bg"]:
            out["background"] = m["bg"]
        return out
    known = set(SHAPES) | set(COLORS) | set(BACKGROUNDS) | set(SIZES) | {w for p in POSITIONS for w in p.split()}
    known |= {w for r in RELATIONS for w in r.split()} | {"a", "an", "in", "the", "on", "background"}
    for word in text.split():
        if word not in known:
            raise UserError(
                f"unknown word {word!r} in caption {caption!r}; shapes: {', '.join(SHAPES)}; colours: {', '.join(COLORS)}; "
                f"backgrounds: {', '.join(BACKGROUNDS)}"
            )
    raise UserError(
        f"caption {caption!r} does not follow the grammar 'a [small|large] COLOUR SHAPE [in the POSITION] [on a BG background]' "
        "or 'a COLOUR SHAPE above|below|left of|right of a COLOUR SHAPE [on a BG background]'"
    )


def scene_from_caption(caption: str, seed: int = 0) -> Scene:
    """A scene that satisfies the caption; unstated attributes are drawn from `seed`."""
    attrs = parse_caption(caption)
    rng = _rng(seed, 0)
    background = attrs.get("background") or str(rng.choice(list(BACKGROUNDS)))
    if "relation" in attrs:
        (ax, ay), (bx, by) = RELATIONS[attrs["relation"]]
        objs = (
            Obj(attrs["shape"], attrs["color"], ax, ay, TWO_OBJECT_RADIUS),
            Obj(attrs["shape_b"], attrs["color_b"], bx, by, TWO_OBJECT_RADIUS),
        )
        return Scene(background, objs, relation=attrs["relation"], caption=caption, stated=frozenset(attrs))
    size = attrs.get("size") or str(rng.choice(list(SIZES)))
    position = attrs.get("position") or str(rng.choice(list(POSITIONS)))
    scene = make_single(attrs["shape"], attrs["color"], size, position, background, rng, frozenset(attrs))
    return replace(scene, caption=caption)


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--caption", required=True, help="e.g. 'a small red circle in the top left on a white background'")
    parser.add_argument("--seed", type=int, default=0, help="draws the attributes the caption leaves out")
    parser.add_argument("--size", type=int, default=128, help="output side in pixels")
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")


def run(args: argparse.Namespace, name: str) -> int:
    scene = scene_from_caption(args.caption, args.seed)
    if not args.out.parent.exists():
        raise UserError(f"output folder {args.out.parent} does not exist")
    render(scene, args.size).save(args.out)
    print(f"wrote {args.out}")
    return 0
