//! Inpainting: the prompt's prior samples decoded with masked sampling at every resolution of
//! the cascade. At each stage the known image (the upload brought to that size) replaces the
//! kept pixels after every step, so the last stage returns kept pixels exactly as uploaded (at
//! the output size). Smaller stages keep a pixel only when everything it covers is kept.

use unclip_proto::v1::{ImagesResponse, InpaintRequest};

use crate::error::Result;
use crate::images::{self, KeepMask};
use crate::pipeline::{CascadeJob, PriorJob, Run};
use crate::validate;

/// Runs an Inpaint request.
pub async fn inpaint(mut run: Run<'_>, request: InpaintRequest) -> Result<ImagesResponse> {
    let gw = run.gw;
    let limits = gw.limits;
    let side = gw.infos.output_size();
    let (known, keep) = {
        let (image, mask) = (request.image.clone(), request.mask.clone());
        images::off_the_runtime(move || {
            let image = images::decode("image", &image, limits.image)?;
            let mask = images::decode("mask", &mask, limits.image)?;
            let keep = KeepMask::from_upload("mask", &mask, (image.width(), image.height()), side)?;
            Ok((images::square_rgb(&image, side), keep))
        })
        .await?
    };
    let prompt = validate::prompt("prompt", &request.prompt, limits.max_prompt_chars)?;
    let n = validate::num_images(request.num_images, limits.max_images)?;
    let prior = validate::prior(
        request.prior_steps,
        request.prior_guidance_scale,
        &gw.infos.prior,
    )?;
    let settings = validate::cascade("decoder", request.decoder.as_ref(), &gw.infos.decoder, None)?;
    let seed = validate::seed(request.seed);

    run.reporter.plan(3 + run.upsampler_stages());
    let text = run.text(&prompt).await?;
    let image_embeds = run
        .prior(PriorJob {
            prompt: &prompt,
            text: &text,
            negative_prompt: "",
            negative: None,
            n,
            seed,
            steps: prior.steps,
            guidance: prior.guidance,
            best_of: 0,
        })
        .await?;
    let (pngs, seeds) = run
        .cascade(CascadeJob {
            text: Some(text),
            inpaint: Some((known, keep)),
            ..CascadeJob::new(image_embeds, validate::seeds(seed, n), settings)
        })
        .await?;
    Ok(run.respond(pngs, seeds, None, seed))
}
