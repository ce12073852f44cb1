//! Text to image: the prompt's CLIP encoding → prior samples → decoder → every upsampler stage.

use unclip_proto::v1::{GenerateRequest, ImagesResponse};

use crate::error::Result;
use crate::pipeline::{CascadeJob, PriorJob, Run};
use crate::validate;

/// Runs a Generate request.
pub async fn generate(mut run: Run<'_>, request: GenerateRequest) -> Result<ImagesResponse> {
    let gw = run.gw;
    let limits = gw.limits;
    let prompt = validate::prompt("prompt", &request.prompt, limits.max_prompt_chars)?;
    let negative = validate::optional_prompt(
        "negative_prompt",
        &request.negative_prompt,
        limits.max_prompt_chars,
    )?;
    let n = validate::num_images(request.num_images, limits.max_images)?;
    let prior = validate::prior(
        request.prior_steps,
        request.prior_guidance_scale,
        &gw.infos.prior,
    )?;
    let max_best_of = gw
        .infos
        .prior
        .limits
        .as_ref()
        .map_or(1, |l| l.max_best_of.max(1));
    let best_of = validate::count("best_of", request.best_of, 0, 0, max_best_of)?;
    let settings = validate::cascade("decoder", request.decoder.as_ref(), &gw.infos.decoder, None)?;
    let seed = validate::seed(request.seed);

    // clip (+ clip for the negative prompt), prior, decoder, upsamplers.
    let calls = 3 + u32::from(negative.is_some()) + run.upsampler_stages();
    run.reporter.plan(calls);
    let text = run.text(&prompt).await?;
    let negative_text = match &negative {
        Some(negative) => Some(run.text(negative).await?),
        None => None,
    };
    let image_embeds = run
        .prior(PriorJob {
            prompt: &prompt,
            text: &text,
            negative_prompt: negative.as_deref().unwrap_or(""),
            negative: negative_text.as_ref(),
            n,
            seed,
            steps: prior.steps,
            guidance: prior.guidance,
            best_of,
        })
        .await?;
    let (pngs, seeds) = run
        .cascade(CascadeJob {
            text: Some(text),
            ..CascadeJob::new(image_embeds, validate::seeds(seed, n), settings)
        })
        .await?;
    Ok(run.respond(pngs, seeds, None, seed))
}
