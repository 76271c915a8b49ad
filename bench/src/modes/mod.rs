//! The driver's modes: one module each.

pub mod costs;
pub mod instructions;
pub mod link_order;
pub mod pairs;
pub mod pgo;
pub mod profile;
pub mod webhook;
pub mod workloads;

use std::fs;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;

use crate::run::Bench;

/// "YYYYMMDDTHHMMSSZ" now.
pub fn stamp() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    braid_bench::utc_stamp(now)
}

/// bench/results/NAME-<stamp> (without extension), the folder made.
pub fn result_prefix(b: &Bench, name: &str) -> Result<PathBuf> {
    result_prefix_in(&b.root, name)
}

pub fn result_prefix_in(root: &std::path::Path, name: &str) -> Result<PathBuf> {
    Ok(stamped_prefix(root, name)?.0)
}

/// bench/results/NAME-<stamp> (without extension), the folder made, and the stamp it carries.
pub fn stamped_prefix(root: &std::path::Path, name: &str) -> Result<(PathBuf, String)> {
    let dir = root.join("bench/results");
    fs::create_dir_all(&dir)?;
    let stamp = stamp();
    Ok((dir.join(format!("{name}-{stamp}")), stamp))
}

/// PREFIX + extension.
pub fn with(prefix: &std::path::Path, ext: &str) -> PathBuf {
    PathBuf::from(format!("{}{ext}", prefix.display()))
}
