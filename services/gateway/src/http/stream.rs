//! `"stream": true`: the core's events as Server-Sent Events.
//!
//! | core event | SSE events (`event:` and the data's `"type"`) |
//! |---|---|
//! | `Progress` | `KIND.progress` `{stage, step, total, calls_done, calls_total}` |
//! | `Preview` | one `KIND.partial_image` per image `{b64_json, partial_image_index, stage, size}` |
//! | `Result` | one `KIND.completed` per image `{b64_json or url, index, seed, theta?, created_at, size}`, then `KIND.animation` when there is one |
//! | an error | `error` `{"error": {...}}` (the JSON error answer's object) |
//!
//! A task forwards the events; when the client goes away the SSE body is dropped, the task
//! sees its channel closed (even while no event is due) and drops the core's stream, which
//! cancels the stage work.

use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use unclip_proto::v1::images_event::Event as CoreEvent;

use super::error::ApiError;
use super::request::Options;
use super::response::{Kind, size_text};
use super::{App, unix_now};
use crate::api::EventStream;

/// SSE events buffered before the forwarder waits for the client.
const BUFFER: usize = 16;

/// The answer of a streaming request.
pub(super) fn sse(
    app: Arc<App>,
    mut events: EventStream,
    options: Options,
    kind: Kind,
    base_url: String,
) -> Response {
    let (sender, receiver) = mpsc::channel::<Result<Event, Infallible>>(BUFFER);
    tokio::spawn(async move {
        let mut previews = 0u32;
        loop {
            let event = tokio::select! {
                () = sender.closed() => break,
                event = events.next() => event,
            };
            let Some(event) = event else { break };
            let out = match event {
                Ok(event) => {
                    app.events(event.event, &mut previews, options, kind, &base_url)
                        .await
                }
                Err(error) => {
                    let error = ApiError::from(error);
                    vec![sse_event("error", error.body())]
                }
            };
            for event in out {
                if sender.send(Ok(event)).await.is_err() {
                    return;
                }
            }
        }
    });
    Sse::new(ReceiverStream::new(receiver)).into_response()
}

/// An SSE event of `kind` whose data is `data` with `"type": kind` added.
fn sse_event(kind: &str, mut data: Value) -> Event {
    data["type"] = kind.into();
    Event::default().event(kind).data(data.to_string())
}

impl App {
    /// The SSE events of one core event.
    async fn events(
        &self,
        event: Option<CoreEvent>,
        previews: &mut u32,
        options: Options,
        kind: Kind,
        base_url: &str,
    ) -> Vec<Event> {
        let prefix = kind.event_prefix();
        match event {
            None => Vec::new(),
            Some(CoreEvent::Progress(p)) => vec![sse_event(
                &format!("{prefix}.progress"),
                json!({
                    "stage": p.stage,
                    "step": p.step,
                    "total": p.total,
                    "calls_done": p.calls_done,
                    "calls_total": p.calls_total,
                }),
            )],
            Some(CoreEvent::Preview(preview)) => preview
                .images
                .iter()
                .map(|image| {
                    let index = *previews;
                    *previews += 1;
                    sse_event(
                        &format!("{prefix}.partial_image"),
                        json!({
                            "b64_json": STANDARD.encode(&image.png),
                            "partial_image_index": index,
                            "stage": preview.stage,
                            "size": size_text(preview.size),
                        }),
                    )
                })
                .collect(),
            Some(CoreEvent::Result(response)) => {
                let mut out = Vec::with_capacity(response.images.len() + 1);
                let created_at = unix_now();
                for (index, image) in response.images.iter().enumerate() {
                    let mut data = self.image_json(image, options.format, kind, base_url).await;
                    data.insert("index".into(), index.into());
                    data.insert("created_at".into(), created_at.into());
                    data.insert("size".into(), size_text(response.size).into());
                    out.push(sse_event(
                        &format!("{prefix}.completed"),
                        Value::Object(data),
                    ));
                }
                if let Some(animation) = self
                    .animation_json(&response, options.format, base_url)
                    .await
                {
                    out.push(sse_event(
                        &format!("{prefix}.animation"),
                        Value::Object(animation),
                    ));
                }
                out
            }
        }
    }
}
