//! Flags the binaries share.

use std::time::Duration;

use braid_runtime::LogFormat;
use clap::Args;
use http::StatusCode;

use crate::faults::{Faults, parse_duration, parse_fail_status, parse_rate};

#[derive(Args, Debug, Clone)]
pub struct LogArgs {
    /// Log filter (RUST_LOG syntax); per-request lines are at debug.
    #[arg(long, env = "RUST_LOG", default_value = "info", global = true)]
    pub log: String,
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "plain", global = true)]
    pub log_format: LogFormat,
}

/// What the servers inject; each can be overridden per request by an `x-echo-*` header.
#[derive(Args, Debug, Clone)]
pub struct FaultArgs {
    /// Fraction of requests (0 to 1) answered with --fail-status (gRPC: UNAVAILABLE) instead of
    /// the echo. Header x-echo-fail-rate.
    #[arg(long, env = "FAIL_RATE", default_value = "0", value_parser = parse_rate)]
    pub fail_rate: f64,
    /// The HTTP status of a failed request, 400-599. Header x-echo-fail-status.
    #[arg(long, env = "FAIL_STATUS", default_value = "500", value_parser = parse_fail_status)]
    pub fail_status: StatusCode,
    /// How long a delayed request waits before it is answered ("500ms", "6s"). Header x-echo-delay.
    #[arg(long, env = "DELAY", default_value = "0s", value_parser = parse_duration)]
    pub delay: Duration,
    /// Fraction of requests (0 to 1) that are delayed by --delay. Header x-echo-delay-rate.
    #[arg(long, env = "DELAY_RATE", default_value = "1", value_parser = parse_rate)]
    pub delay_rate: f64,
}

impl FaultArgs {
    pub fn faults(&self) -> Faults {
        Faults {
            fail_rate: self.fail_rate,
            fail_status: self.fail_status,
            delay: self.delay,
            delay_rate: self.delay_rate,
        }
    }
}

/// Who a server says it is: the name and version the load client counts by, and the pod.
#[derive(Args, Debug, Clone)]
pub struct IdentityArgs {
    /// The app's name, reported in every answer.
    #[arg(long, env = "APP_NAME", default_value = "echo")]
    pub name: String,
    /// The app's version, reported in every answer (the load client counts by name and version).
    #[arg(long = "app-version", env = "APP_VERSION", default_value = "v1")]
    pub app_version: String,
    /// The pod's name (downward API); defaults to $HOSTNAME, which Kubernetes sets to it.
    #[arg(long, env = "POD_NAME")]
    pub pod: Option<String>,
}

impl IdentityArgs {
    pub fn pod(&self) -> String {
        self.pod.clone().or_else(|| std::env::var("HOSTNAME").ok()).unwrap_or_default()
    }
}

/// How a server stops on SIGTERM.
#[derive(Args, Debug, Clone)]
pub struct ShutdownArgs {
    /// After SIGTERM, keep serving this long (health checks answer 503) before closing the
    /// listener, so that endpoints stop sending new connections first.
    #[arg(long, env = "SHUTDOWN_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,
    /// Then how long in-flight requests may take before their connections are closed.
    #[arg(long, env = "DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}
