//! The progress bar of a streaming call, on stderr, fed by the gateway's `Progress` events:
//! stage calls done of all for the bar, the working stage and its step in the message.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use unclip_proto::v1::Progress;

/// The bar's look: spinner, elapsed time, calls done of all, then the stage.
const TEMPLATE: &str = "{spinner} {elapsed:>3} [{bar:30}] {pos}/{len} calls  {msg}";

/// Before the first event, when the number of calls is not known yet: no bar.
const WAITING_TEMPLATE: &str = "{spinner} {elapsed:>3} {msg}";

/// A progress bar that is hidden when asked (`--quiet`) or when stderr is not a terminal.
#[derive(Debug)]
pub struct ProgressView {
    /// The bar (a hidden one draws nothing).
    bar: ProgressBar,
    /// Whether the bar style is set (at the first event; a spinner before).
    started: AtomicBool,
}

impl ProgressView {
    /// A bar on stderr, unless `quiet` or stderr is not a terminal.
    pub fn new(quiet: bool) -> Self {
        if quiet || !std::io::stderr().is_terminal() {
            return Self {
                bar: ProgressBar::hidden(),
                started: AtomicBool::new(true),
            };
        }
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(WAITING_TEMPLATE) {
            bar.set_style(style);
        }
        bar.set_message("waiting for the gateway");
        bar.enable_steady_tick(Duration::from_millis(100));
        Self {
            bar,
            started: AtomicBool::new(false),
        }
    }

    /// Shows one event.
    pub fn update(&self, progress: &Progress) {
        if !self.started.swap(true, Ordering::Relaxed)
            && let Ok(style) = ProgressStyle::with_template(TEMPLATE)
        {
            self.bar.set_style(style.progress_chars("=> "));
        }
        self.bar.set_length(u64::from(progress.calls_total));
        self.bar.set_position(u64::from(progress.calls_done));
        self.bar.set_message(progress_message(progress));
    }

    /// Prints a line on stdout without tearing the bar.
    pub fn println(&self, line: &str) {
        self.bar.suspend(|| println!("{line}"));
    }

    /// Removes the bar (before the results are printed).
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Drop for ProgressView {
    /// Never leaves a half-drawn bar behind (e.g. after an error).
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// "decoder.decode 12/25": the stage and its step, or only the stage when it reports no steps.
pub fn progress_message(progress: &Progress) -> String {
    if progress.total == 0 {
        progress.stage.clone()
    } else {
        format!("{} {}/{}", progress.stage, progress.step, progress.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message names the stage and its step.
    #[test]
    fn messages() {
        let mut progress = Progress {
            stage: "decoder.upsample[0]".into(),
            step: 3,
            total: 7,
            calls_done: 4,
            calls_total: 6,
        };
        assert_eq!(progress_message(&progress), "decoder.upsample[0] 3/7");
        progress.total = 0;
        assert_eq!(progress_message(&progress), "decoder.upsample[0]");
        // A hidden bar takes updates too.
        let view = ProgressView::new(true);
        view.update(&progress);
        view.finish();
    }
}
