//! Building ONNX Runtime sessions and checking them against the manifest.
//!
//! [`build_session`] applies a [`SessionConfig`] (device, threads) and loads a graph;
//! [`check_signature`] compares the graph's inputs and outputs, as ONNX Runtime reports them,
//! with the manifest's [`ComponentSpec`] and names the first mismatch (mirrors `_check_graph` in
//! repository.py): a missing or extra name, a dtype, a rank, or an axis that is fixed on one side
//! and symbolic on the other.

use std::path::Path;

use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{TensorElementType, ValueType};

use crate::device::SessionConfig;
use crate::environment::has_shared_pool;
use crate::error::{Result, RuntimeError};
use crate::manifest::{ComponentSpec, Dim};

/// ONNX Runtime's element type in manifest spelling (or its own name for types manifests
/// never use).
fn element_name(ty: TensorElementType) -> String {
    match ty {
        TensorElementType::Float32 => "float32".into(),
        TensorElementType::Float16 => "float16".into(),
        TensorElementType::Float64 => "float64".into(),
        TensorElementType::Int64 => "int64".into(),
        TensorElementType::Int32 => "int32".into(),
        TensorElementType::Bool => "bool".into(),
        TensorElementType::Uint8 => "uint8".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// The builder chain, in a function returning `ort::Result` because builder errors are not
/// `Send` and cannot cross into other error types directly.
fn build(env: &Environment, path: &Path, config: &SessionConfig) -> ort::Result<Session> {
    let mut builder =
        Session::builder(env)?.with_optimization_level(GraphOptimizationLevel::Level3)?;
    // The process's shared pool (see crate::threads), unless this session asks for its own
    // or the process has none.
    if config.intra_threads > 0 || !has_shared_pool() {
        builder = builder
            .with_independent_thread_pool()?
            .with_intra_op_spinning(config.spin)?;
        if config.intra_threads > 0 {
            builder = builder.with_intra_threads(config.intra_threads)?;
        }
    }
    if config.inter_threads > 1 {
        builder = builder
            .with_parallel_execution(true)?
            .with_inter_threads(config.inter_threads)?
            .with_inter_op_spinning(config.spin)?;
    }
    let providers = config
        .device
        .execution_providers()
        .map_err(|e| ort::Error::new(e.to_string()))?;
    builder = builder.with_execution_providers(providers)?;
    builder.commit_from_file(path)
}

/// Loads the graph at `path` with `config` and checks it against `spec`.
pub fn build_session(
    env: &Environment,
    path: &Path,
    spec: &ComponentSpec,
    config: &SessionConfig,
) -> Result<Session> {
    // Device problems are reported as such, before ONNX Runtime parses the graph.
    config.device.execution_providers()?;
    let session = build(env, path, config).map_err(|e| {
        let context = format!("{}: creating the session on {}", spec.file, config.device);
        RuntimeError::ort(context, e)
    })?;
    check_signature(&session, spec)?;
    Ok(session)
}

/// Compares the session's inputs and outputs with the manifest.
pub fn check_signature(session: &Session, spec: &ComponentSpec) -> Result<()> {
    let fail = |message: String| RuntimeError::GraphMismatch {
        file: spec.file.clone(),
        message,
    };
    for (side, declared, actual) in [
        ("input", &spec.inputs, session.inputs()),
        ("output", &spec.outputs, session.outputs()),
    ] {
        for want in declared {
            if !actual.iter().any(|o| o.name() == want.name) {
                return Err(fail(format!(
                    "graph has no {side} '{}' (the manifest lists it)",
                    want.name
                )));
            }
        }
        for outlet in actual {
            let name = outlet.name();
            let Some(want) = declared.iter().find(|t| t.name == name) else {
                return Err(fail(format!(
                    "graph {side} '{name}' is not in the manifest"
                )));
            };
            let ValueType::Tensor { ty, shape, .. } = outlet.dtype() else {
                return Err(fail(format!(
                    "{side} '{name}' is not a tensor ({:?})",
                    outlet.dtype()
                )));
            };
            let dtype = element_name(*ty);
            if dtype != want.dtype.as_str() {
                return Err(fail(format!(
                    "{side} '{name}' has dtype {dtype}, manifest says {}",
                    want.dtype
                )));
            }
            if shape.len() != want.shape.len() {
                return Err(fail(format!(
                    "{side} '{name}' has rank {}, manifest says {}",
                    shape.len(),
                    want.shape.len()
                )));
            }
            for (axis, (have, expect)) in shape.iter().zip(&want.shape).enumerate() {
                match expect {
                    Dim::Symbolic(s) if *have >= 0 => {
                        return Err(fail(format!(
                            "{side} '{name}' dim {axis} is fixed at {have}, manifest says symbolic '{s}'"
                        )));
                    }
                    Dim::Fixed(n) if *have < 0 => {
                        return Err(fail(format!(
                            "{side} '{name}' dim {axis} is symbolic, manifest says {n}"
                        )));
                    }
                    Dim::Fixed(n) if *have as u64 != *n => {
                        return Err(fail(format!(
                            "{side} '{name}' dim {axis} is {have}, manifest says {n}"
                        )));
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(())
}
