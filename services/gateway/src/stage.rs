//! [`Stage`], the one name of each stage call the gateway makes: the same label in timings
//! (`StageTiming.stage`), progress and preview events (`Progress.stage`, `Preview.stage`), logs,
//! stage-call errors and metrics.
//!
//! | stage | label | call |
//! |---|---|---|
//! | [`Stage::EncodeText`] | `clip.encode_text` | `ClipService.EncodeText` |
//! | [`Stage::EncodeImage`] | `clip.encode_image` | `ClipService.EncodeImage` |
//! | [`Stage::PriorSample`] | `prior.sample` | `PriorService.Sample` |
//! | [`Stage::Invert`] | `decoder.invert` | `DecoderService.Invert` |
//! | [`Stage::Decode`] | `decoder.decode` | `DecoderService.Decode` |
//! | [`Stage::Upsample`]`(k)` | `decoder.upsample[k]` | `DecoderService.Upsample` of stage k |

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};

/// One stage call of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// CLIP text encoding of prompts.
    EncodeText,
    /// CLIP image embedding of uploaded images.
    EncodeImage,
    /// The prior's sampling of image embeddings.
    PriorSample,
    /// DDIM inversion of an image to its base noise.
    Invert,
    /// The decoder's base images.
    Decode,
    /// Upsampler stage k (0 = the first after the decoder).
    Upsample(u32),
}

impl Stage {
    /// The label: `clip.encode_text`, `prior.sample`, `decoder.upsample[0]`, ...
    ///
    /// `'static` because the replica sets take their call names so; an upsampler stage's label
    /// is made once per stage index and kept (the index comes from the model's cascade, so
    /// there are only as many as it has upsamplers).
    pub fn label(self) -> &'static str {
        match self {
            Stage::EncodeText => "clip.encode_text",
            Stage::EncodeImage => "clip.encode_image",
            Stage::PriorSample => "prior.sample",
            Stage::Invert => "decoder.invert",
            Stage::Decode => "decoder.decode",
            Stage::Upsample(k) => upsample_label(k),
        }
    }

    /// The service that runs it: `clip`, `prior` or `decoder` (the replica sets' names).
    pub fn service(self) -> &'static str {
        match self {
            Stage::EncodeText | Stage::EncodeImage => "clip",
            Stage::PriorSample => "prior",
            Stage::Invert | Stage::Decode | Stage::Upsample(_) => "decoder",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// A label that names no stage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown stage label {0:?}")]
pub struct UnknownStage(pub String);

impl FromStr for Stage {
    type Err = UnknownStage;

    /// The stage of a label, the inverse of [`Stage::label`].
    fn from_str(label: &str) -> Result<Self, Self::Err> {
        let unknown = || UnknownStage(label.to_string());
        Ok(match label {
            "clip.encode_text" => Stage::EncodeText,
            "clip.encode_image" => Stage::EncodeImage,
            "prior.sample" => Stage::PriorSample,
            "decoder.invert" => Stage::Invert,
            "decoder.decode" => Stage::Decode,
            _ => {
                let index = label
                    .strip_prefix("decoder.upsample[")
                    .and_then(|rest| rest.strip_suffix(']'))
                    .ok_or_else(unknown)?;
                if index.starts_with('+') {
                    return Err(unknown());
                }
                Stage::Upsample(index.parse().map_err(|_| unknown())?)
            }
        })
    }
}

/// `decoder.upsample[k]`, made once per `k`.
fn upsample_label(k: u32) -> &'static str {
    static LABELS: OnceLock<Mutex<BTreeMap<u32, &'static str>>> = OnceLock::new();
    let mut labels = LABELS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    labels
        .entry(k)
        .or_insert_with(|| Box::leak(format!("decoder.upsample[{k}]").into_boxed_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every stage has one label, and the label reads back as the stage.
    #[test]
    fn labels() {
        let all = [
            (Stage::EncodeText, "clip.encode_text", "clip"),
            (Stage::EncodeImage, "clip.encode_image", "clip"),
            (Stage::PriorSample, "prior.sample", "prior"),
            (Stage::Invert, "decoder.invert", "decoder"),
            (Stage::Decode, "decoder.decode", "decoder"),
            (Stage::Upsample(0), "decoder.upsample[0]", "decoder"),
            (Stage::Upsample(12), "decoder.upsample[12]", "decoder"),
        ];
        for (stage, label, service) in all {
            assert_eq!(stage.to_string(), label);
            assert_eq!(stage.label(), label);
            assert_eq!(stage.service(), service);
            assert_eq!(label.parse::<Stage>(), Ok(stage));
        }
        // One allocation per upsampler stage, however often it is asked for.
        assert!(std::ptr::eq(
            Stage::Upsample(3).label(),
            Stage::Upsample(3).label()
        ));
        for bad in [
            "clip",
            "upsampler[0]",
            "clip.EncodeText",
            "decoder.upsample[]",
            "decoder.upsample[+1]",
            "decoder.upsample[x]",
            "decoder.upsample[0",
        ] {
            assert_eq!(bad.parse::<Stage>(), Err(UnknownStage(bad.into())), "{bad}");
        }
    }
}
