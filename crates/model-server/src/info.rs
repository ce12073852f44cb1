//! The `ModelInfo` message every service's `GetInfo` returns.

use unclip_proto::v1::{ModelInfo, RequestLimits, SamplingDefaults, UpsamplerStageInfo};
use unclip_runtime::{Device, ModelRepository};

/// Describes `repo` as served by `service` on `device`, running `components` (manifest labels)
/// under `limits`.
pub fn model_info(
    repo: &ModelRepository,
    service: &str,
    device: Device,
    components: &[&str],
    limits: RequestLimits,
) -> ModelInfo {
    let m = repo.manifest();
    let s = repo.sizes();
    let d = &m.defaults;
    ModelInfo {
        model_id: m.model_id.clone(),
        version: m.version.clone(),
        description: m.description.clone(),
        service: service.to_string(),
        server_version: env!("CARGO_PKG_VERSION").to_string(),
        device: device.to_string(),
        embedding_dim: s.embedding_dim as u32,
        context_length: s.context_length as u32,
        clip_image_size: s.clip_image_size.unwrap_or(0) as u32,
        decoder_image_size: s.decoder_image_size as u32,
        upsamplers: s
            .upsampler_sizes
            .iter()
            .map(|&(input, output)| UpsamplerStageInfo {
                input_size: input as u32,
                output_size: output as u32,
            })
            .collect(),
        components: components.iter().map(|c| c.to_string()).collect(),
        defaults: Some(SamplingDefaults {
            prior_steps: d.prior_steps,
            decoder_steps: d.decoder_steps,
            upsampler_steps: d.upsampler_steps,
            prior_guidance_scale: d.prior_guidance_scale,
            decoder_guidance_scale: d.decoder_guidance_scale,
        }),
        limits: Some(limits),
    }
}
