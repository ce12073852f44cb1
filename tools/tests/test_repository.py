"""Tests of the model repository format against the committed models/karlo-tiny.

Light: numpy, onnxruntime and safetensors only (no torch), as in CI. Covers loading and
validation, the version rule as docs/model-repository.md states it, batched per-sample
timesteps through every graph, and the loader's rejection of tampered copies.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

TOOLS = Path(__file__).resolve().parents[1]
if str(TOOLS) not in sys.path:  # `import unclip_tools` without installing the package
    sys.path.insert(0, str(TOOLS))

from unclip_tools import UserError  # noqa: E402
from unclip_tools.__main__ import main  # noqa: E402
from unclip_tools.repository import (  # noqa: E402
    RepositoryError,
    compute_version,
    iter_graphs,
    load_manifest,
    write_manifest,
)

KARLO_TINY = TOOLS.parent / "models" / "karlo-tiny"
NP_DTYPES = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "bool": np.bool_}


@pytest.fixture(scope="module")
def manifest() -> dict:
    return load_manifest(KARLO_TINY)


@pytest.fixture()
def copy(tmp_path: Path) -> Path:
    """A scratch copy of karlo-tiny to tamper with (graphs and fixtures included)."""
    target = tmp_path / "karlo-tiny"
    shutil.copytree(KARLO_TINY, target)
    return target


def _edit_manifest(folder: Path, edit) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest, indent=2) + "\n")


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _inputs(spec: dict, batch: int, timesteps: list[int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs shaped and typed as the manifest says; masks true for the first tokens, ids in range."""
    feed = {}
    for tensor in spec["inputs"]:
        shape = [batch if isinstance(d, str) else d for d in tensor["shape"]]
        dtype = tensor["dtype"]
        if tensor["name"] == "timestep":
            feed["timestep"] = np.asarray(timesteps, dtype=np.int64)
        elif dtype == "bool":
            mask = np.zeros(shape, dtype=bool)
            for i in range(batch):
                mask[i, : 6 + 10 * i] = True
            feed[tensor["name"]] = mask
        elif dtype == "int64":  # input_ids: BOS, a few tokens, EOS, padding
            ids = np.zeros(shape, dtype=np.int64)
            for i in range(batch):
                ids[i, : 3 + i] = rng.integers(1, 500, size=3 + i)
                ids[i, 0], ids[i, 3 + i] = 512, 513
            feed[tensor["name"]] = ids
        else:
            feed[tensor["name"]] = rng.standard_normal(shape).astype(NP_DTYPES[dtype])
    return feed


def test_karlo_tiny_loads_and_every_graph_matches_its_manifest(manifest: dict) -> None:
    """load_manifest (hashes, contracts, onnxruntime metadata, tensors) accepts the committed repository."""
    assert manifest["model_id"] == "karlo-tiny"
    labels = [label for label, _ in iter_graphs(manifest)]
    assert labels == ["text_encoder", "image_encoder", "prior", "text_proj", "decoder",
                      "upsamplers[0].first", "upsamplers[0].last"]
    assert manifest["components"]["upsamplers"][0]["input_size"] == 32
    assert manifest["components"]["upsamplers"][0]["output_size"] == 64
    assert manifest["defaults"] == {"prior_steps": 25, "decoder_steps": 25, "upsampler_steps": 7,
                                    "prior_guidance_scale": 4.0, "decoder_guidance_scale": 8.0}


def test_version_follows_the_documented_rule(manifest: dict) -> None:
    """Recompute the version exactly as docs/model-repository.md words it, independently of the module."""
    text = (KARLO_TINY / "manifest.json").read_text()
    blank = text.replace(f'"{manifest["version"]}"', '""')
    listing = hashlib.sha256(blank.encode()).hexdigest() + "  manifest.json\n"
    for path in sorted(manifest["files"]):
        digest = hashlib.sha256((KARLO_TINY / path).read_bytes()).hexdigest()
        assert digest == manifest["files"][path], path
        listing += f"{digest}  {path}\n"
    assert manifest["version"] == "sha256-" + hashlib.sha256(listing.encode()).hexdigest()[:16]
    assert compute_version(KARLO_TINY, manifest) == manifest["version"]


def test_write_manifest_reproduces_the_committed_manifest(copy: Path) -> None:
    """Writing the manifest again over the same files gives byte-identical manifest.json."""
    before = (copy / "manifest.json").read_text()
    body = json.loads(before)
    written = write_manifest(copy, body)
    assert (copy / "manifest.json").read_text() == before
    assert written["version"] == body["version"]


SHIPPED = [KARLO_TINY] + [p for p in [TOOLS.parent / "models" / "shapes"] if (p / "manifest.json").exists()]


@pytest.mark.parametrize("folder", SHIPPED, ids=lambda p: p.name)
def test_batch_of_three_with_per_sample_timesteps_runs_every_graph(folder: Path) -> None:
    """Every graph of every shipped model takes a batch of 3 with 3 timesteps; each row equals that row run alone."""
    manifest = load_manifest(folder)
    rng = np.random.default_rng(7)
    timesteps = [999, 500, 0]
    for label, spec in iter_graphs(manifest):
        session = _session(folder / spec["file"])
        feed = _inputs(spec, 3, timesteps, rng)
        outputs = session.run([t["name"] for t in spec["outputs"]], feed)
        for tensor, out in zip(spec["outputs"], outputs):
            expected = tuple(3 if isinstance(d, str) else d for d in tensor["shape"])
            assert out.shape == expected, (label, tensor["name"])
            assert out.dtype == NP_DTYPES[tensor["dtype"]], (label, tensor["name"])
            assert np.isfinite(out).all(), (label, tensor["name"])
        for row in range(3):
            single = session.run(None, {name: value[row : row + 1] for name, value in feed.items()})
            for tensor, batched, alone in zip(spec["outputs"], outputs, single):
                diff = np.abs(batched[row : row + 1] - alone).max()
                assert diff < 1e-4, f"{label} {tensor['name']} row {row}: batched differs from alone by {diff}"


def test_repository_module_needs_no_torch() -> None:
    """The loader runs with light dependencies only: it must not import torch."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from unclip_tools.repository import load_manifest; load_manifest(sys.argv[2]);"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code, str(TOOLS), str(KARLO_TINY)], check=True)


def test_verify_command_prints_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(KARLO_TINY)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"OK {KARLO_TINY}: karlo-tiny sha256-")
    assert "7 graphs (float32)" in out


def test_verify_command_reports_a_problem_without_traceback(copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (copy / "prior.onnx").unlink()
    assert main(["verify", str(copy)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: missing file prior.onnx (listed in the manifest)"


# --- tampered copies ---------------------------------------------------------------------------


def _rejects(folder: Path, *fragments: str, check_graphs: bool = True) -> str:
    with pytest.raises(RepositoryError) as info:
        load_manifest(folder, check_graphs=check_graphs)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert isinstance(info.value, UserError)
    return message


def test_changed_byte_in_a_graph_is_rejected(copy: Path) -> None:
    data = bytearray((copy / "decoder.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "decoder.onnx").write_bytes(data)
    _rejects(copy, "file decoder.onnx: sha256 differs from manifest")


def test_changed_byte_in_a_fixture_is_rejected(copy: Path) -> None:
    path = copy / "fixtures" / "index.json"
    path.write_text(path.read_text().replace("seed", "Seed", 1))
    _rejects(copy, "file fixtures/index.json: sha256 differs from manifest")


def test_missing_file_is_rejected(copy: Path) -> None:
    (copy / "tensors.safetensors").unlink()
    _rejects(copy, "missing file tensors.safetensors")


def test_unlisted_file_is_rejected(copy: Path) -> None:
    (copy / "notes.txt").write_text("not part of the model\n")
    _rejects(copy, "file notes.txt is not listed in the manifest")


def test_wrong_timestep_dtype_in_manifest_is_rejected(copy: Path) -> None:
    def edit(m: dict) -> None:
        m["components"]["decoder"]["inputs"][1]["dtype"] = "int32"

    _edit_manifest(copy, edit)
    _rejects(copy, "decoder: input 'timestep' must have dtype int64, manifest says int32")


def test_float_dtype_that_disagrees_with_the_graphs_is_rejected(copy: Path) -> None:
    """A manifest consistently claiming float16 passes the contract but not the graphs."""
    _edit_manifest(copy, lambda m: m.update(json.loads(json.dumps(m).replace('"float32"', '"float16"'))))
    _rejects(copy, "text_encoder.onnx: output 'text_embeds' has dtype float32, manifest says float16")


def test_graph_with_other_inputs_is_rejected(copy: Path) -> None:
    def edit(m: dict) -> None:
        m["components"]["upsamplers"][0]["last"]["file"] = "decoder.onnx"

    _edit_manifest(copy, edit)
    _rejects(copy, "decoder.onnx: graph input 'encoder_hidden_states' is not in the manifest")


def test_wrong_fixed_dimension_is_rejected(copy: Path) -> None:
    def edit(m: dict) -> None:
        m["components"]["text_encoder"]["outputs"][1]["shape"][1] = 76

    _edit_manifest(copy, edit)
    _rejects(copy, "text_encoder: output 'last_hidden_state' dim 1 is 76, but text.context_length is 77")


def test_unknown_component_is_rejected(copy: Path) -> None:
    _edit_manifest(copy, lambda m: m["components"].update(vae={"file": "decoder.onnx", "inputs": [], "outputs": []}))
    _rejects(copy, "unknown component 'vae'")


def test_missing_key_is_rejected(copy: Path) -> None:
    _edit_manifest(copy, lambda m: m["schedulers"]["decoder"].pop("variance_type"))
    _rejects(copy, "schedulers.decoder: missing key 'variance_type'")


def test_stale_version_is_rejected(copy: Path) -> None:
    """Any change to the manifest that keeps it valid still changes the content hash."""
    manifest = json.loads((copy / "manifest.json").read_text())
    _edit_manifest(copy, lambda m: m.update(description=m["description"] + " (edited)"))
    message = _rejects(copy, f"version {manifest['version']} does not match content (expected sha256-")
    assert message.endswith(")")


def test_missing_tensor_is_rejected(copy: Path) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(copy / "tensors.safetensors"))
    del tensors["decoder_cfg_embedding"]
    save_file(tensors, str(copy / "tensors.safetensors"))
    body = json.loads((copy / "manifest.json").read_text())
    with pytest.raises(RepositoryError, match="tensors.safetensors: missing tensor 'decoder_cfg_embedding'"):
        write_manifest(copy, body)


def test_tokenizer_without_fixed_padding_is_rejected(copy: Path) -> None:
    tokenizer = json.loads((copy / "tokenizer.json").read_text())
    tokenizer["padding"] = None
    (copy / "tokenizer.json").write_text(json.dumps(tokenizer))
    body = json.loads((copy / "manifest.json").read_text())
    with pytest.raises(RepositoryError, match="tokenizer.json: padding must be fixed to 77 tokens"):
        write_manifest(copy, body, check_graphs=False)


def test_not_a_repository_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="no manifest.json in"):
        load_manifest(tmp_path)
