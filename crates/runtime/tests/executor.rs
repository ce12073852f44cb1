//! ONNX Runtime loading, session checks and the executor, on karlo-tiny's graphs.
//!
//! Needs the ONNX Runtime library: set `UNCLIP_ORT_LIBRARY` to libonnxruntime.so.1.N (N >= 31),
//! e.g. the PyPI wheel's `onnxruntime/capi/libonnxruntime.so.1.32.0`.

use std::fs;
use std::path::Path;

use ndarray::{Array2, ArrayD, Axis, IxDyn};
use unclip_runtime::{
    Device, Inputs, ModelRepository, RuntimeError, SessionConfig, SessionExecutor, TensorData,
    init_environment,
};
use unclip_testkit::{karlo_tiny, max_abs_diff, ort_library};

/// The process-wide environment from `UNCLIP_ORT_LIBRARY`; fails loudly when it is unset.
fn env() -> unclip_runtime::Environment {
    init_environment(Some(&ort_library())).expect("loading ONNX Runtime")
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

/// The decoder of karlo-tiny with `max_batch_rows`.
fn decoder(repo: &ModelRepository, max_batch_rows: usize) -> SessionExecutor {
    repo.load_executor(
        &env(),
        "decoder",
        &repo.manifest().components.decoder,
        &SessionConfig {
            intra_threads: 1,
            max_batch_rows,
            ..SessionConfig::default()
        },
    )
    .unwrap()
}

/// Decoder inputs of `rows` rows at timestep `t`, their values drawn from `seed`.
fn decoder_call(repo: &ModelRepository, rows: usize, t: i64, seed: u64) -> Inputs {
    let spec = &repo.manifest().components.decoder;
    let fixed = |name: &str| -> Vec<usize> {
        let dims = &spec.input(name).unwrap().shape;
        std::iter::once(rows)
            .chain(
                dims[1..]
                    .iter()
                    .map(|d| d.to_string().parse::<usize>().unwrap()),
            )
            .collect()
    };
    let values = |name: &str, salt: u64| {
        let shape = fixed(name);
        let mut noise =
            unclip_sampler::NoiseSource::new(seed + salt, 0, unclip_sampler::NoiseStage::Decoder);
        noise.draw(&shape)
    };
    vec![
        ("sample".into(), TensorData::F32(values("sample", 0))),
        (
            "timestep".into(),
            TensorData::I64(ArrayD::from_elem(IxDyn(&[rows]), t)),
        ),
        (
            "encoder_hidden_states".into(),
            TensorData::F32(values("encoder_hidden_states", 1)),
        ),
        (
            "class_labels".into(),
            TensorData::F32(values("class_labels", 2)),
        ),
        (
            "attention_mask".into(),
            TensorData::Bool(ArrayD::from_elem(IxDyn(&fixed("attention_mask")), true)),
        ),
    ]
}

/// Calls queued at once for one graph (different sizes, different timesteps, as loops of
/// different requests make them) run stacked in fewer runs, and each gets the outputs it gets
/// alone; with max_batch_rows 1 every call runs on its own.
#[tokio::test]
async fn queued_calls_are_stacked_into_one_run() {
    let repo = ModelRepository::open(karlo_tiny()).unwrap();
    let calls: Vec<Inputs> = (0..8)
        .map(|k| decoder_call(&repo, 1 + k % 3, 999 - 100 * k as i64, k as u64))
        .collect();

    let alone = decoder(&repo, 1);
    let mut expected = Vec::new();
    for call in &calls {
        expected.push(
            alone
                .run(call.clone())
                .await
                .unwrap()
                .take_f32("out_sample")
                .unwrap(),
        );
    }
    let stats = alone.stats();
    assert_eq!((stats.calls, stats.runs), (8, 8));

    let batching = decoder(&repo, 64);
    // Submitted together: the first runs while the others queue behind it.
    let pending: Vec<_> = calls.iter().map(|c| batching.run(c.clone())).collect();
    let results = futures_join_all(pending).await;
    let stats = batching.stats();
    println!("8 calls ({} rows) in {} runs", stats.rows, stats.runs);
    assert_eq!((stats.calls, stats.rows), (8, 15));
    assert!(stats.runs < 8, "{stats:?}");
    let mut worst = 0.0f32;
    for (k, (result, want)) in results.into_iter().zip(&expected).enumerate() {
        let got = result.unwrap().take_f32("out_sample").unwrap();
        let diff = max_abs_diff(&got, want);
        assert!(diff <= 1e-5, "call {k}: {diff}");
        worst = worst.max(diff);
    }
    println!("stacked against alone: max |difference| {worst:e}");
}
