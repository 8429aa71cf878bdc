//! Untrusted DER from a TLS client's certificate: the subject the
//! aggregator reads a user name and groups from. Any panic, overflow or
//! hang is a bug; refusals are fine.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = aggregator_api::auth::x509::subject(data);
});
