//! Progressive delivery (docs/canary.md): the rollout state machine (machine.rs, pure), the
//! weights discovery sends from the status (weights.rs), what the proxies measured
//! (measure.rs), and the conditions a rollout shows.

pub mod machine;
pub mod measure;
pub mod rollout;
pub mod weights;

use braid_crds::{
    conditions::{self, reasons},
    meshroute::{CanaryPhase, CanaryStatus},
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::conditions::{Observed, Status};

/// Progressing, CanaryHealthy, Promoted and RolledBack for a route with a canary. `outcome` is
/// why the run ended when it ended in this decision; otherwise the reason already in
/// `previous` is kept.
pub fn observed_conditions(
    canary: &CanaryStatus,
    previous: &[Condition],
    outcome: Option<machine::Outcome>,
) -> Vec<Observed> {
    let kept = |type_: &str, fallback: &'static str| -> &'static str {
        outcome.unwrap_or_else(|| {
            previous
                .iter()
                .find(|c| c.type_ == type_ && c.status == "True")
                .and_then(|c| {
                    [reasons::PROMOTED, reasons::PROMOTED_BY_USER, reasons::FAILED_CHECKS, reasons::ABORTED]
                        .into_iter()
                        .find(|r| *r == c.reason)
                })
                .unwrap_or(fallback)
        })
    };
    let message = canary.message.clone();
    let progressing = match canary.phase {
        CanaryPhase::Progressing => (Status::True, reasons::STEP_PROGRESSING),
        CanaryPhase::Waiting => (Status::True, reasons::NOT_ENOUGH_REQUESTS),
        CanaryPhase::Paused => (Status::False, reasons::PAUSED),
        CanaryPhase::Promoted => (Status::False, kept(conditions::PROMOTED, reasons::PROMOTED)),
        CanaryPhase::RolledBack => (Status::False, kept(conditions::ROLLED_BACK, reasons::FAILED_CHECKS)),
    };
    let healthy = match (&canary.canary_metrics, canary.phase) {
        _ if canary.failed_checks > 0 => (Status::False, reasons::CHECK_FAILED),
        (None, _) => (Status::Unknown, reasons::NOT_CHECKED),
        (Some(_), CanaryPhase::Waiting) => (Status::Unknown, reasons::NOT_ENOUGH_REQUESTS),
        (Some(_), _) => (Status::True, reasons::CHECK_PASSED),
    };
    let health_message = match &canary.canary_metrics {
        None => "no interval judged yet in this rollout".to_owned(),
        Some(m) => format!(
            "last interval: {} request(s), success rate {}, p99 {}; {} failed check(s) in a row",
            m.requests,
            m.success_rate.as_deref().unwrap_or("-"),
            m.p99.as_deref().unwrap_or("-"),
            canary.failed_checks
        ),
    };
    let promoted = match canary.phase {
        CanaryPhase::Promoted => (Status::True, kept(conditions::PROMOTED, reasons::PROMOTED)),
        CanaryPhase::RolledBack => (Status::False, reasons::OTHER_OUTCOME),
        _ => (Status::False, reasons::IN_PROGRESS),
    };
    let rolled_back = match canary.phase {
        CanaryPhase::RolledBack => (Status::True, kept(conditions::ROLLED_BACK, reasons::FAILED_CHECKS)),
        CanaryPhase::Promoted => (Status::False, reasons::OTHER_OUTCOME),
        _ => (Status::False, reasons::IN_PROGRESS),
    };
    let observed = |type_, (status, reason): (Status, &'static str), message: String| Observed {
        type_,
        status,
        reason,
        message,
    };
    vec![
        observed(conditions::PROGRESSING, progressing, message.clone()),
        observed(conditions::CANARY_HEALTHY, healthy, health_message),
        observed(conditions::PROMOTED, promoted, message.clone()),
        observed(conditions::ROLLED_BACK, rolled_back, message),
    ]
}

/// The canary conditions of a route whose canary cannot run (the route is not accepted).
pub fn not_running(why: &str) -> Vec<Observed> {
    [conditions::PROGRESSING, conditions::PROMOTED, conditions::ROLLED_BACK]
        .into_iter()
        .map(|type_| Observed {
            type_,
            status: Status::False,
            reason: reasons::ROUTE_NOT_ACCEPTED,
            message: why.to_owned(),
        })
        .chain(std::iter::once(Observed {
            type_: conditions::CANARY_HEALTHY,
            status: Status::Unknown,
            reason: reasons::ROUTE_NOT_ACCEPTED,
            message: why.to_owned(),
        }))
        .collect()
}
