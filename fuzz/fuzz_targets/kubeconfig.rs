//! A kubeconfig as an operator (or a mounted Secret) hands it over. Any
//! panic or hang is a bug; refusals are fine. Relative file references
//! resolve against a directory that does not exist.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = kube_lite::kubeconfig::resolve(text, Path::new("/nonexistent/nodepulse-fuzz"));
});
