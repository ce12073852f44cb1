//! The JSON answers of the image endpoints: `{"created", "data": [{"b64_json" | "url", "seed",
//! "theta"?}], "model", "size", "animation"?}` from the core's `ImagesResponse`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde_json::{Map, Value, json};
use unclip_proto::v1::{GeneratedImage, ImagesResponse};

use super::request::Format;
use super::{App, unix_now};

/// Which endpoint answers: names its stream events (`KIND.progress`, ...) and says whether its
/// images are frames (with `theta`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `/v1/images/generations`.
    Generation,
    /// `/v1/images/variations`.
    Variation,
    /// `/v1/images/edits`.
    Edit,
    /// `/v1/images/interpolations`.
    Interpolation,
    /// `/v1/images/text-diffs`.
    TextDiff,
}

impl Kind {
    /// The prefix of its stream events.
    pub fn event_prefix(self) -> &'static str {
        match self {
            Kind::Generation => "image_generation",
            Kind::Variation => "image_variation",
            Kind::Edit => "image_edit",
            Kind::Interpolation => "image_interpolation",
            Kind::TextDiff => "image_text_diff",
        }
    }

    /// Whether its images are frames with a `theta`.
    pub fn frames(self) -> bool {
        matches!(self, Kind::Interpolation | Kind::TextDiff)
    }
}

/// `"WxH"` of a square side.
pub fn size_text(side: u32) -> String {
    format!("{side}x{side}")
}

impl App {
    /// `{"b64_json": ...}` or `{"url": ...}` (the bytes stored for the URL).
    pub(super) async fn encoded(
        &self,
        bytes: &Bytes,
        mime_type: &'static str,
        format: Format,
        base_url: &str,
    ) -> Map<String, Value> {
        let mut object = Map::new();
        match format {
            Format::B64Json => {
                object.insert("b64_json".into(), STANDARD.encode(bytes).into());
            }
            Format::Url => {
                let name = self.files.put(bytes.clone(), mime_type).await;
                object.insert("url".into(), format!("{base_url}/v1/files/{name}").into());
            }
        }
        object
    }

    /// One image of `data` (or a completed event's payload): the encoding, its seed and, for
    /// frames, its theta.
    pub(super) async fn image_json(
        &self,
        image: &GeneratedImage,
        format: Format,
        kind: Kind,
        base_url: &str,
    ) -> Map<String, Value> {
        let mut object = self
            .encoded(&image.png, "image/png", format, base_url)
            .await;
        object.insert("seed".into(), image.seed.into());
        if kind.frames() {
            object.insert("theta".into(), f64::from(image.theta).into());
        }
        object
    }

    /// The animation object, when the response has one.
    pub(super) async fn animation_json(
        &self,
        response: &ImagesResponse,
        format: Format,
        base_url: &str,
    ) -> Option<Map<String, Value>> {
        if response.animation.is_empty() {
            return None;
        }
        let mut object = self
            .encoded(&response.animation, "image/apng", format, base_url)
            .await;
        object.insert(
            "mime_type".into(),
            response.animation_mime_type.clone().into(),
        );
        Some(object)
    }

    /// The whole JSON answer.
    pub(super) async fn images_json(
        &self,
        response: &ImagesResponse,
        format: Format,
        kind: Kind,
        base_url: &str,
    ) -> Value {
        let mut data = Vec::with_capacity(response.images.len());
        for image in &response.images {
            data.push(Value::Object(
                self.image_json(image, format, kind, base_url).await,
            ));
        }
        let mut body = json!({
            "created": unix_now(),
            "data": data,
            "model": response.model_id,
            "size": size_text(response.size),
        });
        if let Some(animation) = self.animation_json(response, format, base_url).await {
            body["animation"] = Value::Object(animation);
        }
        body
    }
}
