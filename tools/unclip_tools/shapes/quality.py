"""Quality report for the shapes model: generated images checked against their captions.

    python -m unclip_tools quality-report --model models/shapes --split report --out docs

One command, nothing outside the repository: it starts a local stack (`unclip stack`, the release
binary; or uses `--gateway`), and for each held-out caption of the split (fully specified
single-object captions whose attribute combination never appears in training; `tune` and
`report` halves share no caption and no seed) generates images through the gateway's gRPC API,
the path users take, and with the Python reference sampler over the same graphs as a second
column. Both are scored by the model-free checker (`checker.py`: background, colour, position,
size, shape; "no object" is wrong for everything), each figure with its count and Wilson 95%
interval. The same checks run on the renderer's own images, which measures the checker itself.
It also runs two-object captions, `inpaint-eval`'s inpainting cases and captions outside the
grammar through the gateway, reports CLIP zero-shot retrieval and the cosine between prior
samples and CLIP embeddings of true renders, and draws a contact sheet.

`ShapeClassifier` (a CNN trained by `train-shapes --phase classifier`) is what the report used
before the checker read shapes itself; other tools may still load it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from .. import UserError
from ..scheduler import BACKENDS
from .checker import check_two, judge, read_image, read_shape, wilson
from .render import SHAPES, held_out_combos, parse_caption, random_scene, render, scene_from_caption, single_caption


class ShapeClassifier(nn.Module):
    """Small CNN over 64x64 images: which of the renderer's shapes is drawn."""

    def __init__(self, n_classes: int = len(SHAPES)):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))

        self.net = nn.Sequential(block(3, 32), block(32, 64), block(64, 96), block(96, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def classifier_input(img_uint8: np.ndarray) -> torch.Tensor:
    """uint8 [B,H,W,3] (any H=W) -> float [B,3,64,64] in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(img_uint8)).float().div(127.5).sub(1).permute(0, 3, 1, 2)
    if x.shape[-1] != 64:
        x = torch.nn.functional.interpolate(x, size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
    return x.contiguous()


def load_classifier(work: Path) -> ShapeClassifier:
    path = work / "classifier.pt"
    if not path.exists():
        raise UserError(f"{path} is missing: run `python -m unclip_tools train-shapes --work {work} --phase classifier`")
    net = ShapeClassifier()
    net.load_state_dict(torch.load(path, weights_only=False, map_location="cpu")["modules"]["classifier"])
    return net.eval()


# ---------------------------------------------------------------------------------------------
# Report


SPLITS = {"tune": 1000, "report": 9000}
"""First sampling seed per split. The held-out attribute combinations (about 200) are halved by a
fixed permutation: `tune` (for choosing settings such as guidance scales) and `report` (the
published figures) share no caption and no seed."""


def held_out_captions(n: int = 200, split: str | None = None) -> list[str]:
    """Up to `n` held-out single-object captions: all of them (split None) or one split's half."""
    combos = held_out_combos()
    if split is None:
        pick = sorted(np.random.default_rng(7).choice(len(combos), min(n, len(combos)), replace=False))
    else:
        order = np.random.default_rng(2027).permutation(len(combos))
        half = order[: len(order) // 2] if split == "tune" else order[len(order) // 2 :]
        pick = sorted(half[:n])
    return [single_caption(s, c, z, p, b) for s, c, z, p, b in (combos[i] for i in pick)]


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length."""
    return x / np.linalg.norm(x, axis=1, keepdims=True)


REVERSED = {"above": "below", "below": "above", "left of": "right of", "right of": "left of"}


def reverse_relation(caption: str) -> str:
    """The caption with its spatial relation reversed ("above" <-> "below", ...)."""
    for relation, reverse in REVERSED.items():
        if f" {relation} " in caption:
            return caption.replace(f" {relation} ", f" {reverse} ", 1)
    raise UserError(f"no relation in {caption!r}")


def two_object_captions(n: int = 50, split: str | None = None) -> list[str]:
    """Two-object captions of held-out scenes; the report split's come from other scene draws."""
    out = []
    i = 100_000 if split == "report" else 0
    while len(out) < n:
        scene = random_scene(99, i, two_object_fraction=1.0, train=False)
        i += 1
        if "background" in scene.stated:
            out.append(scene.caption)
    return out


def score(images: list[np.ndarray], captions: list[str]) -> dict[str, int]:
    """Images right per attribute, all together, and with no object found (counts), by the
    model-free checker (`checker.judge`, shape by `checker.read_shape`)."""
    keys = ("color", "background", "position", "size", "shape")
    hits = {k: 0 for k in (*keys, "all", "no_object")}
    for img, cap in zip(images, captions):
        ok = judge(img, cap)
        for k in (*keys, "no_object"):
            hits[k] += ok[k]
        hits["all"] += all(ok[k] for k in keys)
    return hits


def contact_sheet(images: list[np.ndarray], captions: list[str], path: Path, cols: int = 6) -> None:
    side, text_h = 128, 44
    rows = (len(images) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * (side + 8) + 8, rows * (side + text_h + 8) + 8), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=10)
    for i, (img, cap) in enumerate(zip(images, captions)):
        x, y = 8 + (i % cols) * (side + 8), 8 + (i // cols) * (side + text_h + 8)
        sheet.paste(Image.fromarray(img).resize((side, side)), (x, y))
        words, lines, line = cap.split(), [], ""
        for w_ in words:
            if len(line) + len(w_) + 1 > 24:
                lines.append(line)
                line = w_
            else:
                line = f"{line} {w_}".strip()
        lines.append(line)
        for k, ln in enumerate(lines[:4]):
            draw.text((x, y + side + 2 + 10 * k), ln, fill=(0, 0, 0), font=font)
    sheet.save(path)


OUT_OF_GRAMMAR = (
    "a magenta circle on a white background",
    "a red hexagon on a white background",
    "a blue circle on a green background",
    "a red circle next to a blue square",
    "a cat",
)
"""Captions outside the grammar (unknown colour, shape, background, relation; no shapes word at
all): the stack must still answer with an image; the report says what the checker finds."""


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    from .gateway import ROOT

    parser.add_argument("--model", type=Path, default=Path("models/shapes"), help="model repository")
    parser.add_argument("--gateway", default=None, help="host:port of a running gateway serving --model (default: start a local stack)")
    parser.add_argument("--unclip", type=Path, default=ROOT / "target" / "release" / "unclip", help="the unclip binary for the local stack")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="folder for shapes-quality.md, .json and the contact sheet")
    parser.add_argument("--n", type=int, default=200, help="held-out single-object captions (at most the split's)")
    parser.add_argument("--seeds-per-caption", type=int, default=2, help="images per single-object caption, each its own seed")
    parser.add_argument("--n-two", type=int, default=50, help="two-object captions")
    parser.add_argument("--n-inpaint", type=int, default=50, help="inpainting cases (inpaint-eval's), 0 to skip")
    parser.add_argument("--split", choices=SPLITS, default="report", help="caption set: `tune` for choosing settings, `report` for published figures")
    parser.add_argument("--seed", type=int, default=None, help="first seed (image i uses seed + i); default the split's")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference sampler's column")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--scheduler", choices=BACKENDS, default="auto",
        help="who computes the reference sampler's scheduler steps (auto: diffusers if installed)",
    )


def counts(hits: dict[str, int], n: int) -> dict[str, dict]:
    """Each count as {hits, n, share, ci95}."""
    return {k: {"hits": int(v), "n": n, "share": v / n, "ci95": list(wilson(int(v), n))} for k, v in hits.items()}


def run(args: argparse.Namespace, name: str) -> int:
    from ..sampler import UnclipSampler
    from .gateway import connect
    from .inpaint_eval import evaluate, summarise

    torch.set_num_threads(args.threads)
    sampler = UnclipSampler(args.model, threads=args.threads, scheduler_backend=args.scheduler)
    defaults = sampler.manifest["defaults"]
    pg, dg = defaults["prior_guidance_scale"], defaults["decoder_guidance_scale"]
    if args.seed is None:
        args.seed = SPLITS[args.split]
    unique = held_out_captions(args.n, args.split)
    k = args.seeds_per_caption
    caps = [c for c in unique for _ in range(k)]
    twos = two_object_captions(args.n_two, args.split)
    seeds = [args.seed + i for i in range(len(caps) + len(twos))]

    # The checker on the renderer's own images: how far the measurements themselves can be trusted.
    truth = [np.asarray(render(scene_from_caption(c, s))) for c, s in zip(caps, seeds)]
    two_renders = [render(scene_from_caption(c, i)) for i, c in enumerate(twos)]

    def two_hits(images: list[np.ndarray]) -> int:
        return sum(check_two(read_image(img), parse_caption(c)) for img, c in zip(images, twos))

    # Through the serving stack, as users get them.
    t0 = time.time()
    with connect(args.gateway, args.model, args.unclip) as gateway:
        served_version = gateway.info().model.version
        if served_version != sampler.manifest["version"]:
            raise UserError(f"the gateway serves {served_version}, --model is {sampler.manifest['version']}")
        gen = [gateway.generate(c, s) for c, s in zip(caps + twos, seeds)]
        gateway_seconds = (time.time() - t0) / len(gen)
        odd = [(c, j, gateway.generate(c, args.seed + j)) for c in OUT_OF_GRAMMAR for j in range(2)]
        inpainting = summarise(evaluate(gateway, args.n_inpaint, seed=11)) if args.n_inpaint else None
    gen_single, gen_two = gen[: len(caps)], gen[len(caps) :]

    # The reference sampler (Python over the same ONNX graphs): the same captions and seeds.
    reference = None
    if not args.no_reference:
        t0 = time.time()
        ref = [np.asarray(sampler.text_to_image(c, num_images=1, seed=s, prior_guidance_scale=pg, decoder_guidance_scale=dg)[0].convert("RGB"))
               for c, s in zip(caps + twos, seeds)]
        reference = {"single": counts(score(ref[: len(caps)], caps), len(caps)), "two": counts({"both": two_hits(ref[len(caps) :])}, len(twos)),
                     "seconds_per_image": (time.time() - t0) / len(ref)}

    # Where two-object scenes are lost: decoding the true render's own CLIP image embedding (a
    # variation) skips the text encoder and the prior; and CLIP's preference for the caption
    # over the same caption with the relation reversed.
    variations = [np.asarray(sampler.variation(t, seed=s, decoder_guidance_scale=dg)[0].convert("RGB")) for t, s in zip(two_renders, seeds[len(caps) :])]
    two_img = unit(sampler.encode_images(two_renders))
    true_sim = np.sum(two_img * unit(sampler.encode_text(twos).text_embeds), axis=1)
    swapped_sim = np.sum(two_img * unit(sampler.encode_text([reverse_relation(c) for c in twos]).text_embeds), axis=1)

    # CLIP zero-shot retrieval among the held-out captions, on true renders.
    tn = unit(sampler.encode_text(unique).text_embeds)
    inn = unit(sampler.encode_images([Image.fromarray(t) for t in truth[::k]]))
    sim = inn @ tn.T
    # Prior samples against the embeddings of true renders of the same captions.
    prior = np.concatenate([sampler.sample_prior([c], num_images=1, seed=args.seed + i * k, guidance_scale=pg) for i, c in enumerate(unique)])
    pn = unit(prior)

    def odd_reading(img: np.ndarray) -> str:
        r = read_image(img)
        return "no object" if r.color is None else f"{r.color} {read_shape(img)} on {r.background}"

    args.out.mkdir(parents=True, exist_ok=True)
    sheet = args.out / "shapes-quality.png"
    show = list(range(0, len(caps), max(1, len(caps) // 30)))[:30] + list(range(len(caps), len(caps) + min(6, len(twos))))
    contact_sheet([gen[i] for i in show], [(caps + twos)[i] for i in show], sheet)
    result = {
        "model_version": sampler.manifest["version"],
        "split": args.split,
        "seed": args.seed,
        "captions": len(unique),
        "seeds_per_caption": k,
        "two_object_captions": len(twos),
        "guidance": {"prior": pg, "decoder": dg},
        "steps": {key: defaults[key] for key in ("prior_steps", "decoder_steps", "upsampler_steps")},
        "gateway": {"single": counts(score(gen_single, caps), len(caps)), "two": counts({"both": two_hits(gen_two)}, len(twos)),
                    "seconds_per_image": gateway_seconds},
        "reference": reference,
        "checker_on_ground_truth": {"single": counts(score(truth, caps), len(caps)),
                                    "two": counts({"both": two_hits([np.asarray(t) for t in two_renders])}, len(twos))},
        "two_object_relation": {
            "variation_of_true_render": counts({"both": two_hits(variations)}, len(twos))["both"],
            "clip_prefers_stated_over_reversed_relation": float(np.mean(true_sim > swapped_sim)),
        },
        "clip_zero_shot": {"image_to_text_top1": float(np.mean(sim.argmax(1) == np.arange(len(unique)))),
                           "text_to_image_top1": float(np.mean(sim.argmax(0) == np.arange(len(unique)))), "chance": 1 / len(unique)},
        "prior_cosine": {"with_true_render": float(np.mean(np.sum(pn * inn, axis=1))),
                         "with_other_caption_render": float(np.mean(np.sum(pn * np.roll(inn, 1, axis=0), axis=1)))},
        "out_of_grammar": [{"caption": c, "seed": args.seed + j, "checker_reads": odd_reading(img)} for c, j, img in odd],
        "inpainting": inpainting,
        "scheduler": sampler.scheduler_backend,
    }
    (args.out / "shapes-quality.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "shapes-quality.md").write_text(markdown(result, args, sheet.name))
    print(json.dumps(result, indent=2))
    return 0


SCHEDULER_WORDS = {
    "diffusers": "diffusers' UnCLIPScheduler",
    "numpy": "this package's numpy port of UnCLIPScheduler",
}

SPLIT_WORDS = {
    "tune": "Tuning split (`--split tune`), where settings are chosen: not a held-out figure.",
    "report": "Report split: captions and seeds disjoint from the tuning split (`--split tune`), where the guidance\nscales and other settings are chosen.",
}

TARGETS = {"color": 0.95, "background": 0.95, "position": 0.85, "shape": 0.85}


def ci(c: dict) -> str:
    """"93.5% (187/200; 89.2%–96.2%)"."""
    return f"{c['share']:.1%} ({c['hits']}/{c['n']}; {c['ci95'][0]:.1%}–{c['ci95'][1]:.1%})"


def inpainting_words(r: dict) -> str:
    """The inpainting paragraph, from `inpaint-eval`'s summary."""
    i = r.get("inpainting")
    if i is None:
        return ""
    o, k = i["object_right_colour"], i["kept_exact"]
    return f"""Inpainting through the gateway (`inpaint-eval`'s {i['cases']} held-out cases: a scene with one small object, a square
mask of 40…88 px around another named position, a prompt naming an object of another colour there):
an object of the prompt's colour in the mask in {o['share']:.1%} ({o['hits']}/{i['cases']}; {o['ci95'][0]:.1%}–{o['ci95'][1]:.1%}) (target ≥ 90%),
the kept area exact in {k['share']:.1%} ({k['hits']}/{i['cases']}), mean colour jump across the mask edge {i['seam_mean']:.2f}
(the renderer's finished scene: {i['seam_truth_mean']:.2f}).

"""


def markdown(r: dict, args: argparse.Namespace, sheet: str) -> str:
    """The human-readable report (docs/shapes-quality.md)."""
    g, ref, t = r["gateway"], r["reference"], r["checker_on_ground_truth"]
    split, seed, per = r["split"], r["seed"], r["seeds_per_caption"]
    n = r["captions"] * per
    rows = []
    for key, label in (("color", "object colour"), ("background", "background colour"), ("position", "position"), ("shape", "shape"),
                       ("size", "size"), ("all", "all of the above"), ("no_object", "no object found")):
        target = TARGETS.get(key)
        verdict = "" if target is None else ("met" if g["single"][key]["share"] >= target else "**missed**")
        ref_cell = ci(ref["single"][key]) if ref else "—"
        rows.append(f"| {label} | {ci(g['single'][key])} | {ref_cell} | {'' if target is None else f'≥ {target:.0%}'} | {verdict} | {t['single'][key]['share']:.1%} |")
    odd = "\n".join(f"| {o['caption']} | {o['seed']} | {o['checker_reads']} |" for o in r["out_of_grammar"])
    rel = r["two_object_relation"]
    ref_speed = f"; reference sampler {ref['seconds_per_image']:.2f} s" if ref else ""
    return f"""# Shapes model: quality report

Model `shapes` {r['model_version']}; {r['captions']} held-out captions (fully specified single-object
combinations never shown in training), split `{split}`, {per} images each (one seed per image), {n} images,
seeds {seed}…{seed + n - 1}; steps prior/decoder/upsamplers {r['steps']['prior_steps']}/{r['steps']['decoder_steps']}/{r['steps']['upsampler_steps']},
guidance prior {r['guidance']['prior']}, decoder {r['guidance']['decoder']} (the model's defaults).

{SPLIT_WORDS[split]}

**Gateway**: images from the running stack's gRPC `Generate`, the path users take. **Reference**: the
Python reference sampler over the same ONNX graphs ({SCHEDULER_WORDS[r['scheduler']]}), same captions and seeds.
Figures: share right (count/images; Wilson 95% interval). An image in which the checker finds no object is
wrong for every attribute, background included.

| attribute | gateway | reference | target | | checker on true renders |
|---|---|---|---|---|---|
{chr(10).join(rows)}

The last column runs the same checks on the renderer's own pictures of the same captions and seeds:
it measures the checker, not the model. The checker is model-free (`checker.py`): background = median border
colour, object = pixels far from it, colour = nearest palette entry to the median of the eroded object,
position = named position nearest the bounding-box centre, size from the bounding-box extent, shape = the
renderer's outline (at a few tilts, fitted to the bounding box) with the largest overlap.

Two-object captions ({r['two_object_captions']}, e.g. "{'a red square above a blue circle on a gray background'}"): both colours found as
separate objects in the stated relation in {ci(g['two']['both'])} through the gateway{f", {ci(ref['two']['both'])} with the reference sampler" if ref else ""}
({t['two']['both']['share']:.1%} on true renders). Decoding the true render's own CLIP image embedding (a variation, no
prior): {ci(rel['variation_of_true_render'])}. CLIP prefers the caption to the same caption with the relation
reversed for {rel['clip_prefers_stated_over_reversed_relation']:.1%} of the renders: the image embedding does not say which attributes
belong to which object, the attribute-binding failure the DALL·E 2 paper reports for unCLIP (§7).

{inpainting_words(r)}CLIP zero-shot retrieval among the {r['captions']} held-out captions, on true renders: image → caption top-1
{r['clip_zero_shot']['image_to_text_top1']:.1%}, caption → image top-1 {r['clip_zero_shot']['text_to_image_top1']:.1%}
(chance {r['clip_zero_shot']['chance']:.1%}). Prior: mean cosine between a prior sample for a caption and the CLIP image
embedding of a true render of that caption {r['prior_cosine']['with_true_render']:.3f}; with the render of another caption
{r['prior_cosine']['with_other_caption_render']:.3f}.

Captions outside the grammar still get an image (the model's best effort; the tokenizer knows every
CLIP word, the model never saw these). What the checker reads in it:

| caption | seed | checker reads |
|---|---|---|
{odd}

Time per image: gateway {g['seconds_per_image']:.2f} s{ref_speed} (wall time on a shared machine, not a benchmark).

![contact sheet]({sheet})

Reproduce (needs no file outside the repository; starts a local stack from the release binaries
unless `--gateway` names a running one; about 20 minutes on this 2-core machine):

```sh
cargo build --release -p unclip-cli -p unclip-clip -p unclip-prior -p unclip-decoder -p unclip-gateway
PYTHONPATH=tools .venv-tools/bin/python -m unclip_tools quality-report --model {args.model} --split {split} --out {args.out}
```
"""
