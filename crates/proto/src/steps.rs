//! [`StepEvent`]: the one shape of the four `...Stream` stage events (`PriorSampleEvent`,
//! `DecodeEvent`, `UpsampleEvent`, `InvertEvent`): a `StepProgress`, or the unary answer.

use crate::v1::{
    DecodeEvent, DecodeResponse, InvertEvent, InvertResponse, PriorSampleEvent,
    PriorSampleResponse, StepProgress, UpsampleEvent, UpsampleResponse, decode_event, invert_event,
    prior_sample_event, upsample_event,
};

/// An event of a stage's streaming RPC: progress, then the result.
pub trait StepEvent: Sized + Send + 'static {
    /// The unary RPC's response, sent last.
    type Result: Send + 'static;
    /// A progress event.
    fn progress(progress: StepProgress) -> Self;
    /// The result event.
    fn result(result: Self::Result) -> Self;
    /// `Ok(result)`, `Err(progress)`, or `None` for an empty event.
    fn into_parts(self) -> Option<Result<Self::Result, StepProgress>>;
}

macro_rules! step_event {
    ($event:ident, $module:ident, $result:ident) => {
        impl StepEvent for $event {
            type Result = $result;
            fn progress(progress: StepProgress) -> Self {
                Self {
                    event: Some($module::Event::Progress(progress)),
                }
            }
            fn result(result: $result) -> Self {
                Self {
                    event: Some($module::Event::Result(result)),
                }
            }
            fn into_parts(self) -> Option<Result<$result, StepProgress>> {
                match self.event? {
                    $module::Event::Progress(p) => Some(Err(p)),
                    $module::Event::Result(r) => Some(Ok(r)),
                }
            }
        }
    };
}

step_event!(PriorSampleEvent, prior_sample_event, PriorSampleResponse);
step_event!(DecodeEvent, decode_event, DecodeResponse);
step_event!(UpsampleEvent, upsample_event, UpsampleResponse);
step_event!(InvertEvent, invert_event, InvertResponse);

#[cfg(test)]
mod tests {
    use super::*;

    /// Progress and result go in and come back out as themselves.
    #[test]
    fn round_trip() {
        let p = StepProgress { step: 3, total: 7 };
        assert_eq!(DecodeEvent::progress(p).into_parts(), Some(Err(p)));
        let r = InvertResponse {
            steps: 4,
            ..Default::default()
        };
        assert_eq!(InvertEvent::result(r.clone()).into_parts(), Some(Ok(r)));
        assert_eq!(UpsampleEvent { event: None }.into_parts(), None);
    }
}
