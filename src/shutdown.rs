//! Shutting down, the mechanism: the signal (SIGTERM or ctrl-c) and [`Tasks`], the background tasks that a shutdown stops and waits for. A leaf module:
//! [`crate::startup::App::run_until`] drives the graceful stop (listener first, then every
//! session closes its viewers with 1001 and a reason that tells them to reconnect, then the
//! background tasks), within the shutdown timeout.

use std::time::Duration;

/// Completes at SIGTERM or ctrl-c.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(%err, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(err) => {
                tracing::error!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// The hub's background tasks (the Redis subscriber, the cache's connection probe, the process
/// sampler): spawned through here, so that shutdown stops them and waits for them rather than
/// leaving them to the runtime's teardown. Clones share one set.
#[derive(Clone, Default)]
pub struct Tasks {
    stop: tokio_util::sync::CancellationToken,
    tracker: tokio_util::task::TaskTracker,
}

impl Tasks {
    /// Runs `task` until it ends or [`Tasks::stop`] is called.
    pub fn spawn(
        &self,
        name: &'static str,
        task: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = stop.cancelled() => tracing::debug!(task = name, "background task stopped"),
                () = task => {}
            }
        });
    }

    /// Stops every task and waits (at most `timeout`) until they have all ended; true if they did.
    pub async fn stop(&self, timeout: Duration) -> bool {
        self.stop.cancel();
        self.tracker.close();
        tokio::time::timeout(timeout, self.tracker.wait())
            .await
            .is_ok()
    }

    /// Tasks still running.
    pub fn running(&self) -> usize {
        self.tracker.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stop_ends_every_task_and_waits_for_them() {
        let tasks = Tasks::default();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(4);
        for _ in 0..3 {
            let done = done_tx.clone();
            tasks.spawn("forever", async move {
                let _done = done;
                std::future::pending::<()>().await;
            });
        }
        drop(done_tx);
        assert_eq!(tasks.running(), 3);
        assert!(tasks.stop(Duration::from_secs(5)).await);
        assert_eq!(tasks.running(), 0);
        // Every task was dropped, and with it its sender.
        assert_eq!(done_rx.recv().await, None);
    }
}
