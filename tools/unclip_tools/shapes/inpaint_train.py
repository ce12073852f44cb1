"""Fine-tune an inpainting decoder (GLIDE's recipe) from the shapes decoder: resumable, CPU.

    python -m unclip_tools train-inpaint --work runs/recovered --steps 3000

GLIDE (Nichol et al. 2022, §4) and DALL·E 2 (Ramesh et al. 2022, Figure 6 and §3) inpaint with a
decoder that also sees the known image and where it is known: four extra input channels (the
masked RGB image, zero where it is to be generated, and the mask) fine-tuned from the plain model
with their weights zero-initialised, so training starts from exactly the plain decoder. The text
projection stays frozen: the inpainting decoder reads the same conditioning, so the service runs
text_proj once for either graph.

Training cases (rendered once, cached in `WORK/inpaint_data`), half of each kind:

- *object into a masked area* (what users ask for, and what `inpaint-eval` measures): a scene
  with one object (or none), a square mask (40…88 px of 128) around another named position, and
  the finished scene there, conditioned on the CLIP embedding and caption of the *prompt's* scene
  alone, as the prior's sample for the prompt would be at inference;
- *random masks*: a training scene with a random rectangle masked (sometimes the whole image),
  conditioned on its own embedding and caption.

Scenes come from seeds no evaluation uses (`DATA_SEED`), and no case's prompt states a held-out
single-object combination. Loss, CFG dropping and offset noise are the decoder's
(`train.train_decoder`). Checkpoints every 250 steps in `WORK/decoder_inpaint.pt`; the same
command resumes. Needs a work folder with `clip.pt` and `decoder.pt`: `train-shapes`'s, or the
one `recover-shapes` rebuilds from the shipped ONNX graphs.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from .. import UserError

DATA_SEED = 31_337  # inpaint-eval uses seeds 7000+, the quality report 1000+/5000+
N_CASES = 16_000
BATCH = 24
LR = 2e-4
SIDE = 128


def keep_at(keep128: np.ndarray, side: int) -> np.ndarray:
    """The gateway's mask at a smaller side: a pixel is kept only when all it covers is kept."""
    f = SIDE // side
    return keep128.reshape(side, f, side, f).all(axis=(1, 3))


def square_mask(rng: np.random.Generator, centre: tuple[float, float]) -> np.ndarray:
    """inpaint-eval's masks: a square of 40…88 px around a named position (here jittered)."""
    side = int(rng.integers(40, 89))
    cx, cy = (np.array(centre) * SIDE).astype(int) + rng.integers(-6, 7, 2)
    x0, y0 = int(np.clip(cx - side // 2, 0, SIDE - side)), int(np.clip(cy - side // 2, 0, SIDE - side))
    keep = np.ones((SIDE, SIDE), bool)
    keep[y0 : y0 + side, x0 : x0 + side] = False
    return keep


def object_case(rng: np.random.Generator, i: int):
    """(finished scene 128 px, keep mask, conditioning scene, caption) of an object-into-mask case."""
    from .render import BACKGROUNDS, COLORS, POSITIONS, SHAPES, SIZES, Scene, is_held_out, make_single, render, single_caption

    names = list(POSITIONS)
    bg = str(rng.choice(list(BACKGROUNDS)))
    while True:
        pos_a, pos_b = (str(p) for p in rng.choice(names, 2, replace=False))
        shape_b, col_b, size_b = str(rng.choice(SHAPES)), str(rng.choice(list(COLORS))), str(rng.choice(list(SIZES), p=[0.7, 0.3]))
        if not is_held_out(shape_b, col_b, size_b, pos_b, bg):
            break
    stated = frozenset(k for k in ("size", "position", "background") if rng.random() < 0.75)
    target = make_single(shape_b, col_b, size_b, pos_b, bg, rng, stated)
    caption = single_caption(shape_b, col_b, size_b if "size" in stated else None, pos_b if "position" in stated else None,
                             bg if "background" in stated else None)
    if rng.random() < 0.85:
        base = make_single(str(rng.choice(SHAPES)), str(rng.choice(list(COLORS))), str(rng.choice(list(SIZES), p=[0.7, 0.3])),
                           pos_a, bg, rng, frozenset())
        base_img = np.asarray(render(base))
    else:
        base_img = np.asarray(render(Scene(background=bg, objects=())))  # an empty scene
    keep = square_mask(rng, POSITIONS[pos_b])
    target_img = np.asarray(render(target))
    finished = np.where(keep[..., None], base_img, target_img)
    return finished, keep, target_img, caption


def random_mask_case(rng: np.random.Generator, i: int):
    """(scene 128 px, keep mask, the same scene, its caption) with a random rectangle masked."""
    from .render import random_scene, render

    scene = random_scene(DATA_SEED + 1, i, train=True)
    img = np.asarray(render(scene))
    keep = np.ones((SIDE, SIDE), bool)
    if rng.random() < 0.1:
        keep[:] = False
    else:
        w, h = rng.integers(16, 97, 2)
        x0, y0 = rng.integers(0, SIDE - w + 1), rng.integers(0, SIDE - h + 1)
        keep[y0 : y0 + h, x0 : x0 + w] = False
    return img, keep, img, scene.caption


def render_cases(folder: Path, n: int) -> None:
    """Renders the training cases once: x0 and masks at 32 px, conditioning images at 64 px."""
    from .render import downsample

    if (folder / "captions.json").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    x32 = np.zeros((n, 32, 32, 3), np.uint8)
    keep32 = np.zeros((n, 32, 32), bool)
    cond64 = np.zeros((n, 64, 64, 3), np.uint8)
    captions = []
    for i in range(n):
        rng = np.random.default_rng([DATA_SEED, i])
        finished, keep, cond, caption = (object_case if i % 2 == 0 else random_mask_case)(rng, i)
        x32[i] = np.asarray(downsample(Image.fromarray(finished), 32))
        keep32[i] = keep_at(keep, 32)
        cond64[i] = np.asarray(downsample(Image.fromarray(cond), 64))
        captions.append(caption)
    np.save(folder / "x32.npy", x32)
    np.save(folder / "keep32.npy", keep32)
    np.save(folder / "cond64.npy", cond64)
    (folder / "captions.json").write_text(json.dumps(captions))
    print(f"[inpaint-data] rendered {n} cases in {time.time() - t0:.0f}s", flush=True)


def train(work: Path, steps: int, threads: int) -> None:
    import torch

    from .models import InpaintDecoder, TextProjGraph, make_text_proj
    from .train import (OFFSET_NOISE, DecoderSchedule, Phase, clip_pixels, encode_text, load_clip, load_config,
                        to_signed)

    torch.set_num_threads(threads)
    torch.manual_seed(11)
    cfg = load_config(work)
    data = work / "inpaint_data"
    render_cases(data, N_CASES)
    x32 = np.load(data / "x32.npy")
    keep32 = np.load(data / "keep32.npy")
    captions = json.loads((data / "captions.json").read_text())
    clip = load_clip(work, cfg)
    emb_path = data / "cond_embeds.npy"
    if not emb_path.exists():
        cond64 = np.load(data / "cond64.npy")
        with torch.no_grad():
            emb = np.concatenate([clip.image(clip_pixels(cond64[s : s + 500])).numpy() for s in range(0, len(cond64), 500)])
        np.save(emb_path, emb.astype(np.float32))
    emb_all = torch.from_numpy(np.load(emb_path))
    u_emb, u_hidden, u_mask = encode_text(clip, [""])

    base = torch.load(work / "decoder.pt", weights_only=False, map_location="cpu")
    tp = TextProjGraph(make_text_proj(cfg))
    tp.load_state_dict(base["ema"]["text_proj"])
    tp.eval()
    for p in tp.parameters():
        p.requires_grad_(False)
    dec = InpaintDecoder.from_decoder_state(cfg, base["ema"]["decoder"])
    ph = Phase(work, "decoder_inpaint", {"decoder_inpaint": dec}, steps, LR)
    schedule = DecoderSchedule()
    cfg_emb = tp.text_proj.learned_classifier_free_guidance_embeddings.detach()
    rng = np.random.default_rng([7, ph.step])
    while ph.step < ph.steps:
        idx = np.sort(rng.choice(len(captions), BATCH, replace=False))
        b = len(idx)
        t_emb, hidden, mask = encode_text(clip, [captions[i] for i in idx])
        drop_text = torch.from_numpy(rng.random(b) < 0.5)
        t_emb = torch.where(drop_text[:, None], u_emb, t_emb)
        hidden = torch.where(drop_text[:, None, None], u_hidden, hidden)
        mask = torch.where(drop_text[:, None], u_mask, mask)
        drop_img = torch.from_numpy(rng.random(b) < 0.1)
        img_emb = torch.where(drop_img[:, None], cfg_emb[None].expand(b, -1), emb_all[idx])
        with torch.no_grad():
            ehs, add_emb = tp(img_emb, t_emb, hidden)
        dmask = torch.cat([torch.ones(b, 4, dtype=torch.bool), mask], 1)
        x0 = to_signed(x32[idx])
        keep = torch.from_numpy(keep32[idx]).float()[:, None]
        masked = x0 * keep
        t = torch.from_numpy(rng.integers(0, 1000, b))
        noise = torch.randn_like(x0) + OFFSET_NOISE * torch.randn(b, 3, 1, 1)
        xt = schedule.noised(x0, noise, t)
        out = dec(xt, t, ehs, add_emb, dmask, masked, keep)
        ph.update(schedule.hybrid_loss(out, noise, xt, x0, t))
        if ph.step - ph._start == 10:
            print(f"[decoder_inpaint] first 10 steps: {(time.time() - ph.t0) / 10:.2f}s/step", flush=True)
    ph.save()
    print(f"[decoder_inpaint] done at step {ph.step}", flush=True)


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    if name == "export-inpaint":
        add_export_arguments(parser)
        return
    parser.add_argument("--work", type=Path, default=Path("runs/recovered"), help="work folder with clip.pt and decoder.pt")
    parser.add_argument("--steps", type=int, default=3000, help="fine-tuning steps (the run resumes towards this)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 on a shared machine: at low priority a second thread mostly waits for the first)")
    parser.add_argument("--pid-file", type=Path, default=None, help="write this process's id here")


def run(args: argparse.Namespace, name: str) -> int:
    if name == "export-inpaint":
        if not (args.work / "decoder_inpaint.pt").exists():
            raise UserError(f"{args.work / 'decoder_inpaint.pt'} is missing; run train-inpaint first")
        export_inpaint(args.work, args.model, args.out or args.model)
        return 0
    for f in ("clip.pt", "decoder.pt"):
        if not (args.work / f).exists():
            raise UserError(f"{args.work / f} is missing; run train-shapes or recover-shapes first")
    if args.pid_file is not None:
        args.pid_file.write_text(f"{os.getpid()}\n")
    train(args.work, args.steps, args.threads)
    return 0


# ---------------------------------------------------------------------------------------------
# Export: add the decoder_inpaint graph to a repository


def export_inpaint(work: Path, model: Path, out: Path, weights_float16: bool = True) -> dict:
    """Copies the repository `model` to `out` (unless they are the same folder), exports the EMA
    weights of `work/decoder_inpaint.pt` as `decoder_inpaint.onnx` next to its graphs, and
    rewrites the manifest with the `decoder_inpaint` component. Other files are left as they are."""
    import shutil

    import torch

    from ..export import Graph, TensorSpec, export_graph
    from ..repository import load_manifest, write_manifest
    from .models import InpaintDecoder
    from .train import load_config

    manifest = load_manifest(model, check_graphs=False)
    if out.resolve() != model.resolve():
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(model, out)
    cfg = load_config(work)
    ck = torch.load(work / "decoder_inpaint.pt", weights_only=False, map_location="cpu")
    net = InpaintDecoder(cfg)
    net.load_state_dict(ck["ema"]["decoder_inpaint"])
    net.eval()
    torch.set_num_threads(1)
    c, t_dim, s = cfg.cross_dim, cfg.time_embed_dim, cfg.base_size
    F, I, B = "float", "int64", "bool"

    def inputs(b: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        mask = np.zeros((b, 1, s, s), np.float32)
        mask[:, :, :, : s // 2] = 1.0
        attn = np.zeros((b, 81), bool)
        attn[:, :11] = True
        return {"sample": rng.standard_normal((b, 3, s, s)).astype(np.float32), "timestep": rng.integers(0, 1000, b).astype(np.int64),
                "encoder_hidden_states": rng.standard_normal((b, 81, c)).astype(np.float32),
                "class_labels": rng.standard_normal((b, t_dim)).astype(np.float32), "attention_mask": attn,
                "masked_image": (rng.uniform(-1, 1, (b, 3, s, s)) * mask).astype(np.float32), "mask": mask}

    graph = Graph("decoder_inpaint", "decoder_inpaint.onnx", net,
                  [TensorSpec("sample", F, ["batch", 3, s, s]), TensorSpec("timestep", I, ["batch"]),
                   TensorSpec("encoder_hidden_states", F, ["batch", 81, c]), TensorSpec("class_labels", F, ["batch", t_dim]),
                   TensorSpec("attention_mask", B, ["batch", 81]), TensorSpec("masked_image", F, ["batch", 3, s, s]),
                   TensorSpec("mask", F, ["batch", 1, s, s])],
                  [TensorSpec("out_sample", F, ["batch", 6, s, s])], inputs)
    with tempfile.TemporaryDirectory(prefix="inpaint-export-") as scratch:
        export_graph(graph, out, fp16=False, scratch=Path(scratch), weights_float16=weights_float16)
    components = dict(manifest["components"])
    entry = graph.manifest_entry("float32")
    # Keep the documented order: decoder_inpaint right after decoder.
    ordered = {}
    for k, v in components.items():
        if k == "decoder_inpaint":
            continue
        ordered[k] = v
        if k == "decoder":
            ordered["decoder_inpaint"] = entry
    manifest = {**manifest, "components": ordered}
    written = write_manifest(out, manifest, check_graphs=True)
    # The exported graph computes what the checkpoint does (float16 storage rounds the weights).
    import onnxruntime as ort

    feed = inputs(2, np.random.default_rng(5))
    got = ort.InferenceSession(str(out / "decoder_inpaint.onnx"), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    with torch.no_grad():
        want = net(*(torch.from_numpy(feed[t.name]) for t in graph.inputs)).numpy()
    diff = float(np.abs(got - want).max())
    print(f"wrote {out}: decoder_inpaint.onnx from step {ck['step']}, max |onnx - torch| {diff:.2e}; version {written['version']}")
    if diff > 2e-2:
        raise UserError(f"the exported decoder_inpaint differs from the checkpoint by {diff}")
    return written


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--work", type=Path, default=Path("runs/recovered"), help="work folder with decoder_inpaint.pt")
    parser.add_argument("--model", type=Path, default=Path("models/shapes"), help="repository to add the graph to")
    parser.add_argument("--out", type=Path, default=None, help="write here instead of rewriting --model in place")
