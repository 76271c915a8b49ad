// Lays out the proxy's machine code in the order of proxy/link-order.txt: the functions a proxy
// runs at start-up and per request first, packed together, the rest after. Without it the code
// it runs is spread over the whole .text, so nearly every page of the binary ends up mapped
// (page faults map 64 KiB around each hit) and counted in the sidecar's RSS.
use std::env;
use std::process::Command;

/// rustc links x86_64-unknown-linux-gnu with its bundled LLD from 1.90 on; LLD reads the
/// ordering file, the system linker rustc used before rejects the flag.
const FIRST_RUSTC_WITH_LLD: (u32, u32) = (1, 90);

fn main() {
    let dir = env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    // By its absolute path, which the link argument below names too: a checkout moved elsewhere
    // (or a target directory shared by two) reruns this script rather than link with a path
    // that is gone.
    println!("cargo:rerun-if-changed={dir}/link-order.txt");
    println!("cargo:rerun-if-env-changed=RUSTFLAGS");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER");
    let target = env::var("TARGET").unwrap_or_default();
    if target != "x86_64-unknown-linux-gnu" {
        return;
    }
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(&rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|output| release(&String::from_utf8_lossy(&output.stdout)));
    // A linker of the user's own choosing may not be LLD either.
    let own_linker = env::var_os("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_some()
        || env::var("CARGO_ENCODED_RUSTFLAGS").is_ok_and(|flags| flags.contains("linker"));
    match version {
        Some(version) if version >= FIRST_RUSTC_WITH_LLD && !own_linker => {}
        _ => {
            println!(
                "cargo:warning=braid-proxy is linked without proxy/link-order.txt (it needs rustc 1.90+ linking \
                 with its bundled LLD; found {}): it works the same, with more of its code mapped in memory",
                version.map_or_else(
                    || "an unknown rustc or linker".to_owned(),
                    |(major, minor)| format!("rustc {major}.{minor}")
                )
            );
            return;
        }
    }
    println!("cargo:rustc-link-arg-bin=braid-proxy=-Wl,--symbol-ordering-file={dir}/link-order.txt");
    // Names the file lists but a build lacks (another profile, a changed dependency) are expected.
    println!("cargo:rustc-link-arg-bin=braid-proxy=-Wl,--no-warn-symbol-ordering");
}

/// (major, minor) of `rustc 1.95.0 (59807616e 2026-04-14)`.
fn release(version: &str) -> Option<(u32, u32)> {
    let mut numbers = version.split_whitespace().nth(1)?.split(['.', '-']);
    Some((numbers.next()?.parse().ok()?, numbers.next()?.parse().ok()?))
}
