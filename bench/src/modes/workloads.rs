//! More workloads (`braid-bench workloads`): each group of workloads on pairs made for it (the
//! nginx origin; the gRPC origin; A holding the large table), every offered peer and `direct`
//! interleaved within each run; bench/results/proxy-workloads-<timestamp>.json and .md.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::time::Instant;

use anyhow::{Result, bail};
use braid_bench::report::{WorkloadReport, WorkloadResult, workloads_markdown};
use braid_bench::settings::Peer;
use braid_bench::system;
use braid_bench::workloads::{self, Origin, Workload};
use tracing::info;

use super::{stamped_prefix, with};
use crate::run::Bench;
use crate::tools;

/// The groups that need pairs of their own, in the order they run.
fn groups(list: &[&'static Workload]) -> Vec<(&'static str, Vec<&'static Workload>)> {
    let pick = |f: fn(&Workload) -> bool| list.iter().copied().filter(|w| f(w)).collect::<Vec<_>>();
    [
        ("http", pick(|w| w.origin() == Origin::Nginx && !w.table)),
        ("grpc", pick(|w| w.origin() == Origin::Grpc)),
        ("table", pick(|w| w.table)),
    ]
    .into_iter()
    .filter(|(_, ws)| !ws.is_empty())
    .collect()
}

/// Open files the 1,000-connection workload needs: the load generator's 1,000, and each proxy's
/// 1,000 from its client and up to 1,000 to its next hop.
const OPEN_FILES: u64 = 4096;

pub fn run(b: &mut Bench, list: &[&'static Workload]) -> Result<()> {
    if list.iter().any(|w| w.connections >= 1000) {
        let limit = system::parse_open_files_limit(&fs::read_to_string("/proc/self/limits")?)?;
        if limit.is_some_and(|n| n < OPEN_FILES) {
            bail!(
                "the c1000 workload needs at least {OPEN_FILES} open files per process, and the limit here is {}: \
                 raise it (ulimit -n {OPEN_FILES}) or leave c1000 out of WORKLOADS",
                limit.unwrap_or(0)
            );
        }
    }
    let started = Instant::now();
    let nginx = b.origin_port;
    let mut results = Vec::new();
    for (label, group) in groups(list) {
        let first = group[0];
        b.workload = Some(first);
        b.origin_port = if first.origin() == Origin::Grpc { b.start_grpc_origin()? } else { nginx };
        let mut offered: Vec<Peer> = Vec::new();
        let mut not_offered = BTreeMap::new();
        for &peer in &b.knobs.peers.clone() {
            match workloads::not_offered(first, &peer.to_string()) {
                Some(why) => {
                    not_offered.insert(peer.to_string(), why.to_string());
                }
                None => offered.push(peer),
            }
        }
        for &peer in &offered {
            if first.origin() == Origin::Grpc { b.start_grpc_pair(peer, first)? } else { b.start_pair(peer)? }
        }
        let mut idle = BTreeMap::new();
        for &peer in &offered {
            idle.insert(peer.to_string(), b.pair(peer)?.idle);
        }
        let scenarios: Vec<String> =
            ["direct".to_string()].into_iter().chain(offered.iter().map(Peer::to_string)).collect();
        info!("{label}: {} × {} scenarios × 2 points × {} runs", group.len(), scenarios.len(), b.knobs.runs);
        let mut group_results: Vec<WorkloadResult> = group
            .iter()
            .map(|w| WorkloadResult {
                name: w.name.into(),
                what: w.what.into(),
                rate: w.rate,
                scenarios: scenarios.clone(),
                not_offered: not_offered.clone(),
                idle_kib: idle.clone(),
                summary: Default::default(),
                runs: Vec::new(),
            })
            .collect();
        for run in 1..=b.knobs.runs {
            for (w, result) in group.iter().zip(&mut group_results) {
                for point in result.points() {
                    for s in &scenarios {
                        result.runs.push(b.measure_workload(w, s, &point, run)?);
                    }
                }
            }
        }
        b.stop_pairs(label)?;
        results.extend(group_results);
    }
    b.workload = None;
    b.origin_port = nginx;
    for result in &mut results {
        result.resummarize();
    }
    let (prefix, timestamp) = stamped_prefix(&b.root, "proxy-workloads")?;
    let report = WorkloadReport {
        timestamp,
        machine: system::machine(&fs::read_to_string("/proc/cpuinfo").unwrap_or_default()),
        versions: tools::versions(&b.root, &b.knobs, &b.tools),
        took_seconds: started.elapsed().as_secs(),
        knobs: format!(
            "{} WORKLOADS='{}'",
            b.knobs.describe(),
            list.iter().map(|w| w.name).collect::<Vec<_>>().join(" ")
        ),
        runs: b.knobs.runs,
        workloads: results,
    };
    fs::write(with(&prefix, ".json"), serde_json::to_string_pretty(&report)?)?;
    let md = workloads_markdown(&report);
    fs::write(with(&prefix, ".md"), &md)?;
    std::io::stdout().write_all(md.as_bytes())?;
    info!("wrote {} and .md", with(&prefix, ".json").display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_group_by_the_pairs_they_need() {
        let list = workloads::list("table grpc-stream c1000 1m-up grpc-unary").expect("ok");
        let names: Vec<(&str, Vec<&str>)> =
            groups(&list).into_iter().map(|(l, ws)| (l, ws.iter().map(|w| w.name).collect())).collect();
        assert_eq!(
            names,
            [
                ("http", vec!["c1000", "1m-up"]),
                ("grpc", vec!["grpc-stream", "grpc-unary"]),
                ("table", vec!["table"])
            ]
        );
        assert_eq!(groups(&workloads::list("new-conn").expect("ok")).len(), 1);
    }
}
