// Lays out the proxy's machine code in the order of proxy/link-order.txt: the functions a proxy
// runs at start-up and per request first, packed together, the rest after. Without it the code
// it runs is spread over the whole .text, so nearly every page of the binary ends up mapped
// (page faults map 64 KiB around each hit) and counted in the sidecar's RSS.
use std::env;

fn main() {
    println!("cargo:rerun-if-changed=link-order.txt");
    let target = env::var("TARGET").unwrap_or_default();
    // rustc links x86_64-unknown-linux-gnu with its bundled LLD, which reads the ordering file;
    // other linkers would reject the flag.
    if target != "x86_64-unknown-linux-gnu" {
        return;
    }
    let dir = env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    println!("cargo:rustc-link-arg-bin=braid-proxy=-Wl,--symbol-ordering-file={dir}/link-order.txt");
    // Names the file lists but a build lacks (another profile, a changed dependency) are expected.
    println!("cargo:rustc-link-arg-bin=braid-proxy=-Wl,--no-warn-symbol-ordering");
}
