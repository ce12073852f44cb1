"""Model-free checks of a shapes image: background, object colour, position, size, relations.

Written for the renderer's world (flat colours on a flat background), so it needs no model: the
background is the median colour of the border, the object is every pixel far from it, its colour
the nearest palette entry to the median of its eroded pixels, its position the named position
nearest to its bounding-box centre, its size from the bounding-box extent. Two-object scenes are
split into connected components. numpy + scipy only (the CI's light environment).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .render import BACKGROUNDS, COLORS, POSITIONS, parse_caption



def _nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    names = list(palette)
    d = [np.linalg.norm(rgb - np.array(palette[n], np.float32)) for n in names]
    return names[int(np.argmin(d))]


@dataclass
class Reading:
    """What the checker sees in one image."""

    background: str
    color: str | None
    position: str | None
    size: str | None
    components: list[tuple[str, float, float, int]]  # (colour, cx, cy, pixels), largest first


def read_image(img: np.ndarray, threshold: float = 60.0) -> Reading:
    """Background, object colour, position and size of a uint8 [H,W,3] image."""
    from scipy import ndimage

    h, w, _ = img.shape
    px = img.astype(np.float32)
    border = np.concatenate([px[:3].reshape(-1, 3), px[-3:].reshape(-1, 3), px[:, :3].reshape(-1, 3), px[:, -3:].reshape(-1, 3)])
    bg_rgb = np.median(border, axis=0)
    background = _nearest(bg_rgb, BACKGROUNDS)
    mask = np.linalg.norm(px - bg_rgb, axis=-1) > threshold
    mask = ndimage.binary_opening(mask, iterations=1)
    if mask.sum() < 4:
        return Reading(background, None, None, None, [])
    core = ndimage.binary_erosion(mask, iterations=1)
    use = core if core.sum() >= 4 else mask
    color = _nearest(np.median(px[use], axis=0), COLORS)
    ys, xs = np.nonzero(mask)
    cx, cy = (xs.min() + xs.max() + 1) / 2 / w, (ys.min() + ys.max() + 1) / 2 / h
    position = min(POSITIONS, key=lambda p: (POSITIONS[p][0] - cx) ** 2 + (POSITIONS[p][1] - cy) ** 2)
    extent = max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) / w
    size = "large" if extent > 0.33 else "small"
    labels, n = ndimage.label(mask)
    comps = []
    for k in range(1, n + 1):
        m = labels == k
        cu = ndimage.binary_erosion(m, iterations=1)
        cu = cu if cu.sum() >= 4 else m
        yy, xx = np.nonzero(m)
        comps.append((_nearest(np.median(px[cu], axis=0), COLORS), float(xx.mean() / w), float(yy.mean() / h), int(m.sum())))
    comps.sort(key=lambda c: -c[3])
    return Reading(background, color, position, size, comps)


def check_two(reading: Reading, attrs: dict[str, str]) -> bool:
    """Both colours present as separate objects, in the stated relation."""
    comps = [c for c in reading.components[:4] if c[3] >= 12]
    a = next((c for c in comps if c[0] == attrs["color"]), None)
    b = next((c for c in comps if c[0] == attrs["color_b"]), None)
    if a is None or b is None or a is b:
        return False
    dx, dy = a[1] - b[1], a[2] - b[2]
    rel = attrs["relation"]
    return {"above": dy < -0.15, "below": dy > 0.15, "left of": dx < -0.15, "right of": dx > 0.15}[rel]


def judge(img: np.ndarray, caption: str, shape: str) -> dict[str, bool]:
    """Each attribute of the caption right or wrong in one image. "No object" is an outcome of its
    own: a blank image is wrong for every attribute, background included."""
    attrs = parse_caption(caption)
    r = read_image(img)
    keys = ("color", "background", "position", "size", "shape")
    if r.color is None:
        return {k: False for k in keys} | {"no_object": True}
    got = {"color": r.color, "background": r.background, "position": r.position, "size": r.size, "shape": shape}
    return {k: got[k] == attrs[k] for k in keys} | {"no_object": False}


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score 95% interval of a proportion hits/n."""
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))
