//! A private mount namespace for one real node's containerd and kubelet.
//!
//! Everything they mount (image snapshots, pod volumes, the kubelet's
//! bind-mounted root, container root filesystems) stays inside it and is gone
//! once its last process exits: nothing leaks into the host's mount table,
//! even when the harness is killed. The host paths both programs hard-code
//! (`/run/containerd`, `/var/lib/kubelet`, `/var/lib/cni`, `/var/log/pods`,
//! `/var/log/containers`) get a tmpfs of their own inside it, so two nodes
//! on one host, or a real kubelet on a developer's machine, never see each
//! other's sockets, device-plugin registrations, CNI cache or logs.
#![allow(unsafe_code)]

use std::{
    ffi::CString,
    fs::{self, File},
    process::Command,
};

use anyhow::{Context, Result, anyhow, bail};

use crate::netns::{run_on_thread_in, setns_in_child};

/// The paths that get a private tmpfs.
pub const PRIVATE_PATHS: [&str; 5] = [
    "/run/containerd",
    "/var/lib/kubelet",
    "/var/lib/cni",
    "/var/log/pods",
    "/var/log/containers",
];

/// A mount namespace held open by a file descriptor (no process needed).
#[derive(Debug)]
pub struct MountNs {
    file: File,
}

impl MountNs {
    /// A copy of the host's mounts, made private (nothing propagates back),
    /// with a tmpfs on each of [`PRIVATE_PATHS`] (created on the host first
    /// where missing, as empty directories).
    pub fn private() -> Result<Self> {
        for p in PRIVATE_PATHS {
            fs::create_dir_all(p).with_context(|| format!("creating {p}"))?;
        }
        // A thread's mount namespace is its own once it unshares it (with its
        // filesystem context): the rest of the process stays where it is.
        std::thread::scope(|s| {
            s.spawn(|| -> Result<Self> {
                // SAFETY: unshare affects only the calling thread here
                // (CLONE_NEWNS implies CLONE_FS, which is per thread).
                if unsafe { libc::unshare(libc::CLONE_NEWNS | libc::CLONE_FS) } != 0 {
                    bail!("unshare(CLONE_NEWNS): {}", std::io::Error::last_os_error());
                }
                mount(None, "/", None, libc::MS_REC | libc::MS_PRIVATE, None)
                    .context("making every mount private")?;
                for p in PRIVATE_PATHS {
                    mount(Some("tmpfs"), p, Some("tmpfs"), 0, Some("mode=0755"))
                        .with_context(|| format!("mounting a tmpfs on {p}"))?;
                }
                let file = File::open("/proc/thread-self/ns/mnt")
                    .context("opening the new mount namespace")?;
                Ok(Self { file })
            })
            .join()
            .map_err(|_| anyhow!("the thread making the mount namespace panicked"))?
        })
    }

    /// Makes the child that `cmd` spawns join this namespace before it execs.
    pub fn enter_in_child(&self, cmd: &mut Command) {
        setns_in_child(cmd, &self.file, libc::CLONE_NEWNS);
    }

    /// Runs `f` on a thread inside this namespace (e.g. to read a path that
    /// only exists here).
    pub fn run_in<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R> {
        run_on_thread_in(&self.file, libc::CLONE_NEWNS, f)
    }
}

fn mount(
    source: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<()> {
    let c = |s: &str| CString::new(s).map_err(|_| anyhow!("NUL in {s:?}"));
    let source = source.map(c).transpose()?;
    let target_c = c(target)?;
    let fstype = fstype.map(c).transpose()?;
    let data = data.map(c).transpose()?;
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is a NUL-terminated string that outlives the call,
    // or null where mount(2) allows it.
    let rc = unsafe {
        libc::mount(
            ptr(&source),
            target_c.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    if rc != 0 {
        bail!("mount {target}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn mounts_inside_stay_inside() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let ns = MountNs::private().expect("mount namespace");
        let marker = Path::new("/run/containerd/np-e2e-mountns-marker");
        ns.run_in(|| fs::write(marker, b"x"))
            .expect("write")
            .expect("expect");
        assert!(
            ns.run_in(|| marker.exists()).expect("exists"),
            "visible inside"
        );
        assert!(!marker.exists(), "the tmpfs hides it from the host");
    }
}
