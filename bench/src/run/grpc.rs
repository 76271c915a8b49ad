//! The gRPC origin (grpc-echo of e2e/apps: unary Echo and server-streaming EchoRepeat) and ghz,
//! the gRPC load generator that calls it.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::thread::sleep;
use std::time::Duration;

use anyhow::{Result, bail};
use tracing::info;

use super::Bench;
use crate::commands::{succeeds, tail_logs};
use crate::tools;

/// The service of e2e/apps/proto/echo.proto, as ghz names its methods.
const SERVICE: &str = "braid.echo.v1.Echo";

/// What each call of a gRPC run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcCall {
    /// Echo: one request, one reply.
    Unary,
    /// EchoRepeat: one request answered `replies` times (1 to 100,000; grpc-echo refuses any
    /// other count with INVALID_ARGUMENT) on one stream; the call ends with the last reply.
    ServerStream { replies: u32 },
}

impl Bench {
    /// Starts grpc-echo (release build, made when missing), the gRPC origin, on CPU 0 as the HTTP
    /// origin is; its port, once it answers a unary call.
    pub fn start_grpc_origin(&mut self) -> Result<u16> {
        let program = self.path("target/release/grpc-echo");
        if !program.is_file() {
            info!("building grpc-echo (release), the gRPC origin");
            tools::run(
                Command::new("cargo")
                    .args([
                        "build",
                        "--release",
                        "--locked",
                        "-q",
                        "-p",
                        "braid-testapps",
                        "--bin",
                        "grpc-echo",
                    ])
                    .current_dir(&self.root),
            )?;
        }
        let port = self.free_ports(1)?[0];
        let dir = self.work.join("grpc-origin");
        fs::create_dir_all(&dir)?;
        let addr = format!("127.0.0.1:{port}");
        let args: Vec<String> = [
            "--listen",
            &addr,
            "--name",
            "grpc-origin",
            // The run stops it with SIGTERM: no callers are left to drain by then.
            "--drain-timeout",
            "1s",
        ]
        .map(String::from)
        .to_vec();
        // warn: its info lines say only that it started; per-call lines are at debug.
        let env = [("RUST_LOG", "warn".to_string()), ("POD_NAME", "grpc-origin".to_string())];
        self.start(0, &dir.join("stderr.log"), &program, &args, &env)?;
        self.wait_grpc(&program, &addr, &dir)?;
        info!("gRPC origin up: grpc-echo on :{port}");
        Ok(port)
    }

    /// Waits until a unary Echo to `addr` succeeds (grpc-echo's own client); else shows the logs
    /// in `dir` and fails.
    fn wait_grpc(&self, grpc_echo: &Path, addr: &str, dir: &Path) -> Result<()> {
        let program = grpc_echo.to_string_lossy();
        for _ in 0..self.ready_seconds * 10 {
            if succeeds(&program, &["call", addr, "--message", "ready", "--log", "error"]) {
                return Ok(());
            }
            sleep(Duration::from_millis(100));
        }
        bail!("no gRPC answer from {addr}; logs in {}:\n{}", dir.display(), tail_logs(dir))
    }

    /// The ghz command of `call`s to `target` ("host:port", plaintext HTTP/2) for `duration` ("30s"),
    /// pinned to CPU 0 like the other load generators, inside network namespace `netns` or here;
    /// its JSON report goes to stdout (`load::parse_ghz` reads it). That report lists every call
    /// (about 90 bytes each, for the first million calls): a long closed-loop run writes tens of MB.
    ///
    /// Each request carries a message of `message_bytes` ASCII characters. The request travels on
    /// ghz's command line, so past about 128 KiB (Linux's limit on one argument) ghz cannot start.
    /// `rate` paces the calls per second; None is the closed loop, each of the `concurrency`
    /// workers calling again as soon as its call ends. The workers share `connections` HTTP/2
    /// connections (ghz refuses more connections than workers).
    ///
    /// Paced, ghz does not correct for coordinated omission as oha's `--latency-correction` does:
    /// a call's latency counts from when it was sent, not from when the schedule meant to send it,
    /// so a stall shows as fewer calls (compare the achieved rate with `rate`) rather than as
    /// longer latencies.
    ///
    /// ghz's path is `self.tools.ghz`; without one, "ghz" on PATH.
    #[allow(clippy::too_many_arguments)] // each is a knob of the run
    pub fn ghz_in(
        &self,
        netns: Option<&str>,
        target: &str,
        call: GrpcCall,
        message_bytes: usize,
        rate: Option<u32>,
        duration: &str,
        concurrency: u32,
        connections: u32,
    ) -> Command {
        let ghz = self.tools.ghz.as_deref().unwrap_or(Path::new("ghz"));
        let mut command = self.on_cpu0_in(netns, ghz);
        let message = "x".repeat(message_bytes);
        let (method, data) = match call {
            GrpcCall::Unary => ("Echo", serde_json::json!({ "message": message })),
            GrpcCall::ServerStream { replies } => {
                ("EchoRepeat", serde_json::json!({ "message": message, "count": replies }))
            }
        };
        command.arg("--insecure").arg("--proto").arg(self.path("e2e/apps/proto/echo.proto")).args([
            "--call",
            &format!("{SERVICE}/{method}"),
            "-d",
            &data.to_string(),
        ]);
        if let Some(rate) = rate {
            command.args(["--rps", &rate.to_string()]);
        }
        command.args([
            "-z",
            duration,
            // Calls in flight at the end finish and count, as oha's -w lets them; ghz's default
            // closes the connections under them and reports each as failed (Canceled or
            // Unavailable).
            "--duration-stop",
            "wait",
            "-c",
            &concurrency.to_string(),
            "--connections",
            &connections.to_string(),
            "--format",
            "json",
            target,
        ]);
        command
    }
}
