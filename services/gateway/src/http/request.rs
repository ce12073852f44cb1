//! Request parsing: a JSON body or a multipart form as [`Fields`], and from them the proto
//! request of each endpoint and the [`Options`] of its answer.
//!
//! Both bodies are read into one map of field → JSON value (a form's text parts as strings), so
//! a field is read the same way from either: `n` is `2` in JSON and `"2"` in a form. Unknown
//! fields are ignored, as OpenAI does; a field of the wrong type is a 400 naming it. Multipart
//! parts are read chunk by chunk and refused with 413 as soon as one passes its limit, before
//! the rest of the body is read.

use std::collections::HashMap;

use axum::extract::Multipart;
use axum::extract::multipart::MultipartError;
use axum::http::StatusCode;
use bytes::{Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde_json::Value;
use unclip_proto::v1::{
    DecoderSettings, GenerateRequest, InpaintRequest, InterpolateRequest, TextDiffRequest,
    VariationMode, VaryRequest,
};

use super::error::ApiError;

/// Multipart parts that carry files (every other part is a text field).
const FILE_PARTS: [&str; 5] = ["image", "image[]", "mask", "image_a", "image_b"];

/// Byte limits of multipart parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartLimits {
    /// An image part (the gateway's `--max-image-bytes`).
    pub file: usize,
    /// A text part.
    pub text: usize,
}

/// What the served model accepts, for the checks of `size` and `model`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// The model id (`model` must be it when given).
    pub model_id: String,
    /// The side of its images (`size` must be `SxS` when given).
    pub size: u32,
}

/// How the images come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Base64 PNG in the JSON (`b64_json`, the default).
    B64Json,
    /// A URL under `/v1/files/` (`url`).
    Url,
}

/// The answer's options, common to every endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// `response_format`.
    pub format: Format,
    /// `stream`: Server-Sent Events instead of one JSON answer.
    pub stream: bool,
}

/// A request's fields, from JSON or a multipart form.
#[derive(Debug, Default)]
pub struct Fields {
    /// Every non-file field (a form's text parts as JSON strings). `null` counts as absent.
    values: HashMap<String, Value>,
    /// The file parts.
    files: HashMap<String, Bytes>,
}

impl Fields {
    /// The fields of a JSON object body.
    pub fn from_json(body: &[u8]) -> Result<Self, ApiError> {
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body is not valid JSON: {e}"),
            )
        })?;
        let Value::Object(object) = value else {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                "the body must be a JSON object",
            ));
        };
        Ok(Self {
            values: object.into_iter().collect(),
            files: HashMap::new(),
        })
    }

    /// The parts of a multipart form, each within its limit: 413 naming the part as soon as
    /// one is larger.
    pub async fn from_multipart(
        mut multipart: Multipart,
        limits: PartLimits,
    ) -> Result<Self, ApiError> {
        let mut fields = Self::default();
        while let Some(mut part) = multipart.next_field().await.map_err(multipart_error)? {
            let name = part.name().unwrap_or_default().to_string();
            let is_file = FILE_PARTS.contains(&name.as_str());
            let limit = if is_file { limits.file } else { limits.text };
            let mut data = BytesMut::new();
            while let Some(chunk) = part.chunk().await.map_err(multipart_error)? {
                if data.len() + chunk.len() > limit {
                    return Err(ApiError::too_large(Some(&name), limit));
                }
                data.extend_from_slice(&chunk);
            }
            if is_file {
                let name = name.trim_end_matches("[]").to_string();
                fields.files.entry(name).or_insert_with(|| data.freeze());
            } else {
                let text = String::from_utf8(data.to_vec())
                    .map_err(|_| ApiError::invalid(&name, "is not UTF-8 text"))?;
                fields.values.insert(name, Value::String(text));
            }
        }
        Ok(fields)
    }

    /// Field `name` as a `T`, `None` when absent or null; a 400 naming it when it is not a
    /// `T`. A string (a form's text) is also read as the JSON it spells (`"2"` as 2).
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, ApiError> {
        let Some(value) = self.values.get(name).filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        match serde_json::from_value(value.clone()) {
            Ok(parsed) => Ok(Some(parsed)),
            Err(e) => match value {
                Value::String(text) => serde_json::from_str(text.trim())
                    .map(Some)
                    .map_err(|_| ApiError::invalid(name, e)),
                _ => Err(ApiError::invalid(name, e)),
            },
        }
    }

    /// Field `name`, or else its alias.
    fn get_or<T: DeserializeOwned>(&self, name: &str, alias: &str) -> Result<Option<T>, ApiError> {
        match self.get(name)? {
            Some(value) => Ok(Some(value)),
            None => self.get(alias),
        }
    }

    /// A text field, "" when absent.
    fn text(&self, name: &str) -> Result<String, ApiError> {
        Ok(self.get::<String>(name)?.unwrap_or_default())
    }

    /// A file part, or a 400 naming it when it is missing.
    fn file(&self, name: &str) -> Result<Bytes, ApiError> {
        self.files.get(name).cloned().ok_or_else(|| {
            ApiError::invalid(name, "is required (a file part of the multipart form)")
        })
    }

    /// The options every endpoint shares, with `size` and `model` checked against `served`
    /// when it is known (before the stages are checked the core answers 503 anyway).
    fn options(&self, served: Option<&Served>) -> Result<Options, ApiError> {
        if let Some(served) = served {
            if let Some(size) = self.get::<String>("size")? {
                let side = served.size;
                if size != format!("{side}x{side}") && size != "auto" {
                    return Err(ApiError::invalid(
                        "size",
                        format!(
                            "this model ({}) serves only \"{side}x{side}\", got {size:?}",
                            served.model_id
                        ),
                    ));
                }
            }
            if let Some(model) = self.get::<String>("model")?
                && model != served.model_id
            {
                return Err(ApiError::invalid(
                    "model",
                    format!("the served model is {:?}, got {model:?}", served.model_id),
                ));
            }
        }
        let format = match self.get::<String>("response_format")?.as_deref() {
            None | Some("b64_json") => Format::B64Json,
            Some("url") => Format::Url,
            Some(other) => {
                return Err(ApiError::invalid(
                    "response_format",
                    format!("must be \"b64_json\" or \"url\", got {other:?}"),
                ));
            }
        };
        if let Some(user) = self.get::<String>("user")? {
            tracing::debug!(user, "request from user");
        }
        Ok(Options {
            format,
            stream: self.get("stream")?.unwrap_or(false),
        })
    }

    /// Whether a stream carries previews: when streaming, unless `partial_images` is 0.
    fn previews(&self, options: &Options) -> Result<bool, ApiError> {
        Ok(options.stream && self.get::<u32>("partial_images")?.unwrap_or(1) > 0)
    }

    /// The decoder settings (`steps` and `guidance` are aliases of the decoder's); `None` when
    /// none is given.
    fn decoder(&self) -> Result<Option<DecoderSettings>, ApiError> {
        let settings = DecoderSettings {
            decoder_steps: self.get_or("decoder_steps", "steps")?,
            upsampler_steps: self.get("upsampler_steps")?,
            decoder_guidance_scale: self.get_or("decoder_guidance_scale", "guidance")?,
        };
        Ok((settings != DecoderSettings::default()).then_some(settings))
    }
}

/// A multipart error as the API's: 413 for a body past its limit, else 400.
fn multipart_error(error: MultipartError) -> ApiError {
    if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is too large: {}", error.body_text()),
        )
    } else {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_multipart",
            format!("the multipart body is malformed: {}", error.body_text()),
        )
    }
}

/// `POST /v1/images/generations`.
pub fn generation(
    fields: &Fields,
    served: Option<&Served>,
) -> Result<(GenerateRequest, Options), ApiError> {
    let options = fields.options(served)?;
    let request = GenerateRequest {
        prompt: fields.text("prompt")?,
        num_images: fields.get("n")?,
        seed: fields.get("seed")?,
        prior_steps: fields.get("prior_steps")?,
        prior_guidance_scale: fields.get("prior_guidance_scale")?,
        decoder: fields.decoder()?,
        best_of: fields.get("best_of")?,
        negative_prompt: fields.text("negative_prompt")?,
        previews: fields.previews(&options)?,
    };
    Ok((request, options))
}

/// `POST /v1/images/variations`.
pub fn variation(
    fields: &Fields,
    served: Option<&Served>,
) -> Result<(VaryRequest, Options), ApiError> {
    let options = fields.options(served)?;
    let mode = match fields.get::<String>("mode")?.as_deref() {
        None | Some("fresh") => VariationMode::Fresh,
        Some("anchored") => VariationMode::Anchored,
        Some(other) => {
            return Err(ApiError::invalid(
                "mode",
                format!("must be \"fresh\" or \"anchored\", got {other:?}"),
            ));
        }
    };
    let request = VaryRequest {
        image: fields.file("image")?,
        num_images: fields.get("n")?,
        seed: fields.get("seed")?,
        mode: mode as i32,
        eta: fields.get("eta")?,
        decoder: fields.decoder()?,
        previews: fields.previews(&options)?,
    };
    Ok((request, options))
}

/// `POST /v1/images/edits`. Without a mask the image's own alpha is the mask (transparent =
/// regenerate), so an image without alpha needs one.
pub fn edit(
    fields: &Fields,
    served: Option<&Served>,
) -> Result<(InpaintRequest, Options), ApiError> {
    let options = fields.options(served)?;
    let image = fields.file("image")?;
    let mask = match fields.files.get("mask") {
        Some(mask) => mask.clone(),
        None if has_alpha(&image) == Some(false) => {
            return Err(ApiError::invalid(
                "mask",
                "is required when the image has no alpha channel (transparent pixels of the \
                 mask, or of the image, mark what to regenerate)",
            ));
        }
        None => image.clone(),
    };
    let request = InpaintRequest {
        image,
        mask,
        prompt: fields.text("prompt")?,
        num_images: fields.get("n")?,
        seed: fields.get("seed")?,
        prior_steps: fields.get("prior_steps")?,
        prior_guidance_scale: fields.get("prior_guidance_scale")?,
        decoder: fields.decoder()?,
        previews: fields.previews(&options)?,
    };
    Ok((request, options))
}

/// Whether an encoded image has an alpha channel; `None` when it cannot be read (the core then
/// names what is wrong with it).
fn has_alpha(bytes: &[u8]) -> Option<bool> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .ok()?;
    let decoder = reader.into_decoder().ok()?;
    Some(image::ImageDecoder::color_type(&decoder).has_alpha())
}

/// `POST /v1/images/interpolations`.
pub fn interpolation(
    fields: &Fields,
    served: Option<&Served>,
) -> Result<(InterpolateRequest, Options), ApiError> {
    let options = fields.options(served)?;
    let request = InterpolateRequest {
        image_a: fields.file("image_a")?,
        image_b: fields.file("image_b")?,
        frames: fields.get("frames")?,
        seed: fields.get("seed")?,
        decoder: fields.decoder()?,
        previews: fields.previews(&options)?,
    };
    Ok((request, options))
}

/// `POST /v1/images/text-diffs`.
pub fn text_diff(
    fields: &Fields,
    served: Option<&Served>,
) -> Result<(TextDiffRequest, Options), ApiError> {
    let options = fields.options(served)?;
    let request = TextDiffRequest {
        image: fields.file("image")?,
        source_caption: fields.text("source_caption")?,
        target_caption: fields.text("target_caption")?,
        frames: fields.get("frames")?,
        max_theta: fields.get("max_theta")?,
        seed: fields.get("seed")?,
        decoder: fields.decoder()?,
        frame_delay_ms: fields.get("frame_delay_ms")?,
        previews: fields.previews(&options)?,
    };
    Ok((request, options))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served() -> Served {
        Served {
            model_id: "shapes".into(),
            size: 128,
        }
    }

    /// JSON fields map onto the proto request, aliases included; unknown fields are ignored.
    #[test]
    fn generation_fields() {
        let body = br#"{"prompt": "a red circle", "n": 2, "size": "128x128", "seed": 7,
            "steps": 10, "guidance": 3.5, "quality": "hd", "stream": true, "model": "shapes"}"#;
        let fields = Fields::from_json(body).unwrap();
        let (request, options) = generation(&fields, Some(&served())).unwrap();
        assert_eq!(request.prompt, "a red circle");
        assert_eq!(request.num_images, Some(2));
        assert_eq!(request.seed, Some(7));
        let decoder = request.decoder.unwrap();
        assert_eq!(decoder.decoder_steps, Some(10));
        assert_eq!(decoder.decoder_guidance_scale, Some(3.5));
        assert!(request.previews);
        assert_eq!(
            options,
            Options {
                format: Format::B64Json,
                stream: true
            }
        );
    }

    /// Each bad field is a 400 naming it.
    #[test]
    fn bad_fields() {
        let param = |body: &str| {
            let fields = match Fields::from_json(body.as_bytes()) {
                Ok(fields) => fields,
                Err(e) => return (e.status.as_u16(), e.param),
            };
            let e = generation(&fields, Some(&served())).unwrap_err();
            (e.status.as_u16(), e.param)
        };
        let named = |p: &str| (400, Some(p.to_string()));
        assert_eq!(param(r#"{"prompt": "x", "n": "two"}"#), named("n"));
        assert_eq!(param(r#"{"prompt": "x", "n": -1}"#), named("n"));
        assert_eq!(
            param(r#"{"prompt": "x", "size": "256x256"}"#),
            named("size")
        );
        assert_eq!(
            param(r#"{"prompt": "x", "model": "dall-e-3"}"#),
            named("model")
        );
        assert_eq!(
            param(r#"{"prompt": "x", "response_format": "jpeg"}"#),
            named("response_format")
        );
        assert_eq!(param(r#"{"prompt": 5}"#), named("prompt"));
        assert_eq!(param(r#"{"prompt": "x""#), (400, None));
        assert_eq!(param(r#"[1]"#), (400, None));
    }

    /// Form text reads as the JSON it spells; `null` and absent are the same.
    #[test]
    fn form_values() {
        let mut fields = Fields::default();
        fields.values.insert("n".into(), Value::String("3".into()));
        fields
            .values
            .insert("stream".into(), Value::String("true".into()));
        fields
            .values
            .insert("prompt".into(), Value::String("12".into()));
        fields.values.insert("seed".into(), Value::Null);
        assert_eq!(fields.get::<u32>("n").unwrap(), Some(3));
        assert_eq!(fields.get::<bool>("stream").unwrap(), Some(true));
        assert_eq!(
            fields.get::<String>("prompt").unwrap().as_deref(),
            Some("12")
        );
        assert_eq!(fields.get::<u64>("seed").unwrap(), None);
    }
}
