//! Every transition of the rollout, each as a row: a state, what happens, what must follow.

use super::*;

const REV: &str = "rev-1";

fn settings() -> Settings {
    Settings {
        stable: "web-v1".into(),
        canary: "web-v2".into(),
        steps: vec![10, 25, 50],
        interval: Duration::from_secs(10),
        min_success_rate: 99.0,
        max_latency_ms: Some(200.0),
        failure_threshold: 3,
        min_requests: 20,
    }
}

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_000_000 + seconds).expect("valid timestamp")
}

fn state(phase: CanaryPhase, step: i32, weight: i32, failed: i32, last_check: i64) -> CanaryStatus {
    CanaryStatus {
        phase,
        revision: REV.into(),
        step,
        weight,
        failed_checks: failed,
        last_check_time: Some(Time(at(last_check))),
        last_transition_time: Some(Time(at(0))),
        canary_metrics: None,
        stable_metrics: None,
        steering: None,
        message: String::new(),
    }
}

fn healthy(requests: u64) -> Measurement {
    Measurement {
        canary: Window { requests, failures: 0, p99_ms: Some(12.0) },
        stable: Window { requests: requests * 9, failures: 0, p99_ms: Some(11.0) },
    }
}

fn failing() -> Measurement {
    Measurement {
        canary: Window { requests: 200, failures: 40, p99_ms: Some(12.0) },
        stable: Window { requests: 1800, failures: 0, p99_ms: Some(11.0) },
    }
}

fn slow() -> Measurement {
    Measurement {
        canary: Window { requests: 200, failures: 0, p99_ms: Some(250.0) },
        stable: Window { requests: 1800, failures: 0, p99_ms: Some(11.0) },
    }
}

struct Row {
    name: &'static str,
    previous: Option<CanaryStatus>,
    revision: &'static str,
    measurement: Option<Measurement>,
    now: i64,
    steering: Option<&'static str>,
    // What must follow.
    phase: CanaryPhase,
    step: i32,
    weight: i32,
    failed: i32,
    events: &'static [&'static str],
    judged: bool,
    next_check: Option<u64>,
    outcome: Option<&'static str>,
    message_has: &'static str,
}

fn row(name: &'static str) -> Row {
    Row {
        name,
        previous: None,
        revision: REV,
        measurement: Some(healthy(100)),
        now: 10,
        steering: None,
        phase: CanaryPhase::Progressing,
        step: 1,
        weight: 10,
        failed: 0,
        events: &[],
        judged: false,
        next_check: Some(10),
        outcome: None,
        message_has: "",
    }
}

fn steered(previous: CanaryStatus, value: &str) -> CanaryStatus {
    CanaryStatus { steering: Some(value.to_owned()), ..previous }
}

fn rows() -> Vec<Row> {
    use CanaryPhase::*;
    vec![
        Row {
            previous: None,
            now: 0,
            events: &["RolloutStarted"],
            message_has: "step 1/3: 10% to web-v2, 90% to web-v1",
            ..row("a new route starts at the first step")
        },
        Row {
            previous: Some(state(Progressing, 2, 25, 0, 0)),
            now: 3,
            next_check: Some(7),
            step: 2,
            weight: 25,
            ..row("restart mid-step: the state comes from the status, no second step, next check on time")
        },
        Row {
            previous: Some(state(Progressing, 1, 10, 0, 0)),
            measurement: Some(healthy(5)),
            phase: Waiting,
            events: &["Waiting"],
            judged: true,
            message_has: "5 request(s) to web-v2 in the last interval, fewer than minRequests 20",
            ..row("no traffic: fewer than minRequests neither passes nor fails, and says so")
        },
        Row {
            previous: Some(state(Waiting, 1, 10, 1, 0)),
            measurement: Some(healthy(0)),
            phase: Waiting,
            failed: 1,
            events: &[],
            judged: true,
            ..row("still no traffic: no new event, the failed checks so far are kept")
        },
        Row {
            previous: Some(state(Waiting, 1, 10, 0, 0)),
            events: &["StepAdvanced"],
            judged: true,
            step: 2,
            weight: 25,
            message_has: "check passed (success rate 100.00%, p99 12ms over 100 request(s)); step 2/3: 25% to web-v2",
            ..row("traffic again after waiting: judged and advanced")
        },
        Row {
            previous: Some(state(Progressing, 1, 10, 2, 0)),
            events: &["StepAdvanced"],
            judged: true,
            step: 2,
            weight: 25,
            ..row("a healthy step advances and clears the failed checks")
        },
        Row {
            previous: Some(state(Progressing, 3, 50, 0, 0)),
            events: &["Promoted"],
            judged: true,
            phase: Promoted,
            step: 3,
            weight: 100,
            next_check: None,
            outcome: Some(reasons::PROMOTED),
            message_has: "promoted after 3 step(s)",
            ..row("the last step passed: promoted, canary at 100")
        },
        Row {
            previous: Some(state(Progressing, 2, 25, 0, 0)),
            measurement: Some(failing()),
            events: &["CheckFailed"],
            judged: true,
            step: 2,
            weight: 25,
            failed: 1,
            message_has: "success rate 80.00% < minSuccessRate 99%",
            ..row("a failed check holds the step and counts")
        },
        Row {
            previous: Some(state(Progressing, 2, 25, 1, 0)),
            measurement: Some(slow()),
            events: &["CheckFailed"],
            judged: true,
            step: 2,
            weight: 25,
            failed: 2,
            message_has: "p99 250ms > maxLatencyMs 200",
            ..row("latency above the threshold fails the check")
        },
        Row {
            previous: Some(state(Progressing, 2, 25, 2, 0)),
            measurement: Some(failing()),
            events: &["RolledBack"],
            judged: true,
            phase: RolledBack,
            step: 2,
            weight: 0,
            failed: 3,
            next_check: None,
            outcome: Some(reasons::FAILED_CHECKS),
            message_has: "rolled back after 3 failed check(s) in a row",
            ..row("failureThreshold failed checks in a row: rolled back, canary at 0")
        },
        Row {
            previous: Some(state(Progressing, 2, 25, 1, 0)),
            measurement: None,
            step: 2,
            weight: 25,
            failed: 1,
            judged: true,
            ..row("a new leader with no start for the interval restarts the interval, same step")
        },
        Row {
            previous: Some(state(Progressing, 2, 25, 1, 0)),
            measurement: Some(Measurement::default()),
            phase: Waiting,
            step: 2,
            weight: 25,
            failed: 1,
            events: &["Waiting"],
            judged: true,
            message_has: "0 request(s)",
            ..row("nothing measured at all: waits")
        },
        Row {
            previous: Some(state(Progressing, 3, 50, 0, 0)),
            revision: "rev-2",
            now: 10,
            events: &["RolloutStarted"],
            judged: false,
            message_has: "the canary block changed",
            ..row("a spec change mid-rollout starts a new run at the first step")
        },
        Row {
            previous: Some(state(Promoted, 3, 100, 0, 0)),
            revision: "rev-2",
            now: 500,
            events: &["RolloutStarted"],
            ..row("a spec change after a finished run starts a new run")
        },
        Row {
            previous: Some(state(Promoted, 3, 100, 0, 0)),
            now: 500,
            measurement: Some(failing()),
            phase: Promoted,
            step: 3,
            weight: 100,
            next_check: None,
            ..row("a promoted run stays promoted whatever the traffic does")
        },
        Row {
            previous: Some(state(RolledBack, 2, 0, 3, 0)),
            now: 500,
            phase: RolledBack,
            step: 2,
            weight: 0,
            failed: 3,
            next_check: None,
            ..row("a rolled-back run stays rolled back")
        },
        Row {
            previous: Some(state(RolledBack, 2, 0, 3, 0)),
            steering: Some("promote"),
            phase: RolledBack,
            step: 2,
            weight: 0,
            failed: 3,
            next_check: None,
            events: &["SteeringIgnored"],
            ..row("steering a finished run is ignored and says so")
        },
        Row {
            previous: Some(state(Progressing, 2, 25, 0, 0)),
            now: 4,
            steering: Some("pause"),
            phase: Paused,
            step: 2,
            weight: 25,
            next_check: None,
            events: &["Paused"],
            message_has: "paused by the braid.dev/canary annotation at step 2/3, 25% to web-v2",
            ..row("pause holds the weight and stops the checks")
        },
        Row {
            previous: Some(steered(state(Paused, 2, 25, 0, 0), "pause")),
            now: 100,
            steering: Some("pause"),
            measurement: Some(failing()),
            phase: Paused,
            step: 2,
            weight: 25,
            next_check: None,
            ..row("while paused nothing is judged, however long")
        },
        Row {
            previous: Some(steered(state(Paused, 2, 25, 0, 0), "pause")),
            now: 100,
            steering: Some("resume"),
            step: 2,
            weight: 25,
            events: &["Resumed"],
            judged: true,
            next_check: Some(10),
            ..row("resume carries on at the same step with a fresh interval")
        },
        Row {
            previous: Some(steered(state(Paused, 2, 25, 0, 0), "pause")),
            now: 100,
            steering: None,
            step: 2,
            weight: 25,
            events: &["Resumed"],
            judged: true,
            next_check: Some(10),
            ..row("removing the annotation resumes too")
        },
        Row {
            previous: Some(state(Progressing, 1, 10, 0, 0)),
            now: 2,
            steering: Some("promote"),
            phase: Promoted,
            weight: 100,
            next_check: None,
            events: &["Promoted"],
            outcome: Some(reasons::PROMOTED_BY_USER),
            message_has: "promoted by the braid.dev/canary annotation at step 1/3",
            ..row("promote now")
        },
        Row {
            previous: Some(steered(state(Paused, 2, 25, 0, 0), "pause")),
            now: 2,
            steering: Some("abort"),
            phase: RolledBack,
            step: 2,
            weight: 0,
            next_check: None,
            events: &["RolledBack"],
            outcome: Some(reasons::ABORTED),
            ..row("abort, even while paused")
        },
        Row {
            previous: Some(steered(state(Progressing, 1, 10, 0, 0), "promote")),
            revision: "rev-2",
            now: 0,
            steering: Some("promote"),
            events: &["RolloutStarted"],
            ..row("a promote left from the last run is not replayed on a new one")
        },
        Row {
            previous: Some(state(Progressing, 1, 10, 0, 0)),
            now: 2,
            steering: Some("faster please"),
            next_check: Some(8),
            events: &["BadSteering"],
            ..row("a bad annotation is reported once and ignored")
        },
        Row {
            previous: Some(steered(state(Progressing, 1, 10, 0, 0), "faster please")),
            now: 2,
            steering: Some("faster please"),
            next_check: Some(8),
            ..row("... and not reported again")
        },
    ]
}

#[test]
fn every_transition() {
    let settings = settings();
    for row in rows() {
        let out = decide(Input {
            settings: &settings,
            revision: row.revision,
            previous: row.previous.as_ref(),
            measurement: row.measurement.as_ref(),
            now: at(row.now),
            steering: row.steering,
        });
        let name = row.name;
        assert_eq!(out.status.phase, row.phase, "{name}: phase");
        assert_eq!(out.status.step, row.step, "{name}: step");
        assert_eq!(out.status.weight, row.weight, "{name}: weight");
        assert_eq!(out.status.failed_checks, row.failed, "{name}: failed checks");
        assert_eq!(out.status.revision, row.revision, "{name}: revision");
        let events: Vec<&str> = out.events.iter().map(|e| e.reason).collect();
        assert_eq!(events, row.events, "{name}: events");
        assert_eq!(out.judged, row.judged, "{name}: judged");
        assert_eq!(out.next_check, row.next_check.map(Duration::from_secs), "{name}: next check");
        assert_eq!(out.outcome, row.outcome, "{name}: outcome");
        assert!(out.status.message.contains(row.message_has), "{name}: message {:?}", out.status.message);
        let check = match events.first() {
            Some(&"StepAdvanced") => Some(Check::Passed),
            Some(&"Promoted") if row.outcome == Some(reasons::PROMOTED) => Some(Check::Passed),
            Some(&"CheckFailed") => Some(Check::Failed),
            Some(&"RolledBack") if row.outcome == Some(reasons::FAILED_CHECKS) => Some(Check::Failed),
            _ if row.judged && out.status.phase == CanaryPhase::Waiting => Some(Check::TooFewRequests),
            _ => None,
        };
        assert_eq!(out.check, check, "{name}: check");
        let warned = out.events.iter().any(|e| e.warning);
        let expect_warning = events.iter().any(|r| ["CheckFailed", "RolledBack", "BadSteering"].contains(r));
        assert_eq!(warned, expect_warning, "{name}: Warning events are failures and refusals");
    }
}

#[test]
fn a_judged_check_records_both_backends_and_the_time() {
    let settings = settings();
    let previous = state(CanaryPhase::Progressing, 1, 10, 0, 0);
    let out = decide(Input {
        settings: &settings,
        revision: REV,
        previous: Some(&previous),
        measurement: Some(&failing()),
        now: at(12),
        steering: None,
    });
    let canary = out.status.canary_metrics.expect("canary measured");
    assert_eq!(
        (canary.requests, canary.success_rate.as_deref(), canary.p99.as_deref()),
        (200, Some("80.00%"), Some("12ms"))
    );
    let stable = out.status.stable_metrics.expect("stable measured");
    assert_eq!((stable.requests, stable.success_rate.as_deref()), (1800, Some("100.00%")));
    assert_eq!(out.status.last_check_time, Some(Time(at(12))));
    assert_eq!(out.status.last_transition_time, Some(Time(at(0))), "still Progressing: no transition");
}

#[test]
fn a_whole_healthy_rollout_takes_one_check_per_step() {
    let settings = settings();
    let mut status: Option<CanaryStatus> = None;
    let mut weights = Vec::new();
    for t in (0..=40).step_by(10) {
        let out = decide(Input {
            settings: &settings,
            revision: REV,
            previous: status.as_ref(),
            measurement: Some(&healthy(100)),
            now: at(t),
            steering: None,
        });
        // A second decision at the same moment (another event) changes nothing.
        let again = decide(Input {
            settings: &settings,
            revision: REV,
            previous: Some(&out.status),
            measurement: Some(&healthy(100)),
            now: at(t),
            steering: None,
        });
        assert_eq!(again.status, out.status, "no double step at t={t}");
        weights.push(out.status.weight);
        status = Some(out.status);
    }
    assert_eq!(weights, [10, 25, 50, 100, 100]);
}

#[test]
fn settings_come_from_the_spec_and_bad_ones_are_refused() {
    let canary: braid_crds::meshroute::Canary = serde_json::from_value(serde_json::json!({
        "stable": "a", "canary": "b", "steps": [10, 50], "interval": "30s"
    }))
    .expect("canary");
    let settings = Settings::from_spec(&canary).expect("valid");
    assert_eq!(settings.interval, Duration::from_secs(30));
    assert_eq!((settings.min_success_rate, settings.failure_threshold, settings.min_requests), (99.0, 3, 20));
    let zero = braid_crds::meshroute::Canary { interval: "0s".into(), ..canary.clone() };
    assert!(Settings::from_spec(&zero).unwrap_err().contains("longer than 0"));
    let unreadable = braid_crds::meshroute::Canary { interval: "5s5s".into(), ..canary };
    assert!(Settings::from_spec(&unreadable).is_err());
}
