"""The model repository format: writing, loading and verifying `manifest.json`.

A model repository is one folder holding the ONNX graphs of an unCLIP model, its tokenizer, a
few tensors the sampling loop needs (`tensors.safetensors`) and `manifest.json`, which describes
all of them and lists the SHA-256 of every other file. docs/model-repository.md is the
specification; this module is its reference implementation:

- `write_manifest` hashes the folder, computes the version and writes `manifest.json`;
- `load_manifest` reads it back and rejects anything that disagrees with the folder: missing,
  unlisted or changed files, a stale version, graphs whose inputs or outputs differ from the
  manifest, missing or misshapen tensors;
- `python -m unclip_tools verify DIR` runs `load_manifest` and prints a short summary.

It imports only numpy, onnxruntime, safetensors and the standard library, so CI and the
services' tooling can run it without torch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path, PurePosixPath
from typing import Any

from . import UserError

FORMAT = "unclip-model-repository/1"
MANIFEST = "manifest.json"

# Keys of the manifest in the order the writer emits them ("files" last).
TOP_LEVEL_KEYS = (
    "format",
    "model_id",
    "version",
    "description",
    "embedding_dim",
    "text",
    "image_preprocess",
    "components",
    "schedulers",
    "defaults",
    "tensors",
    "files",
)
OPTIONAL_TOP_LEVEL_KEYS = frozenset({"image_preprocess"})
REQUIRED_COMPONENTS = ("text_encoder", "prior", "text_proj", "decoder", "upsamplers")
OPTIONAL_COMPONENTS = ("image_encoder", "decoder_inpaint")
# Graph components in manifest order (upsamplers are listed per stage).
GRAPH_COMPONENTS = ("text_encoder", "image_encoder", "prior", "text_proj", "decoder", "decoder_inpaint")
SCHEDULER_STAGES = ("prior", "decoder", "upsampler")

# onnxruntime's type strings -> manifest dtype names.
_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(bool)": "bool",
    "tensor(uint8)": "uint8",
}

# The graph contracts. Shapes use "batch" for the dynamic batch dimension and capital letters
# for sizes that must be the same wherever the letter appears in one repository:
#   D embedding_dim, L text context length, N decoder context (L + extra tokens),
#   C decoder cross-attention width, T decoder time-embedding width, S image-encoder size,
#   H decoder resolution, U upsampler output resolution (per stage).
# "float" means the repository's float dtype (all float32 or all float16).
_Contract = dict[str, list[tuple[str, str, tuple[Any, ...]]]]
CONTRACTS: dict[str, _Contract] = {
    "text_encoder": {
        "inputs": [("input_ids", "int64", ("batch", "L"))],
        "outputs": [("text_embeds", "float", ("batch", "D")), ("last_hidden_state", "float", ("batch", "L", "D"))],
    },
    "image_encoder": {
        "inputs": [("pixel_values", "float", ("batch", 3, "S", "S"))],
        "outputs": [("image_embeds", "float", ("batch", "D"))],
    },
    "prior": {
        "inputs": [
            ("hidden_states", "float", ("batch", "D")),
            ("timestep", "int64", ("batch",)),
            ("proj_embedding", "float", ("batch", "D")),
            ("encoder_hidden_states", "float", ("batch", "L", "D")),
            ("attention_mask", "bool", ("batch", "L")),
        ],
        "outputs": [("predicted_image_embedding", "float", ("batch", "D"))],
    },
    "text_proj": {
        "inputs": [
            ("image_embeddings", "float", ("batch", "D")),
            ("prompt_embeds", "float", ("batch", "D")),
            ("text_encoder_hidden_states", "float", ("batch", "L", "D")),
        ],
        "outputs": [
            ("encoder_hidden_states", "float", ("batch", "N", "C")),
            ("additive_clip_time_embeddings", "float", ("batch", "T")),
        ],
    },
    "decoder": {
        "inputs": [
            ("sample", "float", ("batch", 3, "H", "H")),
            ("timestep", "int64", ("batch",)),
            ("encoder_hidden_states", "float", ("batch", "N", "C")),
            ("class_labels", "float", ("batch", "T")),
            ("attention_mask", "bool", ("batch", "N")),
        ],
        "outputs": [("out_sample", "float", ("batch", 6, "H", "H"))],
    },
    # Optional: the decoder with GLIDE's inpainting inputs (the known image times the mask, and
    # the mask, 1 = known), used for masked Decode calls when present.
    "decoder_inpaint": {
        "inputs": [
            ("sample", "float", ("batch", 3, "H", "H")),
            ("timestep", "int64", ("batch",)),
            ("encoder_hidden_states", "float", ("batch", "N", "C")),
            ("class_labels", "float", ("batch", "T")),
            ("attention_mask", "bool", ("batch", "N")),
            ("masked_image", "float", ("batch", 3, "H", "H")),
            ("mask", "float", ("batch", 1, "H", "H")),
        ],
        "outputs": [("out_sample", "float", ("batch", 6, "H", "H"))],
    },
    "upsampler": {
        "inputs": [("sample", "float", ("batch", 6, "U", "U")), ("timestep", "int64", ("batch",))],
        "outputs": [("out_sample", "float", ("batch", 3, "U", "U"))],
    },
}

# Required entries of tensors.safetensors: name -> (safetensors dtype, shape in contract letters).
REQUIRED_TENSORS: dict[str, tuple[str, tuple[str, ...]]] = {
    "prior_clip_mean": ("F32", ("D",)),
    "prior_clip_std": ("F32", ("D",)),
    "decoder_cfg_embedding": ("F32", ("D",)),
    "uncond_input_ids": ("I64", ("L",)),
    "uncond_attention_mask": ("U8", ("L",)),
    "uncond_text_embeds": ("F32", ("D",)),
    "uncond_last_hidden_state": ("F32", ("L", "D")),
}


class RepositoryError(UserError):
    """A model repository that does not match its manifest or the format; the message says where."""


# ---------------------------------------------------------------------------------------------
# Hashing and the version
# ---------------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (graphs can be several GiB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def list_files(folder: Path) -> list[str]:
    """Every regular file under `folder` except the top-level manifest.json, as sorted POSIX paths."""
    paths = []
    for path in folder.rglob("*"):
        if path.is_file():
            rel = path.relative_to(folder).as_posix()
            if rel != MANIFEST:
                paths.append(rel)
    return sorted(paths)


def hash_folder(folder: Path) -> dict[str, str]:
    """path -> sha256 for every file that belongs in the manifest's "files"."""
    return {rel: sha256_file(folder / rel) for rel in list_files(folder)}


def manifest_text(manifest: dict[str, Any]) -> str:
    """The exact text the writer puts in manifest.json (2-space indent, key order kept, final newline)."""
    return json.dumps(manifest, indent=2, sort_keys=False) + "\n"


def _version_of(blank_manifest_text: str, file_hashes: dict[str, str]) -> str:
    """The version rule: hash of a sha256sum-style listing of the blanked manifest and every file."""
    listing = hashlib.sha256(blank_manifest_text.encode("utf-8")).hexdigest() + "  " + MANIFEST + "\n"
    for path in sorted(file_hashes):
        listing += f"{file_hashes[path]}  {path}\n"
    return "sha256-" + hashlib.sha256(listing.encode("utf-8")).hexdigest()[:16]


def blank_version(text: str, version: str) -> str:
    """manifest.json's text with the version's value replaced by the empty string.

    Works on the text, not on re-serialised JSON, so that any writer's formatting is hashed as
    written. The quoted version string must occur exactly once.
    """
    quoted = json.dumps(version)
    count = text.count(quoted)
    if count != 1:
        raise RepositoryError(f"{MANIFEST}: the version string {quoted} occurs {count} times, expected once")
    return text.replace(quoted, '""')


def compute_version(folder: Path, manifest: dict[str, Any], file_hashes: dict[str, str] | None = None) -> str:
    """The version `manifest` would have if written by `write_manifest` into `folder`.

    The files' hashes are computed from the folder unless `file_hashes` is given.
    """
    hashes = hash_folder(Path(folder)) if file_hashes is None else file_hashes
    blank = dict(manifest)
    blank["version"] = ""
    blank["files"] = {path: hashes[path] for path in sorted(hashes)}
    return _version_of(manifest_text(_ordered(blank)), hashes)


def _ordered(manifest: dict[str, Any]) -> dict[str, Any]:
    """Known keys in the documented order, then any others; "version" after "model_id", "files" last."""
    out = {key: manifest[key] for key in TOP_LEVEL_KEYS if key in manifest and key != "files"}
    out.update({key: value for key, value in manifest.items() if key not in out and key != "files"})
    if "files" in manifest:
        out["files"] = manifest["files"]
    return out


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def write_manifest(folder: Path, manifest: dict[str, Any], check_graphs: bool = True) -> dict[str, Any]:
    """Hash `folder`, add "files" and "version" to `manifest`, validate it, write manifest.json.

    `manifest` is everything else (format, model_id, components, ...); any "files" or "version"
    it carries is replaced. Validation is `load_manifest`'s, minus the version (which is computed
    here); `check_graphs=False` skips opening the graphs with onnxruntime. Returns the manifest
    as written.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise RepositoryError(f"{folder} is not a folder")
    hashes = hash_folder(folder)
    body = {key: value for key, value in manifest.items() if key not in ("files", "version")}
    body["version"] = ""
    body["files"] = {path: hashes[path] for path in sorted(hashes)}
    body = _ordered(body)
    _validate(folder, body, hashes, check_graphs=check_graphs)
    body["version"] = _version_of(manifest_text(body), hashes)
    (folder / MANIFEST).write_text(manifest_text(body), encoding="utf-8")
    return body


# ---------------------------------------------------------------------------------------------
# Loading and validation
# ---------------------------------------------------------------------------------------------


def load_manifest(folder: Path, check_graphs: bool = True) -> dict[str, Any]:
    """Read `folder`/manifest.json and check it against the folder; return the manifest.

    Raises RepositoryError naming the first problem found. Checks, in order: the manifest's
    structure and the graph contracts; that the listed files exist, that no file is unlisted and
    that every hash matches; tokenizer.json's padding and truncation; the tensors in
    tensors.safetensors; with `check_graphs`, each graph's inputs and outputs as onnxruntime
    reports them; finally the version.
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise RepositoryError(f"no {MANIFEST} in {folder}")
    text = path.read_text(encoding="utf-8")
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise RepositoryError(f"{MANIFEST} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict):
        raise RepositoryError(f"{MANIFEST} must hold a JSON object")
    hashes = hash_folder(folder)
    _validate(folder, manifest, hashes, check_graphs=check_graphs)
    version = manifest["version"]
    expected = _version_of(blank_version(text, version), hashes)
    if version != expected:
        raise RepositoryError(f"version {version} does not match content (expected {expected})")
    return manifest


def _validate(folder: Path, manifest: dict[str, Any], hashes: dict[str, str], check_graphs: bool) -> None:
    sizes = _check_structure(manifest)
    _check_files(manifest, hashes)
    _check_tokenizer(folder, manifest)
    _check_tensors(folder, manifest, sizes)
    if check_graphs:
        for label, spec in iter_graphs(manifest):
            _check_graph(folder, label, spec)


def iter_graphs(manifest: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, component spec) for every graph, upsampler stages as "upsamplers[i].first/last".

    A file named by both `first` and `last` of a stage is listed once.
    """
    graphs = []
    components = manifest["components"]
    for name in GRAPH_COMPONENTS:
        if name in components:
            graphs.append((name, components[name]))
    for i, stage in enumerate(components["upsamplers"]):
        graphs.append((f"upsamplers[{i}].first", stage["first"]))
        if stage["last"]["file"] != stage["first"]["file"]:
            graphs.append((f"upsamplers[{i}].last", stage["last"]))
    return graphs


def _fail(message: str) -> None:
    raise RepositoryError(message)


def _require(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        _fail(f"{where}: missing key '{key}'")
    value = obj[key]
    # bool is an int in Python; never accept it where a number is meant.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        _fail(f"{where}.{key} must be {_kind_name(kind)}, got {json.dumps(value)}")
    if not isinstance(value, kind):
        _fail(f"{where}.{key} must be {_kind_name(kind)}, got {json.dumps(value)[:60]}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {dict: "an object", list: "a list", str: "a string", int: "an integer", bool: "true or false"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if set(kinds) == {int, float}:
        return "a number"
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _check_structure(manifest: dict[str, Any]) -> dict[str, int]:
    """Keys, types and graph contracts; returns the contract sizes (D, L, N, ...) it found."""
    for key in TOP_LEVEL_KEYS:
        if key not in manifest and key not in OPTIONAL_TOP_LEVEL_KEYS:
            _fail(f"{MANIFEST}: missing key '{key}'")
    unknown = sorted(set(manifest) - set(TOP_LEVEL_KEYS))
    if unknown:
        _fail(f"{MANIFEST}: unknown key '{unknown[0]}'")
    if manifest["format"] != FORMAT:
        _fail(f"{MANIFEST}: format is {json.dumps(manifest['format'])}, this loader reads {json.dumps(FORMAT)}")
    for key in ("model_id", "version", "description"):
        _require(manifest, key, str, MANIFEST)
    if not manifest["model_id"]:
        _fail(f"{MANIFEST}: model_id is empty")
    embedding_dim = _require(manifest, "embedding_dim", int, MANIFEST)

    text = _require(manifest, "text", dict, MANIFEST)
    _require(text, "tokenizer", str, "text")
    context_length = _require(text, "context_length", int, "text")
    for key in ("pad_id", "bos_id", "eos_id"):
        _require(text, key, int, "text")

    sizes: dict[str, int] = {"D": embedding_dim, "L": context_length}

    components = _require(manifest, "components", dict, MANIFEST)
    for name in components:
        if name not in REQUIRED_COMPONENTS and name not in OPTIONAL_COMPONENTS:
            _fail(f"components: unknown component '{name}'")
    for name in REQUIRED_COMPONENTS:
        if name not in components:
            _fail(f"components: missing component '{name}'")

    float_dtype: list[str] = []  # the first float dtype seen; all others must agree
    for name in GRAPH_COMPONENTS:
        if name in components:
            _check_component(name, name, components[name], sizes, float_dtype)

    stages = _require(components, "upsamplers", list, "components")
    if not stages:
        _fail("components.upsamplers: at least one upsampler stage is required")
    previous = sizes["H"]
    for i, stage in enumerate(stages):
        where = f"components.upsamplers[{i}]"
        if not isinstance(stage, dict):
            _fail(f"{where} must be an object")
        input_size = _require(stage, "input_size", int, where)
        output_size = _require(stage, "output_size", int, where)
        if input_size != previous:
            _fail(f"{where}.input_size is {input_size}, but the stage before outputs {previous}")
        for part in ("first", "last"):
            stage_sizes = dict(sizes)
            stage_sizes["U"] = output_size
            spec = _require(stage, part, dict, where)
            _check_component(f"upsamplers[{i}].{part}", "upsampler", spec, stage_sizes, float_dtype)
        previous = output_size

    if "image_encoder" in components:
        pre = _require(manifest, "image_preprocess", dict, MANIFEST)
        size = _require(pre, "size", int, "image_preprocess")
        if size != sizes["S"]:
            _fail(f"image_preprocess.size is {size}, but image_encoder takes {sizes['S']}x{sizes['S']} pixels")
        for key, allowed in (("resize", "shortest_edge"), ("resample", "bicubic"), ("crop", "center")):
            if _require(pre, key, str, "image_preprocess") != allowed:
                _fail(f"image_preprocess.{key} must be \"{allowed}\", got {json.dumps(pre[key])}")
        _require(pre, "rescale", (int, float), "image_preprocess")
        for key in ("mean", "std"):
            values = _require(pre, key, list, "image_preprocess")
            if len(values) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                _fail(f"image_preprocess.{key} must be 3 numbers")
    elif "image_preprocess" in manifest:
        _fail(f"{MANIFEST}: image_preprocess is given but there is no image_encoder component")

    schedulers = _require(manifest, "schedulers", dict, MANIFEST)
    for stage in SCHEDULER_STAGES:
        _check_scheduler(stage, _require(schedulers, stage, dict, "schedulers"))
    for stage in schedulers:
        if stage not in SCHEDULER_STAGES:
            _fail(f"schedulers: unknown scheduler '{stage}'")

    defaults = _require(manifest, "defaults", dict, MANIFEST)
    for key in ("prior_steps", "decoder_steps", "upsampler_steps"):
        if _require(defaults, key, int, "defaults") < 2:
            _fail(f"defaults.{key} must be at least 2 (UnCLIPScheduler cannot space 1 step)")
    for key in ("prior_guidance_scale", "decoder_guidance_scale"):
        _require(defaults, key, (int, float), "defaults")

    tensors = _require(manifest, "tensors", dict, MANIFEST)
    _require(tensors, "file", str, "tensors")
    files = _require(manifest, "files", dict, MANIFEST)
    for path, digest in files.items():
        _check_relative_path(path)
        if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            _fail(f"files: '{path}' must map to a 64-digit lowercase hex sha256")
    return sizes


def _check_relative_path(path: str) -> None:
    pure = PurePosixPath(path)
    if not path or "\\" in path or pure.is_absolute() or ".." in pure.parts or path == MANIFEST:
        _fail(f"files: '{path}' is not a relative POSIX path inside the repository")


def _check_scheduler(stage: str, config: dict[str, Any]) -> None:
    where = f"schedulers.{stage}"
    _require(config, "num_train_timesteps", int, where)
    choices = {
        "beta_schedule": ("squaredcos_cap_v2",),
        "variance_type": ("fixed_small_log", "learned_range"),
        "prediction_type": ("epsilon", "sample"),
    }
    for key, allowed in choices.items():
        if _require(config, key, str, where) not in allowed:
            _fail(f"{where}.{key} is {json.dumps(config[key])}, expected one of {', '.join(allowed)}")
    _require(config, "clip_sample", bool, where)
    _require(config, "clip_sample_range", (int, float), where)


def _check_component(
    label: str, contract_name: str, spec: dict[str, Any], sizes: dict[str, int], float_dtype: list[str]
) -> None:
    """One component against its contract: names, dtypes, ranks, batch symbolic, sizes consistent."""
    contract = CONTRACTS[contract_name]
    if not isinstance(spec, dict):
        _fail(f"components.{label} must be an object")
    _require(spec, "file", str, f"components.{label}")
    for side in ("inputs", "outputs"):
        tensors = _require(spec, side, list, f"components.{label}")
        expected = {name: (dtype, shape) for name, dtype, shape in contract[side]}
        seen = set()
        for tensor in tensors:
            if not isinstance(tensor, dict):
                _fail(f"components.{label}.{side}: each entry must be an object")
            name = _require(tensor, "name", str, f"components.{label}.{side}")
            where = f"{label}: {side[:-1]} '{name}'"
            if name not in expected:
                _fail(f"{where} is not part of the {contract_name} contract")
            if name in seen:
                _fail(f"{where} is listed twice")
            seen.add(name)
            dtype = _require(tensor, "dtype", str, where)
            want_dtype, want_shape = expected[name]
            if want_dtype == "float":
                if dtype not in ("float32", "float16"):
                    _fail(f"{where} must be float32 or float16, manifest says {dtype}")
                if not float_dtype:
                    float_dtype.append(dtype)
                elif dtype != float_dtype[0]:
                    _fail(f"{where} is {dtype} but other float tensors are {float_dtype[0]}")
            elif dtype != want_dtype:
                _fail(f"{where} must have dtype {want_dtype}, manifest says {dtype}")
            shape = _require(tensor, "shape", list, where)
            if len(shape) != len(want_shape):
                _fail(f"{where} must have rank {len(want_shape)}, manifest says {len(shape)}")
            for axis, (dim, want) in enumerate(zip(shape, want_shape)):
                if want == "batch":
                    if not isinstance(dim, str) or not dim:
                        _fail(f"{where} dim {axis} must be the symbolic batch dimension, manifest says {dim}")
                    continue
                if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
                    _fail(f"{where} dim {axis} must be a fixed positive size, manifest says {json.dumps(dim)}")
                if isinstance(want, int):
                    if dim != want:
                        _fail(f"{where} dim {axis} must be {want}, manifest says {dim}")
                elif want in sizes and sizes[want] != dim:
                    _fail(f"{where} dim {axis} is {dim}, but {_SIZE_NAMES[want]} is {sizes[want]}")
                else:
                    sizes[want] = dim
        missing = [name for name in expected if name not in seen]
        if missing:
            _fail(f"{label}: {side[:-1]} '{missing[0]}' is missing from the manifest")
    if "N" in sizes and sizes["N"] <= sizes["L"]:
        _fail(f"{label}: decoder context {sizes['N']} must be longer than the text context {sizes['L']}")


_SIZE_NAMES = {
    "D": "embedding_dim",
    "L": "text.context_length",
    "N": "the decoder context length",
    "C": "the decoder cross-attention width",
    "T": "the decoder time-embedding width",
    "S": "the image encoder's input size",
    "H": "the decoder resolution",
    "U": "the upsampler resolution",
}


def _check_files(manifest: dict[str, Any], hashes: dict[str, str]) -> None:
    files: dict[str, str] = manifest["files"]
    referenced = [manifest["text"]["tokenizer"], manifest["tensors"]["file"]]
    referenced += [spec["file"] for _, spec in iter_graphs(manifest)]
    for path in referenced:
        if path not in files:
            _fail(f"'{path}' is used by the manifest but not listed in files")
    for path in sorted(files):
        if path not in hashes:
            _fail(f"missing file {path} (listed in the manifest)")
    for path in sorted(hashes):
        if path not in files:
            _fail(f"file {path} is not listed in the manifest")
        if hashes[path] != files[path]:
            _fail(f"file {path}: sha256 differs from manifest")


def _check_tokenizer(folder: Path, manifest: dict[str, Any]) -> None:
    """tokenizer.json must pad and truncate to the context length with the manifest's pad id."""
    text = manifest["text"]
    name = text["tokenizer"]
    try:
        tokenizer = json.loads((folder / name).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise RepositoryError(f"{name}: cannot read as JSON: {e}") from None
    length = text["context_length"]
    padding = tokenizer.get("padding") if isinstance(tokenizer, dict) else None
    if not isinstance(padding, dict) or padding.get("strategy") != {"Fixed": length}:
        _fail(f"{name}: padding must be fixed to {length} tokens")
    if padding.get("pad_id") != text["pad_id"]:
        _fail(f"{name}: pads with id {padding.get('pad_id')}, manifest says pad_id {text['pad_id']}")
    if padding.get("direction") != "Right":
        _fail(f"{name}: padding must be on the right")
    truncation = tokenizer.get("truncation")
    if not isinstance(truncation, dict) or truncation.get("max_length") != length:
        _fail(f"{name}: truncation must be at {length} tokens")


def _check_tensors(folder: Path, manifest: dict[str, Any], sizes: dict[str, int]) -> None:
    from safetensors import safe_open

    name = manifest["tensors"]["file"]
    try:
        with safe_open(str(folder / name), framework="numpy") as f:
            present = set(f.keys())
            for tensor, (dtype, dims) in REQUIRED_TENSORS.items():
                if tensor not in present:
                    _fail(f"{name}: missing tensor '{tensor}'")
                piece = f.get_slice(tensor)
                shape = list(piece.get_shape())
                want = [sizes[d] for d in dims]
                if shape != want:
                    _fail(f"{name}: tensor '{tensor}' has shape {shape}, expected {want}")
                if piece.get_dtype() != dtype:
                    _fail(f"{name}: tensor '{tensor}' has dtype {piece.get_dtype()}, expected {dtype}")
            ids = f.get_tensor("uncond_input_ids")
            mask = f.get_tensor("uncond_attention_mask")
    except RepositoryError:
        raise
    except Exception as e:  # safetensors raises its own error types for unreadable files
        raise RepositoryError(f"{name}: cannot read: {e}") from None
    text = manifest["text"]
    expected_ids = [text["bos_id"], text["eos_id"]] + [text["pad_id"]] * (sizes["L"] - 2)
    if ids.tolist() != expected_ids:
        _fail(f"{name}: uncond_input_ids is not [bos_id, eos_id, pad_id...] (the tokens of \"\")")
    if mask.tolist() != [1, 1] + [0] * (sizes["L"] - 2):
        _fail(f"{name}: uncond_attention_mask is not [1, 1, 0...] (the mask of \"\")")


def _check_graph(folder: Path, label: str, spec: dict[str, Any]) -> None:
    """Compare the graph's inputs and outputs, as onnxruntime sees them, with the manifest."""
    import onnxruntime as ort

    file = spec["file"]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(folder / file), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises several exception types for bad graphs
        raise RepositoryError(f"{file}: onnxruntime cannot load it: {str(e).strip().splitlines()[0]}") from None
    for side, args in (("input", session.get_inputs()), ("output", session.get_outputs())):
        declared = {t["name"]: t for t in spec[side + "s"]}
        actual = {a.name: a for a in args}
        for name in declared:
            if name not in actual:
                _fail(f"{file}: graph has no {side} '{name}' (the manifest lists it)")
        for name in actual:
            if name not in declared:
                _fail(f"{file}: graph {side} '{name}' is not in the manifest")
        for name, arg in actual.items():
            want = declared[name]
            dtype = _ORT_DTYPES.get(arg.type, arg.type)
            if dtype != want["dtype"]:
                _fail(f"{file}: {side} '{name}' has dtype {dtype}, manifest says {want['dtype']}")
            shape = list(arg.shape)
            if len(shape) != len(want["shape"]):
                _fail(f"{file}: {side} '{name}' has rank {len(shape)}, manifest says {len(want['shape'])}")
            for axis, (have, expect) in enumerate(zip(shape, want["shape"])):
                have_symbolic = not isinstance(have, int)
                if isinstance(expect, str) and not have_symbolic:
                    _fail(f"{file}: {side} '{name}' dim {axis} is fixed at {have}, manifest says symbolic '{expect}'")
                if isinstance(expect, int) and have_symbolic:
                    _fail(f"{file}: {side} '{name}' dim {axis} is symbolic, manifest says {expect}")
                if isinstance(expect, int) and have != expect:
                    _fail(f"{file}: {side} '{name}' dim {axis} is {have}, manifest says {expect}")


# ---------------------------------------------------------------------------------------------
# The `verify` command
# ---------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """Arguments of `python -m unclip_tools verify`."""
    parser.add_argument("folder", type=Path, help="the model repository (the folder holding manifest.json)")
    parser.add_argument(
        "--no-graphs", action="store_true", help="skip opening the graphs with onnxruntime (hashes and manifest only)"
    )


def run(args: argparse.Namespace, name: str) -> int:
    """Verify a repository and print a short summary; errors surface as RepositoryError."""
    manifest = load_manifest(args.folder, check_graphs=not args.no_graphs)
    folder: Path = args.folder
    total = sum((folder / path).stat().st_size for path in manifest["files"])
    graphs = iter_graphs(manifest)
    dtype = graphs[0][1]["outputs"][0]["dtype"]
    checked = "checked against onnxruntime" if not args.no_graphs else "not opened"
    print(f"OK {folder}: {manifest['model_id']} {manifest['version']}")
    print(f"  {len(manifest['files'])} files, {total / 1e6:.1f} MB; {len(graphs)} graphs ({dtype}), {checked}")
    print(f"  components: {', '.join(label for label, _ in graphs)}")
    return 0
