//! End-to-end harness: a real Kubernetes control plane, simulated nodes, and
//! nodepulse, for tests that exercise the whole path
//! (agent → aggregator → kube-apiserver's aggregation layer → kubectl / HPA).
//!
//! What runs where:
//! - Everything networked runs in **one network namespace** per cluster
//!   (`np-e2e-<pid>-<n>`, see [`netns`]): `lo`, and a veth device holding
//!   [`API_IP`] (etcd, kube-apiserver), one address per aggregator replica
//!   ([`replica_ip`]) and one per simulated node. It has no route anywhere
//!   else, so nothing can reach beyond loopback and the namespace.
//! - etcd, kube-apiserver (aggregation layer configured, routing to
//!   EndpointSlice addresses), kube-controller-manager: the pinned upstream
//!   builds from `scripts/upstream.sh`, with a PKI made in-process ([`pki`]).
//! - Simulated nodes: a Ready Node object plus a kubelet-style cgroup subtree
//!   (testkit); pods get their cgroups from their real UID and burners in them.
//! - nodepulse: aggregator replicas and one agent per node, from
//!   `target/release` ([`binaries`] holds their only command lines).
//!
//! Dropping the [`Cluster`] stops every process (by process group), removes
//! the cgroups, the namespace and the temp dir — when a test panics too, after
//! printing the tail of every log. Processes also die with the test binary
//! (`PDEATHSIG`), and a namespace left by a killed run is removed by the next.
//!
//! ```no_run
//! use e2e::{Cluster, Container, Options};
//! use testkit::Burn;
//!
//! let Some(h) = e2e::privileged("example") else { return };
//! let mut c = Cluster::start(h, Options::new("example")).expect("cluster");
//! c.add_node("node-a", "4", "8Gi").expect("node");
//! c.add_pod("node-a", "default", "web", &[("app", "web")],
//!     vec![Container::new("app", Burn::Duty { fraction: 0.2, period_ms: 20 })
//!         .request("cpu", "100m")]).expect("pod");
//! let out = c.kubectl(&["get", "pods", "-A"]).expect("kubectl");
//! assert!(out.status.success());
//! ```
#![deny(unsafe_code)]

pub mod binaries;
pub mod cluster;
pub mod curl;
pub mod fleet;
pub mod kubectl;
pub mod manifests;
pub mod netns;
pub mod node;
pub mod pki;
pub mod process;
pub mod time;

pub use binaries::{AgentArgs, AggregatorArgs, Ours, agent_command, aggregator_command};
pub use cluster::{
    AGENT_AUDIENCE, AGGREGATOR_PORT, API_IP, API_PORT, Cluster, Container, ContainerInfo, DNS_IP,
    INGEST_PORT, MetricsServer, Options, PodInfo, SERVER_NAME, Timings, USER_ADMIN,
    USER_METRICS_READER, USER_NO_RBAC, replica_ip,
};
pub use process::Proc;

use agent::cgroup::Hierarchy;

/// Skips (returns `None` after saying why) unless this process can run a
/// cluster: root, BTF, cgroup v2 (testkit's check) and iproute2's `ip`.
/// Under `NODEPULSE_REQUIRE_PRIVILEGED=1` (CI) it panics instead of skipping.
pub fn privileged(test: &str) -> Option<Hierarchy> {
    let h = testkit::privileged(test)?;
    let has_ip = std::process::Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_ip {
        let why = "iproute2's `ip` is not installed";
        if std::env::var("NODEPULSE_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
            panic!("{test}: {why}");
        }
        eprintln!("skipped {test}: {why}");
        return None;
    }
    Some(h)
}
