//! The admission webhook benchmark (first part of `make bench`): 50 concurrent TLS clients POST
//! the golden AdmissionReview of a plain pod to /inject of a release braid-webhook on the local
//! cluster (it reads namespace labels and the Mesh from it). Closed loop for the throughput, then
//! paced at PACED_RATE with coordinated-omission correction for the latency; RUNS runs of
//! SECONDS_PER_RUN each: medians, and the sum of errors over all runs. oha on CPU 0, the webhook
//! on CPU 1; VmRSS sampled idle and under load. bench/results/webhook-<timestamp>.json.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use braid_bench::webhook::{self, WebhookReport, WebhookRun};
use braid_bench::{load, system};
use tracing::info;

use super::{result_prefix_in, with};
use crate::run::{output, run_ok, succeeds, tail_logs};
use crate::tools;

pub struct WebhookKnobs {
    pub runs: u32,
    pub seconds_per_run: u32,
    pub paced_rate: u32,
}

const CLIENTS: u32 = 50;

/// Stops the webhook and removes the namespace the run made, however the run ends.
struct Cleanup {
    webhook: Option<Child>,
    kubectl: PathBuf,
    kubeconfig: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(child) = self.webhook.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new(&self.kubectl)
            .args(["delete", "namespace", "meshed", "--ignore-not-found", "--wait=false"])
            .env("KUBECONFIG", &self.kubeconfig)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).with_context(|| format!("braid-webhook ({pid}) exited"))?;
    Ok(system::parse_status_memory(&text, &path)?.0)
}

pub fn run(root: &Path, oha: &Path, knobs: &WebhookKnobs) -> Result<()> {
    let kubeconfig = output("bash", &[&root.join("e2e/cluster/cluster.sh").display().to_string(), "up"])?;
    let kubeconfig =
        PathBuf::from(kubeconfig.lines().last().context("cluster.sh up printed no kubeconfig path")?.trim());
    let kubectl = kubeconfig.parent().context("the kubeconfig has no folder")?.join("bin/kubectl");
    let kube = |args: &[&str]| -> Result<String> {
        let out = Command::new(&kubectl).args(args).env("KUBECONFIG", &kubeconfig).output()?;
        if !out.status.success() {
            bail!("kubectl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    tools::run(
        Command::new("cargo")
            .args(["build", "--release", "--locked", "-q", "-p", "braid-webhook"])
            .current_dir(root),
    )?;
    let scratch = tempfile::Builder::new().prefix("braid-bench-webhook.").tempdir()?;
    let work = scratch.path();
    let mut cleanup = Cleanup { webhook: None, kubectl: kubectl.clone(), kubeconfig: kubeconfig.clone() };
    // The review names namespace "meshed": make it exist, labelled, so no request waits on the API.
    let manifest = kube(&["create", "namespace", "meshed", "--dry-run=client", "-o", "yaml"])?;
    let applied = work.join("namespace.yaml");
    fs::write(&applied, manifest)?;
    kube(&["apply", "-f", &applied.display().to_string()])?;
    kube(&["label", "namespace", "meshed", "braid.dev/inject=enabled", "--overwrite"])?;
    let (key, crt) = (work.join("tls.key").display().to_string(), work.join("tls.crt").display().to_string());
    run_ok(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=bench",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            &key,
            "-out",
            &crt,
        ],
    )?;
    let (port, admin) = (free_port()?, free_port()?);
    let log = File::create(work.join("webhook.log"))?;
    let child = Command::new("taskset")
        .args(["-c", "1"])
        .arg(root.join("target/release/braid-webhook"))
        .args([
            "serve",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--admin-addr",
            &format!("127.0.0.1:{admin}"),
        ])
        .args(["--tls-cert", &crt, "--tls-key", &key, "--log", "warn"])
        .env("KUBECONFIG", &kubeconfig)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start braid-webhook")?;
    let pid = child.id();
    cleanup.webhook = Some(child);
    let ready = format!("http://127.0.0.1:{admin}/readyz");
    let mut up = false;
    for _ in 0..100 {
        if succeeds("curl", &["-fs", "-o", "/dev/null", &ready]) {
            up = true;
            break;
        }
        sleep(Duration::from_millis(100));
    }
    if !up {
        bail!("braid-webhook did not get ready:\n{}", tail_logs(work));
    }
    let idle = rss_kib(pid)?;
    let mut peak = idle;
    let review = root.join("webhook/tests/golden/plain-pod.review.json");
    let url = format!("https://127.0.0.1:{port}/inject");
    let mut runs: BTreeMap<String, Vec<WebhookRun>> = BTreeMap::new();
    for mode in ["closed", "paced"] {
        for run in 1..=knobs.runs {
            let out = work.join(format!("{mode}-{run}.json"));
            let mut command = Command::new("taskset");
            command
                .args(["-c", "0"])
                .arg(oha)
                .args(["--no-tui", "--output-format", "json", "--insecure", "-w", "-c", &CLIENTS.to_string()])
                .args([
                    "-z",
                    &format!("{}s", knobs.seconds_per_run),
                    "-m",
                    "POST",
                    "-T",
                    "application/json",
                    "-D",
                ])
                .arg(&review);
            if mode == "paced" {
                command.args(["-q", &knobs.paced_rate.to_string(), "--latency-correction"]);
            }
            let mut oha_run = command
                .arg(&url)
                .stdin(Stdio::null())
                .stdout(File::create(&out)?)
                .spawn()
                .context("cannot start oha")?;
            while oha_run.try_wait()?.is_none() {
                peak = peak.max(rss_kib(pid)?);
                sleep(Duration::from_millis(500));
            }
            if !oha_run.wait()?.success() {
                bail!("oha failed ({mode}, run {run})");
            }
            let load = load::parse_oha(&fs::read_to_string(&out)?, &out.display().to_string())?;
            runs.entry(mode.to_string()).or_default().push(WebhookRun::from_load(&load));
            info!("  {mode} run {run} done");
        }
    }
    let root_text = root.display().to_string();
    let commit = output("git", &["-C", &root_text, "rev-parse", "--short", "HEAD"])?.trim().to_string();
    let dirty = !succeeds(
        "git",
        &["-C", &root_text, "diff", "--quiet", "HEAD", "--", "webhook", "api", "crds", "runtime"],
    );
    let report = WebhookReport {
        commit: if dirty { format!("{commit}+dirty") } else { commit },
        clients: CLIENTS,
        paced_rate: knobs.paced_rate,
        idle_vmrss_kib: idle,
        peak_vmrss_kib: peak,
        summary: runs.iter().map(|(m, r)| (m.clone(), webhook::summarize(r))).collect(),
        runs,
    };
    let prefix = result_prefix_in(root, "webhook")?;
    let out = with(&prefix, ".json");
    fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    let relative = out.strip_prefix(root).unwrap_or(&out).display().to_string();
    std::io::stdout().write_all(webhook::text(&report, &relative).as_bytes())?;
    drop(cleanup);
    Ok(())
}
