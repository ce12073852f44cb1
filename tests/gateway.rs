//! The gateway end to end on the shapes model, across real processes on ephemeral ports: every
//! capability, the streaming form, the embedding cache in a real redis-server (hits proven by
//! stage call counts), bad input, and a Python grpcio client generated from `proto/`.

use std::io::Cursor;

use bytes::Bytes;
use image::{Rgb, RgbImage, Rgba, RgbaImage};
use tonic::Code;
use tonic::transport::Channel;
use unclip_e2e::{
    Scrape, StackOptions, calls, gateway, mean_abs_diff, metric, png, python, requests, rgb,
    scrape, stack, stages_of, stats,
};
use unclip_proto::v1::gateway_client::GatewayClient;
use unclip_proto::v1::{
    DecoderSettings, GenerateRequest, GetInfoRequest, ImagesResponse, InpaintRequest,
    InterpolateRequest, Preview, Progress, TextDiffRequest, VariationMode, VaryRequest,
    images_event,
};
use unclip_stack::Stage;

type Client = GatewayClient<Channel>;

const RED_CIRCLE: &str = "a small red circle in the top left on a white background";
const BLUE_SQUARE: &str = "a large blue square in the center on a black background";

async fn generate(client: &mut Client, prompt: &str, num_images: u32, seed: u64) -> ImagesResponse {
    client
        .generate(GenerateRequest {
            prompt: prompt.into(),
            num_images: Some(num_images),
            seed: Some(seed),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("Generate {prompt:?}: {s}"))
        .into_inner()
}

/// The mean colour of a square region.
fn mean_colour(image: &RgbImage, x0: u32, y0: u32, side: u32) -> [f64; 3] {
    let mut sum = [0.0; 3];
    for y in y0..y0 + side {
        for x in x0..x0 + side {
            for (c, s) in sum.iter_mut().enumerate() {
                *s += f64::from(image.get_pixel(x, y)[c]);
            }
        }
    }
    sum.map(|s| s / f64::from(side * side))
}

/// Text to image, the cache, variations (fresh and anchored), interpolation, text diffs,
/// inpainting and the streaming form, all on one stack with Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_capability() {
    let stack = stack(StackOptions {
        redis: true,
        ..Default::default()
    })
    .await;
    let mut client = gateway(&stack).await;
    let info = client
        .get_info(GetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.cache_backend, "redis");
    assert_eq!(info.model.as_ref().unwrap().model_id, "shapes");

    // --- Text to image: two images, image k from seed + k, the model's output size.
    let batch = generate(&mut client, BLUE_SQUARE, 2, 11).await;
    assert_eq!(batch.size, 128);
    assert_eq!(batch.seed, 11);
    assert_eq!(
        batch.images.iter().map(|i| i.seed).collect::<Vec<_>>(),
        [11, 12]
    );
    assert_eq!(
        stages_of(&batch),
        [
            "clip.encode_text",
            "prior.sample",
            "decoder.decode",
            "decoder.upsample[0]",
            "decoder.upsample[1]"
        ]
    );
    let square = rgb(&batch.images[0].png);
    assert_eq!(square.dimensions(), (128, 128));
    // It draws what it is asked: a blue center on a black background.
    let center = mean_colour(&square, 48, 48, 32);
    let corner = mean_colour(&square, 0, 0, 12);
    assert!(center[2] > center[0] + 60.0, "center {center:?}");
    assert!(corner.iter().all(|&c| c < 60.0), "corner {corner:?}");
    // Image 1 of the batch is the image generated alone with seed 12.
    let alone = generate(&mut client, BLUE_SQUARE, 1, 12).await;
    let diff = mean_abs_diff(&rgb(&alone.images[0].png), &rgb(&batch.images[1].png));
    assert!(diff < 1.0, "image 1 alone vs in the batch: {diff}");

    // --- The cache: the same prompt and seed again skips CLIP and the prior entirely.
    let before = stats(&mut client).await;
    let again = generate(&mut client, BLUE_SQUARE, 2, 11).await;
    let after = stats(&mut client).await;
    assert_eq!(calls(&after, "clip"), calls(&before, "clip"));
    assert_eq!(calls(&after, "prior"), calls(&before, "prior"));
    assert_eq!(calls(&after, "decoder"), calls(&before, "decoder") + 3);
    assert!(after.cache_hits >= before.cache_hits + 3, "{after:?}");
    assert!(after.cache_healthy);
    assert_eq!(
        stages_of(&again)[..2],
        ["clip.encode_text (cached)", "prior.sample (cached)"]
    );
    assert_eq!(again.images[0].png, batch.images[0].png);
    // Another seed reuses the text encoding only.
    let before = stats(&mut client).await;
    generate(&mut client, BLUE_SQUARE, 1, 99).await;
    let after = stats(&mut client).await;
    assert_eq!(calls(&after, "clip"), calls(&before, "clip"));
    assert_eq!(calls(&after, "prior"), calls(&before, "prior") + 1);

    // --- Variations of a red circle.
    let circle = generate(&mut client, RED_CIRCLE, 1, 1).await.images[0]
        .png
        .clone();
    let vary = |mode: VariationMode, eta: Option<f32>, seed: u64| VaryRequest {
        image: circle.clone(),
        num_images: Some(2),
        seed: Some(seed),
        mode: mode as i32,
        eta,
        ..Default::default()
    };
    let fresh = client
        .vary(vary(VariationMode::Fresh, None, 3))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fresh.images.len(), 2);
    assert_eq!(stages_of(&fresh)[0], "clip.encode_image");
    let (a, b) = (rgb(&fresh.images[0].png), rgb(&fresh.images[1].png));
    assert!(
        mean_abs_diff(&a, &b) > 0.5,
        "two variations are different images"
    );
    // Red stays red: the embedding carries the colour.
    let reddest = a.pixels().map(|p| i32::from(p[0]) - i32::from(p[2])).max();
    assert!(reddest.unwrap() > 100, "no red in the variation");

    // Anchored: the image's own inverted noise; η = 0 reconstructs it, η = 1 moves away.
    let exact = client
        .vary(vary(VariationMode::Anchored, Some(0.0), 3))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        stages_of(&exact)[..3],
        [
            "clip.encode_image (cached)",
            "decoder.invert",
            "decoder.decode"
        ]
    );
    let original = rgb(&circle);
    let reconstruction = mean_abs_diff(&rgb(&exact.images[0].png), &original);
    let loose = client
        .vary(vary(VariationMode::Anchored, Some(1.0), 3))
        .await
        .unwrap()
        .into_inner();
    let varied = mean_abs_diff(&rgb(&loose.images[0].png), &original);
    println!(
        "anchored variation, mean |Δ| from the input: η=0 {reconstruction:.2}, η=1 {varied:.2}"
    );
    assert!(reconstruction < 6.0, "η = 0 reconstructs: {reconstruction}");
    assert!(varied > reconstruction, "η = 1 varies more: {varied}");

    // --- Interpolation: frames at θ = 0, 0.5, 1, all from one noise.
    let square_png = batch.images[0].png.clone();
    let interp = client
        .interpolate(InterpolateRequest {
            image_a: circle.clone(),
            image_b: square_png.clone(),
            frames: Some(3),
            seed: Some(5),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let thetas: Vec<f32> = interp.images.iter().map(|i| i.theta).collect();
    assert_eq!(thetas, [0.0, 0.5, 1.0]);
    assert!(interp.images.iter().all(|i| i.seed == 5));
    let (first, last) = (rgb(&interp.images[0].png), rgb(&interp.images[2].png));
    // The ends look like their images: red on white, blue on black.
    assert!(mean_colour(&first, 0, 100, 20)[0] > 150.0);
    assert!(mean_colour(&last, 0, 100, 20)[0] < 100.0);

    // --- Text diff: red circle → blue circle; θ = 0 reconstructs, an APNG of every frame.
    let diff = client
        .text_diff(TextDiffRequest {
            image: circle.clone(),
            source_caption: RED_CIRCLE.into(),
            target_caption: "a small blue circle in the top left on a white background".into(),
            frames: Some(3),
            max_theta: Some(0.5),
            seed: Some(5),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let thetas: Vec<f32> = diff.images.iter().map(|i| i.theta).collect();
    assert_eq!(thetas, [0.0, 0.25, 0.5]);
    let zero = mean_abs_diff(&rgb(&diff.images[0].png), &original);
    println!("text diff θ = 0, mean |Δ| from the input: {zero:.2}");
    assert!(zero < 6.0, "θ = 0 reconstructs the image: {zero}");
    assert_eq!(diff.animation_mime_type, "image/apng");
    let reader = png::Decoder::new(Cursor::new(diff.animation.to_vec()))
        .read_info()
        .unwrap();
    assert_eq!(reader.info().animation_control().unwrap().num_frames, 3);
    assert!(stages_of(&diff).contains(&"decoder.invert".to_string()));

    // --- Inpainting: regenerate the right half; the left half comes back exactly, and the
    // regenerated half moves towards the prompt: a large green triangle in the centre reaches
    // into it, so its centre-right region turns from white towards green (40, 170, 60).
    let mask = RgbaImage::from_fn(128, 128, |x, _| {
        Rgba([0, 0, 0, if x >= 64 { 0 } else { 255 }])
    });
    let inpainted = client
        .inpaint(InpaintRequest {
            image: circle.clone(),
            mask: png(&mask),
            prompt: "a large green triangle in the center on a white background".into(),
            seed: Some(4),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let out = rgb(&inpainted.images[0].png);
    for y in 0..128 {
        for x in 0..64 {
            assert_eq!(out.get_pixel(x, y), original.get_pixel(x, y), "({x}, {y})");
        }
    }
    let green = [40.0, 170.0, 60.0];
    let distance = |c: [f64; 3]| {
        c.iter()
            .zip(green)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    let before = distance(mean_colour(&original, 64, 44, 40));
    let after = distance(mean_colour(&out, 64, 44, 40));
    println!("inpainting: masked region's distance from green {before:.1} -> {after:.1}");
    assert!(
        after < before - 40.0,
        "the masked area moved towards green: {before:.1} -> {after:.1}"
    );

    // A small object into a square mask (inpaint-eval's kind of case): the red circle stays in
    // the top left, and a blue object appears inside the regenerated bottom-right square.
    let (x0, y0, side) = (60u32, 60u32, 56u32);
    let square = RgbaImage::from_fn(128, 128, |x, y| {
        let inside = (x0..x0 + side).contains(&x) && (y0..y0 + side).contains(&y);
        Rgba([0, 0, 0, if inside { 0 } else { 255 }])
    });
    let blue = client
        .inpaint(InpaintRequest {
            image: circle.clone(),
            mask: png(&square),
            prompt: "a small blue square in the bottom right on a white background".into(),
            seed: Some(11),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let out = rgb(&blue.images[0].png);
    let mut bluish = 0;
    for y in 0..128 {
        for x in 0..128 {
            let p = out.get_pixel(x, y);
            let inside = (x0..x0 + side).contains(&x) && (y0..y0 + side).contains(&y);
            if !inside {
                assert_eq!(p, original.get_pixel(x, y), "kept pixel ({x}, {y})");
            } else if p[2] > 150 && p[0] < 110 && p[1] < 130 {
                bluish += 1;
            }
        }
    }
    println!("inpainting a blue square: {bluish} blue pixels in the mask");
    assert!(
        bluish >= 40,
        "a blue object in the mask: {bluish} blue pixels"
    );

    // --- Streaming: progress per stage call, a preview after the decoder, then the result,
    // which equals the unary result for the same request.
    let (progress, previews, result) = generate_stream(
        &mut client,
        GenerateRequest {
            prompt: BLUE_SQUARE.into(),
            seed: Some(11),
            previews: true,
            decoder: Some(DecoderSettings::default()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(result.images[0].png, batch.images[0].png);
    // One spelling of each stage: progress events name the stages the timings name.
    let progress_stages: std::collections::BTreeSet<&str> =
        progress.iter().map(|p| p.stage.as_str()).collect();
    let timing_stages: std::collections::BTreeSet<&str> =
        result.timings.iter().map(|t| t.stage.as_str()).collect();
    assert_eq!(progress_stages, timing_stages);
    let last = progress.last().unwrap();
    assert_eq!((last.calls_done, last.calls_total), (5, 5));
    assert!(
        progress
            .windows(2)
            .all(|w| w[0].calls_done <= w[1].calls_done)
    );
    // Steps within each stage call, as the stage services stream them: the decoder's 25 and
    // each upsampler's 7 move forward from 0 to the end. The prior's sample is cached from
    // the unary call: one event, at its end.
    assert_eq!(stage_steps(&progress, "prior.sample", 25), [25]);
    for (stage, total) in [
        ("decoder.decode", 25),
        ("decoder.upsample[0]", 7),
        ("decoder.upsample[1]", 7),
    ] {
        let steps = stage_steps(&progress, stage, total);
        assert_eq!(steps.first(), Some(&0), "{stage}: {steps:?}");
        let between = steps.iter().filter(|&&s| 0 < s && s < total).count();
        println!("{stage}: {between} progress events between the first and the last step");
        if stage == "decoder.decode" {
            assert!(
                between > 0,
                "{stage}: no step reported within the call: {steps:?}"
            );
        }
    }
    // A new seed: the prior runs, and its steps arrive too.
    let (progress, _, _) = generate_stream(
        &mut client,
        GenerateRequest {
            prompt: BLUE_SQUARE.into(),
            seed: Some(911),
            decoder: Some(DecoderSettings {
                decoder_steps: Some(2),
                upsampler_steps: Some(2),
                ..Default::default()
            }),
            ..Default::default()
        },
    )
    .await;
    let steps = stage_steps(&progress, "prior.sample", 25);
    let between = steps.iter().filter(|&&s| 0 < s && s < 25).count();
    println!("prior: {between} progress events between the first and the last step");
    assert!(
        between > 0,
        "prior: no step reported within the call: {steps:?}"
    );
    assert_eq!(previews[0].stage, "decoder.decode");
    assert_eq!(previews[0].size, 32);
    assert_eq!(rgb(&previews[0].images[0].png).dimensions(), (32, 32));

    let counts = stats(&mut client).await;
    assert!(requests(&counts, "generate ok") >= 6);

    // The same counters for Prometheus, at GET /metrics on the gateway's port.
    let Scrape {
        status,
        body: metrics,
        ..
    } = scrape(&stack.gateway_url().unwrap()).await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{metrics}");
    let value = |series: &str| metric(&metrics, series);
    let generated = requests(&counts, "generate ok") as f64;
    let ok = value(r#"unclip_gateway_requests_total{capability="generate",outcome="ok"}"#);
    assert!(ok >= generated, "{ok} < {generated}");
    assert!(
        value(r#"unclip_gateway_request_duration_seconds_count{capability="generate"}"#)
            >= generated
    );
    let decoder_calls: f64 = metrics
        .lines()
        .filter(|l| l.starts_with(r#"unclip_gateway_stage_calls_total{stage="decoder""#))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(decoder_calls, calls(&counts, "decoder") as f64, "{metrics}");
    // Stage calls by the labels of the timings.
    for stage in [
        "clip.encode_text",
        "prior.sample",
        "decoder.decode",
        "decoder.upsample[1]",
    ] {
        let series =
            format!(r#"unclip_gateway_stage_call_duration_seconds_count{{stage="{stage}"}}"#);
        assert!(value(&series) >= 1.0, "{series}: {metrics}");
    }
    assert!(
        metrics.contains("unclip_gateway_cache_hits_total{backend="),
        "{metrics}"
    );
    assert!(metrics.trim_end().ends_with("# EOF"));
    // And each stage service's own: its graphs' calls and runs.
    let decoder_url = &stack.stage_urls(Stage::Decoder)[0];
    let Scrape {
        status,
        body: metrics,
        ..
    } = scrape(decoder_url).await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{metrics}");
    let value = |series: &str| metric(&metrics, series);
    assert_eq!(value("unclip_stage_ready"), 1.0);
    let calls = value(r#"unclip_stage_graph_calls_total{graph="decoder"}"#);
    let runs = value(r#"unclip_stage_graph_runs_total{graph="decoder"}"#);
    assert!(calls >= 25.0 && runs <= calls, "{calls} calls, {runs} runs");
    stack.shutdown().await.unwrap();
}

/// A GenerateStream call read to its end: progress, previews, then the result (which must be
/// last).
async fn generate_stream(
    client: &mut Client,
    request: GenerateRequest,
) -> (Vec<Progress>, Vec<Preview>, ImagesResponse) {
    let mut stream = client.generate_stream(request).await.unwrap().into_inner();
    let (mut progress, mut previews, mut result) = (Vec::new(), Vec::new(), None);
    while let Some(event) = stream.message().await.unwrap() {
        assert!(result.is_none(), "nothing follows the result");
        match event.event.unwrap() {
            images_event::Event::Progress(p) => progress.push(p),
            images_event::Event::Preview(p) => previews.push(p),
            images_event::Event::Result(r) => result = Some(r),
        }
    }
    (progress, previews, result.expect("a result event"))
}

/// The steps `stage` reported, each out of `total`, moving forward and ending at `total`.
fn stage_steps(progress: &[Progress], stage: &str, total: u32) -> Vec<u32> {
    let steps: Vec<u32> = progress
        .iter()
        .filter(|p| p.stage == stage)
        .map(|p| {
            assert_eq!(p.total, total, "{stage}: {p:?}");
            p.step
        })
        .collect();
    assert!(steps.windows(2).all(|w| w[0] <= w[1]), "{stage}: {steps:?}");
    assert_eq!(steps.last(), Some(&total), "{stage}: {steps:?}");
    steps
}

/// Asserts that `status` is INVALID_ARGUMENT with a message that starts with `field`.
fn check(field: &str, status: tonic::Status) {
    assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
    assert!(
        status.message().starts_with(&format!("{field}: ")),
        "{field}: {}",
        status.message()
    );
}

/// Every kind of bad input gets INVALID_ARGUMENT naming its field, and the stack stays healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_by_field() {
    let stack = stack(StackOptions::default()).await;
    let mut client = gateway(&stack).await;
    let image = png(&RgbImage::from_pixel(64, 64, Rgb([200, 30, 30])));
    let ok = || GenerateRequest {
        prompt: RED_CIRCLE.into(),
        seed: Some(1),
        ..Default::default()
    };
    let generate_cases: Vec<(&str, GenerateRequest)> = vec![
        (
            "prompt",
            GenerateRequest {
                prompt: String::new(),
                ..ok()
            },
        ),
        (
            "prompt",
            GenerateRequest {
                prompt: "   ".into(),
                ..ok()
            },
        ),
        (
            "prompt",
            GenerateRequest {
                prompt: "a".repeat(1001),
                ..ok()
            },
        ),
        (
            "num_images",
            GenerateRequest {
                num_images: Some(0),
                ..ok()
            },
        ),
        (
            "num_images",
            GenerateRequest {
                num_images: Some(1000),
                ..ok()
            },
        ),
        (
            "prior_guidance_scale",
            GenerateRequest {
                prior_guidance_scale: Some(f32::NAN),
                ..ok()
            },
        ),
        (
            "prior_steps",
            GenerateRequest {
                prior_steps: Some(1),
                ..ok()
            },
        ),
        (
            "best_of",
            GenerateRequest {
                best_of: Some(1000),
                ..ok()
            },
        ),
        (
            "decoder.decoder_guidance_scale",
            GenerateRequest {
                decoder: Some(DecoderSettings {
                    decoder_guidance_scale: Some(f32::INFINITY),
                    ..Default::default()
                }),
                ..ok()
            },
        ),
        (
            "decoder.upsampler_steps",
            GenerateRequest {
                decoder: Some(DecoderSettings {
                    upsampler_steps: Some(5000),
                    ..Default::default()
                }),
                ..ok()
            },
        ),
    ];
    for (field, request) in generate_cases {
        check(field, client.generate(request).await.unwrap_err());
    }
    let not_an_image = Bytes::from_static(b"GIF89a is not accepted, and neither is text");
    let vary = || VaryRequest {
        image: image.clone(),
        ..Default::default()
    };
    for (field, request) in [
        (
            "image",
            VaryRequest {
                image: not_an_image.clone(),
                ..vary()
            },
        ),
        (
            "eta",
            VaryRequest {
                eta: Some(0.5),
                ..vary()
            },
        ),
        (
            "eta",
            VaryRequest {
                mode: VariationMode::Anchored as i32,
                eta: Some(2.0),
                ..vary()
            },
        ),
    ] {
        check(field, client.vary(request).await.unwrap_err());
    }
    let interpolate = || InterpolateRequest {
        image_a: image.clone(),
        image_b: image.clone(),
        ..Default::default()
    };
    for (field, request) in [
        (
            "image_b",
            InterpolateRequest {
                image_b: Bytes::new(),
                ..interpolate()
            },
        ),
        (
            "frames",
            InterpolateRequest {
                frames: Some(1),
                ..interpolate()
            },
        ),
    ] {
        check(field, client.interpolate(request).await.unwrap_err());
    }
    let diff = || TextDiffRequest {
        image: image.clone(),
        source_caption: RED_CIRCLE.into(),
        target_caption: BLUE_SQUARE.into(),
        ..Default::default()
    };
    for (field, request) in [
        (
            "max_theta",
            TextDiffRequest {
                max_theta: Some(1.5),
                ..diff()
            },
        ),
        (
            "max_theta",
            TextDiffRequest {
                max_theta: Some(-0.1),
                ..diff()
            },
        ),
        (
            "max_theta",
            TextDiffRequest {
                max_theta: Some(f32::NAN),
                ..diff()
            },
        ),
        (
            "target_caption",
            TextDiffRequest {
                target_caption: RED_CIRCLE.into(),
                ..diff()
            },
        ),
        (
            "source_caption",
            TextDiffRequest {
                source_caption: String::new(),
                ..diff()
            },
        ),
        (
            "frame_delay_ms",
            TextDiffRequest {
                frame_delay_ms: Some(0),
                ..diff()
            },
        ),
    ] {
        check(field, client.text_diff(request).await.unwrap_err());
    }
    let mask_of = |w: u32, h: u32| png(&RgbImage::from_pixel(w, h, Rgb([255, 255, 255])));
    let inpaint = || InpaintRequest {
        image: image.clone(),
        mask: mask_of(64, 64),
        prompt: RED_CIRCLE.into(),
        ..Default::default()
    };
    for (field, request) in [
        (
            "mask",
            InpaintRequest {
                mask: mask_of(32, 64),
                ..inpaint()
            },
        ),
        (
            "mask",
            InpaintRequest {
                mask: not_an_image.clone(),
                ..inpaint()
            },
        ),
        (
            "mask",
            InpaintRequest {
                mask: png(&RgbImage::new(64, 64)),
                ..inpaint()
            },
        ),
        (
            "image",
            InpaintRequest {
                image: not_an_image.clone(),
                ..inpaint()
            },
        ),
        (
            "prompt",
            InpaintRequest {
                prompt: String::new(),
                ..inpaint()
            },
        ),
    ] {
        check(field, client.inpaint(request).await.unwrap_err());
    }
    // The streaming form refuses the same way (as its only event).
    let mut stream = client
        .generate_stream(GenerateRequest {
            num_images: Some(0),
            ..ok()
        })
        .await
        .unwrap()
        .into_inner();
    check("num_images", stream.message().await.unwrap_err());

    // Still healthy: a good request works and nothing reached the stages' error paths.
    let response = client.generate(ok()).await.unwrap().into_inner();
    assert_eq!(response.images.len(), 1);
    let counts = stats(&mut client).await;
    assert!(
        counts.replicas.iter().all(|r| r.failures == 0),
        "{counts:?}"
    );
    assert!(requests(&counts, "generate invalid_argument") >= 10);
    stack.shutdown().await.unwrap();
}

/// A Python client, generated from `proto/` with grpcio-tools at run time, calls GetInfo,
/// Generate and GenerateStream and gets INVALID_ARGUMENT for num_images 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client() {
    let stack = stack(StackOptions::default()).await;
    let url = stack.gateway_url().unwrap();
    let address = url.trim_start_matches("http://").to_string();
    let output = tokio::process::Command::new(python())
        .arg(unclip_e2e::root().join("tests/python/gateway_client.py"))
        .args(["--gateway", &address])
        .output()
        .await
        .expect("running the Python client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}{stderr}");
    assert!(output.status.success(), "the Python client failed");
    assert!(stdout.contains("python client: all checks passed"));
    stack.shutdown().await.unwrap();
}
