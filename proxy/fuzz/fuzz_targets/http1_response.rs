//! Arbitrary bytes as what an app answers on an HTTP/1.1 connection: the proxy's lean client
//! must read them as a response (head, interim answers, framing, chunked body, trailers) or say
//! why they are not one, and never panic. The first byte says whether the request was HEAD.

#![no_main]

use braid_proxy::client::http1::parse_response;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, answer)) = data.split_first() else { return };
    if let Ok((status, length, _)) = parse_response(answer, flags & 1 == 1) {
        assert!(!status.is_informational(), "an interim answer is never the response");
        assert!(length <= answer.len() as u64, "a body is never longer than what was read");
    }
});
