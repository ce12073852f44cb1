//! The committed models, the ONNX Runtime library, and karlo-tiny's recorded fixtures
//! (models/karlo-tiny/fixtures/README.md): the reference pipeline's values, model calls,
//! scheduler steps and noise draws, as json with the tensors in an npz.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, Axis, concatenate};
use ndarray_npy::NpzReader;
use serde_json::Value;

/// The workspace root.
pub fn root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize()
        .unwrap_or_else(|e| panic!("the workspace root {}: {e}", root.display()))
}

/// `models/karlo-tiny`, the committed test model with the parity fixtures.
pub fn karlo_tiny() -> PathBuf {
    let dir = root().join("models/karlo-tiny");
    assert!(
        dir.join("manifest.json").is_file(),
        "{} has no manifest.json: the committed karlo-tiny model is missing",
        dir.display()
    );
    dir
}

/// `models/shapes`, the trained shapes model (`UNCLIP_SHAPES_MODEL` points the tests at another
/// export of it); panics when it has no manifest.
pub fn shapes() -> PathBuf {
    let dir = std::env::var_os("UNCLIP_SHAPES_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("models/shapes"));
    assert!(
        dir.join("manifest.json").is_file(),
        "{} has no manifest.json: the shapes model is missing (it is committed in models/shapes; \
         UNCLIP_SHAPES_MODEL may point elsewhere)",
        dir.display()
    );
    dir
}

/// A copy of the model repository `model` in a new temporary folder that is another version of
/// the same model: the same files and model id, the manifest's description changed and its
/// `version` recomputed by the repository's rule (docs/model-repository.md, "Version"). What a
/// rollout of a new model version looks like to the gateway. Returns the folder (removed when
/// dropped) and the new version.
pub fn another_version(model: &Path) -> (tempfile::TempDir, String) {
    use sha2::{Digest, Sha256};
    let hex = |bytes: &[u8]| -> String {
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let dir = tempfile::tempdir().expect("a temporary folder");
    let text = std::fs::read_to_string(model.join("manifest.json"))
        .unwrap_or_else(|e| panic!("{}: {e}", model.join("manifest.json").display()));
    let manifest: Value = serde_json::from_str(&text).expect("manifest.json is JSON");
    let old_version = serde_json::to_string(&manifest["version"]).unwrap();
    let description = serde_json::to_string(&manifest["description"]).unwrap();
    let changed = serde_json::to_string(&format!(
        "{} (another version, for rollout tests)",
        manifest["description"].as_str().unwrap_or_default()
    ))
    .unwrap();
    assert!(
        text.contains(&description),
        "the description is not written as serde_json writes it"
    );
    const MARK: &str = "\u{0}version\u{0}";
    let marked = text
        .replacen(&description, &changed, 1)
        .replacen(&old_version, MARK, 1);
    let blank = marked.replacen(MARK, "\"\"", 1);
    let files = manifest["files"].as_object().expect("manifest.files");
    let mut listing = format!("{}  manifest.json\n", hex(blank.as_bytes()));
    let mut paths: Vec<&String> = files.keys().collect();
    paths.sort();
    for path in paths {
        listing.push_str(&format!(
            "{}  {path}\n",
            files[path].as_str().unwrap_or_default()
        ));
        let (from, to) = (model.join(path), dir.path().join(path));
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("copying {}: {e}", from.display()));
    }
    let version = format!("sha256-{}", &hex(listing.as_bytes())[..16]);
    std::fs::write(
        dir.path().join("manifest.json"),
        marked.replacen(MARK, &serde_json::to_string(&version).unwrap(), 1),
    )
    .unwrap();
    (dir, version)
}

/// The ONNX Runtime library the services load: `UNCLIP_ORT_LIBRARY`, else `ORT_DYLIB_PATH`.
/// Panics, naming both and the path it found, unless it is a file.
pub fn ort_library() -> PathBuf {
    let found = ["UNCLIP_ORT_LIBRARY", "ORT_DYLIB_PATH"]
        .iter()
        .find_map(|name| Some((*name, PathBuf::from(std::env::var_os(name)?))));
    match found {
        Some((_, path)) if path.is_file() => path,
        Some((name, path)) => panic!(
            "{name}={} is not a file: point it at libonnxruntime.so.1.N (N >= 31)",
            path.display()
        ),
        None => panic!(
            "neither UNCLIP_ORT_LIBRARY nor ORT_DYLIB_PATH is set: point UNCLIP_ORT_LIBRARY at \
             libonnxruntime.so.1.N (N >= 31), e.g. <venv>/lib/python3.11/site-packages/\
             onnxruntime/capi/libonnxruntime.so.1.32.0 (scripts/test installs the onnxruntime \
             wheel into .venv)"
        ),
    }
}

/// Panics with set-up instructions unless the ONNX Runtime library is configured.
pub fn require_ort() {
    ort_library();
}

/// One recorded fixture case, its tensor references resolved (and read once).
pub struct Fixture {
    /// `<case>.json`.
    pub json: Value,
    /// Float arrays of `<case>.npz` by key, read on demand.
    f32s: HashMap<String, ArrayD<f32>>,
    /// The npz.
    npz: NpzReader<File>,
}

impl std::fmt::Debug for Fixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fixture")
            .field("json", &self.json)
            .finish_non_exhaustive()
    }
}

impl Fixture {
    /// Opens `<case>.json` and `<case>.npz`.
    pub fn open(case: &str) -> Self {
        let dir = karlo_tiny().join("fixtures");
        let json = serde_json::from_str(&read(&dir.join(format!("{case}.json")))).unwrap();
        let npz_path = dir.join(format!("{case}.npz"));
        let npz =
            File::open(&npz_path).unwrap_or_else(|e| panic!("opening {}: {e}", npz_path.display()));
        Fixture {
            json,
            f32s: HashMap::new(),
            npz: NpzReader::new(npz).unwrap(),
        }
    }

    /// Every full-trace case of index.json ("cases").
    pub fn cases() -> Vec<String> {
        listed("cases", None)
    }

    /// The full-trace cases of `kind` ("text_to_image" or "image_variation").
    pub fn cases_of(kind: &str) -> Vec<String> {
        listed("cases", Some(kind))
    }

    /// Every replay case of index.json ("replay_cases": noise draws and `values` only, no model
    /// calls or scheduler steps).
    pub fn replay_cases() -> Vec<String> {
        listed("replay_cases", None)
    }

    /// The replay cases of `kind`.
    pub fn replay_cases_of(kind: &str) -> Vec<String> {
        listed("replay_cases", Some(kind))
    }

    /// A float32 tensor by npz key (`t0007`).
    pub fn f32_key(&mut self, key: &str) -> ArrayD<f32> {
        if !self.f32s.contains_key(key) {
            let a: ArrayD<f32> = self.by_name(key);
            self.f32s.insert(key.to_string(), a);
        }
        self.f32s[key].clone()
    }

    /// A bool tensor by npz key.
    pub fn bool_key(&mut self, key: &str) -> ArrayD<bool> {
        self.by_name(key)
    }

    /// An int64 tensor by npz key.
    pub fn i64_key(&mut self, key: &str) -> ArrayD<i64> {
        self.by_name(key)
    }

    /// A float tensor reference: a key, or `{"concat": [r1, r2], "axis": a}`.
    pub fn f32(&mut self, reference: &Value) -> ArrayD<f32> {
        if let Some(key) = reference.as_str() {
            return self.f32_key(key);
        }
        let parts: Vec<ArrayD<f32>> = reference["concat"]
            .as_array()
            .unwrap_or_else(|| panic!("not a tensor reference: {reference}"))
            .iter()
            .map(|r| self.f32(r))
            .collect();
        let axis = reference["axis"].as_u64().unwrap() as usize;
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        concatenate(Axis(axis), &views).unwrap()
    }

    /// A bool tensor reference (a key).
    pub fn bool(&mut self, reference: &Value) -> ArrayD<bool> {
        let key = Self::plain_key(reference);
        self.bool_key(key)
    }

    /// A named float value (`values` of the json).
    pub fn value(&mut self, name: &str) -> ArrayD<f32> {
        let reference = self.named(name);
        self.f32(&reference)
    }

    /// A named bool value.
    pub fn value_bool(&mut self, name: &str) -> ArrayD<bool> {
        let reference = self.named(name);
        self.bool(&reference)
    }

    /// A named int64 value.
    pub fn value_i64(&mut self, name: &str) -> ArrayD<i64> {
        let reference = self.named(name);
        let key = Self::plain_key(&reference).to_string();
        self.i64_key(&key)
    }

    /// The fixture's kind: "text_to_image" or "image_variation".
    pub fn kind(&self) -> &str {
        self.json["kind"].as_str().unwrap()
    }

    /// The timesteps of `stage` ("prior", "decoder" or "upsampler"), in the order run.
    pub fn timesteps(&self, stage: &str) -> Vec<i64> {
        self.json["timesteps"][stage]
            .as_array()
            .unwrap_or_else(|| panic!("no {stage} timesteps"))
            .iter()
            .map(|t| t.as_i64().unwrap())
            .collect()
    }

    /// The records of `stage` in `list` ("noise" or "scheduler_steps").
    pub fn stage(&self, list: &str, stage: &str) -> Vec<Value> {
        self.json[list]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["stage"] == stage)
            .cloned()
            .collect()
    }

    /// The model calls whose component starts with `prefix`, in call order.
    pub fn calls(&self, prefix: &str) -> Vec<Value> {
        self.json["model_calls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["component"].as_str().unwrap().starts_with(prefix))
            .cloned()
            .collect()
    }

    /// The stage's noise draws, in draw order.
    pub fn noise(&mut self, stage: &str) -> Vec<ArrayD<f32>> {
        self.stage("noise", stage)
            .iter()
            .map(|n| self.f32(&n["tensor"]))
            .collect()
    }

    /// The reference of the named value.
    fn named(&self, name: &str) -> Value {
        let reference = &self.json["values"][name];
        assert!(!reference.is_null(), "the fixture has no value {name}");
        reference.clone()
    }

    /// A reference that must be a plain key.
    fn plain_key(reference: &Value) -> &str {
        reference
            .as_str()
            .unwrap_or_else(|| panic!("{reference} is not a plain key"))
    }

    /// `<key>.npy` of the npz.
    fn by_name<A, D>(&mut self, key: &str) -> ndarray::Array<A, D>
    where
        A: ndarray_npy::ReadableElement,
        D: ndarray::Dimension,
    {
        self.npz
            .by_name(&format!("{key}.npy"))
            .unwrap_or_else(|e| panic!("reading {key}.npy of the fixture: {e}"))
    }
}

/// The cases of index.json's `list`, of `kind` if given.
fn listed(list: &str, kind: Option<&str>) -> Vec<String> {
    let index: Value =
        serde_json::from_str(&read(&karlo_tiny().join("fixtures/index.json"))).unwrap();
    index[list]
        .as_array()
        .unwrap_or_else(|| panic!("index.json has no \"{list}\" list"))
        .iter()
        .filter(|c| kind.is_none_or(|kind| c["kind"] == kind))
        .map(|c| c["case"].as_str().unwrap().to_string())
        .collect()
}

/// A text file; panics naming it.
fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}
