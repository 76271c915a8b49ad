//! The training mix that `make pgo` and `make link-order` record braid-proxy under: traffic the
//! benchmark does not measure, so that the profile cannot be fitted to the benchmark. The
//! benchmark measures HTTP/1.1 GETs of a 1 KiB body over 16 keep-alive connections; the mix uses
//! other body sizes (neither 1 KiB nor the 64 KiB and 1 MiB of a large-body benchmark), bodies
//! both ways, other connection counts, error answers, paced and closed loops. HTTP/2 from the
//! client is not in it: braid B keeps the app's protocol on the way to the server app, and the
//! origin (nginx 1.22) speaks h2c only on a listener of its own.

use crate::load::Load;

/// The paths the origin serves for the mix (bench/proxy/origin-nginx.conf and the files written
/// beside the benchmark's own /1k).
pub const FILES: [(&str, usize); 3] = [("empty", 0), ("8k", 8 * 1024), ("256k", 256 * 1024)];

/// The body the mix POSTs to /upload, which the origin answers with 204.
pub const UPLOAD_BYTES: usize = 16 * 1024;

/// One phase of the mix: an oha run against one path of the pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phase {
    /// What it exercises, for the log.
    pub what: &'static str,
    pub path: &'static str,
    pub connections: u32,
    /// Paced at this rate (req/s), or a closed loop when None.
    pub rate: Option<u32>,
    /// POST the upload body instead of GET.
    pub upload: bool,
    /// The status every answer must have.
    pub status: u16,
}

impl Phase {
    /// oha's arguments for this phase, lasting `duration` ("5s"), against `base`
    /// ("http://127.0.0.1:PORT"); `body` is the file POSTed by an upload phase.
    pub fn oha_args(&self, base: &str, duration: &str, body: &str) -> Vec<String> {
        // -w: requests under way when the time is up finish, so none counts as an error.
        let mut args: Vec<String> =
            vec!["-c".into(), self.connections.to_string(), "-z".into(), duration.into(), "-w".into()];
        if let Some(rate) = self.rate {
            args.extend(["-q".into(), rate.to_string(), "--latency-correction".into()]);
        }
        if self.upload {
            args.extend(["-m".into(), "POST".into(), "-D".into(), body.into()]);
        }
        args.extend([
            "--no-tui".into(),
            "--output-format".into(),
            "json".into(),
            format!("{base}{}", self.path),
        ]);
        args
    }

    /// Whether a run of this phase went through the pair as meant: answers, every one with the
    /// expected status class, and no request without an answer. A profile recorded from errors
    /// would optimise the error path.
    pub fn check(&self, load: &Load) -> Result<(), String> {
        let (expected, other) =
            if (200..300).contains(&self.status) { (load.ok, load.non2xx) } else { (load.non2xx, load.ok) };
        if expected == 0 || other > 0 || load.errors > 0 {
            return Err(format!(
                "{}: {expected} answers as expected ({}), {other} others, {} without an answer {:?}",
                self.what, self.status, load.errors, load.error_kinds
            ));
        }
        Ok(())
    }
}

/// The mix, in order. Each phase runs through the pair for the same time.
pub fn phases() -> Vec<Phase> {
    let phase =
        |what, path, connections| Phase { what, path, connections, rate: None, upload: false, status: 200 };
    vec![
        Phase { rate: Some(400), ..phase("HTTP/1.1 GET, 8 KiB answers, paced", "/8k", 4) },
        phase("HTTP/1.1 GET, 256 KiB answers, closed loop", "/256k", 48),
        Phase {
            upload: true,
            status: 204,
            ..phase("HTTP/1.1 POST, 16 KiB requests, 204 answers", "/upload", 8)
        },
        phase("HTTP/1.1 GET, empty answers, closed loop", "/empty", 64),
        Phase { rate: Some(200), status: 404, ..phase("HTTP/1.1 GET, 404 answers, paced", "/missing", 2) },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The benchmark's own workload: 16 connections, 1 KiB GETs (bench/src/run/measure.rs).
    const MEASURED_CONNECTIONS: u32 = 16;
    const MEASURED_PATH: &str = "/1k";

    #[test]
    fn the_mix_is_not_the_measured_workload() {
        let phases = phases();
        assert!(phases.len() >= 5);
        for phase in &phases {
            assert_ne!(phase.path, MEASURED_PATH, "{phase:?}");
            assert_ne!(phase.connections, MEASURED_CONNECTIONS, "{phase:?}");
            // 64 KiB and 1 MiB are measured sizes too.
            assert!(!["/64k", "/1m"].contains(&phase.path), "{phase:?}");
        }
        // Both directions of body, paced and closed loops.
        assert!(phases.iter().any(|p| p.upload));
        assert!(phases.iter().any(|p| p.rate.is_some()) && phases.iter().any(|p| p.rate.is_none()));
    }

    #[test]
    fn a_phase_renders_as_oha_runs_it() {
        let upload = &phases()[2];
        assert_eq!(
            upload.oha_args("http://127.0.0.1:9", "5s", "/tmp/body").join(" "),
            "-c 8 -z 5s -w -m POST -D /tmp/body --no-tui --output-format json http://127.0.0.1:9/upload"
        );
        let paced = &phases()[0];
        assert_eq!(
            paced.oha_args("http://h", "3s", "b").join(" "),
            "-c 4 -z 3s -w -q 400 --latency-correction --no-tui --output-format json http://h/8k"
        );
    }

    fn load(ok: u64, non2xx: u64, errors: u64) -> Load {
        Load { ok, non2xx, errors, error_kinds: Default::default(), rps: 0.0, latency: None }
    }

    #[test]
    fn a_phase_that_did_not_go_through_as_meant_is_refused() {
        let get = &phases()[0];
        let missing = phases().into_iter().find(|p| p.status == 404).expect("a 404 phase");
        assert!(get.check(&load(100, 0, 0)).is_ok());
        assert!(missing.check(&load(0, 100, 0)).is_ok());
        // Nothing answered, errors from the proxy (502s), requests without an answer.
        for bad in [load(0, 0, 0), load(90, 10, 0), load(100, 0, 1)] {
            let error = get.check(&bad).expect_err("refused");
            assert!(error.starts_with("HTTP/1.1 GET, 8 KiB answers"), "{error}");
        }
        assert!(missing.check(&load(5, 95, 0)).is_err());
    }
}
