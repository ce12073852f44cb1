//! The process-wide ONNX Runtime environment, loaded once from an explicit library path.
//!
//! ort is built with `load-dynamic`: nothing is linked, and `libonnxruntime.so.1.N` is dlopened
//! at start-up from a path the operator gives (`--ort-library` / `UNCLIP_ORT_LIBRARY`, falling
//! back to `ORT_DYLIB_PATH`). The PyPI `onnxruntime` wheel ships it as
//! `onnxruntime/capi/libonnxruntime.so.<version>` with no unversioned symlink, so there is no
//! useful default. Every failure is a [`RuntimeError::Library`] that says what to do, never
//! ort's panic on a missing library.
//!
//! ONNX Runtime allows one environment per process, ever (even after the first is dropped), so
//! the environment lives in a static and every caller (several services in one test process,
//! say) shares it. Asking for a different library once one is loaded is an error.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::environment::Environment;

use crate::error::{Result, RuntimeError};

/// The environment variable naming the library (also read by the services' `--ort-library`).
pub const LIBRARY_ENV: &str = "UNCLIP_ORT_LIBRARY";
/// ort's own variable, the fallback.
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// The loaded library's path and the one environment.
static LOADED: Mutex<Option<(PathBuf, Environment)>> = Mutex::new(None);

/// The library to load: `explicit`, else `UNCLIP_ORT_LIBRARY`, else `ORT_DYLIB_PATH`.
pub fn resolve_library(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        return Ok(path.to_path_buf());
    }
    for var in [LIBRARY_ENV, ORT_DYLIB_ENV] {
        if let Some(value) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            return Ok(PathBuf::from(value));
        }
    }
    Err(RuntimeError::Library(format!(
        "no library given: pass --ort-library or set {LIBRARY_ENV} (or {ORT_DYLIB_ENV}) to the \
         path of libonnxruntime.so.1.N (N >= {}), e.g. \
         <venv>/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.32.0 from the \
         PyPI onnxruntime wheel",
        ort::MINOR_VERSION
    )))
}

/// Loads ONNX Runtime from `library` (see [`resolve_library`]) and builds the environment, or
/// returns the one already built from the same file.
pub fn init_environment(library: Option<&Path>) -> Result<Environment> {
    let path = resolve_library(library)?;
    if !path.is_file() {
        return Err(RuntimeError::Library(format!(
            "{} does not exist or is not a file",
            path.display()
        )));
    }
    let canonical = path.canonicalize().map_err(|source| RuntimeError::Io {
        path: path.clone(),
        source,
    })?;

    // A poisoned lock only means another thread panicked mid-init; the slot is still valid.
    let mut loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((loaded_path, env)) = loaded.as_ref() {
        if *loaded_path != canonical {
            return Err(RuntimeError::Library(format!(
                "this process already loaded ONNX Runtime from {}; it cannot also load {}",
                loaded_path.display(),
                canonical.display()
            )));
        }
        return Ok(env.clone());
    }

    let builder = ort::init_from(&canonical).map_err(|e| {
        RuntimeError::Library(match e {
            ort::LoadDynamicError::BadVersion { version_str, .. } => format!(
                "{} is ONNX Runtime {version_str}, but this build needs 1.{} or newer",
                canonical.display(),
                ort::MINOR_VERSION
            ),
            other => other.to_string(),
        })
    })?;
    let env = builder
        .with_name("unclip")
        .with_telemetry(false)
        .build()
        .map_err(|e| RuntimeError::Library(format!("creating the environment: {e}")))?;
    tracing::info!(library = %canonical.display(), "loaded ONNX Runtime");
    *loaded = Some((canonical, env.clone()));
    Ok(env)
}
