//! Arbitrary text as the configuration file: it is refused with an error or accepted, and an
//! accepted one always compiles into a routing table (the checks and the compiler agree).

#![no_main]

use braid_api::config::Config;
use braid_proxy::table::Table;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(config) = Config::parse(text) {
        if let Err(error) = Table::build(config, None, None) {
            panic!("a configuration that passed the checks failed to compile: {error}");
        }
    }
});
