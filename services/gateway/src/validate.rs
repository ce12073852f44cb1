//! Checks of request fields, each failing with INVALID_ARGUMENT that names the field and the
//! limit, and the defaults unset fields take.

use unclip_proto::v1::{DecoderSettings, ModelInfo};

use crate::error::{Error, Result};
use crate::pipeline::CascadeSettings;

/// Largest guidance scale accepted (the stage services' limit).
pub const MAX_GUIDANCE_SCALE: f32 = 100.0;

/// A prompt: not empty, not only white space, control or format characters (Unicode Cc/Cf,
/// e.g. "\u{200b}\u{7}"), at most `max_chars` characters.
pub fn prompt(field: &str, value: &str, max_chars: u32) -> Result<String> {
    if value.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if unclip_server::text_input::is_blank(value) {
        return Err(Error::invalid(
            field,
            "must not be empty (it has only white space, control or format characters)",
        ));
    }
    let chars = value.chars().count();
    if chars > max_chars as usize {
        return Err(Error::invalid(
            field,
            format!("is {chars} characters long, the limit is {max_chars}"),
        ));
    }
    Ok(value.to_string())
}

/// An optional prompt: "" is none; otherwise as [`prompt`].
pub fn optional_prompt(field: &str, value: &str, max_chars: u32) -> Result<Option<String>> {
    if value.is_empty() {
        Ok(None)
    } else {
        prompt(field, value, max_chars).map(Some)
    }
}

/// A count in `min..=max`; unset means `default`.
pub fn count(field: &str, value: Option<u32>, default: u32, min: u32, max: u32) -> Result<u32> {
    let value = value.unwrap_or(default);
    if value < min || value > max {
        return Err(Error::invalid(
            field,
            format!("must be {min}..={max}, got {value}"),
        ));
    }
    Ok(value)
}

/// `num_images`: 1..=`max`, unset = 1.
pub fn num_images(value: Option<u32>, max: u32) -> Result<u32> {
    count("num_images", value, 1, 1, max)
}

/// `frames`: 2..=`max`, unset = `default`.
pub fn frames(value: Option<u32>, default: u32, max: u32) -> Result<u32> {
    count("frames", value, default, 2, max)
}

/// The request's seed, or a random one (below 2^32, so that it is easy to type back).
pub fn seed(value: Option<u64>) -> u64 {
    value.unwrap_or_else(|| u64::from(rand::random::<u32>()))
}

/// Denoising steps within the stage's limits; unset means `default`.
pub fn steps(field: &str, value: Option<u32>, default: u32, info: &ModelInfo) -> Result<u32> {
    let (min, max) = info
        .limits
        .as_ref()
        .map_or((2, 1000), |l| (l.min_steps.max(1), l.max_steps.max(2)));
    count(field, value, default, min, max)
}

/// A guidance scale: finite, 0..=100; unset means `default`.
pub fn guidance(field: &str, value: Option<f32>, default: f32) -> Result<f32> {
    let value = value.unwrap_or(default);
    if !value.is_finite() || !(0.0..=MAX_GUIDANCE_SCALE).contains(&value) {
        return Err(Error::invalid(
            field,
            format!("must be a finite number in 0..={MAX_GUIDANCE_SCALE}, got {value}"),
        ));
    }
    Ok(value)
}

/// A fraction in [0, 1] (θ, η); unset means `default`.
pub fn unit(field: &str, value: Option<f32>, default: f32) -> Result<f32> {
    let value = value.unwrap_or(default);
    if !value.is_finite() || !(0.0..=1.0).contains(&value) {
        return Err(Error::invalid(
            field,
            format!("must be in [0, 1], got {value}"),
        ));
    }
    Ok(value)
}

/// Resolved prior settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PriorSettings {
    /// Denoising steps.
    pub steps: u32,
    /// Guidance scale.
    pub guidance: f32,
}

/// The prior's steps (`prior_steps`) and guidance (`prior_guidance_scale`) with the model's
/// defaults.
pub fn prior(
    steps_field: Option<u32>,
    guidance_field: Option<f32>,
    prior: &ModelInfo,
) -> Result<PriorSettings> {
    let defaults = prior.defaults.unwrap_or_default();
    Ok(PriorSettings {
        steps: steps("prior_steps", steps_field, defaults.prior_steps, prior)?,
        guidance: guidance(
            "prior_guidance_scale",
            guidance_field,
            defaults.prior_guidance_scale,
        )?,
    })
}

/// The seeds of `n` images from `seed`: seed + k.
pub fn seeds(seed: u64, n: u32) -> Vec<u64> {
    (0..u64::from(n)).map(|k| seed.wrapping_add(k)).collect()
}

/// The decoder and upsampler settings of `settings` (field `field`), with the model's defaults,
/// or `guidance_default` for the decoder's guidance when given.
pub fn cascade(
    field: &str,
    settings: Option<&DecoderSettings>,
    decoder: &ModelInfo,
    guidance_default: Option<f32>,
) -> Result<CascadeSettings> {
    let defaults = decoder.defaults.unwrap_or_default();
    let s = settings.cloned().unwrap_or_default();
    Ok(CascadeSettings {
        decoder_steps: steps(
            &format!("{field}.decoder_steps"),
            s.decoder_steps,
            defaults.decoder_steps,
            decoder,
        )?,
        upsampler_steps: steps(
            &format!("{field}.upsampler_steps"),
            s.upsampler_steps,
            defaults.upsampler_steps,
            decoder,
        )?,
        decoder_guidance: guidance(
            &format!("{field}.decoder_guidance_scale"),
            s.decoder_guidance_scale,
            guidance_default.unwrap_or(defaults.decoder_guidance_scale),
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use unclip_proto::v1::{RequestLimits, SamplingDefaults};

    fn info() -> ModelInfo {
        ModelInfo {
            defaults: Some(SamplingDefaults {
                decoder_steps: 25,
                upsampler_steps: 7,
                decoder_guidance_scale: 8.0,
                ..Default::default()
            }),
            limits: Some(RequestLimits {
                min_steps: 2,
                max_steps: 1000,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn prompts() {
        assert_eq!(prompt("prompt", "a cat", 10).unwrap(), "a cat");
        let e = prompt("prompt", "", 10).unwrap_err();
        assert_eq!(e.to_string(), "prompt: must not be empty");
        for blank in ["  ", "\u{200b}\u{7}", "\u{feff}\n\u{202e}"] {
            let e = prompt("prompt", blank, 10).unwrap_err();
            assert!(
                e.to_string().starts_with("prompt: must not be empty ("),
                "{blank:?}: {e}"
            );
        }
        // A negative prompt of only format characters is not "none": it is refused.
        assert!(optional_prompt("negative_prompt", "\u{200b}", 4).is_err());
        let e = prompt("prompt", "ééééé", 4).unwrap_err();
        assert_eq!(
            e.to_string(),
            "prompt: is 5 characters long, the limit is 4"
        );
        assert_eq!(optional_prompt("negative_prompt", "", 4).unwrap(), None);
    }

    #[test]
    fn numbers() {
        assert_eq!(count("num_images", None, 1, 1, 10).unwrap(), 1);
        assert_eq!(
            count("num_images", Some(0), 1, 1, 10)
                .unwrap_err()
                .to_string(),
            "num_images: must be 1..=10, got 0"
        );
        assert!(count("num_images", Some(1000), 1, 1, 10).is_err());
        assert!(guidance("g", Some(f32::NAN), 1.0).is_err());
        assert!(guidance("g", Some(-1.0), 1.0).is_err());
        assert_eq!(guidance("g", None, 4.0).unwrap(), 4.0);
        assert!(unit("max_theta", Some(1.5), 0.5).is_err());
        assert!(unit("max_theta", Some(f32::INFINITY), 0.5).is_err());
        assert_eq!(unit("max_theta", None, 0.5).unwrap(), 0.5);
        assert!(seed(None) < 1 << 32);
        assert_eq!(seed(Some(7)), 7);
    }

    #[test]
    fn cascade_defaults_and_fields() {
        let s = cascade("decoder", None, &info(), None).unwrap();
        assert_eq!(
            s,
            CascadeSettings {
                decoder_steps: 25,
                upsampler_steps: 7,
                decoder_guidance: 8.0
            }
        );
        assert_eq!(
            cascade("decoder", None, &info(), Some(1.0))
                .unwrap()
                .decoder_guidance,
            1.0
        );
        let bad = DecoderSettings {
            upsampler_steps: Some(1),
            ..Default::default()
        };
        let e = cascade("decoder", Some(&bad), &info(), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "decoder.upsampler_steps: must be 2..=1000, got 1"
        );
    }
}
