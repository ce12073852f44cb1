//! The gateway's HTTP API (issue 12) end to end on the shapes model, across real processes:
//! every endpoint, `url` answers served and then gone after their time, every kind of bad input
//! answered 4xx in OpenAI's shape with the gateway still healthy, streamed events in order,
//! a client that goes away cancelling the stage work, the official `openai` Python SDK, the
//! `curl` examples of docs/http-api.md, and schemathesis fuzzing `/openapi.json`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use image::{Rgba, RgbaImage};
use serde_json::{Value, json};
use unclip_e2e::{
    Form, HttpAnswer, HttpRequest, SseEvent, StackOptions, eventually, gateway, png, python,
    requests, rgb, stack, stats,
};

const RED_CIRCLE: &str = "a large red circle in the center on a white background";
const BLUE_SQUARE: &str = "a large blue square in the center on a black background";

/// The stack's gateway address (`host:port`).
fn address(stack: &unclip_stack::LocalStack) -> String {
    stack
        .gateway_url()
        .expect("a gateway")
        .trim_start_matches("http://")
        .to_string()
}

/// A 128x128 PNG decoded from base64, checked for size.
fn decode_png(b64: &Value) -> image::RgbImage {
    let bytes = STANDARD
        .decode(b64.as_str().expect("b64_json is a string"))
        .expect("valid base64");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let image = rgb(&bytes);
    assert_eq!(image.dimensions(), (128, 128));
    image
}

/// The index of the strongest channel of the mean colour of the central 32x32 pixels.
fn centre_channel(image: &image::RgbImage) -> usize {
    let mut sum = [0f64; 3];
    for y in 48..80 {
        for x in 48..80 {
            for (c, s) in sum.iter_mut().enumerate() {
                *s += f64::from(image.get_pixel(x, y)[c]);
            }
        }
    }
    (0..3).max_by(|&a, &b| sum[a].total_cmp(&sum[b])).unwrap()
}

/// Asserts a JSON answer of 200 and returns it.
fn ok(answer: &HttpAnswer) -> Value {
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    answer.json()
}

/// Asserts an OpenAI-shaped error of `status` naming `param` and returns its message.
fn error(answer: &HttpAnswer, status: u16, param: Option<&str>) -> String {
    let body = answer.json();
    assert_eq!(answer.status, status, "{body}");
    let error = &body["error"];
    for key in ["message", "type", "param", "code"] {
        assert!(error.get(key).is_some(), "no {key} in {body}");
    }
    assert_eq!(error["param"].as_str(), param, "{body}");
    if let Some(param) = param {
        let message = error["message"].as_str().unwrap();
        assert!(message.starts_with(param), "{message} names {param}");
    }
    error["message"].as_str().unwrap().to_string()
}

/// `POST /v1/images/generations` with `body`.
async fn generate(address: &str, body: Value) -> HttpAnswer {
    HttpRequest::post_json("/v1/images/generations", &body)
        .send(address)
        .await
}

/// Every endpoint answers in the contract's shape: generations (the shapes model's colours,
/// 128x128 PNGs, seeds), variations, edits (with a mask and with the image's own alpha),
/// interpolations and text diffs (frames with theta, the animation), models, health, readiness
/// and the OpenAPI document; `url` answers are served, then 404 after their time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint() {
    let stack = stack(StackOptions {
        gateway_args: vec!["--http-files-ttl-secs=3".into()],
        ..Default::default()
    })
    .await;
    let address = address(&stack);

    let health = HttpRequest::get("/healthz").send(&address).await;
    assert_eq!(ok(&health)["status"], "ok");
    assert_eq!(
        ok(&HttpRequest::get("/readyz").send(&address).await)["status"],
        "ready"
    );
    let models = ok(&HttpRequest::get("/v1/models").send(&address).await);
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "shapes");
    assert_eq!(models["data"][0]["object"], "model");
    let openapi = ok(&HttpRequest::get("/openapi.json").send(&address).await);
    assert!(openapi["openapi"].as_str().unwrap().starts_with("3."));

    // Generations: the colour the prompt names; n images from seed, seed + 1.
    let mut red = None;
    for (prompt, channel) in [(RED_CIRCLE, 0), (BLUE_SQUARE, 2)] {
        let body = ok(&generate(
            &address,
            json!({"prompt": prompt, "n": 2, "size": "128x128", "seed": 21, "model": "shapes",
                   "user": "someone", "quality": "ignored"}),
        )
        .await);
        assert_eq!(body["model"], "shapes");
        assert_eq!(body["size"], "128x128");
        assert!(body["created"].as_u64().unwrap() > 1_600_000_000);
        let data = body["data"].as_array().unwrap();
        assert_eq!(data.len(), 2);
        assert_eq!(
            (data[0]["seed"].as_u64(), data[1]["seed"].as_u64()),
            (Some(21), Some(22))
        );
        for item in data {
            assert_eq!(
                centre_channel(&decode_png(&item["b64_json"])),
                channel,
                "{prompt}"
            );
        }
        red = red.or_else(|| Some(decode_png(&data[0]["b64_json"])));
    }
    let red = png(&red.unwrap());

    // Variations, fresh and anchored.
    for mode in ["fresh", "anchored"] {
        let form = Form::new()
            .file("image", &red)
            .text("n", "2")
            .text("mode", mode)
            .text("seed", "4")
            .text("decoder_steps", "8");
        let body = ok(&HttpRequest::post_form("/v1/images/variations", form)
            .send(&address)
            .await);
        let data = body["data"].as_array().unwrap();
        assert_eq!(data.len(), 2, "{mode}");
        for item in data {
            decode_png(&item["b64_json"]);
        }
    }

    // Edits: with a mask; and without one, the image's own transparent half regenerated.
    let mut mask = RgbaImage::from_pixel(128, 128, Rgba([0, 0, 0, 255]));
    let mut see_through = image::DynamicImage::ImageRgb8(rgb(&red)).to_rgba8();
    for y in 0..128 {
        for x in 64..128 {
            mask.put_pixel(x, y, Rgba([0, 0, 0, 0]));
            see_through.get_pixel_mut(x, y).0[3] = 0;
        }
    }
    let with_mask = Form::new()
        .file("image", &red)
        .file("mask", &png(&mask))
        .text("prompt", BLUE_SQUARE)
        .text("seed", "2");
    let body = ok(&HttpRequest::post_form("/v1/images/edits", with_mask)
        .send(&address)
        .await);
    let edited = decode_png(&body["data"][0]["b64_json"]);
    let kept = rgb(&red);
    let crop = |image: &image::RgbImage| image::imageops::crop_imm(image, 0, 0, 48, 128).to_image();
    let diff = unclip_e2e::mean_abs_diff(&crop(&edited), &crop(&kept));
    assert!(
        diff < 12.0,
        "the opaque half is kept: mean difference {diff}"
    );
    let own_alpha = Form::new()
        .file("image", &png(&see_through))
        .text("prompt", BLUE_SQUARE);
    let body = ok(&HttpRequest::post_form("/v1/images/edits", own_alpha)
        .send(&address)
        .await);
    decode_png(&body["data"][0]["b64_json"]);

    // Interpolations and text diffs: frames with theta; the text diff's animation.
    let blue = {
        let body = ok(&generate(&address, json!({"prompt": BLUE_SQUARE, "seed": 1})).await);
        png(&decode_png(&body["data"][0]["b64_json"]))
    };
    let form = Form::new()
        .file("image_a", &red)
        .file("image_b", &blue)
        .text("frames", "3")
        .text("decoder_steps", "8");
    let body = ok(&HttpRequest::post_form("/v1/images/interpolations", form)
        .send(&address)
        .await);
    let thetas: Vec<f64> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["theta"].as_f64().unwrap())
        .collect();
    assert_eq!(thetas, [0.0, 0.5, 1.0]);
    let form = Form::new()
        .file("image", &red)
        .text("source_caption", RED_CIRCLE)
        .text("target_caption", BLUE_SQUARE)
        .text("frames", "2")
        .text("decoder_steps", "8");
    let body = ok(&HttpRequest::post_form("/v1/images/text-diffs", form)
        .send(&address)
        .await);
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(body["animation"]["mime_type"], "image/apng");
    let animation = STANDARD
        .decode(body["animation"]["b64_json"].as_str().unwrap())
        .unwrap();
    assert_eq!(&animation[..8], b"\x89PNG\r\n\x1a\n");

    // URLs: served while they live, then 404.
    let body = ok(&generate(
        &address,
        json!({"prompt": RED_CIRCLE, "response_format": "url"}),
    )
    .await);
    let url = body["data"][0]["url"].as_str().unwrap().to_string();
    let path = url
        .strip_prefix(&format!("http://{address}"))
        .unwrap_or_else(|| panic!("{url} is on this gateway"));
    assert!(
        path.starts_with("/v1/files/") && path.ends_with(".png"),
        "{path}"
    );
    let file = HttpRequest::get(path).send(&address).await;
    assert_eq!(file.status, 200);
    assert_eq!(file.header("content-type"), Some("image/png"));
    assert_eq!(rgb(&file.body).dimensions(), (128, 128));
    let path = path.to_string();
    let address_ = address.clone();
    eventually("the file expires", || {
        let (path, address) = (path.clone(), address_.clone());
        async move { HttpRequest::get(&path).send(&address).await.status == 404 }
    })
    .await;
    error(&HttpRequest::get(&path).send(&address).await, 404, None);
    stack.shutdown().await.unwrap();
}

/// Every kind of bad input is a 4xx in OpenAI's shape naming the parameter (413 before the
/// rest of a too-large part is sent), never a 5xx, and the gateway stays healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_4xx_naming_the_param() {
    let stack = stack(StackOptions {
        gateway_args: vec!["--max-image-bytes=200000".into()],
        ..Default::default()
    })
    .await;
    let address = address(&stack);
    let post = |body: &str| {
        HttpRequest::post(
            "/v1/images/generations",
            "application/json",
            body.as_bytes().to_vec(),
        )
    };

    // Malformed JSON, not an object, wrong content type.
    let message = error(&post(r#"{"prompt": "x""#).send(&address).await, 400, None);
    assert!(message.contains("JSON"), "{message}");
    error(&post("[1, 2]").send(&address).await, 400, None);
    let text = HttpRequest::post("/v1/images/generations", "text/plain", b"hi".to_vec());
    error(&text.send(&address).await, 415, None);
    let json_to_form = HttpRequest::post_json("/v1/images/variations", &json!({"n": 1}));
    error(&json_to_form.send(&address).await, 415, None);

    // Fields out of range or of the wrong type, each named.
    for (body, param) in [
        (json!({"prompt": RED_CIRCLE, "n": 40}), "n"),
        (json!({"prompt": RED_CIRCLE, "n": "two"}), "n"),
        (json!({"prompt": RED_CIRCLE, "size": "256x256"}), "size"),
        (json!({"prompt": RED_CIRCLE, "model": "dall-e-2"}), "model"),
        (
            json!({"prompt": RED_CIRCLE, "response_format": "gif"}),
            "response_format",
        ),
        (json!({"prompt": "  "}), "prompt"),
        (json!({"n": 1}), "prompt"),
        (json!({"prompt": RED_CIRCLE, "steps": 1}), "decoder_steps"),
        (
            json!({"prompt": RED_CIRCLE, "guidance": -1}),
            "decoder_guidance_scale",
        ),
        (json!({"prompt": RED_CIRCLE, "seed": -3}), "seed"),
    ] {
        error(&generate(&address, body).await, 400, Some(param));
    }
    let message = error(
        &generate(&address, json!({"prompt": RED_CIRCLE, "size": "64x64"})).await,
        400,
        Some("size"),
    );
    assert!(
        message.contains("128x128"),
        "lists what is served: {message}"
    );

    // Multipart: a missing part, an image that is not one, a mask of another size, a bad mode.
    let red = {
        let body = ok(&generate(&address, json!({"prompt": RED_CIRCLE, "seed": 1})).await);
        png(&decode_png(&body["data"][0]["b64_json"]))
    };
    let small_mask = png(&RgbaImage::from_pixel(64, 64, Rgba([0, 0, 0, 0])));
    let cases = [
        ("/v1/images/variations", Form::new().text("n", "1"), "image"),
        (
            "/v1/images/variations",
            Form::new().file("image", b"GIF89a not really"),
            "image",
        ),
        (
            "/v1/images/variations",
            Form::new().file("image", &red).text("mode", "wild"),
            "mode",
        ),
        (
            "/v1/images/variations",
            Form::new().file("image", &red).text("n", "many"),
            "n",
        ),
        (
            "/v1/images/edits",
            Form::new()
                .file("image", &red)
                .file("mask", &small_mask)
                .text("prompt", BLUE_SQUARE),
            "mask",
        ),
        (
            "/v1/images/edits",
            Form::new().file("image", &red).text("prompt", BLUE_SQUARE),
            "mask",
        ),
        (
            "/v1/images/interpolations",
            Form::new().file("image_a", &red),
            "image_b",
        ),
        (
            "/v1/images/text-diffs",
            Form::new()
                .file("image", &red)
                .text("source_caption", RED_CIRCLE),
            "target_caption",
        ),
    ];
    for (path, form, param) in cases {
        let answer = HttpRequest::post_form(path, form).send(&address).await;
        error(&answer, 400, Some(param));
    }
    let garbled = HttpRequest::post(
        "/v1/images/variations",
        "multipart/form-data; boundary=xyz",
        b"--xyz\r\nnot a part".to_vec(),
    );
    error(&garbled.send(&address).await, 400, None);

    // A part over its limit: 413 naming it while most of the body has not been sent.
    let big = Form::new().file("image", &vec![7u8; 1_000_000]);
    let request = HttpRequest::post_form("/v1/images/variations", big);
    let answer = request.send_partly(&address, 300_000).await;
    assert_eq!(answer.status, 413);
    let body: Value = serde_json::from_slice(&answer.body).expect("a JSON error");
    assert_eq!(body["error"]["param"], "image", "{body}");
    // A body past the whole form's limit: 413 too.
    let huge = Form::new()
        .file("image", &vec![7u8; 190_000])
        .file("mask", &vec![7u8; 190_000])
        .text("filler", &"x".repeat(60_000))
        .file("image_a", &vec![7u8; 190_000])
        .file("image_b", &vec![7u8; 190_000])
        .file("image[]", &vec![7u8; 190_000])
        .text("filler2", &"x".repeat(60_000))
        .file("image", &vec![7u8; 190_000])
        .file("image", &vec![7u8; 190_000])
        .file("image", &vec![7u8; 190_000])
        .file("image", &vec![7u8; 190_000])
        .file("image", &vec![7u8; 190_000]);
    let answer = HttpRequest::post_form("/v1/images/variations", huge)
        .send(&address)
        .await;
    error(&answer, 413, None);

    // The deadline header: not a number is a 400 naming it; one that passes is a 504.
    let bad_deadline =
        HttpRequest::post_json("/v1/images/generations", &json!({"prompt": RED_CIRCLE}))
            .header("x-request-timeout-ms", "soon");
    error(
        &bad_deadline.send(&address).await,
        400,
        Some("x-request-timeout-ms"),
    );
    let short = HttpRequest::post_json(
        "/v1/images/generations",
        &json!({"prompt": BLUE_SQUARE, "n": 4, "decoder_steps": 400}),
    )
    .header("x-request-timeout-ms", "300");
    error(&short.send(&address).await, 504, None);

    // Unknown routes and files.
    assert_eq!(
        HttpRequest::get("/v1/files/nothing.png")
            .send(&address)
            .await
            .status,
        404
    );

    // Still healthy, and still answering.
    assert_eq!(
        ok(&HttpRequest::get("/healthz").send(&address).await)["status"],
        "ok"
    );
    let body = ok(&generate(&address, json!({"prompt": RED_CIRCLE, "steps": 4})).await);
    decode_png(&body["data"][0]["b64_json"]);
    let mut client = gateway(&stack).await;
    let s = stats(&mut client).await;
    assert_eq!(requests(&s, "generate internal"), 0, "{:?}", s.requests);
    stack.shutdown().await.unwrap();
}

/// The event names of a stream, with runs of the same name collapsed.
fn shape(events: &[SseEvent]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for event in events {
        assert_eq!(
            event.data["type"],
            event.event.as_str(),
            "type is the event name"
        );
        if names.last() != Some(&event.event) {
            names.push(event.event.clone());
        }
    }
    names
}

/// `"stream": true` sends progress, preview images and then the completed images, in that
/// order, for JSON and form requests; a client that goes away mid-stream cancels the stage
/// work (nothing stays in flight and the request is counted as cancelled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_in_order_and_cancel() {
    let stack = stack(StackOptions::default()).await;
    let address = address(&stack);

    let request = HttpRequest::post_json(
        "/v1/images/generations",
        &json!({"prompt": RED_CIRCLE, "n": 2, "seed": 5, "stream": true}),
    );
    let events = request.events(&address).await.collect().await;
    let names = shape(&events);
    assert_eq!(
        names.first().map(String::as_str),
        Some("image_generation.progress")
    );
    assert_eq!(
        names.last().map(String::as_str),
        Some("image_generation.completed")
    );
    assert!(
        names.contains(&"image_generation.partial_image".to_string()),
        "{names:?}"
    );
    let progress: Vec<&SseEvent> = events
        .iter()
        .filter(|e| e.event == "image_generation.progress")
        .collect();
    let stages: Vec<&str> = progress
        .iter()
        .map(|e| e.data["stage"].as_str().unwrap())
        .collect();
    assert!(stages.contains(&"prior.sample") && stages.contains(&"decoder.decode"));
    let calls_done: Vec<u64> = progress
        .iter()
        .map(|e| e.data["calls_done"].as_u64().unwrap())
        .collect();
    assert!(
        calls_done.windows(2).all(|w| w[0] <= w[1]),
        "{calls_done:?}"
    );
    let partials: Vec<&SseEvent> = events
        .iter()
        .filter(|e| e.event == "image_generation.partial_image")
        .collect();
    for (i, partial) in partials.iter().enumerate() {
        assert_eq!(partial.data["partial_image_index"], i);
        assert!(partial.data["b64_json"].as_str().is_some());
    }
    let completed: Vec<&SseEvent> = events
        .iter()
        .filter(|e| e.event == "image_generation.completed")
        .collect();
    assert_eq!(completed.len(), 2);
    for (i, done) in completed.iter().enumerate() {
        assert_eq!(done.data["index"], i);
        assert_eq!(done.data["seed"], 5 + i as u64);
        assert_eq!(done.data["size"], "128x128");
        assert_eq!(centre_channel(&decode_png(&done.data["b64_json"])), 0);
    }

    // A form request streams too; the text diff ends with its animation.
    let red = png(&decode_png(&completed[0].data["b64_json"]));
    let form = Form::new()
        .file("image", &red)
        .text("source_caption", RED_CIRCLE)
        .text("target_caption", BLUE_SQUARE)
        .text("frames", "2")
        .text("decoder_steps", "6")
        .text("stream", "true")
        .text("response_format", "url");
    let events = HttpRequest::post_form("/v1/images/text-diffs", form)
        .events(&address)
        .await
        .collect()
        .await;
    let names = shape(&events);
    assert_eq!(
        names[names.len() - 2..],
        ["image_text_diff.completed", "image_text_diff.animation"]
    );
    let done = events
        .iter()
        .find(|e| e.event == "image_text_diff.completed")
        .unwrap();
    assert!(done.data["url"].as_str().unwrap().contains("/v1/files/"));
    assert!(done.data["theta"].is_number());

    // An error after the stream started is an `error` event.
    let form = Form::new()
        .file("image", b"not an image")
        .text("stream", "true");
    let events = HttpRequest::post_form("/v1/images/variations", form)
        .events(&address)
        .await
        .collect()
        .await;
    let last = events.last().expect("an event");
    assert_eq!(last.event, "error");
    assert_eq!(last.data["error"]["param"], "image");

    // Going away: read until the decoder works, then close the connection.
    let slow = HttpRequest::post_json(
        "/v1/images/generations",
        &json!({"prompt": BLUE_SQUARE, "n": 4, "decoder_steps": 400, "stream": true}),
    );
    let mut stream = slow.events(&address).await;
    loop {
        let event = stream.next().await.expect("events before the result");
        assert_ne!(event.event, "image_generation.completed");
        if event.data["stage"] == "decoder.decode" {
            break;
        }
    }
    drop(stream);
    let client = gateway(&stack).await;
    eventually("the abandoned request is cancelled", || {
        let mut client = client.clone();
        async move {
            let s = stats(&mut client).await;
            requests(&s, "generate cancelled") == 1 && s.replicas.iter().all(|r| r.in_flight == 0)
        }
    })
    .await;
    stack.shutdown().await.unwrap();
}

/// The official `openai` Python SDK against the gateway (tests/python/openai_client.py):
/// generate, create_variation and edit return 128x128 PNGs with the right colours, a bad
/// request is its BadRequestError with our message; then every `curl` example of
/// docs/http-api.md runs against the same gateway (tests/python/doc_examples.py).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_openai_sdk_and_doc_examples() {
    let stack = stack(StackOptions::default()).await;
    let address = address(&stack);
    let base_url = format!("http://{address}/v1");
    for (script, args, done) in [
        (
            "tests/python/openai_client.py",
            vec!["--base-url", base_url.as_str()],
            "openai client: all checks passed",
        ),
        (
            "tests/python/doc_examples.py",
            vec!["--gateway", address.as_str()],
            "doc examples: all passed",
        ),
    ] {
        let output = tokio::process::Command::new(python())
            .arg(unclip_e2e::root().join(script))
            .args(&args)
            .output()
            .await
            .unwrap_or_else(|e| panic!("running {script}: {e}"));
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        println!("{stdout}{stderr}");
        assert!(output.status.success(), "{script} failed");
        assert!(stdout.contains(done), "{script}");
    }
    stack.shutdown().await.unwrap();
}

/// schemathesis fuzzes every operation of `/openapi.json` (bounded in examples and time): no
/// 5xx but the 504 of the gateway's request timeout (fuzzed step counts can ask for minutes of
/// work), no answer that violates the document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_violations() {
    let stack = stack(StackOptions {
        gateway_args: vec!["--request-timeout-secs=20".into()],
        ..Default::default()
    })
    .await;
    let address = address(&stack);
    let config = unclip_e2e::root().join("tests/python/schemathesis.toml");
    let output = tokio::process::Command::new(python())
        .args(["-m", "schemathesis.cli", "--config-file"])
        .arg(&config)
        .args([
            "run",
            &format!("http://{address}/openapi.json"),
            "--url",
            &format!("http://{address}"),
        ])
        .output()
        .await
        .expect("running schemathesis");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}{stderr}");
    assert!(output.status.success(), "schemathesis found problems");
    // The gateway is still healthy afterwards.
    let health = HttpRequest::get("/healthz").send(&address).await;
    assert_eq!(health.status, 200);
    stack.shutdown().await.unwrap();
}
