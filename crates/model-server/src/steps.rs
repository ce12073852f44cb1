//! Step progress of a stage call: what a sampling loop reports ([`Steps`]) and the
//! server-streaming form of a stage RPC that sends it ([`stream_request`], over
//! [`stream_steps`]): a `StepProgress` event after each step, then the result, or the call's
//! error status.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;
use unclip_proto::StepEvent;
use unclip_proto::v1::StepProgress;
use unclip_replicas::deadline_of;

use crate::ServiceError;

/// Where a loop reports its steps: nowhere (unary calls, warm-up, tests) or a stream.
/// Reporting never waits: a slow client sees the latest step, not every one.
#[derive(Debug, Clone, Default)]
pub struct Steps(Option<watch::Sender<(u32, u32)>>);

impl Steps {
    /// Reports nothing.
    pub fn none() -> Self {
        Self(None)
    }

    /// `done` of `total` steps are done.
    pub fn report(&self, done: usize, total: usize) {
        if let Some(sender) = &self.0 {
            let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
            sender.send_replace((clamp(done), clamp(total)));
        }
    }
}

/// A boxed stream of a streaming RPC's events, as tonic's generated traits take them.
pub type EventStream<E> = Pin<Box<dyn tokio_stream::Stream<Item = Result<E, Status>> + Send>>;

/// Runs `work` (given a [`Steps`] to report to) as a spawned task and streams its steps as
/// progress events of the RPC's event message `E`, then its result, or its error as the
/// stream's status.
///
/// - Steps are sent when they change; the last step is sent before the result.
/// - The stream's client going away drops `work` (a blocking loop stops at its next model
///   call through its cancel flag), as tonic does with a unary handler's future.
/// - Past `deadline` (the request's `grpc-timeout`, which tonic enforces for unary calls
///   only) `work` is dropped and the stream ends with DEADLINE_EXCEEDED.
pub fn stream_steps<E, W, Fut>(deadline: Option<Instant>, work: W) -> EventStream<E>
where
    E: StepEvent,
    W: FnOnce(Steps) -> Fut,
    Fut: Future<Output = Result<E::Result, Status>> + Send + 'static,
{
    let (sender, mut steps) = watch::channel((0, 0));
    let work = work(Steps(Some(sender)));
    let (events, receiver) = mpsc::channel(4);
    let progress = |(step, total): (u32, u32)| Ok(E::progress(StepProgress { step, total }));
    tokio::spawn(async move {
        let expired = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(work, expired);
        let outcome = loop {
            tokio::select! {
                outcome = &mut work => break outcome,
                Ok(()) = steps.changed() => {
                    let now = *steps.borrow_and_update();
                    if events.send(progress(now)).await.is_err() {
                        return; // the client went away: dropping `work` stops it
                    }
                }
                () = events.closed() => return,
                () = &mut expired => {
                    break Err(Status::deadline_exceeded("the request's deadline passed"));
                }
            }
        };
        // The loop may have finished between two looks at `steps`.
        let unsent = {
            let last = steps.borrow_and_update();
            last.has_changed().then_some(*last)
        };
        if let (Ok(_), Some(now)) = (&outcome, unsent) {
            let _ = events.send(progress(now)).await;
        }
        let _ = events.send(outcome.map(E::result)).await;
    });
    Box::pin(ReceiverStream::new(receiver))
}

/// The streaming form of a stage RPC: `run(message, steps)` through [`stream_steps`], bounded
/// by the request's `grpc-timeout` and logged in the handler's span.
pub fn stream_request<Q, E, W, Fut>(request: Request<Q>, run: W) -> Response<EventStream<E>>
where
    E: StepEvent,
    W: FnOnce(Q, Steps) -> Fut,
    Fut: Future<Output = Result<E::Result, ServiceError>> + Send + 'static,
{
    let deadline = deadline_of(&request);
    let message = request.into_inner();
    let span = tracing::Span::current();
    let stream = stream_steps(deadline, move |steps| {
        let work = run(message, steps);
        async move { Ok(work.await?) }.instrument(span)
    });
    Response::new(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio_stream::StreamExt;

    use unclip_proto::v1::{InvertEvent, InvertResponse};

    /// The events as text: "step/total", or "done" for the result.
    fn text(e: InvertEvent) -> String {
        match e.into_parts().expect("an event") {
            Err(p) => format!("{}/{}", p.step, p.total),
            Ok(_) => "done".into(),
        }
    }

    /// A result to end a stream with.
    fn done() -> InvertResponse {
        InvertResponse::default()
    }

    /// Every step of a loop that pauses between steps arrives, then the result.
    #[tokio::test]
    async fn steps_then_result() {
        let stream = stream_steps::<InvertEvent, _, _>(None, |steps| async move {
            for i in 1..=3 {
                steps.report(i, 3);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(done())
        });
        let got: Vec<String> = stream.map(|e| text(e.unwrap())).collect().await;
        assert_eq!(got, ["1/3", "2/3", "3/3", "done"]);
    }

    /// A loop too fast to watch still reports its last step before the result.
    #[tokio::test]
    async fn last_step_always_sent() {
        let stream = stream_steps::<InvertEvent, _, _>(None, |steps| async move {
            for i in 1..=50 {
                steps.report(i, 50);
            }
            Ok(done())
        });
        let got: Vec<String> = stream.map(|e| text(e.unwrap())).collect().await;
        assert_eq!(got[got.len() - 2..], ["50/50", "done"]);
    }

    /// An error ends the stream as its status; a passed deadline as DEADLINE_EXCEEDED.
    #[tokio::test]
    async fn errors_and_deadlines() {
        let stream = stream_steps::<InvertEvent, _, _>(None, |_| async {
            Err::<InvertResponse, _>(Status::invalid_argument("steps: must be 2..=1000"))
        });
        let got: Vec<_> = stream.collect().await;
        assert_eq!(got.len(), 1);
        let status = got.into_iter().next().unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);

        let deadline = Instant::now() + Duration::from_millis(50);
        let stream = stream_steps::<InvertEvent, _, _>(Some(deadline), |_| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(done())
        });
        let got: Vec<_> = stream.collect().await;
        let status = got.into_iter().last().unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    }

    /// Dropping the stream drops the work.
    #[tokio::test]
    async fn client_going_away_drops_the_work() {
        struct Flag(std::sync::Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Flag(dropped.clone());
        let stream = stream_steps::<InvertEvent, _, _>(None, move |_| async move {
            let _flag = flag;
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(done())
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(stream);
        for _ in 0..100 {
            if dropped.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the work was not dropped after the stream was");
    }
}
