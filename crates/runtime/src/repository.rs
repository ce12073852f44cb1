//! A model repository on disk: one folder with manifest.json, the ONNX graphs, tokenizer.json
//! and tensors.safetensors (docs/model-repository.md).
//!
//! [`ModelRepository::open`] runs every check that is cheap, in the reference implementation's
//! order: the manifest's structure and graph contracts; that every listed file exists and no
//! file is unlisted; tokenizer.json's padding and truncation; the tensors; and the version rule.
//! Hashing the files is separate ([`ModelRepository::verify_files`],
//! [`ModelRepository::verify_all`]) because graphs can be gigabytes: a service hashes the files
//! it loads, so what it serves is exactly what the version names. Comparing each graph's
//! signature with ONNX Runtime's view happens when its session is created
//! ([`crate::session`]).

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Result, RuntimeError};
use crate::manifest::{MANIFEST, Manifest, ModelSizes};
use crate::tensors::ModelTensors;

/// An opened, checked model repository.
#[derive(Debug, Clone)]
pub struct ModelRepository {
    /// The folder holding manifest.json.
    root: PathBuf,
    /// The parsed manifest.
    manifest: Manifest,
    /// Sizes the graph contracts tie together.
    sizes: ModelSizes,
    /// tensors.safetensors, decoded and checked.
    tensors: ModelTensors,
}

/// Lowercase hex of a digest.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex SHA-256 of a file, streamed in 1 MiB chunks (graphs can be several GiB).
pub fn sha256_file(path: &Path) -> Result<String> {
    let io = |source| RuntimeError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buffer).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// manifest.json's text with the version's value replaced by the empty string. Works on the
/// text, so any writer's formatting is hashed as written; the quoted version must occur once.
pub fn blank_version(text: &str, version: &str) -> Result<String> {
    let quoted = serde_json::to_string(version).expect("a string always serialises");
    let count = text.matches(&quoted).count();
    if count != 1 {
        return Err(RuntimeError::Manifest(format!(
            "{MANIFEST}: the version string {quoted} occurs {count} times, expected once"
        )));
    }
    Ok(text.replacen(&quoted, "\"\"", 1))
}

/// The version rule: `sha256-` + the first 16 hex digits of SHA-256 over the sha256sum-style
/// listing `"<sha256(blank manifest)>  manifest.json\n"` followed by `"<sha256>  <path>\n"` for
/// every file, sorted by path.
pub fn compute_version(blank_manifest_text: &str, files: &BTreeMap<String, String>) -> String {
    let mut listing = format!(
        "{}  {MANIFEST}\n",
        hex(&Sha256::digest(blank_manifest_text.as_bytes()))
    );
    // BTreeMap iterates in byte order, which for UTF-8 is code-point order (Python's sort).
    for (path, digest) in files {
        listing.push_str(&format!("{digest}  {path}\n"));
    }
    format!("sha256-{}", &hex(&Sha256::digest(listing.as_bytes()))[..16])
}

/// Every regular file under `root` except the top-level manifest.json, as sorted POSIX paths.
fn list_files(root: &Path) -> Result<Vec<String>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
        let io = |source| RuntimeError::Io {
            path: dir.to_path_buf(),
            source,
        };
        for entry in fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.is_dir() {
                walk(root, &path, out)?;
            } else if path.is_file() {
                let rel = path
                    .strip_prefix(root)
                    .expect("walked from root")
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                if rel != MANIFEST {
                    out.push(rel);
                }
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(root, root, &mut files)?;
    files.sort();
    Ok(files)
}

impl ModelRepository {
    /// Opens `root` and runs every check but hashing (see the module docs).
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let manifest_path = root.join(MANIFEST);
        if !manifest_path.is_file() {
            return Err(RuntimeError::Manifest(format!(
                "no {MANIFEST} in {}",
                root.display()
            )));
        }
        let text = fs::read_to_string(&manifest_path).map_err(|source| RuntimeError::Io {
            path: manifest_path.clone(),
            source,
        })?;
        let manifest = Manifest::parse(&text)?;
        let sizes = manifest.validate()?;

        // Listed files exist, and nothing is unlisted.
        let present = list_files(&root)?;
        for path in manifest.files.keys() {
            if present.binary_search(path).is_err() {
                return Err(RuntimeError::MissingFile { path: path.clone() });
            }
        }
        if let Some(extra) = present.iter().find(|p| !manifest.files.contains_key(*p)) {
            return Err(RuntimeError::UnlistedFile {
                path: extra.clone(),
            });
        }

        check_tokenizer(&root, &manifest)?;
        let tensors_file = &manifest.tensors.file;
        let tensors_path = root.join(tensors_file);
        let bytes = fs::read(&tensors_path).map_err(|source| RuntimeError::Io {
            path: tensors_path.clone(),
            source,
        })?;
        let tensors =
            ModelTensors::from_bytes(tensors_file, &bytes, manifest.embedding_dim, &manifest.text)?;

        let computed = compute_version(&blank_version(&text, &manifest.version)?, &manifest.files);
        if computed != manifest.version {
            return Err(RuntimeError::VersionMismatch {
                declared: manifest.version.clone(),
                computed,
            });
        }

        Ok(ModelRepository {
            root,
            manifest,
            sizes,
            tensors,
        })
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Sizes the graph contracts tie together.
    pub fn sizes(&self) -> &ModelSizes {
        &self.sizes
    }

    /// The decoded tensors.safetensors.
    pub fn tensors(&self) -> &ModelTensors {
        &self.tensors
    }

    /// Absolute path of a file named in the manifest.
    pub fn path(&self, file: &str) -> PathBuf {
        self.root.join(file)
    }

    /// Path of tokenizer.json.
    pub fn tokenizer_path(&self) -> PathBuf {
        self.path(&self.manifest.text.tokenizer)
    }

    /// Hashes the named files (paths as in the manifest) and compares with the manifest.
    pub fn verify_files<'a>(&self, files: impl IntoIterator<Item = &'a str>) -> Result<()> {
        for file in files {
            let Some(expected) = self.manifest.files.get(file) else {
                return Err(RuntimeError::Manifest(format!(
                    "'{file}' is not listed in the manifest's files"
                )));
            };
            let actual = sha256_file(&self.path(file))?;
            if &actual != expected {
                return Err(RuntimeError::HashMismatch {
                    path: file.to_string(),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        Ok(())
    }

    /// Hashes every listed file.
    pub fn verify_all(&self) -> Result<()> {
        self.verify_files(self.manifest.files.keys().map(String::as_str))
    }
}

/// tokenizer.json must pad and truncate to the context length with the manifest's pad id,
/// padding on the right (the `tokenizers` crate then produces the graphs' input as is).
fn check_tokenizer(root: &Path, manifest: &Manifest) -> Result<()> {
    let name = &manifest.text.tokenizer;
    let fail = |message: String| RuntimeError::Asset {
        file: name.clone(),
        message,
    };
    let text = fs::read_to_string(root.join(name))
        .map_err(|e| fail(format!("cannot read as JSON: {e}")))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| fail(format!("cannot read as JSON: {e}")))?;
    let length = manifest.text.context_length;
    let padding = &json["padding"];
    if padding["strategy"] != serde_json::json!({ "Fixed": length }) {
        return Err(fail(format!("padding must be fixed to {length} tokens")));
    }
    if padding["pad_id"] != serde_json::json!(manifest.text.pad_id) {
        return Err(fail(format!(
            "pads with id {}, manifest says pad_id {}",
            padding["pad_id"], manifest.text.pad_id
        )));
    }
    if padding["direction"] != "Right" {
        return Err(fail("padding must be on the right".into()));
    }
    if json["truncation"]["max_length"] != serde_json::json!(length) {
        return Err(fail(format!("truncation must be at {length} tokens")));
    }
    Ok(())
}
