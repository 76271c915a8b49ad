//! The processes a run starts (proxies, the origin, load generators), and stopping every one of
//! them when it ends.

use std::fs::{self, File};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tracing::info;

use super::Bench;
use crate::commands::output;

pub(super) struct Proc {
    pid: u32,
    child: Option<Child>,
}

/// Whether `pid` is a process that has not exited (a zombie has).
pub(super) fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

impl Bench {
    /// Starts `program` pinned to `cpu` in the background, its output in `log`; its pid.
    pub fn start(
        &mut self,
        cpu: u32,
        log: &Path,
        program: &Path,
        args: &[String],
        env: &[(&str, String)],
    ) -> Result<u32> {
        let file = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut command = Command::new("taskset");
        command
            .args(["-c", &cpu.to_string(), "nice", "-n", &self.knobs.nice.to_string()])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .current_dir(&self.root);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().with_context(|| format!("cannot start {}", program.display()))?;
        let pid = child.id();
        self.procs.push(Proc { pid, child: Some(child) });
        Ok(pid)
    }

    /// A process this run did not start itself but must stop (nginx workers).
    pub fn adopt(&mut self, pid: u32) {
        self.procs.push(Proc { pid, child: None });
    }

    /// Whether a process this run started is still running.
    pub fn alive_pid(&mut self, pid: u32) -> bool {
        match self.procs.iter_mut().find(|p| p.pid == pid) {
            Some(Proc { child: Some(child), .. }) => matches!(child.try_wait(), Ok(None)),
            _ => process_alive(pid),
        }
    }

    pub fn spawn_load(&mut self, command: &mut Command, out: Option<&Path>) -> Result<u32> {
        let stdout = match out {
            Some(path) => Stdio::from(File::create(path)?),
            None => Stdio::null(),
        };
        let child = command.stdout(stdout).spawn().context("cannot start the load generator")?;
        let pid = child.id();
        self.procs.push(Proc { pid, child: Some(child) });
        Ok(pid)
    }

    /// Waits for a load generator started with spawn_load; fails when it failed.
    pub fn finish_load(&mut self, pid: u32, what: &str) -> Result<()> {
        let at = self.procs.iter().position(|p| p.pid == pid).context("no such load generator")?;
        let mut proc = self.procs.remove(at);
        let status = match proc.child.as_mut() {
            Some(child) => child.wait()?,
            None => bail!("{what} is not a child of this run"),
        };
        if !status.success() {
            bail!("{what} failed ({status})");
        }
        Ok(())
    }

    pub fn load_running(&mut self, pid: u32) -> bool {
        self.alive_pid(pid)
    }

    /// SIGTERM to `pids`, then waits for each to exit (drained; its records written).
    pub fn stop_proxies(&mut self, pids: &[u32]) -> Result<()> {
        let list: Vec<String> = pids.iter().map(u32::to_string).collect();
        let mut args = vec!["-TERM"];
        args.extend(list.iter().map(String::as_str));
        output("kill", &args)?;
        for &pid in pids {
            let deadline = Instant::now() + Duration::from_secs(30);
            while self.alive_pid(pid) {
                if Instant::now() > deadline {
                    bail!("proxy {pid} did not exit within 30 s of SIGTERM");
                }
                sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let pids: Vec<String> =
            self.procs.iter().filter(|p| process_alive(p.pid)).map(|p| p.pid.to_string()).collect();
        if !pids.is_empty() {
            let mut args = vec!["-TERM"];
            args.extend(pids.iter().map(String::as_str));
            let _ = output("kill", &args);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && self.procs.iter().any(|p| process_alive(p.pid)) {
            for proc in &mut self.procs {
                if let Some(child) = proc.child.as_mut() {
                    let _ = child.try_wait();
                }
            }
            sleep(Duration::from_millis(100));
        }
        for proc in &mut self.procs {
            match proc.child.as_mut() {
                Some(child) => {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                None if process_alive(proc.pid) => {
                    let _ = output("kill", &["-KILL", &proc.pid.to_string()]);
                }
                None => {}
            }
        }
        self.delete_netns();
        if self._scratch.is_none() {
            info!("kept {}", self.work.display());
        }
    }
}
