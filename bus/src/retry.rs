//! Retrying a store or bus operation until it succeeds or the process shuts down: what every
//! stage does with an operation it cannot skip (its offsets stay where they were checkpointed,
//! so giving up would lose nothing, but nor would it make progress).

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Runs `op` until it succeeds (`Some`) or `shutdown` is cancelled (`None`), backing off from
/// 200 ms doubling to 10 s; each failure is logged with `what` and counted by `on_failure`.
pub async fn until_shutdown<T, E: std::fmt::Display, F, Fut>(
    shutdown: &CancellationToken,
    what: &str,
    mut on_failure: impl FnMut(),
    mut op: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Duration::from_millis(200);
    loop {
        match op().await {
            Ok(v) => return Some(v),
            Err(e) => {
                on_failure();
                tracing::error!(error = %e, retry_in = ?backoff, "{what} failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => return None,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}
