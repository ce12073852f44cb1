//! Variations of an image: its CLIP image embedding decoded again, from fresh noise (what Karlo
//! and diffusers do) or, anchored, from the image's own DDIM-inverted noise with η > 0 (what the
//! DALL·E 2 paper does; η = 0 reconstructs the image).

use ndarray::{Axis, concatenate};
use unclip_proto::v1::{
    ImagesResponse, InvertRequest, Sampler, Tensor, VariationMode, VaryRequest,
};

use crate::error::{Error, Result};
use crate::images;
use crate::pipeline::{CascadeJob, Run};
use crate::stage::Stage;
use crate::validate;

/// η of anchored variations when the request leaves it unset.
pub const DEFAULT_ETA: f32 = 0.8;

/// Runs a Vary request.
pub async fn vary(mut run: Run<'_>, request: VaryRequest) -> Result<ImagesResponse> {
    let gw = run.gw;
    let limits = gw.limits;
    let image = images::decode_upload("image", &request.image, limits.image).await?;
    let n = validate::num_images(request.num_images, limits.max_images)?;
    let mode = VariationMode::try_from(request.mode)
        .map_err(|_| Error::invalid("mode", format!("unknown value {}", request.mode)))?;
    let anchored = mode == VariationMode::Anchored;
    if !anchored && request.eta.is_some() {
        return Err(Error::invalid(
            "eta",
            "only applies to VARIATION_MODE_ANCHORED (fresh variations use the unCLIP sampler)",
        ));
    }
    let eta = validate::unit("eta", request.eta, DEFAULT_ETA)?;
    // Anchored variations invert and decode without guidance unless asked: the inversion is
    // exact only under the guidance it was made with.
    let guidance_default = anchored.then_some(1.0);
    let settings = validate::cascade(
        "decoder",
        request.decoder.as_ref(),
        &gw.infos.decoder,
        guidance_default,
    )?;
    let seed = validate::seed(request.seed);

    let calls = 2 + u32::from(anchored) + run.upsampler_stages();
    run.reporter.plan(calls);
    let image_embeds = run.image_embedding(&request.image).await?;
    let init_noise = if anchored {
        let side = gw.infos.decoder.decoder_image_size;
        let x0 = images::off_the_runtime(move || {
            Ok(images::to_model_range(&images::square_rgb(&image, side)))
        })
        .await?;
        let noise = invert(
            &mut run,
            x0,
            &image_embeds,
            settings.decoder_steps,
            settings.decoder_guidance,
        )
        .await?;
        Some(repeat_rows(Stage::Invert, &noise, n as usize)?)
    } else {
        None
    };
    let seeds = (0..u64::from(n)).map(|k| seed.wrapping_add(k)).collect();
    let (pngs, seeds) = run
        .cascade(CascadeJob {
            image_embeds,
            text: None,
            per_embedding: n,
            seeds,
            sampler: if anchored {
                Sampler::Ddim
            } else {
                Sampler::Unclip
            },
            eta: if anchored { eta } else { 0.0 },
            init_noise,
            inpaint: None,
            settings,
        })
        .await?;
    Ok(run.respond(pngs, seeds, None, seed))
}

/// DDIM-inverts the `[1, 3, S, S]` image `x0` under `image_embeds` (text ""): its base noise.
pub async fn invert(
    run: &mut Run<'_>,
    x0: ndarray::Array4<f32>,
    image_embeds: &Tensor,
    steps: u32,
    guidance: f32,
) -> Result<Tensor> {
    const STAGE: Stage = Stage::Invert;
    let (gw, deadline) = (run.gw, run.deadline);
    let message = InvertRequest {
        samples: Some(Tensor::from_array(&x0)),
        image_embeds: Some(image_embeds.clone()),
        steps,
        guidance_scale: Some(guidance),
        ..Default::default()
    };
    let inverted = run
        .stepped(STAGE, steps, |sink| {
            gw.stages.invert(deadline, message, sink)
        })
        .await?;
    inverted
        .noise
        .ok_or_else(|| Error::bad_answer(STAGE, "no noise"))
}

/// A `[1, ...]` tensor (the answer of `stage`) repeated to `[n, ...]`.
pub fn repeat_rows(stage: Stage, t: &Tensor, n: usize) -> Result<Tensor> {
    let a = t.to_f32_array().map_err(|e| Error::bad_answer(stage, e))?;
    if a.shape().first() != Some(&1) {
        return Err(Error::bad_answer(stage, format!("shape {:?}", a.shape())));
    }
    let views = vec![a.view(); n];
    let stacked = concatenate(Axis(0), &views).map_err(|e| Error::Internal(e.to_string()))?;
    Ok(Tensor::from_array(&stacked))
}
