//! ONNX Runtime loading, session checks and the executor, on karlo-tiny's graphs.
//!
//! Needs the ONNX Runtime library: set `UNCLIP_ORT_LIBRARY` to libonnxruntime.so.1.N (N >= 31),
//! e.g. the PyPI wheel's `onnxruntime/capi/libonnxruntime.so.1.32.0`.

use std::fs;
use std::path::{Path, PathBuf};

use ndarray::{Array2, ArrayD, Axis, IxDyn};
use unclip_runtime::{
    Device, ModelRepository, RuntimeError, SessionConfig, SessionExecutor, TensorData,
    init_environment,
};

fn karlo_tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/karlo-tiny")
}

/// The process-wide environment from `UNCLIP_ORT_LIBRARY`; fails loudly when it is unset.
fn env() -> unclip_runtime::Environment {
    let library = std::env::var_os("UNCLIP_ORT_LIBRARY").expect(
        "UNCLIP_ORT_LIBRARY is not set: point it at libonnxruntime.so.1.N (N >= 31), e.g. \
         <venv>/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.32.0",
    );
    init_environment(Some(Path::new(&library))).expect("loading ONNX Runtime")
}

fn text_encoder(repo: &ModelRepository) -> SessionExecutor {
    repo.load_executor(
        &env(),
        "text_encoder",
        &repo.manifest().components.text_encoder,
        &SessionConfig {
            intra_threads: 1,
            ..SessionConfig::default()
        },
    )
    .unwrap()
}

fn max_abs_diff(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The text encoder reproduces the recorded CLIP encoding of "" (tensors.safetensors), through
/// both the async and the blocking entry points, and the warm-up checks output shapes.
#[tokio::test]
async fn text_encoder_matches_recorded_uncond() {
    let repo = ModelRepository::open(karlo_tiny()).unwrap();
    let exec = text_encoder(&repo);
    let uncond = repo.tensors().uncond_text();
    let ids: ArrayD<i64> = uncond.input_ids.clone().insert_axis(Axis(0)).into_dyn();
    let mut out = exec
        .run(vec![("input_ids".into(), TensorData::I64(ids.clone()))])
        .await
        .unwrap();
    let embeds = out.take_f32("text_embeds").unwrap();
    let hidden = out.take_f32("last_hidden_state").unwrap();
    let want_embeds = uncond.text_embeds.insert_axis(Axis(0)).into_dyn();
    let want_hidden = uncond.last_hidden_state.insert_axis(Axis(0)).into_dyn();
    assert!(max_abs_diff(&embeds, &want_embeds) < 1e-5);
    assert!(max_abs_diff(&hidden, &want_hidden) < 1e-5);

    let warm = exec.warm_up().await.unwrap();
    assert_eq!(
        warm.names().collect::<Vec<_>>(),
        vec!["last_hidden_state", "text_embeds"]
    );

    // The blocking entry point, from a thread outside the runtime.
    let blocking = std::thread::spawn(move || {
        let mut out = exec
            .run_blocking(vec![("input_ids".into(), TensorData::I64(ids))])
            .unwrap();
        let e = out.take_f32("text_embeds").unwrap();
        exec.shutdown();
        e
    })
    .join()
    .unwrap();
    assert!(max_abs_diff(&blocking, &want_embeds) < 1e-6);
}

/// Inputs that do not fit the graph are refused before they reach ONNX Runtime, naming the
/// input and what is wrong.
#[tokio::test]
async fn bad_inputs_are_named() {
    let repo = ModelRepository::open(karlo_tiny()).unwrap();
    let exec = text_encoder(&repo);
    let message = |r: Result<unclip_runtime::Outputs, RuntimeError>| match r {
        Err(e @ RuntimeError::Inputs { .. }) => e.to_string(),
        other => panic!("expected an input error, got {other:?}"),
    };
    let ids = |shape: &[usize]| TensorData::I64(ArrayD::zeros(IxDyn(shape)));
    assert_eq!(
        message(exec.run(vec![]).await),
        "text_encoder: input 'input_ids' is missing"
    );
    assert_eq!(
        message(exec.run(vec![("input_ids".into(), ids(&[2, 76]))]).await),
        "text_encoder: input 'input_ids' must have shape ['batch', 77], got [2, 76]"
    );
    assert_eq!(
        message(
            exec.run(vec![(
                "input_ids".into(),
                TensorData::F32(ArrayD::zeros(IxDyn(&[1, 77])))
            )])
            .await
        ),
        "text_encoder: input 'input_ids' must be int64, got float32"
    );
    assert_eq!(
        message(
            exec.run(vec![
                ("input_ids".into(), ids(&[1, 77])),
                ("mask".into(), ids(&[1, 77]))
            ])
            .await
        ),
        "text_encoder: the graph has no input 'mask'"
    );
    // A batch of 3 runs.
    let mut out = exec
        .run(vec![("input_ids".into(), ids(&[3, 77]))])
        .await
        .unwrap();
    assert_eq!(out.take_f32("text_embeds").unwrap().shape(), &[3, 32]);
}

/// A graph whose signature differs from the manifest is refused when its session is built,
/// with the file and the first mismatch named.
#[test]
fn graph_signature_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    // Only the graph file matters here: load it against another component's declaration.
    fs::copy(
        karlo_tiny().join("text_encoder.onnx"),
        dir.path().join("g.onnx"),
    )
    .unwrap();
    let repo = ModelRepository::open(karlo_tiny()).unwrap();
    let mut spec = repo.manifest().components.image_encoder.clone().unwrap();
    spec.file = "g.onnx".into();
    let e = SessionExecutor::load(
        &env(),
        &dir.path().join("g.onnx"),
        "image_encoder",
        &spec,
        &SessionConfig::default(),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "g.onnx: graph has no input 'pixel_values' (the manifest lists it)"
    );

    let mut spec = repo.manifest().components.text_encoder.clone();
    spec.outputs[0].shape[1] = unclip_runtime::manifest::Dim::Fixed(64);
    let e = SessionExecutor::load(
        &env(),
        &karlo_tiny().join("text_encoder.onnx"),
        "text_encoder",
        &spec,
        &SessionConfig::default(),
    )
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "text_encoder.onnx: output 'text_embeds' dim 1 is 32, manifest says 64"
    );
}

/// Asking for CUDA with the CPU-only library fails with a message saying why, instead of
/// silently running on the CPU.
#[test]
fn cuda_without_cuda_library_fails_clearly() {
    let env = env();
    let repo = ModelRepository::open(karlo_tiny()).unwrap();
    let config = SessionConfig {
        device: Device::Cuda(0),
        ..SessionConfig::default()
    };
    match repo.load_executor(
        &env,
        "text_encoder",
        &repo.manifest().components.text_encoder,
        &config,
    ) {
        // A GPU build of ONNX Runtime on a machine with a GPU: CUDA works, nothing to check.
        Ok(_) => eprintln!("CUDA is available with this library; skipping the failure check"),
        Err(e) => {
            let message = e.to_string();
            assert!(
                matches!(e, RuntimeError::Device(_) | RuntimeError::Ort { .. }),
                "{message}"
            );
            assert!(message.contains("cuda:0"), "{message}");
        }
    }
}

/// Library paths that cannot work are reported, not panicked on.
#[test]
fn library_errors() {
    let e = init_environment(Some(Path::new("/nonexistent/libonnxruntime.so.1.32.0"))).unwrap_err();
    assert_eq!(
        e.to_string(),
        "ONNX Runtime library: /nonexistent/libonnxruntime.so.1.32.0 does not exist or is not a file"
    );
    // Once loaded, another file cannot be loaded into the same process.
    env();
    let other = tempfile::NamedTempFile::new().unwrap();
    let e = init_environment(Some(other.path()))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("this process already loaded ONNX Runtime from"),
        "{e}"
    );
}

/// The executor's queue refuses work beyond its capacity instead of growing without bound.
#[tokio::test]
async fn queue_is_bounded() {
    let repo = ModelRepository::open(karlo_tiny()).unwrap();
    let exec = repo
        .load_executor(
            &env(),
            "text_encoder",
            &repo.manifest().components.text_encoder,
            &SessionConfig {
                intra_threads: 1,
                queue_capacity: 1,
                ..SessionConfig::default()
            },
        )
        .unwrap();
    // Submit many large batches at once without awaiting: the thread can hold one running job
    // and one queued, so some must be refused.
    let big = || {
        vec![(
            "input_ids".to_string(),
            TensorData::I64(Array2::<i64>::zeros((64, 77)).into_dyn()),
        )]
    };
    let runs: Vec<_> = (0..16).map(|_| exec.run(big())).collect();
    let results = futures_join_all(runs).await;
    let overloaded = results
        .iter()
        .filter(|r| matches!(r, Err(e) if e.is_overloaded()))
        .count();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert!(overloaded > 0 && ok > 0, "ok {ok}, overloaded {overloaded}");
}

/// Awaits every future, in order (a tiny join_all without the futures crate).
async fn futures_join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut out = Vec::with_capacity(pinned.len());
    for f in pinned.iter_mut() {
        out.push(f.await);
    }
    out
}
