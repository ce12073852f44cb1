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
//!
//! The environment also holds the process's [`ThreadBudget`]: with a shared pool, ONNX
//! Runtime's global thread pool, which every session built in it uses unless it asks for its
//! own ([`crate::SessionConfig::intra_threads`] > 0). The first caller's budget wins.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::environment::Environment;

use crate::error::{Result, RuntimeError};
use crate::threads::{ThreadBudget, ThreadPool};

/// The environment variable naming the library (also read by the services' `--ort-library`).
pub const LIBRARY_ENV: &str = "UNCLIP_ORT_LIBRARY";
/// ort's own variable, the fallback.
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// The loaded library's path, the one environment and the budget it was built with.
static LOADED: Mutex<Option<(PathBuf, Environment, ThreadBudget)>> = Mutex::new(None);

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

/// [`init_environment_with`] the default [`ThreadBudget`] (one shared pool of the available
/// cores, not spinning).
pub fn init_environment(library: Option<&Path>) -> Result<Environment> {
    init_environment_with(library, &ThreadBudget::default())
}

/// The budget the process's environment was built with, once it is built.
pub fn environment_budget() -> Option<ThreadBudget> {
    let loaded = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    loaded.as_ref().map(|(_, _, budget)| *budget)
}

/// Whether sessions built in the process's environment share its global thread pool.
pub(crate) fn has_shared_pool() -> bool {
    environment_budget().is_some_and(|b| b.pool == ThreadPool::Shared)
}

/// Loads ONNX Runtime from `library` (see [`resolve_library`]) and builds the environment with
/// `budget`, or returns the one already built from the same file (whose budget stays).
pub fn init_environment_with(library: Option<&Path>, budget: &ThreadBudget) -> Result<Environment> {
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
    if let Some((loaded_path, env, first)) = loaded.as_ref() {
        if *loaded_path != canonical {
            return Err(RuntimeError::Library(format!(
                "this process already loaded ONNX Runtime from {}; it cannot also load {}",
                loaded_path.display(),
                canonical.display()
            )));
        }
        if first != budget {
            tracing::debug!(?first, asked = ?budget, "ONNX Runtime is loaded: keeping its first thread budget");
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
    let mut builder = builder.with_name("unclip").with_telemetry(false);
    let threads = budget.resolved_threads();
    if budget.pool == ThreadPool::Shared {
        let pool = shared_pool(threads, budget.spin)
            .map_err(|e| RuntimeError::Library(format!("configuring the thread pool: {e}")))?;
        builder = builder.with_global_thread_pool(pool);
    }
    let env = builder
        .build()
        .map_err(|e| RuntimeError::Library(format!("creating the environment: {e}")))?;
    tracing::info!(
        library = %canonical.display(),
        pool = %budget.pool,
        threads,
        spin = budget.spin,
        "loaded ONNX Runtime"
    );
    *loaded = Some((canonical, env.clone(), *budget));
    Ok(env)
}

/// The options of the process's one intra-op pool: `threads` threads (the calling thread
/// included), spinning or not; inter-op work (parallel branches) gets one thread per core too.
fn shared_pool(
    threads: usize,
    spin: bool,
) -> ort::Result<ort::environment::GlobalThreadPoolOptions> {
    ort::environment::GlobalThreadPoolOptions::default()
        .with_intra_threads(threads)?
        .with_inter_threads(threads)?
        .with_spin_control(spin)
}
