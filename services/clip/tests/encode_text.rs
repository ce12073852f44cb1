//! EncodeText over real gRPC: parity with the CLIP encodings diffusers recorded, truncation
//! flags, and refusal of bad requests.

mod common;

use common::TestServer;
use ndarray::{ArrayD, Axis};
use tonic::Code;
use unclip_proto::v1::{EncodeTextRequest, TextEncoding};
use unclip_testkit::{Fixture, assert_status, max_abs_diff};

async fn encode(server: &TestServer, prompts: &[&str]) -> Result<TextEncoding, tonic::Status> {
    let response = server
        .client()
        .await
        .encode_text(EncodeTextRequest {
            prompts: prompts.iter().map(|p| p.to_string()).collect(),
        })
        .await?;
    Ok(response.into_inner().encoding.expect("an encoding"))
}

/// Encodes each case's prompts, and "" as often, and compares with the recorded ids, mask,
/// text_embeds and last_hidden_state (within 1e-5); returns the largest float difference.
async fn check_recorded_encodings(server: &TestServer, cases: &[String]) -> f32 {
    let mut worst: f32 = 0.0;
    for case in cases {
        let mut fixture = Fixture::open(case);
        let prompts: Vec<String> =
            serde_json::from_value(fixture.json["settings"]["prompt"].clone()).unwrap();
        let prompts: Vec<&str> = prompts.iter().map(String::as_str).collect();
        let got = encode(server, &prompts).await.unwrap();

        let ids = got.input_ids.unwrap().to_array::<i64>().unwrap();
        assert_eq!(
            ids,
            fixture.value_i64("prompt_input_ids"),
            "{case}: input_ids"
        );
        let mask = got.attention_mask.unwrap().to_array::<bool>().unwrap();
        assert_eq!(
            mask,
            fixture.value_bool("prompt_attention_mask"),
            "{case}: attention_mask"
        );
        let embeds = got.text_embeds.unwrap().to_f32_array().unwrap();
        let d = max_abs_diff(&embeds, &fixture.value("prompt_text_embeds"));
        assert!(d <= 1e-5, "{case}: text_embeds differ by {d}");
        worst = worst.max(d);
        let hidden = got.last_hidden_state.unwrap().to_f32_array().unwrap();
        let d = max_abs_diff(&hidden, &fixture.value("prompt_last_hidden_state"));
        assert!(d <= 1e-5, "{case}: last_hidden_state differ by {d}");
        worst = worst.max(d);
        assert_eq!(got.truncated, vec![false; prompts.len()], "{case}");
        let counts: Vec<u32> = mask
            .axis_iter(Axis(0))
            .map(|row| row.iter().filter(|m| **m).count() as u32)
            .collect();
        assert_eq!(got.token_counts, counts, "{case}");

        // The unconditional branch: "" for every row of the batch.
        let empty = vec![""; prompts.len()];
        let got = encode(server, &empty).await.unwrap();
        let embeds = got.text_embeds.unwrap().to_f32_array().unwrap();
        let d = max_abs_diff(&embeds, &fixture.value("uncond_text_embeds"));
        assert!(d <= 1e-5, "{case}: uncond text_embeds differ by {d}");
        worst = worst.max(d);
        let hidden = got.last_hidden_state.unwrap().to_f32_array().unwrap();
        let d = max_abs_diff(&hidden, &fixture.value("uncond_last_hidden_state"));
        assert!(d <= 1e-5, "{case}: uncond last_hidden_state differ by {d}");
        worst = worst.max(d);
    }
    worst
}

/// Every full-trace text-to-image fixture's prompts encode to the recorded ids, mask,
/// text_embeds and last_hidden_state (within 1e-5), and "" to the recorded unconditional
/// encoding.
#[tokio::test]
async fn matches_recorded_encodings() {
    let server = TestServer::serving(&[]).await;
    let cases = Fixture::cases_of("text_to_image");
    assert!(
        cases.len() >= 2,
        "expected text-to-image fixtures, found {cases:?}"
    );
    let worst = check_recorded_encodings(&server, &cases).await;
    println!("{} full-trace cases: max |diff| {worst:.1e}", cases.len());
    server.stop().await.unwrap();
}

/// The same for the replay cases (noise draws and recorded values only): the default-steps
/// cases of both prompts and seeds and the batch of both prompts (B = 2).
#[tokio::test]
async fn matches_recorded_encodings_of_replay_cases() {
    let server = TestServer::serving(&[]).await;
    let cases = Fixture::replay_cases_of("text_to_image");
    assert!(
        cases.len() >= 4,
        "expected the replay cases of index.json, found {cases:?}"
    );
    assert!(
        cases.iter().any(|c| c.starts_with("t2i_batch2_")),
        "the batch-2 case is a replay case: {cases:?}"
    );
    let worst = check_recorded_encodings(&server, &cases).await;
    println!("{} replay cases: max |diff| {worst:.1e}", cases.len());
    server.stop().await.unwrap();
}

/// A prompt of exactly 75 tokens fits (77 with start and end); one more is truncated, keeps its
/// end token, and is flagged; other prompts of the batch are unaffected.
#[tokio::test]
async fn flags_truncated_prompts() {
    let server = TestServer::serving(&[]).await;
    // karlo-tiny's tokenizer has no merges: every byte of a word is one token.
    let fits = "a".repeat(75);
    let cut = "a".repeat(76);
    let long = "horse ".repeat(100);
    let got = encode(&server, &[&fits, "horse", &cut, &long])
        .await
        .unwrap();
    assert_eq!(got.truncated, vec![false, false, true, true]);
    assert_eq!(got.token_counts, vec![77, 7, 77, 77]);
    let ids = got.input_ids.unwrap().to_array::<i64>().unwrap();
    for row in [0, 2, 3] {
        assert_eq!(ids[[row, 0]], 512, "row {row} starts with the start token");
        assert_eq!(ids[[row, 76]], 513, "row {row} ends with the end token");
    }
    assert_eq!(ids[[1, 6]], 513);
    assert!(
        ids.index_axis(Axis(0), 1).iter().skip(7).all(|id| *id == 0),
        "padding with id 0"
    );
    let mask = got.attention_mask.unwrap().to_array::<bool>().unwrap();
    assert!(mask.index_axis(Axis(0), 3).iter().all(|m| *m));
    let embeds: ArrayD<f32> = got.text_embeds.unwrap().to_f32_array().unwrap();
    assert_eq!(embeds.shape(), &[4, 32]);
    server.stop().await.unwrap();
}

/// Empty and oversized batches, over-long prompts and blank prompts (only white space, control
/// or format characters) get INVALID_ARGUMENT naming the field; "" (the unconditional prompt)
/// is still encoded; the service stays SERVING and keeps answering.
#[tokio::test]
async fn refuses_bad_requests() {
    let server = TestServer::serving(&["--max-batch", "4", "--max-prompt-bytes", "100"]).await;
    assert_status(
        encode(&server, &[]).await,
        Code::InvalidArgument,
        "prompts: must hold 1..=4 prompts, got 0",
    );
    assert_status(
        encode(&server, &["a"; 5]).await,
        Code::InvalidArgument,
        "prompts: must hold 1..=4 prompts, got 5",
    );
    let huge = "x".repeat(101);
    assert_status(
        encode(&server, &["ok", &huge]).await,
        Code::InvalidArgument,
        "prompts[1]: is 101 bytes long, the limit is 100",
    );
    for blank in [
        " \t\n",
        "\u{200b}\u{7}",
        "\u{0}",
        "\u{feff}\u{202e}",
        "\u{e0001}",
    ] {
        assert_status(
            encode(&server, &["a red circle", "", blank]).await,
            Code::InvalidArgument,
            "prompts[2]: is blank (only white space, control or format characters); send \"\" \
             for the unconditional prompt",
        );
    }
    let unconditional = encode(&server, &["", "\u{200b}a"]).await.unwrap();
    assert_eq!(
        unconditional.token_counts.len(),
        2,
        "\"\" and a visible prompt are encoded"
    );
    assert_eq!(
        server.status("").await,
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    let got = encode(&server, &["horse"; 4]).await.unwrap();
    assert_eq!(got.truncated.len(), 4);
    server.stop().await.unwrap();
}
