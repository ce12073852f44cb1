//! The thread budget does not change what a graph computes: the shapes model's decoder and last
//! upsampler, run in the process's shared pool (the default now), give the same outputs as in
//! a session's own pool of the same size (how the services ran before: ONNX Runtime sized each
//! session's pool to the cores), bit for bit, and outputs within the parity tests' tolerance of
//! a one-thread run.
//!
//! Needs the ONNX Runtime library: set `UNCLIP_ORT_LIBRARY` (see `tests/executor.rs`).

use ndarray::{ArrayD, IxDyn};
use unclip_runtime::manifest::Dim;
use unclip_runtime::{
    ComponentSpec, DataType, ModelRepository, SessionConfig, SessionExecutor, TensorData,
    ThreadBudget, available_cores, environment_budget, init_environment,
};
use unclip_testkit::{max_abs_diff, ort_library, shapes};

/// Deterministic inputs for `spec` at batch 2: smooth values in [-1, 1] for floats, a
/// mid-schedule timestep for integers, all-true masks.
fn inputs(spec: &ComponentSpec) -> Vec<(String, TensorData)> {
    spec.inputs
        .iter()
        .map(|t| {
            let shape: Vec<usize> = t
                .shape
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => *n as usize,
                    Dim::Symbolic(_) => 2,
                })
                .collect();
            let len: usize = shape.iter().product();
            let shape = IxDyn(&shape);
            let data = match t.dtype {
                DataType::Float32 => TensorData::F32(
                    ArrayD::from_shape_vec(
                        shape,
                        (0..len).map(|i| (i as f32 * 0.37).sin()).collect(),
                    )
                    .unwrap(),
                ),
                DataType::Int64 => TensorData::I64(ArrayD::from_elem(shape, 480)),
                DataType::Bool => TensorData::Bool(ArrayD::from_elem(shape, true)),
                DataType::Float16 => panic!("the shapes model has no float16 inputs"),
            };
            (t.name.clone(), data)
        })
        .collect()
}

/// One run of the graph `spec` of `repo` with `intra_threads` (0: the shared pool).
fn run(repo: &ModelRepository, spec: &ComponentSpec, intra_threads: usize) -> ArrayD<f32> {
    let env = init_environment(Some(&ort_library())).expect("loading ONNX Runtime");
    let config = SessionConfig {
        intra_threads,
        ..SessionConfig::default()
    };
    let executor: SessionExecutor = repo.load_executor(&env, "graph", spec, &config).unwrap();
    let mut outputs = executor.run_blocking(inputs(spec)).unwrap();
    let name = spec.outputs[0].name.clone();
    outputs.take_f32(&name).unwrap()
}

/// Shared pool = own pool of as many threads, bit for bit; = one thread within 1e-4.
#[test]
fn shared_pool_computes_what_per_session_pools_computed() {
    let repo = ModelRepository::open(shapes()).unwrap();
    let manifest = repo.manifest().clone();
    let cores = available_cores();
    for spec in [
        &manifest.components.decoder,
        &manifest.components.upsamplers.last().unwrap().last,
    ] {
        let shared = run(&repo, spec, 0);
        assert_eq!(
            environment_budget(),
            Some(ThreadBudget::default()),
            "the test process runs the default budget"
        );
        let own = run(&repo, spec, cores);
        assert!(
            shared
                .iter()
                .zip(own.iter())
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{}: shared pool and a {cores}-thread session pool differ by {}",
            spec.file,
            max_abs_diff(&shared, &own)
        );
        let one = run(&repo, spec, 1);
        let diff = max_abs_diff(&shared, &one);
        assert!(diff <= 1e-4, "{}: one thread differs by {diff}", spec.file);
    }
}
