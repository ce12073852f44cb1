//! Parity of the Rust prior loop with diffusers' recordings (models/karlo-tiny/fixtures), for
//! every text-to-image case, without gRPC: the loop runs over a closure network and explicit
//! noise (the recorded draws).
//!
//! * teacher forcing: each scheduler step, fed the recorded model output, sample and noise,
//!   gives the recorded x_prev and x̂₀ (1e-5);
//! * replay: the loop driven by the recorded model outputs assembles exactly the recorded model
//!   inputs (1e-6) and ends at the recorded latents;
//! * free running: the loop over the real prior.onnx ends at the recorded latents (1e-4) and
//!   embeddings (karlo-tiny's clip mean/std are 0, so those are all 0: the latents are the
//!   informative comparison), for the full traces and for the replay cases (noise draws and
//!   values only: the default-steps cases of both prompts and seeds, and the batch of two).
//!
//! Run with `--nocapture` to see the measured differences.

use std::sync::Mutex;

use ndarray::{Array2, ArrayD, Ix2, Ix3};
use serde_json::Value;
use unclip_model_server::ServiceError;
use unclip_model_server::validate::TextConditioning;
use unclip_prior::sampler::{PriorInputs, PriorNoise, PriorOutput, PriorSampler, PriorSettings};
use unclip_runtime::{ModelRepository, SessionConfig, SessionExecutor, init_environment};
use unclip_testkit::{Fixture, karlo_tiny, max_abs_diff, ort_library};

/// What one case recorded about the prior stage.
struct PriorRecord {
    /// The case name, for messages.
    case: String,
    /// The prompts' encodings.
    text: TextConditioning,
    /// The prior guidance scale of the run.
    guidance_scale: f32,
    /// The stage's timesteps.
    timesteps: Vec<i64>,
    /// Initial latents, then one draw per step with t > 0.
    noise: Vec<Array2<f32>>,
    /// The prior model calls, in order (none for a replay case).
    calls: Vec<Value>,
    /// The prior scheduler steps, in order (none for a replay case).
    steps: Vec<Value>,
}

fn two(a: ArrayD<f32>) -> Array2<f32> {
    a.into_dimensionality::<Ix2>().unwrap()
}

fn prior_record(case: &str, fixture: &mut Fixture) -> PriorRecord {
    let json = fixture.json.clone();
    let replay = json["trace"] == "replay";
    let of_stage = |list: &str| -> Vec<Value> {
        match json[list].as_array() {
            Some(records) => records
                .iter()
                .filter(|v| v["stage"] == "prior" || v["component"] == "prior")
                .cloned()
                .collect(),
            // Replay cases keep only the noise and the values.
            None if replay && list != "noise" => Vec::new(),
            None => panic!("{case}: the fixture has no {list}"),
        }
    };
    let noise = of_stage("noise")
        .iter()
        .map(|n| two(fixture.f32_key(n["tensor"].as_str().unwrap())))
        .collect();
    PriorRecord {
        case: case.to_string(),
        text: TextConditioning {
            text_embeds: two(fixture.value("prompt_text_embeds")),
            last_hidden_state: fixture
                .value("prompt_last_hidden_state")
                .into_dimensionality::<Ix3>()
                .unwrap(),
            attention_mask: fixture
                .value_bool("prompt_attention_mask")
                .into_dimensionality::<Ix2>()
                .unwrap(),
        },
        guidance_scale: json["settings"]["prior_guidance_scale"].as_f64().unwrap() as f32,
        timesteps: json["timesteps"]["prior"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_i64().unwrap())
            .collect(),
        noise,
        calls: of_stage("model_calls"),
        steps: of_stage("scheduler_steps"),
    }
}

fn repository() -> ModelRepository {
    ModelRepository::open(karlo_tiny()).unwrap()
}

fn prior_executor(repo: &ModelRepository) -> SessionExecutor {
    let env = init_environment(Some(&ort_library())).unwrap();
    let config = SessionConfig {
        intra_threads: 1,
        ..Default::default()
    };
    repo.load_executor(&env, "prior", &repo.manifest().components.prior, &config)
        .unwrap()
}

/// Each scheduler step, fed the recorded raw model output (guided here), sample and noise,
/// reproduces the recorded guided output (as x̂₀), x_prev within 1e-5.
#[test]
fn teacher_forced_steps() {
    let repo = repository();
    let sampler = PriorSampler::from_repository(&repo).unwrap();
    let mut worst: (f32, f32) = (0.0, 0.0);
    let mut checked = 0;
    for case in Fixture::cases_of("text_to_image") {
        let mut fixture = Fixture::open(&case);
        let record = prior_record(&case, &mut fixture);
        assert_eq!(record.steps.len(), record.timesteps.len(), "{case}");
        assert_eq!(record.calls.len(), record.steps.len(), "{case}");
        for (i, (step, call)) in record.steps.iter().zip(&record.calls).enumerate() {
            let raw = two(fixture.f32(&call["outputs"]["predicted_image_embedding"]));
            let sample = two(fixture.f32(&step["sample"]));
            let noise = (!step["noise"].is_null()).then(|| two(fixture.f32(&step["noise"])));
            let t = step["timestep"].as_i64().unwrap();
            assert_eq!(t, record.timesteps[i]);
            let prev = step["prev_timestep"].as_i64();
            assert_eq!(prev, record.timesteps.get(i + 1).copied());
            let out = sampler
                .guide_and_step(
                    raw.view(),
                    Some(record.guidance_scale),
                    t,
                    prev,
                    sample.view(),
                    noise.as_ref().map(|z| z.view()),
                )
                .unwrap();
            let x0 = max_abs_diff(
                &out.pred_original_sample,
                &fixture.f32(&step["pred_original_sample"]),
            );
            let x_prev = max_abs_diff(&out.prev_sample, &fixture.f32(&step["prev_sample"]));
            // The recorded model_output is the guided output; the prior's x̂₀ is its clamp.
            let guided = fixture
                .f32(&step["model_output"])
                .mapv(|v| v.clamp(-5.0, 5.0));
            let guided_diff = max_abs_diff(&out.pred_original_sample, &guided);
            assert!(
                x0 <= 1e-5 && x_prev <= 1e-5 && guided_diff <= 1e-5,
                "{case} step {i} (t={t}): x0 {x0:e}, x_prev {x_prev:e}, guided {guided_diff:e}"
            );
            worst = (worst.0.max(x_prev), worst.1.max(x0.max(guided_diff)));
            checked += 1;
        }
    }
    assert!(checked >= 6, "only {checked} steps checked");
    eprintln!(
        "teacher forcing: {checked} prior steps, max |x_prev diff| {:e}, max |x0 diff| {:e}",
        worst.0, worst.1
    );
}

/// Driven by the recorded model outputs and noise, the loop assembles every model call's
/// inputs as diffusers did (1e-6; timesteps and masks exactly) and ends at the recorded
/// latents and embeddings.
#[tokio::test]
async fn replayed_loop_assembles_recorded_inputs() {
    let repo = repository();
    let sampler = PriorSampler::from_repository(&repo).unwrap();
    let mut worst_input: f32 = 0.0;
    let mut worst_latents: f32 = 0.0;
    for case in Fixture::cases_of("text_to_image") {
        let mut fixture = Fixture::open(&case);
        let record = prior_record(&case, &mut fixture);
        let outputs: Vec<Array2<f32>> = record
            .calls
            .iter()
            .map(|c| two(fixture.f32(&c["outputs"]["predicted_image_embedding"])))
            .collect();
        let seen: Mutex<Vec<PriorInputs>> = Mutex::default();
        let network = |inputs: PriorInputs| {
            let mut seen = seen.lock().unwrap();
            let output = outputs.get(seen.len()).cloned();
            seen.push(inputs);
            async move { output.ok_or_else(|| ServiceError::Internal("too many calls".into())) }
        };
        let settings = PriorSettings {
            steps: record.timesteps.len(),
            guidance_scale: record.guidance_scale,
        };
        let mut noise = PriorNoise::explicit(record.noise.clone());
        let out = sampler
            .sample(&network, &record.text, None, settings, &mut noise)
            .await
            .unwrap();
        assert!(
            matches!(&noise, PriorNoise::Explicit(rest) if rest.is_empty()),
            "{case}: not every recorded draw was used"
        );

        let seen = seen.into_inner().unwrap();
        assert_eq!(seen.len(), record.calls.len(), "{case}: model calls");
        for (i, (inputs, call)) in seen.iter().zip(&record.calls).enumerate() {
            let rec = &call["inputs"];
            let rows = inputs.hidden_states.nrows();
            let t = rec["timestep"].as_i64().unwrap();
            assert_eq!(inputs.timestep.to_vec(), vec![t; rows], "{case} call {i}");
            assert_eq!(
                inputs.attention_mask.clone().into_dyn(),
                fixture.bool_key(rec["attention_mask"].as_str().unwrap()),
                "{case} call {i}: attention_mask"
            );
            for (name, got) in [
                ("hidden_states", inputs.hidden_states.clone().into_dyn()),
                ("proj_embedding", inputs.proj_embedding.clone().into_dyn()),
                (
                    "encoder_hidden_states",
                    inputs.encoder_hidden_states.clone().into_dyn(),
                ),
            ] {
                let diff = max_abs_diff(&got, &fixture.f32(&rec[name]));
                assert!(diff <= 1e-6, "{case} call {i}: {name} differs by {diff:e}");
                worst_input = worst_input.max(diff);
            }
        }
        let (latents, embeds) = final_diffs(&out, &mut fixture);
        assert!(
            latents <= 1e-5,
            "{}: latents differ by {latents:e}",
            record.case
        );
        assert!(
            embeds <= 1e-5,
            "{}: embeddings differ by {embeds:e}",
            record.case
        );
        worst_latents = worst_latents.max(latents);
    }
    eprintln!(
        "replay: max model-input diff {worst_input:e}, max final-latent diff {worst_latents:e}"
    );
}

/// The free-running prior loop over `executor` on one case's recorded draws: (latents
/// difference, embeddings difference, steps). Every recorded draw must be used.
async fn free_run(
    sampler: &PriorSampler,
    executor: &SessionExecutor,
    case: &str,
) -> (f32, f32, usize) {
    let mut fixture = Fixture::open(case);
    let record = prior_record(case, &mut fixture);
    let settings = PriorSettings {
        steps: record.timesteps.len(),
        guidance_scale: record.guidance_scale,
    };
    // Initial latents, then one draw per step except the last (t = 0).
    assert_eq!(record.noise.len(), settings.steps, "{case}: prior draws");
    let mut noise = PriorNoise::explicit(record.noise.clone());
    let out = sampler
        .sample(executor, &record.text, None, settings, &mut noise)
        .await
        .unwrap();
    assert!(
        matches!(&noise, PriorNoise::Explicit(rest) if rest.is_empty()),
        "{case}: not every recorded draw was used"
    );
    let (latents, embeds) = final_diffs(&out, &mut fixture);
    (latents, embeds, settings.steps)
}

/// How far a loop's result is from the recorded `prior_latents` and `image_embeddings`.
fn final_diffs(out: &PriorOutput, fixture: &mut Fixture) -> (f32, f32) {
    (
        max_abs_diff(
            &out.latents.clone().into_dyn(),
            &fixture.value("prior_latents"),
        ),
        max_abs_diff(
            &out.image_embeds.clone().into_dyn(),
            &fixture.value("image_embeddings"),
        ),
    )
}

/// Over the real prior graph with the recorded noise, the loop ends within 1e-4 of diffusers'
/// latents and embeddings.
#[tokio::test]
async fn free_running_loop_matches_recorded_latents() {
    let repo = repository();
    let sampler = PriorSampler::from_repository(&repo).unwrap();
    let executor = prior_executor(&repo);
    let mut worst: f32 = 0.0;
    for case in Fixture::cases_of("text_to_image") {
        let (latents, embeds, steps) = free_run(&sampler, &executor, &case).await;
        eprintln!(
            "free running {case} ({steps} steps): latents {latents:e}, embeddings {embeds:e}"
        );
        assert!(latents <= 1e-4, "{case}: latents differ by {latents:e}");
        assert!(embeds <= 1e-4, "{case}: embeddings differ by {embeds:e}");
        worst = worst.max(latents);
    }
    eprintln!("free running: max final-latent diff {worst:e}");
}

/// The replay cases (recorded noise and values only): over the real prior graph, the loop on
/// the recorded draws ends within 1e-4 of the recorded latents and image embeddings.
#[tokio::test]
async fn free_running_loop_matches_replay_cases() {
    let repo = repository();
    let sampler = PriorSampler::from_repository(&repo).unwrap();
    let executor = prior_executor(&repo);
    let cases = Fixture::replay_cases_of("text_to_image");
    assert!(
        cases.len() >= 4,
        "expected the replay cases of index.json, found {cases:?}"
    );
    let mut worst: f32 = 0.0;
    for case in &cases {
        let (latents, embeds, steps) = free_run(&sampler, &executor, case).await;
        eprintln!(
            "free running replay {case} ({steps} steps): latents {latents:e}, embeddings {embeds:e}"
        );
        assert!(latents <= 1e-4, "{case}: latents differ by {latents:e}");
        assert!(embeds <= 1e-4, "{case}: embeddings differ by {embeds:e}");
        worst = worst.max(latents);
    }
    eprintln!(
        "free running, {} replay cases: max final-latent diff {worst:e}",
        cases.len()
    );
}
