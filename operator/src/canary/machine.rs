//! The rollout as a pure function: (state, measurement, clock, spec, steering) → (next state,
//! effective weight, events). The state is the route's `status.canary` and nothing else, so an
//! operator that restarts or takes over the lead carries on exactly where the last one stopped.

use std::time::Duration;

use braid_crds::{
    conditions::reasons,
    meshroute::{BackendMetrics, Canary, CanaryPhase, CanaryStatus},
};
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

/// The canary block, read once: what the machine needs of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub stable: String,
    pub canary: String,
    pub steps: Vec<i32>,
    pub interval: Duration,
    /// Percent.
    pub min_success_rate: f64,
    pub max_latency_ms: Option<f64>,
    pub failure_threshold: i32,
    pub min_requests: u64,
}

impl Settings {
    /// Fails on what validation refuses too (an unreadable interval, no steps): such a route is
    /// not accepted, so no rollout runs for it.
    pub fn from_spec(canary: &Canary) -> Result<Self, String> {
        let interval = braid_crds::duration::parse_duration(&canary.interval).map_err(|e| e.to_string())?;
        if interval.is_zero() {
            return Err("spec.canary.interval must be longer than 0".to_owned());
        }
        if canary.steps.is_empty() {
            return Err("spec.canary.steps needs at least one step".to_owned());
        }
        Ok(Self {
            stable: canary.stable.clone(),
            canary: canary.canary.clone(),
            steps: canary.steps.clone(),
            interval,
            min_success_rate: f64::from(canary.min_success_rate),
            max_latency_ms: canary.max_latency_ms.map(f64::from),
            failure_threshold: canary.failure_threshold.max(1),
            min_requests: u64::try_from(canary.min_requests).unwrap_or(1).max(1),
        })
    }

    fn steps_len(&self) -> i32 {
        i32::try_from(self.steps.len()).unwrap_or(i32::MAX)
    }

    /// The weight of step `step` (1-based).
    fn weight_of(&self, step: i32) -> i32 {
        usize::try_from(step - 1).ok().and_then(|i| self.steps.get(i)).copied().unwrap_or(0)
    }
}

/// One backend over one interval, summed over every proxy that called it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Window {
    pub requests: u64,
    pub failures: u64,
    /// None when there were no requests.
    pub p99_ms: Option<f64>,
}

impl Window {
    /// Percent of requests that did not fail; None without requests.
    pub fn success_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| {
            let ok = self.requests.saturating_sub(self.failures.min(self.requests));
            ok as f64 * 100.0 / self.requests as f64
        })
    }

    fn as_status(&self) -> BackendMetrics {
        BackendMetrics {
            requests: i64::try_from(self.requests).unwrap_or(i64::MAX),
            success_rate: self.success_rate().map(|rate| format!("{rate:.2}%")),
            p99: self.p99_ms.map(format_ms),
        }
    }
}

fn format_ms(ms: f64) -> String {
    if ms >= 10.0 { format!("{ms:.0}ms") } else { format!("{ms:.1}ms") }
}

/// What the proxies measured since the last check.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Measurement {
    pub canary: Window,
    pub stable: Window,
}

/// What the braid.dev/canary annotation asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steering {
    /// Hold the rollout at its weight; no checks run (level: while the annotation says so).
    Pause,
    /// Carry on after a pause (the same as removing the annotation).
    Resume,
    /// End the run now with the canary at 100 (edge: once, when the annotation takes the value).
    Promote,
    /// End the run now with the canary at 0 (edge, like promote).
    Abort,
}

impl Steering {
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.trim() {
            "pause" => Ok(Self::Pause),
            "resume" => Ok(Self::Resume),
            "promote" => Ok(Self::Promote),
            "abort" => Ok(Self::Abort),
            other => Err(format!(
                "annotation {}={other:?} is not one of pause, resume, promote, abort; ignored",
                braid_crds::conditions::CANARY_ANNOTATION
            )),
        }
    }
}

/// Everything one decision depends on.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub settings: &'a Settings,
    /// The digest of the canary block now (see `weights::revision`).
    pub revision: &'a str,
    pub previous: Option<&'a CanaryStatus>,
    /// What the proxies measured since this operator's last check; None when this operator
    /// has no start for the interval (it just started or took the lead): the interval then
    /// starts now instead of being judged on a part of it.
    pub measurement: Option<&'a Measurement>,
    pub now: Timestamp,
    /// The braid.dev/canary annotation, as written.
    pub steering: Option<&'a str>,
}

/// An Event to record on the route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

/// Why a run ended, when it ended in this decision (the Promoted/RolledBack condition reason).
pub type Outcome = &'static str;

/// How a judged interval went (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Passed,
    Failed,
    /// Fewer than minRequests to the canary.
    TooFewRequests,
}

impl Check {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Failed => "failed",
            Self::TooFewRequests => "too_few_requests",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub status: CanaryStatus,
    pub events: Vec<Event>,
    /// The measurement was judged (or found too thin): the next interval starts now.
    pub judged: bool,
    /// When the machine wants to run again; None when only a change (spec, annotation) can
    /// move the rollout (paused or finished).
    pub next_check: Option<Duration>,
    /// Set when the run ended in this decision.
    pub outcome: Option<Outcome>,
    /// Set when an interval was judged.
    pub check: Option<Check>,
}

fn time(at: Timestamp) -> Time {
    Time(at)
}

/// The next state of the rollout.
pub fn decide(input: Input<'_>) -> Output {
    let Input { settings, revision, previous, measurement, now, steering } = input;
    let annotation = steering.map(str::trim).filter(|s| !s.is_empty());
    let mut events = Vec::new();
    let steps = settings.steps_len();

    let mut status = match previous {
        Some(previous) if previous.revision == revision => previous.clone(),
        _ => {
            let weight = settings.weight_of(1);
            let why =
                if previous.is_some() { "the canary block changed: new rollout" } else { "rollout started" };
            let message = format!(
                "{why}; step 1/{steps}: {weight}% to {}, {}% to {}; first check in {}",
                settings.canary,
                100 - weight,
                settings.stable,
                humantime(settings.interval)
            );
            events.push(Event { warning: false, reason: "RolloutStarted", message: message.clone() });
            CanaryStatus {
                phase: CanaryPhase::Progressing,
                revision: revision.to_owned(),
                step: 1,
                weight,
                failed_checks: 0,
                last_check_time: Some(time(now)),
                last_transition_time: Some(time(now)),
                canary_metrics: None,
                stable_metrics: None,
                // A command left on the route from an earlier run is not replayed on this one.
                steering: annotation.map(str::to_owned),
                message,
            }
        }
    };
    let mut outcome = None;
    let new_command = annotation != status.steering.as_deref();
    let parsed = annotation.map(Steering::parse).transpose();
    let wanted = match parsed {
        Ok(wanted) => wanted,
        Err(why) => {
            if new_command {
                events.push(Event { warning: true, reason: "BadSteering", message: why });
                status.steering = annotation.map(str::to_owned);
            }
            None
        }
    };

    if status.phase.is_finished() {
        if new_command && wanted.is_some() {
            events.push(Event {
                warning: false,
                reason: "SteeringIgnored",
                message: format!(
                    "{}={} ignored: this rollout is {}; change spec.canary to start a new one",
                    braid_crds::conditions::CANARY_ANNOTATION,
                    annotation.unwrap_or_default(),
                    status.phase.as_str()
                ),
            });
            status.steering = annotation.map(str::to_owned);
        }
        return Output { status, events, judged: false, next_check: None, outcome, check: None };
    }

    if new_command {
        status.steering = annotation.map(str::to_owned);
        // Promote or abort now: the run ends with everything to one side.
        let ending = match wanted {
            Some(Steering::Promote) => {
                Some(("promoted", CanaryPhase::Promoted, &settings.canary, reasons::PROMOTED_BY_USER))
            }
            Some(Steering::Abort) => {
                Some(("aborted", CanaryPhase::RolledBack, &settings.stable, reasons::ABORTED))
            }
            _ => None,
        };
        if let Some((verb, phase, to, reason)) = ending {
            let message = format!(
                "{verb} by the {} annotation at step {}/{steps}: 100% to {to}",
                braid_crds::conditions::CANARY_ANNOTATION,
                status.step,
            );
            finish(&mut status, phase, now, message);
            let (warning, event) = match phase {
                CanaryPhase::Promoted => (false, "Promoted"),
                _ => (true, "RolledBack"),
            };
            events.push(Event { warning, reason: event, message: status.message.clone() });
            outcome = Some(reason);
            return Output { status, events, judged: false, next_check: None, outcome, check: None };
        }
    }

    let pause = wanted == Some(Steering::Pause);
    if pause {
        if status.phase != CanaryPhase::Paused {
            set_phase(&mut status, CanaryPhase::Paused, now);
            status.message = format!(
                "paused by the {} annotation at step {}/{steps}, {}% to {}",
                braid_crds::conditions::CANARY_ANNOTATION,
                status.step,
                status.weight,
                settings.canary
            );
            events.push(Event { warning: false, reason: "Paused", message: status.message.clone() });
        }
        return Output { status, events, judged: false, next_check: None, outcome, check: None };
    }
    if status.phase == CanaryPhase::Paused {
        set_phase(&mut status, CanaryPhase::Progressing, now);
        // A fresh interval: what happened while paused is not judged.
        status.last_check_time = Some(time(now));
        status.message = format!(
            "resumed at step {}/{steps}, {}% to {}; next check in {}",
            status.step,
            status.weight,
            settings.canary,
            humantime(settings.interval)
        );
        events.push(Event { warning: false, reason: "Resumed", message: status.message.clone() });
        return Output {
            status,
            events,
            judged: true,
            next_check: Some(settings.interval),
            outcome,
            check: None,
        };
    }

    // Not due: a restart, a leader change or another event mid-step changes nothing.
    let last = status.last_check_time.as_ref().map_or(now, |t| t.0);
    let elapsed = now.duration_since(last).try_into().unwrap_or(Duration::ZERO);
    if elapsed < settings.interval {
        return Output {
            status,
            events,
            judged: false,
            next_check: Some(settings.interval - elapsed),
            outcome,
            check: None,
        };
    }

    let Some(&measurement) = measurement else {
        status.last_check_time = Some(time(now));
        return Output {
            status,
            events,
            judged: true,
            next_check: Some(settings.interval),
            outcome,
            check: None,
        };
    };
    status.last_check_time = Some(time(now));
    status.canary_metrics = Some(measurement.canary.as_status());
    status.stable_metrics = Some(measurement.stable.as_status());
    let at = format!("step {}/{steps}, {}% to {}", status.step, status.weight, settings.canary);

    if measurement.canary.requests < settings.min_requests {
        let message = format!(
            "{} request(s) to {} in the last interval, fewer than minRequests {}: waiting at {at}",
            measurement.canary.requests, settings.canary, settings.min_requests
        );
        if status.phase != CanaryPhase::Waiting {
            set_phase(&mut status, CanaryPhase::Waiting, now);
            events.push(Event { warning: false, reason: "Waiting", message: message.clone() });
        }
        status.message = message;
        return Output {
            status,
            events,
            judged: true,
            next_check: Some(settings.interval),
            outcome,
            check: Some(Check::TooFewRequests),
        };
    }
    set_phase(&mut status, CanaryPhase::Progressing, now);

    let mut missed = Vec::new();
    let rate = measurement.canary.success_rate().unwrap_or(0.0);
    if rate < settings.min_success_rate {
        missed.push(format!("success rate {rate:.2}% < minSuccessRate {}%", settings.min_success_rate));
    }
    if let (Some(max), Some(p99)) = (settings.max_latency_ms, measurement.canary.p99_ms)
        && p99 > max
    {
        missed.push(format!("p99 {} > maxLatencyMs {max}", format_ms(p99)));
    }

    if !missed.is_empty() {
        status.failed_checks += 1;
        let why = missed.join(", ");
        if status.failed_checks >= settings.failure_threshold {
            let message = format!(
                "rolled back after {} failed check(s) in a row ({why}): 100% to {}",
                status.failed_checks, settings.stable
            );
            finish(&mut status, CanaryPhase::RolledBack, now, message);
            events.push(Event { warning: true, reason: "RolledBack", message: status.message.clone() });
            outcome = Some(reasons::FAILED_CHECKS);
            return Output {
                status,
                events,
                judged: true,
                next_check: None,
                outcome,
                check: Some(Check::Failed),
            };
        }
        status.message = format!(
            "check failed ({why}), {}/{} failed in a row; holding at {at}",
            status.failed_checks, settings.failure_threshold
        );
        events.push(Event { warning: true, reason: "CheckFailed", message: status.message.clone() });
        return Output {
            status,
            events,
            judged: true,
            next_check: Some(settings.interval),
            outcome,
            check: Some(Check::Failed),
        };
    }

    status.failed_checks = 0;
    let health = format!(
        "success rate {}, p99 {} over {} request(s)",
        status.canary_metrics.as_ref().and_then(|m| m.success_rate.clone()).unwrap_or_default(),
        status.canary_metrics.as_ref().and_then(|m| m.p99.clone()).unwrap_or_else(|| "-".to_owned()),
        measurement.canary.requests
    );
    if status.step >= steps {
        finish(
            &mut status,
            CanaryPhase::Promoted,
            now,
            format!(
                "promoted after {steps} step(s) ({health}): 100% to {}; point the stable backend at it in the spec",
                settings.canary
            ),
        );
        events.push(Event { warning: false, reason: "Promoted", message: status.message.clone() });
        outcome = Some(reasons::PROMOTED);
        return Output {
            status,
            events,
            judged: true,
            next_check: None,
            outcome,
            check: Some(Check::Passed),
        };
    }
    status.step += 1;
    status.weight = settings.weight_of(status.step);
    status.message = format!(
        "check passed ({health}); step {}/{steps}: {}% to {}",
        status.step, status.weight, settings.canary
    );
    events.push(Event { warning: false, reason: "StepAdvanced", message: status.message.clone() });
    Output {
        status,
        events,
        judged: true,
        next_check: Some(settings.interval),
        outcome,
        check: Some(Check::Passed),
    }
}

fn set_phase(status: &mut CanaryStatus, phase: CanaryPhase, now: Timestamp) {
    if status.phase != phase {
        status.phase = phase;
        status.last_transition_time = Some(time(now));
    }
}

fn finish(status: &mut CanaryStatus, phase: CanaryPhase, now: Timestamp, message: String) {
    set_phase(status, phase, now);
    status.weight = if phase == CanaryPhase::Promoted { 100 } else { 0 };
    status.message = message;
}

/// "10s", "1m30s": how Kubernetes users write durations.
fn humantime(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs == 0 {
        return format!("{}ms", duration.as_millis());
    }
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut text = String::new();
    for (value, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if value > 0 {
            text.push_str(&format!("{value}{unit}"));
        }
    }
    text
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
