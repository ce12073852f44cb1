"""End-to-end tests of the exporter and the fixture recorder on diffusers' tiny unCLIP.

Heavy: needs torch, diffusers, transformers and onnx (tools/requirements.txt); skipped when they
are missing. Each test exports into a temporary folder through the real CLI.
"""

from __future__ import annotations

import json
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

from unclip_tools import export, karlo_tiny  # noqa: E402
from unclip_tools.__main__ import main  # noqa: E402
from unclip_tools.repository import iter_graphs, load_manifest  # noqa: E402

KARLO_TINY = TOOLS.parent / "models" / "karlo-tiny"


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny text-to-image and variation pipelines, saved with save_pretrained."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("pipelines")
    karlo_tiny.build_text_to_image_pipeline().save_pretrained(folder / "pipeline")
    karlo_tiny.build_image_variation_pipeline().save_pretrained(folder / "variation")
    return folder / "pipeline", folder / "variation"


def _export(pipelines: tuple[Path, Path], out: Path, *flags: str, variation: bool = True) -> int:
    args = ["export", "--pipeline", str(pipelines[0]), "--out", str(out), "--model-id", "tiny-test", *flags]
    if variation:
        args += ["--variation-pipeline", str(pipelines[1])]
    return main(args)


@pytest.fixture(scope="module")
def exported(pipelines: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "tiny"
    assert _export(pipelines, out) == 0  # includes the graph-vs-torch check at batch 1 and 3
    return out


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _feed(spec: dict, batch: int, rng: np.random.Generator, float_dtype: type) -> dict[str, np.ndarray]:
    feed = {}
    for tensor in spec["inputs"]:
        shape = [batch if isinstance(d, str) else d for d in tensor["shape"]]
        if tensor["name"] == "timestep":
            feed["timestep"] = np.array([999, 500, 0][:batch], dtype=np.int64)
        elif tensor["dtype"] == "bool":
            feed[tensor["name"]] = np.arange(shape[1])[None, :].repeat(batch, 0) < 8
        elif tensor["dtype"] == "int64":
            feed[tensor["name"]] = np.where(np.arange(shape[1]) < 5, 70, 0)[None, :].repeat(batch, 0).astype(np.int64)
        else:
            feed[tensor["name"]] = rng.standard_normal(shape).astype(float_dtype)
    return feed


def test_export_writes_a_valid_repository(exported: Path) -> None:
    manifest = load_manifest(exported)
    assert manifest["model_id"] == "tiny-test"
    assert [label for label, _ in iter_graphs(manifest)] == [
        "text_encoder", "image_encoder", "prior", "text_proj", "decoder", "upsamplers[0].first", "upsamplers[0].last"]
    assert manifest["text"] == {"tokenizer": "tokenizer.json", "context_length": 77, "pad_id": 0, "bos_id": 512,
                                "eos_id": 513}
    assert manifest["schedulers"]["prior"] == {
        "num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2", "variance_type": "fixed_small_log",
        "prediction_type": "sample", "clip_sample": True, "clip_sample_range": 5.0}
    assert manifest["schedulers"]["decoder"]["variance_type"] == "learned_range"
    assert manifest["schedulers"]["upsampler"]["prediction_type"] == "epsilon"
    assert manifest["image_preprocess"]["size"] == 32
    assert sorted(manifest["files"]) == sorted(p.relative_to(exported).as_posix()
                                               for p in exported.rglob("*") if p.name != "manifest.json")


def test_exported_graphs_are_the_committed_karlo_tiny(exported: Path) -> None:
    """The committed models/karlo-tiny was produced by this code: same graphs, same tokenizer."""
    committed = json.loads((KARLO_TINY / "manifest.json").read_text())["files"]
    ours = json.loads((exported / "manifest.json").read_text())["files"]
    for path in ours:
        if path.endswith(".onnx") or path == "tokenizer.json":
            assert ours[path] == committed[path], f"{path} differs: regenerate with `python -m unclip_tools karlo-tiny`"


def test_tensors_hold_the_pipeline_values(exported: Path, pipelines: tuple[Path, Path]) -> None:
    from safetensors.numpy import load_file

    tensors = load_file(str(exported / "tensors.safetensors"))
    pipe = export.load_text_to_image_pipeline(pipelines[0])
    tokens = pipe.tokenizer([""], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        encoded = pipe.text_encoder(tokens.input_ids)
    np.testing.assert_array_equal(tensors["uncond_input_ids"], tokens.input_ids[0].numpy())
    np.testing.assert_array_equal(tensors["uncond_attention_mask"], [1, 1] + [0] * 75)
    np.testing.assert_allclose(tensors["uncond_text_embeds"], encoded.text_embeds[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(tensors["uncond_last_hidden_state"], encoded.last_hidden_state[0].numpy(), atol=1e-6)
    np.testing.assert_array_equal(tensors["prior_clip_std"], pipe.prior.clip_std.detach().reshape(-1).numpy())
    np.testing.assert_array_equal(tensors["decoder_cfg_embedding"],
                                  pipe.text_proj.learned_classifier_free_guidance_embeddings.detach().numpy())


def test_fp16_export_loads_and_runs(pipelines: tuple[Path, Path], exported: Path, tmp_path: Path) -> None:
    """--fp16: float16 in the manifest, loadable, and close to the float32 graphs at batch 3."""
    out = tmp_path / "tiny-fp16"
    assert _export(pipelines, out, "--fp16") == 0
    manifest = load_manifest(out)
    dtypes = {t["dtype"] for _, spec in iter_graphs(manifest) for t in spec["inputs"] + spec["outputs"]}
    assert dtypes == {"float16", "int64", "bool"}
    rng = np.random.default_rng(3)
    for label, spec in iter_graphs(manifest):
        feed16 = _feed(spec, 3, rng, np.float16)
        feed32 = {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in feed16.items()}
        got = _session(out / spec["file"]).run(None, feed16)
        want = _session(exported / spec["file"]).run(None, feed32)
        for g, w in zip(got, want):
            assert g.dtype == np.float16 and np.isfinite(g).all(), label
            assert np.abs(g.astype(np.float32) - w).max() <= 2e-2 * max(1.0, np.abs(w).max()), label


def test_weights_float16_halves_the_file_and_keeps_float32_io(tmp_path: Path) -> None:
    """weights_float16: big weights stored as float16 behind Casts; float32 in and out, and the
    result is the float32 graph's up to float16 rounding of the weights."""
    import onnx

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 8))
    graph = export.Graph("net", "net.onnx", module, [export.TensorSpec("x", "float", ["batch", 64])],
                         [export.TensorSpec("y", "float", ["batch", 8])],
                         lambda b, rng: {"x": rng.standard_normal((b, 64)).astype(np.float32)})
    full, half = tmp_path / "full", tmp_path / "half"
    full.mkdir()
    half.mkdir()
    export.export_graph(graph, full, fp16=False, scratch=tmp_path)
    export.export_graph(graph, half, fp16=False, scratch=tmp_path, weights_float16=True)
    assert (half / "net.onnx").stat().st_size < 0.6 * (full / "net.onnx").stat().st_size
    big = sorted(i.name + "__float16" for i in onnx.load(str(full / "net.onnx")).graph.initializer if np.prod(i.dims) >= 1024)
    stored = {i.name: i.data_type for i in onnx.load(str(half / "net.onnx")).graph.initializer}
    assert len(big) == 2 and sorted(n for n, d in stored.items() if d == onnx.TensorProto.FLOAT16) == big
    assert any(d == onnx.TensorProto.FLOAT for d in stored.values()), "small tensors (biases) stay float32"
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    (want,) = _session(full / "net.onnx").run(None, {"x": x})
    (got,) = _session(half / "net.onnx").run(None, {"x": x})
    assert got.dtype == np.float32 and got.shape == (3, 8)
    assert 0 < np.abs(got - want).max() <= 1e-2 * max(1.0, np.abs(want).max())


def test_large_graphs_get_one_external_data_file(pipelines: tuple[Path, Path], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Above the threshold a graph is `<name>.onnx` + `<name>.onnx.data`, both listed and loadable."""
    monkeypatch.setattr(export, "EXTERNAL_DATA_THRESHOLD", 1_000_000)  # the 3-4 MB UNets cross it
    out = tmp_path / "tiny-external"
    assert _export(pipelines, out, "--no-check", variation=False) == 0
    manifest = load_manifest(out)
    assert "image_encoder" not in manifest["components"] and "image_preprocess" not in manifest
    data_files = sorted(p for p in manifest["files"] if p.endswith(".onnx.data"))
    assert data_files == ["decoder.onnx.data", "upsampler_0_first.onnx.data", "upsampler_0_last.onnx.data"]
    assert (out / "decoder.onnx").stat().st_size < (out / "decoder.onnx.data").stat().st_size / 10
    spec = manifest["components"]["decoder"]
    outputs = _session(out / "decoder.onnx").run(None, _feed(spec, 3, np.random.default_rng(0), np.float32))
    assert outputs[0].shape == (3, 6, 32, 32)


def test_export_refuses_a_non_empty_out(pipelines: tuple[Path, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    assert _export(pipelines, tmp_path) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_export_names_a_wrong_pipeline_folder(pipelines: tuple[Path, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    args = ["export", "--pipeline", str(pipelines[1]), "--out", str(tmp_path / "x"), "--model-id", "x"]
    assert main(args) == 2
    assert "holds a UnCLIPImageVariationPipeline, expected UnCLIPPipeline" in capsys.readouterr().err


def test_recorder_reproduces_a_committed_fixture(pipelines: tuple[Path, Path]) -> None:
    """Re-record one 2/2/2 case: same noise draws, same calls, same image as the committed fixture."""
    name = "t2i_horse_seed0_steps2-2-2"
    committed = json.loads((KARLO_TINY / "fixtures" / f"{name}.json").read_text())
    with np.load(KARLO_TINY / "fixtures" / committed["arrays"]) as npz:
        arrays = {k: npz[k] for k in npz.files}
    pipe = export.load_text_to_image_pipeline(pipelines[0])
    pipe.set_progress_bar_config(disable=True)
    call = {k: committed["settings"][k] for k in ("prompt", "num_images_per_prompt", "prior_num_inference_steps",
                                                  "decoder_num_inference_steps", "super_res_num_inference_steps",
                                                  "prior_guidance_scale", "decoder_guidance_scale")}
    case, fresh = karlo_tiny.record_case(pipe, "text_to_image", call, committed["settings"]["seed"], 1)
    assert [n["shape"] for n in case["noise"]] == [n["shape"] for n in committed["noise"]]
    for new, old in zip(case["noise"], committed["noise"]):
        np.testing.assert_array_equal(fresh[new["tensor"]], arrays[old["tensor"]])
    assert [c["component"] for c in case["model_calls"]] == [c["component"] for c in committed["model_calls"]]
    np.testing.assert_allclose(fresh[case["values"]["image"]], arrays[committed["values"]["image"]], atol=1e-4)
