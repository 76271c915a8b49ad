//! Running iptables-save and iptables-restore: finding the programs, reading the nat table and
//! applying a restore input.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::args::Tool;
use super::error::InitError;
use super::rules::NatState;

/// How long iptables-restore waits for the xtables lock (iptables-legacy takes it; a pod has its
/// own lock file, but a shared host /run would otherwise fail a concurrent run at once).
const LOCK_WAIT_SECONDS: &str = "10";

pub(super) fn read_nat(save: &Tool) -> Result<NatState, InitError> {
    let program = locate(save)?;
    let output = Command::new(&program)
        .args(["-t", "nat"])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| InitError::Spawn { program: program.display().to_string(), source })?;
    if !output.status.success() {
        return Err(InitError::ReadFailed {
            program: program.display().to_string(),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(NatState::parse(&String::from_utf8_lossy(&output.stdout)))
}

pub(super) fn apply(restore: &Tool, input: &str) -> Result<(), InitError> {
    let program = locate(restore)?;
    let name = program.display().to_string();
    let spawn_error = |source| InitError::Spawn { program: name.clone(), source };
    let mut child = Command::new(&program)
        .args(["--noflush", "--wait", LOCK_WAIT_SECONDS])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    // A write error (it exited early) is reported through its exit status and stderr below.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    let output = child.wait_with_output().map_err(spawn_error)?;
    if !output.status.success() {
        return Err(InitError::ApplyFailed {
            program: name,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// The program to run: a path as given, or a name looked up on PATH and then in /usr/sbin and
/// /sbin, where Debian installs iptables but which a non-root PATH often lacks.
fn locate(tool: &Tool) -> Result<PathBuf, InitError> {
    let (program, flag) = (&tool.path, tool.flag);
    let missing = || InitError::ToolMissing { program: program.display().to_string(), flag };
    if program.components().count() > 1 {
        return if program.is_file() { Ok(program.to_owned()) } else { Err(missing()) };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .ok_or_else(missing)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::args::fixtures::{WEBHOOK_ARGS, parse};
    use super::super::run;
    use super::*;

    #[test]
    fn a_missing_iptables_says_which_package_to_install() {
        let mut args = parse(&WEBHOOK_ARGS).unwrap();
        args.iptables_save = PathBuf::from("/nonexistent/iptables-save");
        let err = run(&args).unwrap_err().to_string();
        assert!(
            err.starts_with("/nonexistent/iptables-save not found: install the Debian package iptables"),
            "{err}"
        );
        let tool = Tool { path: PathBuf::from("braid-no-such-iptables-restore"), flag: "iptables-restore" };
        let err = apply(&tool, "").unwrap_err().to_string();
        assert!(err.contains("not found: install the Debian package iptables"), "{err}");
        assert!(err.contains("--iptables-restore"), "{err}");
    }
}
