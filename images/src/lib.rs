//! nodepulse's container images, built without a Docker engine.
//!
//! [`catalog`] says what each image holds (one binary, the shared libraries
//! it links, a few `/etc` files) and how it runs (user, entrypoint, ports);
//! [`rootfs`] assembles that filesystem from the host's files; [`oci`]
//! writes it as a one-layer OCI image archive that `ctr images import` (and
//! `docker load`, `skopeo`, `crane`) take. The same root filesystem written
//! to a directory is what `deploy/Dockerfile.*` copy into `FROM scratch`, so
//! an image built with Docker holds exactly what this crate builds.
//!
//! Everything is deterministic: the same binaries give byte-identical
//! archives and the same digests.
#![forbid(unsafe_code)]

pub mod catalog;
pub mod oci;
pub mod rootfs;

pub use catalog::Spec;
pub use oci::Config;
pub use rootfs::Rootfs;

/// What can go wrong assembling or writing an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("running {command}: {detail}")]
    Command { command: String, detail: String },
    #[error("{path}: {reason}")]
    Invalid { path: String, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(
        what: &'static str,
        path: impl AsRef<std::path::Path>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.as_ref().display().to_string();
        move |source| Error::Io { what, path, source }
    }
}
