//! The rotation loop around a pure [`Rotation`](super::rotation::Rotation): one pass, then sleep
//! until the plan could next change (at most the resync period), until something the controller
//! reads or owns changes, or, after a failure, for a growing backoff.

use std::{future::Future, sync::Arc, time::Duration};

use braid_crds::Mesh;
use futures::{FutureExt as _, StreamExt as _, stream::BoxStream};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Api, Resource as _,
    api::{Patch, PatchParams},
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::{
    backoff::FailureBackoff,
    conditions::{Observed, merge},
    metrics::Metrics,
};

/// A controller that keeps certificates: what one pass does, and how it reports a failure.
pub trait Shell {
    type Error: std::fmt::Display;
    /// The controller's name in metrics.
    const CONTROLLER: &'static str;
    /// For the log: "<WHAT> reconcile failed".
    const WHAT: &'static str;
    /// Whether a burst of events (the watches' initial lists, the controller's own writes) makes
    /// one pass rather than one pass per event.
    const COALESCE_EVENTS: bool;

    /// Re-check at least this often, whatever the certificates say.
    fn resync(&self) -> Duration;

    /// One pass; returns when the plan could next change (Unix seconds).
    fn pass(&mut self) -> impl Future<Output = Result<Option<i64>, Self::Error>> + Send;

    /// The metric label of a failure.
    fn metric_label(err: &Self::Error) -> &'static str;

    /// Says on the Mesh why the pass failed.
    fn report_failure(&mut self, err: &Self::Error) -> impl Future<Output = ()> + Send;

    /// What wakes the loop early; the pass may replace it (when what it watches changed).
    fn triggers(&mut self) -> &mut BoxStream<'static, ()>;
}

/// How long to sleep after a successful pass at `now`: until one second past the next change, at
/// most `resync`.
pub fn wait_after_success(now: i64, next_change: Option<i64>, resync: Duration) -> Duration {
    let until_change = next_change.map(|at| Duration::from_secs(u64::try_from(at - now).unwrap_or(0) + 1));
    until_change.map_or(resync, |d| d.min(resync))
}

/// Runs `shell` until `shutdown` is cancelled.
pub async fn run<S: Shell>(mut shell: S, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let backoff = FailureBackoff::new(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        let started = tokio::time::Instant::now();
        // A pass in flight stops with the Lease: what it has not written yet, it never writes.
        let result = tokio::select! {
            result = shell.pass() => result,
            () = shutdown.cancelled() => return,
        };
        metrics.observe(S::CONTROLLER, started.elapsed());
        let wait = match result {
            Ok(next_change) => {
                backoff.succeeded(S::CONTROLLER);
                wait_after_success(Timestamp::now().as_second(), next_change, shell.resync())
            }
            Err(err) => {
                metrics.failed(S::CONTROLLER, S::metric_label(&err));
                let wait = backoff.failed(S::CONTROLLER);
                tracing::warn!(error = %err, retry_in = ?wait, "{} reconcile failed", S::WHAT);
                shell.report_failure(&err).await;
                wait
            }
        };
        let triggers = shell.triggers();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            Some(()) = triggers.next() => {
                if S::COALESCE_EVENTS {
                    while let Some(Some(())) = triggers.next().now_or_never() {}
                }
            }
            () = shutdown.cancelled() => return,
        }
    }
}

/// Reports on Mesh default: one condition, and the status field `field` (`value`, where `current`
/// is what the Mesh holds now), under the controller's own field `manager`, since under
/// server-side apply each writer owns the conditions it sets. Writes nothing when neither changed.
pub async fn write_mesh_status<T: serde::Serialize + PartialEq>(
    meshes: &Api<Mesh>,
    mesh: &Mesh,
    manager: &str,
    observed: Observed,
    field: &str,
    value: Option<T>,
    current: Option<&T>,
) -> Result<(), kube::Error> {
    let condition = observed.type_;
    let previous = mesh.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    let conditions = merge(previous, vec![observed], mesh.metadata.generation, &Time(Timestamp::now()));
    let unchanged =
        previous.iter().find(|c| c.type_ == condition) == conditions.first() && current == value.as_ref();
    if unchanged {
        return Ok(());
    }
    let mut patch = json!({
        "apiVersion": Mesh::api_version(&()),
        "kind": Mesh::kind(&()),
        "status": {"conditions": conditions},
    });
    patch["status"][field] = json!(value);
    meshes.patch_status("default", &PatchParams::apply(manager).force(), &Patch::Apply(&patch)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeps_until_just_past_the_next_change_at_most_the_resync() {
        let resync = Duration::from_secs(300);
        assert_eq!(wait_after_success(1000, Some(1010), resync), Duration::from_secs(11));
        assert_eq!(wait_after_success(1000, Some(999), resync), Duration::from_secs(1), "overdue: at once");
        assert_eq!(wait_after_success(1000, Some(5000), resync), resync);
        assert_eq!(wait_after_success(1000, None, resync), resync);
    }
}
