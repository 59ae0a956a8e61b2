//! Arbitrary request paths: canonical output, idempotent canonicalisation.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    portcullis::fuzzing::path(data);
});
