//! Arbitrary request headers: no managed identity header, hop-by-hop
//! header or Connection-named header survives sanitising.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    portcullis::fuzzing::headers(data);
});
