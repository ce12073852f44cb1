//! Text diffs (the DALL·E 2 paper, §3.3): z_d = normalize(z_target − z_source) of the two
//! captions' CLIP text embeddings; frame i decodes slerp(z_i, z_d·‖z_i‖, θ_i) with θ_i rising
//! from 0 to max_theta, every frame from the image's DDIM-inverted base noise, with DDIM η = 0,
//! so that θ = 0 reconstructs the image.
//!
//! z_d is unit length while the decoder takes raw-scale image embeddings, so it is scaled to
//! z_i's norm first: every frame then keeps the norm of z_i, and on the unit sphere the frames
//! are exactly slerp(normalize(z_i), z_d, θ).

use ndarray::Axis;
use unclip_proto::v1::{ImagesResponse, Sampler, Tensor, TextDiffRequest};
use unclip_sampler::slerp::text_diff_direction;

use crate::error::{Error, Result};
use crate::images;
use crate::pipeline::interpolate::slerp_rows;
use crate::pipeline::vary::{invert, repeat_rows};
use crate::pipeline::{CascadeJob, Run, matrix};
use crate::stage::Stage;
use crate::validate;

/// Frames when the request leaves it unset.
pub const DEFAULT_FRAMES: u32 = 5;
/// The last frame's θ when unset.
pub const DEFAULT_MAX_THETA: f32 = 0.5;
/// Milliseconds per animation frame when unset.
pub const DEFAULT_FRAME_DELAY_MS: u32 = 250;

/// Runs a TextDiff request.
pub async fn text_diff(mut run: Run<'_>, request: TextDiffRequest) -> Result<ImagesResponse> {
    let gw = run.gw;
    let limits = gw.limits;
    let image = images::decode_upload("image", &request.image, limits.image).await?;
    let source = validate::prompt(
        "source_caption",
        &request.source_caption,
        limits.max_prompt_chars,
    )?;
    let target = validate::prompt(
        "target_caption",
        &request.target_caption,
        limits.max_prompt_chars,
    )?;
    if source == target {
        return Err(Error::invalid(
            "target_caption",
            "must differ from source_caption",
        ));
    }
    let frames = validate::frames(request.frames, DEFAULT_FRAMES, limits.max_frames)?;
    let max_theta = validate::unit("max_theta", request.max_theta, DEFAULT_MAX_THETA)?;
    let delay = validate::count(
        "frame_delay_ms",
        request.frame_delay_ms,
        DEFAULT_FRAME_DELAY_MS,
        10,
        10_000,
    )?;
    let settings = validate::cascade(
        "decoder",
        request.decoder.as_ref(),
        &gw.infos.decoder,
        Some(1.0),
    )?;
    let seed = validate::seed(request.seed);

    // clip ×3, invert, decoder, upsamplers.
    run.reporter.plan(5 + run.upsampler_stages());
    let z_image = matrix(
        Stage::EncodeImage,
        &run.image_embedding(&request.image).await?,
    )?;
    let source_text = run.text(&source).await?;
    let target_text = run.text(&target).await?;
    let text_embeds = |t: &unclip_proto::v1::TextEncoding| {
        t.text_embeds
            .as_ref()
            .ok_or_else(|| Error::bad_answer(Stage::EncodeText, "no text_embeds"))
            .and_then(|t| matrix(Stage::EncodeText, t))
    };
    let (z_source, z_target) = (text_embeds(&source_text)?, text_embeds(&target_text)?);
    let direction = text_diff_direction(&z_target.view(), &z_source.view()).map_err(|_| {
        Error::invalid(
            "target_caption",
            "encodes exactly like source_caption (after truncation to the context), so there \
             is no direction to move in",
        )
    })?;
    let norm = z_image
        .iter()
        .map(|v| f64::from(*v).powi(2))
        .sum::<f64>()
        .sqrt() as f32;
    let direction = direction.mapv(|v| v * norm);
    let thetas: Vec<f32> = (0..frames)
        .map(|i| max_theta * i as f32 / (frames - 1) as f32)
        .collect();
    let embeds = slerp_rows(&z_image, &direction, &thetas)?;

    let side = gw.infos.decoder.decoder_image_size;
    let x0 = images::off_the_runtime(move || {
        Ok(images::to_model_range(&images::square_rgb(&image, side)))
    })
    .await?;
    let z_tensor = Tensor::from_array(&z_image.index_axis(Axis(0), 0).insert_axis(Axis(0)));
    let noise = invert(
        &mut run,
        x0,
        &z_tensor,
        settings.decoder_steps,
        settings.decoder_guidance,
    )
    .await?;
    let (pngs, seeds) = run
        .cascade(CascadeJob {
            sampler: Sampler::Ddim,
            init_noise: Some(repeat_rows(Stage::Invert, &noise, frames as usize)?),
            ..CascadeJob::new(
                Tensor::from_array(&embeds),
                vec![seed; frames as usize],
                settings,
            )
        })
        .await?;
    let animation = {
        let frames = pngs.clone();
        images::off_the_runtime(move || images::animated_png(&frames, delay)).await?
    };
    let mut response = run.respond(pngs, seeds, Some(thetas), seed);
    response.animation = animation.into();
    response.animation_mime_type = "image/apng".into();
    Ok(response)
}
