//! `braid`: the command line. `braid check` reads the cluster and says whether the mesh is
//! healthy; `braid stat` how its workloads do; `braid routes` and `braid identity` what one pod's
//! proxy holds; `braid diagnose` which configuration mistakes a namespace has; `braid convert`
//! reads Istio and Linkerd routing resources and writes Braid's. The work is in the library.

use std::{
    io::{Read, Write},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::Context;
use braid_cli::{Options, check, convert, diagnose, identity, routes, stat};
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
    /// Success rate, requests per second and latency percentiles of each meshed Deployment, of
    /// the namespace, or of each route the namespace's pods call, from the proxies' own counters
    /// over a window: no Prometheus needed.
    ///
    /// Each meshed pod's proxy metrics are read twice through the API server, WINDOW apart. For
    /// `deploy` and `ns` the figures are what the workloads answered (their inbound side), as
    /// `linkerd viz stat` shows; for `route`, what the pods sent to each route of each
    /// destination (their outbound side, after retries), as `linkerd viz routes` shows.
    Stat {
        /// What a row is: `deploy` (each Deployment), `ns` (the namespace) or `route` (each
        /// route of each destination called).
        #[arg(value_enum)]
        kind: StatKind,
        /// Namespace of the workloads (for `route`: of the callers).
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
        /// With `route`: only the routes of this Service (`web`, `web.shop` or its full name).
        #[arg(long)]
        to: Option<String>,
        /// How long to count, like 10s or 1m.
        #[arg(long, default_value = "10s", value_parser = braid_cli::duration::parse_go)]
        window: std::time::Duration,
        #[arg(long, short = 'o', value_enum, default_value = "text")]
        output: Output,
    },
    /// What a pod's proxy has been told: its services, routes (matches, weighted backends,
    /// timeouts, retries), the endpoints of each backend, and what discovery sent (the version
    /// each destination runs, acked or nacked and why).
    ///
    /// Read from the proxy's admin port (4191, /config) through a port-forward, as `kubectl
    /// port-forward` does. `-o json` prints the proxy's own JSON.
    Routes {
        /// The meshed pod.
        pod: String,
        /// Namespace of the pod; the kubectl context's by default.
        #[arg(long, short = 'n')]
        namespace: Option<String>,
        #[arg(long, short = 'o', value_enum, default_value = "text")]
        output: Output,
    },
    /// The pod's workload certificate: SPIFFE id, issuer, validity, time to renewal and expiry,
    /// and whether it chains to the trust bundle the mesh publishes in the pod's namespace.
    ///
    /// Read from the proxy's admin port (4191, /identity) through a port-forward. Exit status: 0
    /// when the certificate is valid and chains to the bundle, 1 otherwise.
    Identity {
        /// The meshed pod.
        pod: String,
        /// Namespace of the pod; the kubectl context's by default.
        #[arg(long, short = 'n')]
        namespace: Option<String>,
        #[arg(long, short = 'o', value_enum, default_value = "text")]
        output: Output,
    },
    /// Configuration mistakes, each with what is wrong, why it matters and the fix: MeshRoutes
    /// whose Services are missing or have no ready endpoints or that are not Programmed,
    /// MeshPolicies that select no (meshed) pod, pods without a proxy in namespaces labelled for
    /// injection.
    ///
    /// Exit status: 0 when nothing is found, 1 otherwise.
    Diagnose {
        /// The namespace to look at; the kubectl context's by default.
        #[arg(long, short = 'n', conflicts_with = "all_namespaces")]
        namespace: Option<String>,
        /// Every namespace.
        #[arg(long, short = 'A')]
        all_namespaces: bool,
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
    /// Each route of each destination the namespace's meshed pods call (their outbound side).
    #[value(alias = "routes")]
    Route,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Output {
    Text,
    Json,
}

fn run() -> anyhow::Result<ExitCode> {
    let (file, linkerd_attempts, linkerd_per_try_timeout) = match Cli::parse().command {
        Command::Check { namespace, release, output } => return check(&namespace, &release, output),
        Command::Stat { kind, namespace, to, window, output } => {
            return stat(kind, &namespace, to.as_deref(), window, output);
        }
        Command::Routes { pod, namespace, output } => return routes(&pod, namespace, output),
        Command::Identity { pod, namespace, output } => return identity(&pod, namespace, output),
        Command::Diagnose { namespace, all_namespaces, output } => {
            return diagnose(namespace, all_namespaces, output);
        }
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
    to: Option<&str>,
    window: std::time::Duration,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let by = match kind {
        StatKind::Deploy => stat::By::Deployment,
        StatKind::Ns => stat::By::Namespace,
        StatKind::Route => return stat_routes(namespace, to, window, output),
    };
    if to.is_some() {
        writeln!(std::io::stderr(), "braid stat: --to applies to `braid stat route` only")?;
        return Ok(ExitCode::from(2));
    }
    let gathered = with_cluster(|client| async move { stat::gather(&client, namespace, by, window).await })?;
    print_stat(gathered, output, stat::render_table)
}

fn stat_routes(
    namespace: &str,
    to: Option<&str>,
    window: std::time::Duration,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let gathered =
        with_cluster(|client| async move { stat::gather_routes(&client, namespace, to, window).await })?;
    print_stat(gathered, output, stat::render_routes)
}

/// The problems on stderr, the rows on stdout as a table or JSON.
fn print_stat<R: serde::Serialize>(
    (rows, problems): (Vec<R>, Vec<String>),
    output: Output,
    render: fn(&[R]) -> String,
) -> anyhow::Result<ExitCode> {
    for problem in &problems {
        writeln!(std::io::stderr(), "braid stat: {problem}")?;
    }
    let text = match output {
        Output::Text => render(&rows),
        Output::Json => serde_json::to_string_pretty(&rows)? + "\n",
    };
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// Progress for a person watching: on stderr, and only when stdout is a terminal.
fn progress(message: &str) {
    use std::io::IsTerminal as _;
    if std::io::stdout().is_terminal() {
        let _ = writeln!(std::io::stderr(), "{message}");
    }
}

fn routes(pod: &str, namespace: Option<String>, output: Output) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal as _;
    let (namespace, body) = with_client(|client| async move {
        let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
        progress(&format!("reading the proxy of pod {namespace}/{pod} (port-forward to 4191)…"));
        let body = braid_cli::proxy_admin::get(&client, &namespace, pod, "/config").await?;
        Ok::<_, anyhow::Error>((namespace, body))
    })?;
    let text = match output {
        Output::Text => {
            let config = routes::parse(&body)?;
            routes::render_text(
                &routes::report(&format!("{namespace}/{pod}"), &config),
                std::io::stdout().is_terminal(),
            )
        }
        // The proxy's own JSON, whatever its shape, as long as it is JSON.
        Output::Json => {
            serde_json::from_str::<serde_json::Value>(&body)
                .map_err(|e| routes::RoutesError::Malformed(e.to_string()))?;
            if body.ends_with('\n') { body } else { body + "\n" }
        }
    };
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

fn identity(pod: &str, namespace: Option<String>, output: Output) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal as _;
    let (namespace, body, bundle) = with_client(|client| async move {
        let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_owned());
        progress(&format!("reading the certificate of pod {namespace}/{pod} (port-forward to 4191)…"));
        let (body, bundle) = identity::gather(&client, &namespace, pod).await?;
        Ok::<_, anyhow::Error>((namespace, body, bundle))
    })?;
    let answer = identity::parse(&body)?;
    let now = jiff::Timestamp::now();
    let report = identity::evaluate(&format!("{namespace}/{pod}"), &answer, &bundle, now)?;
    let text = match output {
        Output::Text => identity::render_text(&report, now, std::io::stdout().is_terminal()),
        Output::Json => identity::render_json(&report),
    };
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(if report.healthy { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn diagnose(namespace: Option<String>, all: bool, output: Output) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal as _;
    let (scope, inputs) = with_client(|client| async move {
        let scope = match (all, namespace) {
            (true, _) => diagnose::Scope::All,
            (false, Some(ns)) => diagnose::Scope::Namespace(ns),
            (false, None) => diagnose::Scope::Namespace(client.default_namespace().to_owned()),
        };
        progress("reading MeshRoutes, MeshPolicies, Services, EndpointSlices and pods…");
        let inputs = diagnose::gather(&client, &scope).await?;
        Ok::<_, anyhow::Error>((scope, inputs))
    })?;
    let findings = diagnose::evaluate(&inputs);
    let text = match output {
        Output::Text => diagnose::render_text(&findings, &scope, std::io::stdout().is_terminal()),
        Output::Json => diagnose::render_json(&findings),
    };
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(if findings.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Like `with_cluster`, for commands whose own errors already say what to do: only a missing
/// kubeconfig gets a hint.
fn with_client<T, F>(read: impl FnOnce(kube::Client) -> F) -> anyhow::Result<T>
where
    F: Future<Output = anyhow::Result<T>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = kube::Client::try_default()
            .await
            .context("cannot reach a Kubernetes API server: set KUBECONFIG or the current kubectl context")?;
        read(client).await
    })
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
