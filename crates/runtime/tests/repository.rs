//! The model repository loader against the committed karlo-tiny model, and against tampered
//! copies of it in temporary folders: each problem must be refused with a message naming it.

use std::fs;
use std::path::Path;

use unclip_runtime::manifest::DataType;
use unclip_runtime::repository::{blank_version, compute_version};
use unclip_runtime::{ModelRepository, RuntimeError};
use unclip_testkit::karlo_tiny;

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            fs::copy(&path, &target).unwrap();
        }
    }
}

/// A fresh copy of karlo-tiny in a temporary folder.
fn copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&karlo_tiny(), dir.path());
    dir
}

/// Edits manifest.json's JSON and rewrites it (keeping the now stale version).
fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("manifest.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut json);
    fs::write(&path, serde_json::to_string_pretty(&json).unwrap() + "\n").unwrap();
}

/// Rewrites manifest.json's version so that it follows from the current text (for tampering
/// that should be caught by a later check than the version).
fn restamp_version(dir: &Path) {
    let path = dir.join("manifest.json");
    let text = fs::read_to_string(&path).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let version = json["version"].as_str().unwrap().to_string();
    let files = serde_json::from_value(json["files"].clone()).unwrap();
    let fresh = compute_version(&blank_version(&text, &version).unwrap(), &files);
    fs::write(&path, text.replace(&version, &fresh)).unwrap();
}

fn open_err(dir: &Path) -> String {
    match ModelRepository::open(dir) {
        Ok(_) => panic!("{} opened, but it was tampered with", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// The committed repository opens, its version follows from its content, every hash matches,
/// and the contract sizes are karlo-tiny's.
#[test]
fn opens_karlo_tiny() {
    let repo = ModelRepository::open(karlo_tiny()).unwrap();
    repo.verify_all().unwrap();
    let m = repo.manifest();
    assert_eq!(m.model_id, "karlo-tiny");
    assert!(
        m.version.starts_with("sha256-") && m.version.len() == 23,
        "{}",
        m.version
    );
    let s = repo.sizes();
    assert_eq!((s.embedding_dim, s.context_length), (32, 77));
    assert_eq!(
        (
            s.decoder_context_length,
            s.cross_attention_dim,
            s.time_embed_dim
        ),
        (81, 100, 128)
    );
    assert_eq!((s.clip_image_size, s.decoder_image_size), (Some(32), 32));
    assert_eq!(s.upsampler_sizes, vec![(32, 64)]);
    assert_eq!(s.float_dtype, DataType::Float32);
    assert_eq!(m.defaults.prior_steps, 25);
    assert_eq!(
        m.schedulers.prior,
        unclip_sampler::SchedulerConfig::karlo_prior()
    );
    assert_eq!(
        m.schedulers.decoder,
        unclip_sampler::SchedulerConfig::karlo_decoder()
    );
    let uncond = repo.tensors().uncond_text();
    assert_eq!(uncond.input_ids[0], m.text.bos_id);
    assert_eq!(uncond.attention_mask.iter().filter(|v| **v).count(), 2);
    assert_eq!(repo.tensors().decoder_cfg_embedding().len(), 32);
    assert!(repo.tokenizer_path().is_file());
}

/// Every committed repository under models/ (karlo-tiny, and shapes once it lands) opens and
/// hashes clean.
#[test]
fn opens_every_committed_model() {
    let models = karlo_tiny().join("..");
    let mut opened = Vec::new();
    for entry in fs::read_dir(&models).unwrap() {
        let dir = entry.unwrap().path();
        // Skip work in progress such as `karlo-tiny.new` (a generator writing a fresh copy).
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let committed = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if committed && dir.join("manifest.json").is_file() {
            let repo =
                ModelRepository::open(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            repo.verify_all()
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            opened.push(repo.manifest().model_id.clone());
        }
    }
    assert!(opened.contains(&"karlo-tiny".to_string()), "{opened:?}");
}

/// A changed graph is caught by hashing and the message names the file.
#[test]
fn changed_file_fails_its_hash() {
    let dir = copy();
    let path = dir.path().join("text_encoder.onnx");
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&path, bytes).unwrap();
    // Opening does not hash; verifying does.
    let repo = ModelRepository::open(dir.path()).unwrap();
    repo.verify_files(["tokenizer.json"]).unwrap();
    let e = repo.verify_files(["text_encoder.onnx"]).unwrap_err();
    assert!(
        matches!(e, RuntimeError::HashMismatch { ref path, .. } if path == "text_encoder.onnx")
    );
    assert!(
        e.to_string()
            .starts_with("file text_encoder.onnx: sha256 differs from manifest"),
        "{e}"
    );
    assert!(repo.verify_all().is_err());
}

/// A listed file that is missing, and a file that is not listed, are both refused by name.
#[test]
fn missing_and_unlisted_files() {
    let dir = copy();
    fs::remove_file(dir.path().join("prior.onnx")).unwrap();
    assert_eq!(
        open_err(dir.path()),
        "missing file prior.onnx (listed in the manifest)"
    );

    let dir = copy();
    fs::write(dir.path().join("fixtures/notes.txt"), "hello").unwrap();
    assert_eq!(
        open_err(dir.path()),
        "file fixtures/notes.txt is not listed in the manifest"
    );
}

/// Editing the manifest without recomputing the version is caught by the version rule.
#[test]
fn stale_version() {
    let dir = copy();
    edit_manifest(dir.path(), |m| m["description"] = "edited by hand".into());
    let e = open_err(dir.path());
    assert!(
        e.starts_with("version sha256-") && e.contains("does not match content (expected sha256-"),
        "{e}"
    );

    let dir = copy();
    edit_manifest(dir.path(), |m| {
        m["version"] = "sha256-0000000000000000".into()
    });
    assert!(open_err(dir.path()).contains("does not match content"));
}

/// An edit of manifest.json's JSON.
type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;

/// Structural problems in manifest.json are refused with the key or tensor named.
#[test]
fn malformed_manifests() {
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "unknown key",
            Box::new(|m| m["extra"] = 1.into()),
            "unknown field `extra`",
        ),
        (
            "missing key",
            Box::new(|m| {
                m.as_object_mut().unwrap().remove("defaults");
            }),
            "missing field `defaults`",
        ),
        (
            "format",
            Box::new(|m| m["format"] = "other/2".into()),
            "format is \"other/2\"",
        ),
        (
            "renamed output",
            Box::new(|m| m["components"]["text_encoder"]["outputs"][0]["name"] = "pooled".into()),
            "text_encoder: output 'pooled' is not part of the text_encoder contract",
        ),
        (
            "embedding width",
            Box::new(|m| m["embedding_dim"] = 33.into()),
            "text_encoder: output 'text_embeds' dim 1 is 32, but embedding_dim is 33",
        ),
        (
            "fixed batch",
            Box::new(|m| m["components"]["prior"]["inputs"][1]["shape"][0] = 2.into()),
            "prior: input 'timestep' dim 0 must be the symbolic batch dimension, manifest says 2",
        ),
        (
            "mask dtype",
            Box::new(|m| m["components"]["prior"]["inputs"][4]["dtype"] = "int64".into()),
            "prior: input 'attention_mask' must have dtype bool, manifest says int64",
        ),
        (
            "upsampler chain",
            Box::new(|m| m["components"]["upsamplers"][0]["input_size"] = 16.into()),
            "components.upsamplers[0].input_size is 16, but the stage before outputs 32",
        ),
        (
            "escaping path",
            Box::new(|m| m["files"]["../outside"] = serde_json::Value::String("0".repeat(64))),
            "files: '../outside' is not a relative POSIX path inside the repository",
        ),
        (
            "one-step default",
            Box::new(|m| m["defaults"]["prior_steps"] = 1.into()),
            "defaults.prior_steps must be at least 2",
        ),
        (
            "inpainting decoder without its mask",
            Box::new(|m| {
                let mut inpaint = m["components"]["decoder"].clone();
                inpaint["file"] = "decoder.onnx".into();
                let masked = serde_json::json!({"name": "masked_image", "dtype": "float32", "shape": ["batch", 3, 32, 32]});
                inpaint["inputs"].as_array_mut().unwrap().push(masked);
                m["components"]["decoder_inpaint"] = inpaint;
            }),
            "decoder_inpaint: input 'mask' is missing from the manifest",
        ),
        (
            "inpainting decoder resolution",
            Box::new(|m| {
                let mut inpaint = m["components"]["decoder"].clone();
                let inputs = inpaint["inputs"].as_array_mut().unwrap();
                inputs.push(serde_json::json!({"name": "masked_image", "dtype": "float32", "shape": ["batch", 3, 64, 64]}));
                inputs.push(serde_json::json!({"name": "mask", "dtype": "float32", "shape": ["batch", 1, 64, 64]}));
                m["components"]["decoder_inpaint"] = inpaint;
            }),
            "decoder_inpaint: input 'masked_image' dim 2 is 64, but the decoder resolution is 32",
        ),
        (
            "scheduler value",
            Box::new(|m| m["schedulers"]["prior"]["variance_type"] = "learned".into()),
            "unknown variant `learned`",
        ),
    ];
    for (what, edit, expected) in cases {
        let dir = copy();
        edit_manifest(dir.path(), edit);
        let e = open_err(dir.path());
        assert!(
            e.contains(expected),
            "{what}: got {e:?}, expected it to contain {expected:?}"
        );
    }
}

/// tokenizer.json must pad and truncate to 77 with the manifest's pad id.
#[test]
fn tokenizer_settings() {
    let dir = copy();
    let path = dir.path().join("tokenizer.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    json["padding"]["pad_id"] = 7.into();
    fs::write(&path, json.to_string()).unwrap();
    assert_eq!(
        open_err(dir.path()),
        "tokenizer.json: pads with id 7, manifest says pad_id 0"
    );

    json["padding"]["pad_id"] = 0.into();
    json["truncation"] = serde_json::Value::Null;
    fs::write(&path, json.to_string()).unwrap();
    assert_eq!(
        open_err(dir.path()),
        "tokenizer.json: truncation must be at 77 tokens"
    );
}

/// A tensors.safetensors without a required entry, or with the wrong "" tokens, is refused.
#[test]
fn tensors_file() {
    let dir = copy();
    fs::write(dir.path().join("tensors.safetensors"), b"not safetensors").unwrap();
    assert!(open_err(dir.path()).starts_with("tensors.safetensors: cannot read"));

    // The manifest's special ids no longer describe the recorded tokens of "".
    let dir = copy();
    edit_manifest(dir.path(), |m| m["text"]["bos_id"] = 1.into());
    restamp_version(dir.path());
    // The tokenizer check passes (it does not look at bos_id); the tensors check fails.
    assert_eq!(
        open_err(dir.path()),
        "tensors.safetensors: uncond_input_ids is not [bos_id, eos_id, pad_id...] (the tokens of \"\")"
    );
}

/// The version rule on a small worked example (as docs/model-repository.md states it).
#[test]
fn version_rule() {
    let text = "{\n  \"version\": \"sha256-abc\"\n}\n";
    let blank = blank_version(text, "sha256-abc").unwrap();
    assert_eq!(blank, "{\n  \"version\": \"\"\n}\n");
    let files = [
        ("b.onnx".to_string(), "1".repeat(64)),
        ("a.json".to_string(), "2".repeat(64)),
    ]
    .into_iter()
    .collect();
    let v = compute_version(&blank, &files);
    // sha256 of the listing, computed independently with Python's hashlib.
    use sha2::Digest;
    let blank_hash: String = sha2::Sha256::digest(blank.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let listing = format!(
        "{blank_hash}  manifest.json\n{}  a.json\n{}  b.onnx\n",
        "2".repeat(64),
        "1".repeat(64)
    );
    let full: String = sha2::Sha256::digest(listing.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(v, format!("sha256-{}", &full[..16]));
    assert!(blank_version("{\"version\": \"x\", \"other\": \"x\"}", "x").is_err());
}
