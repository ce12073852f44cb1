//! Reloading files without a restart: on SIGHUP, and when a file's contents change (checked
//! every few seconds). Reading the contents rather than watching for events also sees a
//! Kubernetes Secret or ConfigMap update, which swaps a symlink instead of writing the file.

use std::path::PathBuf;
use std::time::Duration;

/// The contents of each file (`None`: unreadable), to notice a change.
fn snapshot(paths: &[PathBuf]) -> Vec<Option<Vec<u8>>> {
    paths.iter().map(|path| std::fs::read(path).ok()).collect()
}

/// Calls `reload` on every SIGHUP, and whenever the contents of one of `paths` differ from
/// what they were at the last check (every `every`; [`Duration::ZERO`]: only on SIGHUP).
/// Runs until dropped or aborted; spawn it beside the server. `reload` is expected to keep
/// what it had when the new files are bad, and to log either way.
pub async fn watch_files(paths: Vec<PathBuf>, every: Duration, mut reload: impl FnMut() + Send) {
    let mut hangup = hangup();
    let mut last = snapshot(&paths);
    let mut tick = (!every.is_zero()).then(|| {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick
    });
    loop {
        let by_signal = tokio::select! {
            _ = hangup.recv() => true,
            _ = async {
                match tick.as_mut() {
                    Some(tick) => { tick.tick().await; }
                    None => std::future::pending().await,
                }
            } => false,
        };
        let now = snapshot(&paths);
        if by_signal {
            tracing::info!("SIGHUP: reloading");
        } else if now == last {
            continue;
        } else {
            tracing::info!(files = ?paths, "a file changed: reloading");
        }
        last = now;
        reload();
    }
}

/// SIGHUP as a stream of notifications (never, where there are no signals).
struct Hangup(#[cfg(unix)] Option<tokio::signal::unix::Signal>);

fn hangup() -> Hangup {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(signal) => Hangup(Some(signal)),
            Err(e) => {
                tracing::error!(cause = %e, "cannot listen for SIGHUP; reloading on change only");
                Hangup(None)
            }
        }
    }
    #[cfg(not(unix))]
    Hangup()
}

impl Hangup {
    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = self.0.as_mut() {
            signal.recv().await;
            return;
        }
        std::future::pending::<()>().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A change of contents calls `reload` once; an unchanged file does not.
    #[tokio::test(start_paused = true)]
    async fn reloads_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "a").unwrap();
        let calls = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&calls);
        let task = tokio::spawn(watch_files(
            vec![path.clone()],
            Duration::from_secs(1),
            move || {
                counted.fetch_add(1, Ordering::SeqCst);
            },
        ));
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 0, "nothing changed");
        std::fs::write(&path, "b").unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one change, one reload");
        task.abort();
    }
}
