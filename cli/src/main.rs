//! `braid`: the command line. `braid check` reads the cluster and says whether the mesh is
//! healthy; `braid convert` reads Istio and Linkerd routing resources and writes Braid's. The
//! work is in the library.

use std::{
    io::{Read, Write},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::Context;
use braid_cli::{Options, check, convert, stat};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "braid", version, about = "The Braid service mesh command line")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check that the mesh in the current kubectl context is healthy: the CRDs, the operator and
    /// its leader, the webhook and its registration, the Mesh's conditions and certificates, the
    /// proxies' discovery streams and versions, and pods that should have a proxy.
    ///
    /// One line per check, each failure with the command that helps. Exit status: 0 when no
    /// check failed (warnings allowed), 1 otherwise.
    Check {
        /// Namespace Braid is installed in.
        #[arg(long, short = 'n', default_value = "braid-system")]
        namespace: String,
        /// Helm release name of the installation (its objects are named RELEASE-operator, ...).
        #[arg(long, default_value = "braid")]
        release: String,
        /// Output format.
        #[arg(long, short = 'o', value_enum, default_value = "text")]
        output: Output,
    },
    /// Success rate, requests per second and latency percentiles of each meshed Deployment (or of
    /// the namespace), from the proxies' own counters over a window: no Prometheus needed.
    ///
    /// Each meshed pod's proxy metrics are read twice through the API server, WINDOW apart; the
    /// figures are what the workloads answered (their inbound side), as `linkerd viz stat` shows.
    Stat {
        /// What a row is: `deploy` (each Deployment) or `ns` (the namespace).
        #[arg(value_enum)]
        kind: StatKind,
        /// Namespace of the workloads.
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
        /// How long to count, like 10s or 1m.
        #[arg(long, default_value = "10s", value_parser = braid_cli::duration::parse_go)]
        window: std::time::Duration,
        #[arg(long, short = 'o', value_enum, default_value = "text")]
        output: Output,
    },
    /// Convert Istio VirtualServices and DestinationRules, and Linkerd ServiceProfiles and
    /// HTTPRoutes, into MeshRoutes and Gateway API HTTPRoutes, written to stdout.
    ///
    /// What cannot be carried over is listed on stderr, one line per field, and as comments on
    /// the output document it concerns. Exit status: 0 when everything was converted, 2 when
    /// something was left out, 1 when the input cannot be converted.
    Convert {
        /// A multi-document YAML file; `-` or nothing reads stdin.
        file: Option<PathBuf>,
        /// Tries (the first one included) for a retryable ServiceProfile route, 1 to 10.
        #[arg(long, default_value_t = 3)]
        linkerd_attempts: i32,
        /// Time for each try of a retryable ServiceProfile route, like 2s; none by default.
        #[arg(long)]
        linkerd_per_try_timeout: Option<String>,
    },
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "braid: error: {err:#}");
            ExitCode::from(1)
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum StatKind {
    #[value(alias = "deployment", alias = "deployments")]
    Deploy,
    #[value(alias = "namespace")]
    Ns,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Output {
    Text,
    Json,
}

fn run() -> anyhow::Result<ExitCode> {
    let (file, linkerd_attempts, linkerd_per_try_timeout) = match Cli::parse().command {
        Command::Check { namespace, release, output } => return check(&namespace, &release, output),
        Command::Stat { kind, namespace, window, output } => return stat(kind, &namespace, window, output),
        Command::Convert { file, linkerd_attempts, linkerd_per_try_timeout } => {
            (file, linkerd_attempts, linkerd_per_try_timeout)
        }
    };
    let input = match file.as_deref() {
        None => read_stdin()?,
        Some(path) if path.as_os_str() == "-" => read_stdin()?,
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?
        }
    };
    let options = Options { linkerd_attempts, linkerd_per_try_timeout };
    let conversion = convert(&input, &options)?;
    let yaml = conversion.to_yaml()?;
    std::io::stdout().write_all(yaml.as_bytes()).context("cannot write to stdout")?;
    let mut stderr = std::io::stderr().lock();
    for item in &conversion.left_out {
        writeln!(stderr, "braid convert: {item}")?;
    }
    Ok(if conversion.left_out.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(2) })
}

fn read_stdin() -> anyhow::Result<String> {
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input).context("cannot read stdin")?;
    Ok(input)
}

fn check(namespace: &str, release: &str, output: Output) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal as _;
    let snapshot = with_cluster(|client| async move { check::gather(&client, namespace, release).await })?;
    let checks = check::evaluate(&snapshot, jiff::Timestamp::now());
    let text = match output {
        Output::Text => check::render_text(&checks, std::io::stdout().is_terminal()),
        Output::Json => check::render_json(&checks),
    };
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(if check::failed(&checks) { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn stat(
    kind: StatKind,
    namespace: &str,
    window: std::time::Duration,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let by = match kind {
        StatKind::Deploy => stat::By::Deployment,
        StatKind::Ns => stat::By::Namespace,
    };
    let (rows, problems) =
        with_cluster(|client| async move { stat::gather(&client, namespace, by, window).await })?;
    for problem in &problems {
        writeln!(std::io::stderr(), "braid stat: {problem}")?;
    }
    let text = match output {
        Output::Text => stat::render_table(&rows),
        Output::Json => serde_json::to_string_pretty(&rows)? + "\n",
    };
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `read` with a client of the current kubectl context's cluster, on a runtime of its own.
fn with_cluster<T, E, F>(read: impl FnOnce(kube::Client) -> F) -> anyhow::Result<T>
where
    F: Future<Output = Result<T, E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = kube::Client::try_default()
            .await
            .context("cannot reach a Kubernetes API server: set KUBECONFIG or the current kubectl context")?;
        read(client).await.context("is the kubectl context the right cluster?")
    })
}
