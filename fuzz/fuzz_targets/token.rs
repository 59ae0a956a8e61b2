//! Arbitrary bytes as a bearer token: parsing, header and claim checks,
//! key lookup, signature verification and claim rendering must never
//! panic, hang or blow up memory.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    portcullis::fuzzing::token(data);
});
