//! Interpolation between two images: frames at θ = i/(F−1) decode slerp(z_a, z_b, θ) of the
//! images' CLIP embeddings, every frame from the same noise (the paper's figure 4), in one
//! decoder batch.

use ndarray::{Array2, Axis};
use unclip_proto::v1::{ImagesResponse, InterpolateRequest, Tensor};
use unclip_sampler::slerp::slerp;

use crate::error::{Error, Result};
use crate::images;
use crate::pipeline::{CascadeJob, Run, matrix};
use crate::stage::Stage;
use crate::validate;

/// Frames when the request leaves it unset.
pub const DEFAULT_FRAMES: u32 = 5;

/// Runs an Interpolate request.
pub async fn interpolate(mut run: Run<'_>, request: InterpolateRequest) -> Result<ImagesResponse> {
    let gw = run.gw;
    let limits = gw.limits;
    images::decode_upload("image_a", &request.image_a, limits.image).await?;
    images::decode_upload("image_b", &request.image_b, limits.image).await?;
    let frames = validate::frames(request.frames, DEFAULT_FRAMES, limits.max_frames)?;
    let settings = validate::cascade("decoder", request.decoder.as_ref(), &gw.infos.decoder, None)?;
    let seed = validate::seed(request.seed);

    run.reporter.plan(3 + run.upsampler_stages());
    let a = matrix(
        Stage::EncodeImage,
        &run.image_embedding(&request.image_a).await?,
    )?;
    let b = matrix(
        Stage::EncodeImage,
        &run.image_embedding(&request.image_b).await?,
    )?;
    let thetas: Vec<f32> = (0..frames)
        .map(|i| i as f32 / (frames - 1) as f32)
        .collect();
    let embeds = slerp_rows(&a, &b, &thetas)?;
    let (pngs, seeds) = run
        .cascade(CascadeJob::new(
            Tensor::from_array(&embeds),
            vec![seed; frames as usize],
            settings,
        ))
        .await?;
    Ok(run.respond(pngs, seeds, Some(thetas), seed))
}

/// Rows slerp(a, b, θ) for each θ (`a`, `b` are `[1, D]`).
pub fn slerp_rows(a: &Array2<f32>, b: &Array2<f32>, thetas: &[f32]) -> Result<Array2<f32>> {
    let (a, b) = (a.index_axis(Axis(0), 0), b.index_axis(Axis(0), 0));
    let mut out = Array2::zeros((thetas.len(), a.len()));
    for (row, &theta) in thetas.iter().enumerate() {
        let z = slerp(&a, &b, theta).map_err(|e| Error::invalid("image", e))?;
        out.row_mut(row).assign(&z);
    }
    Ok(out)
}
