//! Carrying the training mix (braid_bench::training) through a pair.

use std::fs;

use anyhow::{Result, bail};
use braid_bench::settings::Peer;
use braid_bench::{load, training};
use tracing::info;

use super::Bench;

impl Bench {
    /// Runs every phase of the training mix through `peer`'s pair for `duration` each, then checks
    /// that the pair is still up.
    pub fn carry_training_mix(&mut self, peer: Peer, duration: &str) -> Result<()> {
        let body = self.work.join("training-upload.bin");
        if !body.is_file() {
            fs::write(&body, vec![b'u'; training::UPLOAD_BYTES])?;
        }
        let base = format!("http://127.0.0.1:{}", self.pair(peer)?.entry);
        for (n, phase) in training::phases().into_iter().enumerate() {
            info!("  {peer}: {} ({duration})", phase.what);
            let mut oha = self.on_cpu0(&self.tools.oha.clone());
            oha.args(phase.oha_args(&base, duration, &body.display().to_string()));
            let out = self.work.join(format!("training-{peer}-{n}.json"));
            self.load_command(&mut oha, Some(&out))?;
            let load = load::parse_oha(&fs::read_to_string(&out)?, &out.display().to_string())?;
            if let Err(why) = phase.check(&load) {
                bail!(
                    "the training mix did not go through the {peer} pair: {why} (oha's output: {})",
                    out.display()
                );
            }
            self.alive(peer)?;
        }
        Ok(())
    }
}
