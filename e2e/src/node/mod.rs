//! A real node: containerd (with runc and the CNI bridge), the kubelet and
//! kube-proxy, the pinned upstream builds, running on this host inside the
//! test's network namespace, in a private mount namespace ([`mountns`]) and a
//! cgroup of their own ([`cgroup`]), with images imported from OCI archives
//! (no registry is reachable). [`crate::Cluster::add_real_node`] starts one.
//!
//! What the node shares with the host is what a node is: the kernel, its
//! cgroup hierarchies (the kubelet's pods tree sits below the node's cgroup
//! as `kubepods/<qos>/pod<uid>/<container id>`) and eBPF.

pub mod cgroup;
pub mod config;
pub mod mountns;

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::process::{self, Proc};
use cgroup::NodeCgroup;
use mountns::MountNs;

/// The pods of node `i` get addresses from `10.244.<i>.0/24`.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";

pub fn pod_subnet(i: usize) -> String {
    format!("10.244.{i}.0/24")
}

/// Debian's containernetworking-plugins (bridge, host-local, loopback).
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// The Kubernetes namespace containerd's CRI plugin keeps its images in.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// One real node. Dropping it stops kube-proxy, the kubelet and containerd,
/// kills whatever runs in the node's cgroup (shims, containers), removes
/// the cgroups, and lets the mount namespace go with its mounts.
pub struct RealNode {
    pub name: String,
    pub ip: Ipv4Addr,
    pub pod_subnet: String,
    /// containerd's socket.
    pub socket: PathBuf,
    pub dir: PathBuf,
    pub(crate) kube_proxy: Option<Proc>,
    pub(crate) kubelet: Option<Proc>,
    pub(crate) containerd: Option<Proc>,
    // Dropped after the processes above, in this order.
    pub(crate) cgroup: NodeCgroup,
    pub(crate) mount_ns: MountNs,
}

impl RealNode {
    /// The kubelet's `cgroupRoot` (the node's cgroup).
    pub fn cgroup_root(&self) -> &str {
        &self.cgroup.path
    }

    /// The kubelet's process id, while it runs.
    pub fn kubelet_pid(&self) -> Option<u32> {
        self.kubelet.as_ref().map(Proc::pid)
    }

    /// containerd's process id, while it runs.
    pub fn containerd_pid(&self) -> Option<u32> {
        self.containerd.as_ref().map(Proc::pid)
    }

    /// The v2 directory of `rel` below the node's cgroup.
    pub fn cgroup_v2_dir(&self, rel: &str) -> PathBuf {
        self.cgroup.v2_dir(rel)
    }

    /// Prepares `cmd` to run as part of the node: in its mount namespace and
    /// its runtime cgroup (the network namespace is the caller's to add).
    pub(crate) fn adopt(&self, cmd: &mut Command) {
        self.mount_ns.enter_in_child(cmd);
        testkit::join_cgroups_in_child(cmd, &self.cgroup.runtime_procs());
    }

    /// Fails if containerd, the kubelet or kube-proxy has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        for p in [
            &mut self.containerd,
            &mut self.kubelet,
            &mut self.kube_proxy,
        ]
        .into_iter()
        .flatten()
        {
            p.ensure_running()?;
        }
        Ok(())
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        // Stop order: nothing new is started while the rest goes down.
        drop(self.kube_proxy.take());
        drop(self.kubelet.take());
        drop(self.containerd.take());
        self.cgroup.kill();
    }
}

/// `ctr` against a node's containerd, in the CRI's namespace.
pub fn ctr(bin: &Path, socket: &Path, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new(bin.join("ctr"));
    cmd.arg(format!("--address={}", socket.display()))
        .arg(format!("--namespace={CRI_NAMESPACE}"))
        .args(args);
    let what = process::display(&cmd);
    let out = process::run(cmd, None, Duration::from_secs(300))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Imports an OCI archive into the node's containerd (unpacked for the
/// CRI's snapshotter), under the name its index carries.
pub fn import_image(bin: &Path, socket: &Path, archive: &Path) -> Result<()> {
    ctr(
        bin,
        socket,
        &["images", "import", &archive.display().to_string()],
    )
    .with_context(|| format!("importing {}", archive.display()))?;
    Ok(())
}
