//! Progress of one request: the events a streaming call sends (stage started, each step the
//! stage service streams back, stage finished, previews), and nothing at all for a unary call.
//! Events name their stage by its [`Stage`] label.

use tokio::sync::{mpsc, watch};
use unclip_proto::v1::{GeneratedImage, ImagesEvent, Preview, Progress, images_event};

use crate::error::Result;
use crate::stage::Stage;
use crate::stages::StepSink;

/// Where a request's events go.
#[derive(Debug)]
pub struct Reporter {
    /// The stream's sender; `None` for unary calls.
    events: Option<mpsc::Sender<Result<ImagesEvent>>>,
    /// Whether the request asked for previews.
    previews: bool,
    /// Stage calls finished so far.
    done: u32,
    /// Stage calls the request makes in all.
    total: u32,
}

impl Reporter {
    /// A reporter that reports nothing (unary calls).
    pub fn silent() -> Self {
        Self {
            events: None,
            previews: false,
            done: 0,
            total: 0,
        }
    }

    /// A reporter sending to a stream.
    pub fn streaming(events: mpsc::Sender<Result<ImagesEvent>>, previews: bool) -> Self {
        Self {
            events: Some(events),
            previews,
            done: 0,
            total: 0,
        }
    }

    /// Whether previews are wanted (and can be sent).
    pub fn wants_previews(&self) -> bool {
        self.previews && self.events.is_some()
    }

    /// Sets how many stage calls the request makes (cache hits included).
    pub fn plan(&mut self, total: u32) {
        self.total = total;
    }

    /// A stage call of `total` units (steps) starts.
    pub async fn started(&mut self, stage: Stage, total: u32) {
        let event = self.progress(stage, 0, total);
        self.send(event).await;
    }

    /// A stage call of `total` units finished (or was served from the cache).
    pub async fn finished(&mut self, stage: Stage, total: u32) {
        self.done += 1;
        let event = self.progress(stage, total, total);
        self.send(event).await;
    }

    /// For one stage call: where its service's steps go and where they are read, when this
    /// request streams (a unary request makes unary stage calls: `(None, None)`).
    pub fn step_channel(&self) -> (Option<StepSink>, Option<watch::Receiver<(u32, u32)>>) {
        if self.events.is_none() {
            return (None, None);
        }
        let (sink, steps) = watch::channel((0, 0));
        (Some(sink), Some(steps))
    }

    /// Awaits the stage call `call`, sending every step read from `steps` (the latest when
    /// steps come faster than the client reads) as a Progress event of `stage`.
    pub async fn forward_steps<T>(
        &mut self,
        stage: Stage,
        steps: Option<watch::Receiver<(u32, u32)>>,
        call: impl Future<Output = T>,
    ) -> T {
        let Some(mut steps) = steps else {
            return call.await;
        };
        tokio::pin!(call);
        loop {
            tokio::select! {
                output = &mut call => return output,
                Ok(()) = steps.changed() => {
                    let (step, total) = *steps.borrow_and_update();
                    let event = self.progress(stage, step, total);
                    self.send(event).await;
                }
            }
        }
    }

    /// Intermediate images of `stage`, `size` pixels square.
    pub async fn preview(&mut self, stage: Stage, images: Vec<GeneratedImage>, size: u32) {
        if !self.wants_previews() {
            return;
        }
        let event = images_event::Event::Preview(Preview {
            stage: stage.to_string(),
            images,
            size,
        });
        self.send(event).await;
    }

    fn progress(&self, stage: Stage, step: u32, total: u32) -> images_event::Event {
        images_event::Event::Progress(Progress {
            stage: stage.to_string(),
            step,
            total,
            calls_done: self.done,
            calls_total: self.total.max(self.done),
        })
    }

    async fn send(&mut self, event: images_event::Event) {
        if let Some(events) = &self.events {
            // A closed stream means the client went away; the streaming handler notices and
            // drops the request, which stops its stage calls.
            let _ = events.send(Ok(ImagesEvent { event: Some(event) })).await;
        }
    }
}
