//! Running one command to its end, and the small shell-outs and log reads the modes share.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// Runs a command to its end; its stdout, or an error with its stderr.
pub fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether a command succeeds (its output dropped).
pub fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Established TCP connections matching an `ss` filter such as "( dport = :8080 )".
pub fn established(filter: &str) -> Result<usize> {
    let text = output("ss", &["-Htn", "state", "established", filter])?;
    Ok(text.lines().filter(|l| !l.trim().is_empty()).count())
}

pub fn run_ok(program: &str, args: &[&str]) -> Result<()> {
    output(program, args).map(|_| ())
}

pub fn nginx_args(dir: &Path, conf: &Path) -> Vec<String> {
    vec![
        "-p".into(),
        dir.display().to_string(),
        "-c".into(),
        conf.display().to_string(),
        "-e".into(),
        dir.join("error.log").display().to_string(),
    ]
}

/// The last lines of every .log file in `dir`.
pub fn tail_logs(dir: &Path) -> String {
    let mut text = String::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let content = fs::read_to_string(&path).unwrap_or_default();
                let lines: Vec<&str> = content.lines().collect();
                let from = lines.len().saturating_sub(20);
                text += &format!("==> {} <==\n{}\n", path.display(), lines[from..].join("\n"));
            }
        }
    }
    text
}
