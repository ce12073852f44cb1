//! Sample over real gRPC against karlo-tiny (and models/shapes): shapes and
//! settings of the answer, determinism, seed + k reproducibility, best-of-k reranking, and the
//! refusal of every kind of bad request (after which the service still answers).

mod common;

use std::path::PathBuf;

use common::{TestServer, prompt_encoding, synthetic_encoding};
use ndarray::{Array2, ArrayD, Ix2};
use tonic::Code;
use unclip_proto::StepEvent;
use unclip_proto::v1::{PriorSampleRequest, PriorSampleResponse, Tensor, TextEncoding};
use unclip_testkit::ServingStatus;
use unclip_testkit::{Fixture, assert_status, max_abs_diff};

async fn sample(
    server: &TestServer,
    request: PriorSampleRequest,
) -> Result<PriorSampleResponse, tonic::Status> {
    Ok(server.client().await.sample(request).await?.into_inner())
}

fn embeds(response: &PriorSampleResponse) -> Array2<f32> {
    response
        .image_embeds
        .as_ref()
        .expect("image_embeds")
        .to_f32_array()
        .unwrap()
        .into_dimensionality::<Ix2>()
        .unwrap()
}

fn request(text: TextEncoding, num_images: u32, seed: u64) -> PriorSampleRequest {
    PriorSampleRequest {
        text: Some(text),
        num_images,
        seed,
        steps: 3,
        ..Default::default()
    }
}

/// The recorded encodings of "horse" and the red cube (B = 2).
fn two_prompts() -> TextEncoding {
    prompt_encoding(&mut Fixture::open("t2i_batch2_seed0_steps2-2-2"))
}

/// A prompt-major [B × num_images, D] answer with one seed per row, the defaults applied, and
/// karlo-tiny's raw embeddings (clip mean/std are zero, so exactly 0).
#[tokio::test]
async fn happy_path_and_defaults() {
    let server = TestServer::serving(&[]).await;
    let response = sample(
        &server,
        PriorSampleRequest {
            text: Some(two_prompts()),
            num_images: 3,
            seed: 40,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let e = embeds(&response);
    assert_eq!(e.dim(), (6, 32));
    assert_eq!(response.seeds, vec![40, 41, 42, 43, 44, 45]);
    assert!(response.scores.is_empty());
    assert_eq!((response.steps, response.guidance_scale), (25, 4.0));
    assert!(e.iter().all(|v| *v == 0.0), "karlo-tiny's clip_std is 0");

    // Explicit settings are echoed; no guidance (scale 1) also works.
    let response = sample(
        &server,
        PriorSampleRequest {
            guidance_scale: Some(1.0),
            ..request(two_prompts(), 1, 0)
        },
    )
    .await
    .unwrap();
    assert_eq!((response.steps, response.guidance_scale), (3, 1.0));
    assert_eq!(embeds(&response).dim(), (2, 32));
    server.stop().await.unwrap();
}

/// A negative prompt replaces "" in guidance: accepted with B = 1, refused otherwise.
#[tokio::test]
async fn negative_prompt() {
    let server = TestServer::serving(&[]).await;
    let mut fixture = Fixture::open("t2i_red-cube_seed0_steps2-2-2");
    let negative = prompt_encoding(&mut fixture);
    let response = sample(
        &server,
        PriorSampleRequest {
            negative: Some(negative),
            ..request(two_prompts(), 1, 0)
        },
    )
    .await
    .unwrap();
    assert_eq!(embeds(&response).dim(), (2, 32));
    assert_status(
        sample(
            &server,
            PriorSampleRequest {
                negative: Some(two_prompts()),
                ..request(two_prompts(), 1, 0)
            },
        )
        .await,
        Code::InvalidArgument,
        "negative.text_embeds: must hold 1..=1 prompts, got 2",
    );
    server.stop().await.unwrap();
}

/// The same request twice gives bit-identical embeddings; image k of a request equals the
/// image asked for alone with seed + k; different seeds differ.
#[tokio::test]
async fn determinism_and_seed_plus_k() {
    for (model, text, _keep) in informative_models() {
        let server = TestServer::start_with(TestServer::config_for(&model, &[])).await;
        server.wait_serving().await;
        let first = embeds(
            &sample(&server, request(text.clone(), 3, 1000))
                .await
                .unwrap(),
        );
        let again = embeds(
            &sample(&server, request(text.clone(), 3, 1000))
                .await
                .unwrap(),
        );
        assert_eq!(first, again, "{}: not deterministic", model.display());

        // Prompt 1, image 2 is row k = 1·3 + 2 = 5: seed 1005, alone.
        let second_prompt = only_prompt(&text, 1);
        let alone = embeds(
            &sample(&server, request(second_prompt, 1, 1005))
                .await
                .unwrap(),
        );
        let diff = max_abs_diff(
            &alone.row(0).to_owned().into_dyn(),
            &first.row(5).to_owned().into_dyn(),
        );
        assert!(
            diff <= 1e-5,
            "{}: row 5 alone differs by {diff:e}",
            model.display()
        );

        let other = embeds(&sample(&server, request(text.clone(), 3, 7)).await.unwrap());
        assert!(max_abs_diff(&first.clone().into_dyn(), &other.into_dyn()) > 1e-3);
        server.stop().await.unwrap();
    }
}

/// Models whose raw embeddings are informative, with encodings to send: karlo-tiny with
/// non-zero prior clip statistics (its own are zeros), and models/shapes. The
/// third member keeps a temporary repository alive.
fn informative_models() -> Vec<(PathBuf, TextEncoding, Option<tempfile::TempDir>)> {
    let tiny = common::karlo_tiny_with_prior_stats(
        |i| 0.1 * (i % 5) as f32 - 0.2,
        |i| 0.5 + 0.05 * i as f32,
    );
    let mut models = vec![(tiny.path().to_path_buf(), two_prompts(), Some(tiny))];
    let shapes = unclip_testkit::shapes();
    let repo = unclip_runtime::ModelRepository::open(&shapes).unwrap();
    let s = repo.sizes();
    let text = synthetic_encoding(2, s.context_length, s.embedding_dim);
    models.push((shapes, text, None));
    models
}

/// Prompt `i` of `text` as a one-prompt encoding.
fn only_prompt(text: &TextEncoding, i: usize) -> TextEncoding {
    let pick = |t: &Option<Tensor>, float: bool| -> Option<Tensor> {
        let t = t.as_ref().unwrap();
        Some(if float {
            let a = t.to_f32_array().unwrap();
            Tensor::from_array(&a.select(ndarray::Axis(0), &[i]))
        } else {
            let a = t.to_bool_array().unwrap();
            Tensor::from_array(&a.select(ndarray::Axis(0), &[i]))
        })
    };
    TextEncoding {
        text_embeds: pick(&text.text_embeds, true),
        last_hidden_state: pick(&text.last_hidden_state, true),
        attention_mask: pick(&text.attention_mask, false),
        ..Default::default()
    }
}

/// best_of = k returns, per image, the candidate (seed + k + c·2³², each reproducible alone)
/// whose embedding has the highest dot product with the prompt's text embedding, with that
/// score.
#[tokio::test]
async fn best_of_k_keeps_the_highest_dot_product() {
    for (model, text, _keep) in informative_models() {
        let server = TestServer::start_with(TestServer::config_for(&model, &[])).await;
        server.wait_serving().await;
        let text_embeds: ArrayD<f32> = text.text_embeds.as_ref().unwrap().to_f32_array().unwrap();
        let k = 3u64;
        let response = sample(
            &server,
            PriorSampleRequest {
                best_of: k as u32,
                ..request(text.clone(), 2, 50)
            },
        )
        .await
        .unwrap();
        let kept = embeds(&response);
        assert_eq!(kept.nrows(), 4);
        // Some image keeps a candidate other than the first, or reranking was not exercised.
        assert!(
            response
                .seeds
                .iter()
                .zip(50..)
                .any(|(s, plain)| *s != plain),
            "every row kept candidate 0: {:?}",
            response.seeds
        );
        assert_eq!(response.scores.len(), 4);
        for row in 0..4usize {
            let prompt = row / 2;
            let t = text_embeds.index_axis(ndarray::Axis(0), prompt);
            // Every candidate, asked for alone by its seed.
            let mut candidates = Vec::new();
            for c in 0..k {
                let seed = 50 + row as u64 + (c << 32);
                let alone = embeds(
                    &sample(&server, request(only_prompt(&text, prompt), 1, seed))
                        .await
                        .unwrap(),
                );
                let score: f32 = alone.row(0).iter().zip(t.iter()).map(|(a, b)| a * b).sum();
                candidates.push((seed, score, alone));
            }
            let best = candidates
                .iter()
                .fold(&candidates[0], |b, c| if c.1 > b.1 { c } else { b });
            assert_eq!(response.seeds[row], best.0, "{} row {row}", model.display());
            assert!((response.scores[row] - best.1).abs() <= 1e-4 * best.1.abs().max(1.0));
            let diff = max_abs_diff(
                &kept.row(row).to_owned().into_dyn(),
                &best.2.row(0).to_owned().into_dyn(),
            );
            assert!(
                diff <= 1e-5,
                "row {row}: kept embedding differs by {diff:e}"
            );
            for other in &candidates {
                assert!(response.scores[row] >= other.1 - 1e-4);
            }
            assert!(
                candidates
                    .iter()
                    .any(|c| (c.1 - candidates[0].1).abs() > 1e-3),
                "row {row}: candidates score alike, reranking is not exercised"
            );
        }
        server.stop().await.unwrap();
    }
}

/// Every malformed request is INVALID_ARGUMENT naming the field and the limit, and the service
/// stays SERVING and answers afterwards.
#[tokio::test]
async fn bad_requests_name_field_and_limit() {
    let server = TestServer::serving(&["--max-images-per-input", "4", "--max-best-of", "3"]).await;
    let good = || request(two_prompts(), 1, 0);
    let with = |f: &dyn Fn(&mut TextEncoding)| {
        let mut r = good();
        f(r.text.as_mut().unwrap());
        r
    };
    let cases: Vec<(PriorSampleRequest, &str)> = vec![
        (
            PriorSampleRequest {
                text: None,
                ..good()
            },
            "text: is required",
        ),
        (
            with(&|t| t.text_embeds = Some(Tensor::from_array(&Array2::<f32>::zeros((2, 31))))),
            "text.text_embeds: must have shape [batch, 32], got [2, 31]",
        ),
        (
            with(&|t| {
                t.last_hidden_state = Some(Tensor::from_array(&ndarray::Array3::<f32>::zeros((
                    2, 76, 32,
                ))))
            }),
            "text.last_hidden_state: must have shape [2, 77, 32], got [2, 76, 32]",
        ),
        (
            with(&|t| {
                let mut e = Array2::<f32>::zeros((2, 32));
                e[[1, 3]] = f32::NAN;
                t.text_embeds = Some(Tensor::from_array(&e));
            }),
            "text.text_embeds: must be finite, element 35 is NaN",
        ),
        (
            with(&|t| {
                let mut h = ndarray::Array3::<f32>::zeros((2, 77, 32));
                h[[0, 0, 1]] = f32::INFINITY;
                t.last_hidden_state = Some(Tensor::from_array(&h));
            }),
            "text.last_hidden_state: must be finite, element 1 is inf",
        ),
        (
            with(&|t| t.attention_mask = None),
            "text.attention_mask: is required",
        ),
        (
            PriorSampleRequest {
                text: Some(synthetic_encoding(0, 77, 32)),
                ..good()
            },
            "text.text_embeds: must hold 1..=64 prompts, got 0",
        ),
        (
            PriorSampleRequest {
                num_images: 0,
                ..good()
            },
            "num_images: must be 1..=4, got 0",
        ),
        (
            PriorSampleRequest {
                num_images: 5,
                ..good()
            },
            "num_images: must be 1..=4, got 5",
        ),
        (
            PriorSampleRequest {
                best_of: 4,
                ..good()
            },
            "best_of: must be 0..=3 (0 or 1: no reranking), got 4",
        ),
        (
            PriorSampleRequest { steps: 1, ..good() },
            "steps: must be 2..=1000 (0 for the default 25), got 1",
        ),
        (
            PriorSampleRequest {
                steps: 1001,
                ..good()
            },
            "steps: must be 2..=1000 (0 for the default 25), got 1001",
        ),
        (
            PriorSampleRequest {
                guidance_scale: Some(f32::NAN),
                ..good()
            },
            "guidance_scale: must be a finite number in 0..=100 (unset for the default 4), got NaN",
        ),
    ];
    for (request, message) in cases {
        assert_status(
            sample(&server, request).await,
            Code::InvalidArgument,
            message,
        );
    }
    assert_eq!(
        server.status(unclip_prior::SERVICE_NAME).await,
        ServingStatus::Serving
    );
    assert!(sample(&server, good()).await.is_ok());
    server.stop().await.unwrap();
}

/// SampleStream sends one StepProgress per step, counting the steps of every chunk of the
/// batch, then the answer Sample gives; a bad request ends the stream with Sample's status.
#[tokio::test]
async fn sample_stream_reports_steps_then_the_same_answer() {
    // 2 prompts × 2 images in chunks of 3 rows: two loops of 4 steps.
    let server = TestServer::serving(&["--max-rows-per-call", "3"]).await;
    let mut client = server.client().await;
    let req = PriorSampleRequest {
        steps: 4,
        best_of: 1,
        ..request(two_prompts(), 2, 7)
    };
    let unary = sample(&server, req.clone()).await.unwrap();
    let mut stream = client.sample_stream(req).await.unwrap().into_inner();
    let (mut steps, mut result) = (Vec::new(), None);
    while let Some(event) = stream.message().await.unwrap() {
        assert!(result.is_none(), "nothing follows the result");
        match event.into_parts().expect("an event") {
            Err(p) => steps.push((p.step, p.total)),
            Ok(r) => result = Some(r),
        }
    }
    let result = result.expect("a result");
    assert_eq!(embeds(&result), embeds(&unary));
    assert_eq!(result.seeds, unary.seeds);
    assert!(steps.iter().all(|&(_, total)| total == 8), "{steps:?}");
    assert!(steps.windows(2).all(|w| w[0].0 < w[1].0), "{steps:?}");
    assert_eq!(steps.last(), Some(&(8, 8)), "{steps:?}");

    let bad = PriorSampleRequest {
        steps: 1,
        ..request(two_prompts(), 1, 0)
    };
    let outcome = match client.sample_stream(bad).await {
        Ok(response) => response.into_inner().message().await.map(|_| ()),
        Err(status) => Err(status),
    };
    assert_status(
        outcome,
        Code::InvalidArgument,
        "steps: must be 2..=1000 (0 for the default 25), got 1",
    );
}
