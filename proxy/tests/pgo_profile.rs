//! The recorded profile the proxy is built with (proxy/pgo/, `make pgo`): usable by this
//! toolchain, and refused or set aside with a reason when it is not.
#![allow(clippy::expect_used)] // test helpers outside #[test] functions

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn pgo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("pgo")
}

/// Runs rustflags.sh as it sits in `pgo` (a copy of proxy/pgo/ laid out as in the repository),
/// with its unpacked profile under `target`.
fn rustflags(pgo: &Path, target: &Path) -> Output {
    Command::new("bash")
        .arg(pgo.join("rustflags.sh"))
        .env("CARGO_TARGET_DIR", target)
        .env_remove("RUSTFLAGS")
        .output()
        .expect("bash runs")
}

/// A copy of proxy/pgo/ at `root`/proxy/pgo, which the test may then spoil.
fn copy_of_pgo(root: &Path) -> PathBuf {
    let copy = root.join("proxy/pgo");
    std::fs::create_dir_all(&copy).expect("a scratch folder");
    for entry in std::fs::read_dir(pgo_dir()).expect("proxy/pgo is there") {
        let entry = entry.expect("a directory entry");
        std::fs::copy(entry.path(), copy.join(entry.file_name())).expect("copied");
    }
    copy
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The LLVM major version of the rustc on the PATH, as rustflags.sh reads it.
fn this_llvm() -> String {
    let output = Command::new("rustc").arg("-vV").output().expect("rustc runs");
    text(&output.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: ")?.split('.').next().map(str::to_owned))
        .expect("rustc -vV names its LLVM version")
}

/// The lines rustflags.sh prints when the recordings are of other sources: a reminder, not an
/// error (a stale profile still helps the functions that did not change).
fn staleness_notes(stderr: &str) -> bool {
    stderr.lines().all(|line| line.contains("was recorded from other sources than these"))
}

#[test]
fn the_committed_profile_is_one_this_toolchain_builds_the_proxy_with() {
    let recorded = std::fs::read_to_string(pgo_dir().join("llvm-version")).expect("proxy/pgo/llvm-version");
    if recorded.trim() != this_llvm() {
        // Another toolchain than the one the profile was recorded with: the proxy builds without
        // it (`a_profile_of_another_llvm_is_set_aside_with_a_warning`), as the build says.
        eprintln!(
            "warning: proxy/pgo was recorded with LLVM {} and this rustc uses LLVM {}: braid-proxy is built \
             without the profile here; `make pgo` records one for this toolchain",
            recorded.trim(),
            this_llvm()
        );
        return;
    }
    let scratch = tempfile::tempdir().expect("a scratch folder");
    let output = rustflags(&pgo_dir(), scratch.path());
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "proxy/pgo/rustflags.sh failed: {stderr}");
    assert!(staleness_notes(&stderr), "the committed profile is not used with this toolchain: {stderr}");
    if !stderr.is_empty() {
        eprintln!("warning: {stderr}");
    }
    let profile = scratch.path().join("pgo/braid-proxy.profdata");
    assert_eq!(stdout.trim(), format!("-Cprofile-use={}", profile.display()));
    let unpacked = std::fs::read(&profile).expect("the profile is unpacked under the target directory");
    assert!(
        unpacked.len() > 100_000,
        "a profile of the proxy's code is larger than {} bytes",
        unpacked.len()
    );
}

#[test]
fn a_recording_of_other_sources_is_used_with_a_reminder_to_record_it_again() {
    let scratch = tempfile::tempdir().expect("a scratch folder");
    let pgo = copy_of_pgo(scratch.path());
    std::fs::write(pgo.join("llvm-version"), format!("{}\n", this_llvm())).expect("written");
    std::fs::write(pgo.join("sources.sha256"), "0000\n").expect("written");
    let output = rustflags(&pgo, &scratch.path().join("target"));
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(text(&output.stdout).contains("-Cprofile-use="), "a stale profile is still used");
    assert!(stderr.contains("the profile (make pgo) was recorded from other sources"), "{stderr}");
}

#[test]
fn a_profile_that_is_no_profile_is_refused_with_the_reason() {
    let scratch = tempfile::tempdir().expect("a scratch folder");
    let pgo = copy_of_pgo(scratch.path());
    let target = scratch.path().join("target");

    // The refusals come after the LLVM check: this toolchain's, whatever the profile's.
    std::fs::write(pgo.join("llvm-version"), format!("{}\n", this_llvm())).expect("written");
    std::fs::write(pgo.join("braid-proxy.profdata.gz"), b"not gzip").expect("written");
    let output = rustflags(&pgo, &target);
    assert!(!output.status.success(), "a profile that does not unpack must fail the build");
    assert!(text(&output.stderr).contains("does not unpack"), "{}", text(&output.stderr));

    // gzip of something else: LLVM would only warn and build without it.
    let gzip = Command::new("gzip").arg("-c").arg(pgo.join("llvm-version")).output().expect("gzip runs");
    std::fs::write(pgo.join("braid-proxy.profdata.gz"), gzip.stdout).expect("written");
    let output = rustflags(&pgo, &target);
    assert!(!output.status.success(), "a file that is no LLVM profile must fail the build");
    assert!(text(&output.stderr).contains("no indexed LLVM profile"), "{}", text(&output.stderr));
}

#[test]
fn a_profile_of_another_llvm_is_set_aside_with_a_warning() {
    let scratch = tempfile::tempdir().expect("a scratch folder");
    let pgo = copy_of_pgo(scratch.path());
    std::fs::write(pgo.join("llvm-version"), "3\n").expect("written");
    let output = rustflags(&pgo, &scratch.path().join("target"));
    assert!(output.status.success(), "the proxy still builds, without the profile");
    assert_eq!(text(&output.stdout).trim(), "", "no -Cprofile-use for a profile LLVM cannot read");
    let stderr = text(&output.stderr);
    assert!(stderr.contains("recorded with LLVM 3") && stderr.contains("make pgo"), "{stderr}");
}
