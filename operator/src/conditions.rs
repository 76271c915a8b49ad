//! Building status conditions the way Kubernetes users expect: observedGeneration on each, and a
//! lastTransitionTime that moves only when the status flips.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// A condition as a controller decides it, before times and generations are filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub type_: &'static str,
    pub status: Status,
    pub reason: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    True,
    False,
    Unknown,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }
}

/// A `Programmed` condition (of type `type_`) from the proxies' acks of a route generation, for
/// a route of Service `service` (`namespace/name`); `generation` reads " generation N" or "".
pub fn programmed(
    type_: &'static str,
    counts: &crate::discovery::registry::Programming,
    service: &str,
    generation: &str,
) -> Observed {
    use braid_crds::conditions::reasons;
    let observed = |status, reason, message: String| Observed { type_, status, reason, message };
    let fraction = format!("{}/{}", counts.acked, counts.total);
    if counts.total == 0 {
        observed(
            Status::True,
            reasons::NO_PROXIES,
            format!("no proxy routes to Service {service} yet; each gets{generation} when it first does"),
        )
    } else if counts.acked == counts.total {
        observed(Status::True, reasons::PROGRAMMED, format!("{fraction} proxies run{generation}"))
    } else {
        let refused = if counts.refusals.is_empty() {
            String::new()
        } else {
            format!("; refused: {}", counts.refusals.join("; "))
        };
        observed(Status::False, reasons::PENDING, format!("{fraction} proxies run{generation}{refused}"))
    }
}

/// The conditions to write: one per observed condition, in the order given. A condition whose
/// status did not change keeps its previous lastTransitionTime.
pub fn merge(
    previous: &[Condition],
    observed: Vec<Observed>,
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    observed
        .into_iter()
        .map(|o| {
            let status = o.status.as_str();
            let last_transition_time = previous
                .iter()
                .find(|p| p.type_ == o.type_ && p.status == status)
                .map_or_else(|| now.clone(), |p| p.last_transition_time.clone());
            Condition {
                type_: o.type_.to_owned(),
                status: status.to_owned(),
                reason: o.reason.to_owned(),
                message: o.message,
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).expect("valid timestamp"))
    }

    fn accepted(status: Status) -> Observed {
        Observed { type_: "Accepted", status, reason: "R", message: "m".into() }
    }

    #[test]
    fn transition_time_moves_only_when_the_status_flips() {
        let first = merge(&[], vec![accepted(Status::True)], Some(1), &at(100));
        assert_eq!(first[0].last_transition_time, at(100));
        assert_eq!(first[0].observed_generation, Some(1));

        let same = merge(&first, vec![accepted(Status::True)], Some(2), &at(200));
        assert_eq!(same[0].last_transition_time, at(100), "unchanged status keeps its time");
        assert_eq!(same[0].observed_generation, Some(2), "generation always follows the spec");

        let flipped = merge(&same, vec![accepted(Status::False)], Some(3), &at(300));
        assert_eq!(flipped[0].last_transition_time, at(300));
        assert_eq!(flipped[0].status, "False");
    }
}
