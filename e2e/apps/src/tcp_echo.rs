//! A TCP echo that is not HTTP, for the opaque-TCP tests: the server speaks first (a greeting
//! line naming its pod, as MySQL or SMTP servers greet), then sends back every byte it reads
//! until the client closes its side. The client checks the greeting and that every byte came
//! back intact and in order.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

/// What the greeting line starts with; the pod's name follows.
pub const GREETING: &str = "braid-tcp-echo";
/// How long the client waits for a connection, the greeting, or the rest of an echo.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The server's side of one connection: the greeting, then every byte back until the client
/// closes its side; then this side is closed too.
pub async fn echo_connection(mut stream: TcpStream, pod: &str) -> std::io::Result<u64> {
    stream.write_all(format!("{GREETING} {pod}\n").as_bytes()).await?;
    let (mut reader, mut writer) = stream.split();
    let echoed = tokio::io::copy(&mut reader, &mut writer).await?;
    writer.shutdown().await?;
    Ok(echoed)
}

/// The pod a greeting line names.
pub fn parse_greeting(line: &str) -> Result<String, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    match line.strip_prefix(GREETING).and_then(|rest| rest.strip_prefix(' ')) {
        Some(pod) if !pod.is_empty() && !pod.contains(char::is_whitespace) => Ok(pod.to_owned()),
        _ => Err(format!("{line:?} is not a greeting: expected \"{GREETING} POD\"")),
    }
}

/// A TCP address the client connects to: "HOST:PORT", the host a name or an IP address.
pub fn parse_target(text: &str) -> Result<String, String> {
    let example = "write it like tcp-echo.demo.svc.cluster.local:9000";
    let (host, port) = text.rsplit_once(':').ok_or_else(|| format!("{text:?} has no port: {example}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(char::is_whitespace) || host.contains('/') {
        return Err(format!("{text:?} has no host: {example}"));
    }
    match port.parse::<u16>() {
        Ok(1..) => Ok(text.to_owned()),
        _ => Err(format!("{text:?}: the port {port:?} is not a number from 1 to 65535: {example}")),
    }
}

/// What `call` did: connections made, bytes echoed intact, greetings per pod, and what failed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CallReport {
    pub target: String,
    pub connections: u64,
    pub failed_connections: u64,
    /// Bytes written over all connections (none on one closed before its greeting).
    pub bytes_sent: u64,
    /// Bytes that came back, in order and intact, on connections that succeeded.
    pub bytes_echoed: u64,
    /// Connections per pod, by the greetings.
    pub pods: BTreeMap<String, u64>,
    /// One line per failed connection.
    pub errors: Vec<String>,
    pub seconds: f64,
}

/// `connections` connections to `target` at once, each sending `bytes` bytes (in chunks of
/// `chunk`) while reading them back.
pub async fn call(target: &str, connections: u64, bytes: usize, chunk: usize) -> CallReport {
    let start = Instant::now();
    let runs =
        futures_util::future::join_all((0..connections).map(|n| exchange(target, n, bytes, chunk))).await;
    let mut report = CallReport { target: target.to_owned(), connections, ..CallReport::default() };
    for run in runs {
        match run {
            Ok(pod) => {
                *report.pods.entry(pod).or_default() += 1;
                report.bytes_sent += bytes as u64;
                report.bytes_echoed += bytes as u64;
            }
            Err(Failed { error, sent }) => {
                report.failed_connections += 1;
                report.bytes_sent += sent;
                report.errors.push(error);
            }
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    report
}

/// The bytes connection `n` sends: different on each connection and at each offset, so that a
/// byte lost, repeated, reordered or sent on the wrong connection shows.
pub fn payload(n: u64, len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(n.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ len as u64);
    (0..len).map(|_| rng.u8(..)).collect()
}

/// A connection that failed: why, and how many bytes it had written.
struct Failed {
    error: String,
    sent: u64,
}

impl From<String> for Failed {
    fn from(error: String) -> Self {
        Self { error, sent: 0 }
    }
}

/// One connection: the greeting, then `bytes` bytes sent while they are read back and compared;
/// then this side closes and the server must close too. The pod, or what went wrong.
async fn exchange(target: &str, n: u64, bytes: usize, chunk: usize) -> Result<String, Failed> {
    let within = |what: String| move |_| format!("connection {n}: {what} within {CLIENT_TIMEOUT:?}");
    let stream = tokio::time::timeout(CLIENT_TIMEOUT, TcpStream::connect(target))
        .await
        .map_err(within(format!("no connection to {target}")))?
        .map_err(|err| format!("connection {n}: connecting to {target}: {err}"))?;
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let mut line = String::new();
    let read = tokio::time::timeout(CLIENT_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(within("no greeting".to_owned()))?
        .map_err(|err| format!("connection {n}: reading the greeting: {err}"))?;
    if read == 0 {
        return Err(format!("connection {n}: closed before the greeting").into());
    }
    let pod = parse_greeting(&line).map_err(|err| format!("connection {n}: {err}"))?;
    let sent = payload(n, bytes);
    let mut written = 0u64;
    let send = async {
        for piece in sent.chunks(chunk.max(1)) {
            writer.write_all(piece).await?;
            written += piece.len() as u64;
        }
        writer.shutdown().await
    };
    let receive = async {
        let mut echoed = Vec::with_capacity(bytes);
        reader.read_to_end(&mut echoed).await.map(|_| echoed)
    };
    let outcome = tokio::time::timeout(CLIENT_TIMEOUT, async { tokio::join!(send, receive) }).await;
    let failed = |error: String| Failed { error, sent: written };
    let (sent_result, echoed) =
        outcome.map_err(within(format!("no whole echo of {bytes} bytes"))).map_err(failed)?;
    sent_result.map_err(|err| failed(format!("connection {n}: sending: {err}")))?;
    let echoed = echoed.map_err(|err| failed(format!("connection {n}: reading the echo: {err}")))?;
    if echoed != sent {
        let first_difference = sent.iter().zip(&echoed).position(|(a, b)| a != b);
        return Err(failed(format!(
            "connection {n}: sent {} bytes, {} came back, first difference at {}",
            sent.len(),
            echoed.len(),
            first_difference.unwrap_or(sent.len().min(echoed.len()))
        )));
    }
    Ok(pod)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greetings_name_a_pod() {
        assert_eq!(
            parse_greeting("braid-tcp-echo tcp-echo-5d9f-abcde\n"),
            Ok("tcp-echo-5d9f-abcde".to_owned())
        );
        for bad in ["", "braid-tcp-echo\n", "braid-tcp-echo \n", "hello pod\n", "braid-tcp-echo a b\n"] {
            let err = parse_greeting(bad).unwrap_err();
            assert!(err.contains("is not a greeting"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn targets_are_host_and_port() {
        assert_eq!(
            parse_target("tcp-echo.ns.svc.cluster.local:9000").as_deref(),
            Ok("tcp-echo.ns.svc.cluster.local:9000")
        );
        assert!(parse_target("10.0.0.1:80").is_ok());
        assert!(parse_target("[::1]:80").is_ok());
        assert!(parse_target("tcp-echo").unwrap_err().contains("has no port"));
        assert!(parse_target(":9000").unwrap_err().contains("has no host"));
        assert!(parse_target("http://x:80").unwrap_err().contains("has no host"));
        for bad in ["x:0", "x:65536", "x:port", "x:"] {
            assert!(parse_target(bad).unwrap_err().contains("from 1 to 65535"), "{bad}");
        }
    }

    #[test]
    fn payloads_differ_by_connection_and_repeat_for_one() {
        assert_eq!(payload(3, 64), payload(3, 64));
        assert_ne!(payload(3, 64), payload(4, 64));
        assert_eq!(payload(3, 1000).len(), 1000);
    }
}
