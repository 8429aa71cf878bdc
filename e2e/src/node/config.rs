//! The configuration files of a real node's parts: containerd (CRI plugin,
//! runc, CNI), the CNI network, the kubelet and kube-proxy. Pure functions
//! of their inputs; [`super`] writes them and starts the programs.
//!
//! Settings this host needs, each for one reason:
//! - containerd `restrict_oom_score_adj`: the harness lacks
//!   CAP_SYS_RESOURCE, and runc would fail lowering a container's
//!   `oom_score_adj` below its own.
//! - kubelet `cgroupDriver: cgroupfs` (no systemd here), `failCgroupV1:
//!   false` (this host's controllers are cgroup v1; kubelet 1.35+ refuses v1
//!   otherwise), `failSwapOn: false`, `makeIPTablesUtilChains: false` (the
//!   node's network is the test's own namespace), `cgroupRoot` (the node's
//!   own cgroup, so that nothing of the host's is touched).
//! - eviction thresholds near zero and image GC off: a nearly full disk on a
//!   development machine must not evict the test's pods or delete the
//!   images imported by hand (nothing could pull them again).
use std::{net::Ipv4Addr, path::Path};

use serde_json::{Value, json};

/// Where a node's containerd keeps things.
pub struct Containerd<'a> {
    pub root: &'a Path,
    pub state: &'a Path,
    pub socket: &'a Path,
    pub runc: &'a Path,
    pub cni_conf_dir: &'a Path,
    pub cni_bin_dir: &'a Path,
    /// The pod sandbox image (imported before the first pod).
    pub sandbox_image: &'a str,
}

/// containerd 2.x `config.toml` (version 3).
pub fn containerd_toml(c: &Containerd) -> String {
    let q = |p: &Path| toml_str(&p.display().to_string());
    format!(
        r#"version = 3
root = {root}
state = {state}

[grpc]
  address = {socket}

[ttrpc]
  address = {ttrpc}

[metrics]
  address = ''

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'

    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = {sandbox}

  [plugins.'io.containerd.cri.v1.runtime']
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    enable_cdi = false

    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'

      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'

        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = {runc}
          SystemdCgroup = false

    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = [{cni_bin}]
      conf_dir = {cni_conf}
      max_conf_num = 1

  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'
"#,
        root = q(c.root),
        state = q(c.state),
        socket = q(c.socket),
        ttrpc = toml_str(&format!("{}.ttrpc", c.socket.display())),
        sandbox = toml_str(c.sandbox_image),
        runc = q(c.runc),
        cni_bin = q(c.cni_bin_dir),
        cni_conf = q(c.cni_conf_dir),
    )
}

/// A TOML literal string (single quotes: no escapes to get wrong).
fn toml_str(s: &str) -> String {
    assert!(
        !s.contains('\'') && !s.contains('\n'),
        "no quote or newline in TOML literal {s:?}"
    );
    format!("'{s}'")
}

/// The pods' network: a bridge in the node's network namespace that is
/// their gateway, addresses from `subnet` (host-local, leases in
/// `ipam_dir`), hairpin on so that a pod reaches itself through a Service.
pub fn cni_conflist(name: &str, bridge: &str, subnet: &str, ipam_dir: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [{
            "type": "bridge",
            "bridge": bridge,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": subnet }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": ipam_dir.display().to_string(),
            },
        }],
    })
}

/// What the kubelet is told.
pub struct Kubelet<'a> {
    pub node_ip: Ipv4Addr,
    pub cgroup_root: &'a str,
    pub client_ca: &'a Path,
    pub serving_cert: &'a Path,
    pub serving_key: &'a Path,
    pub runtime_socket: &'a Path,
    pub resolv_conf: &'a Path,
    pub cluster_dns: Ipv4Addr,
}

/// The kubelet's `KubeletConfiguration` (JSON, which the kubelet reads as
/// YAML).
pub fn kubelet_config(k: &Kubelet) -> Value {
    json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": k.node_ip.to_string(),
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        // As kubeadm sets it up: client certificates of the cluster CA and
        // bearer tokens (TokenReview), authorized by SubjectAccessReview —
        // which is what makes `nodes/metrics` in the agent's RBAC matter.
        "authentication": {
            "anonymous": { "enabled": false },
            "webhook": { "enabled": true },
            "x509": { "clientCAFile": k.client_ca.display().to_string() },
        },
        "authorization": { "mode": "Webhook" },
        "tlsCertFile": k.serving_cert.display().to_string(),
        "tlsPrivateKeyFile": k.serving_key.display().to_string(),
        "containerRuntimeEndpoint": format!("unix://{}", k.runtime_socket.display()),
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": k.cgroup_root,
        "failCgroupV1": false,
        "failSwapOn": false,
        "makeIPTablesUtilChains": false,
        "resolvConf": k.resolv_conf.display().to_string(),
        "clusterDNS": [k.cluster_dns.to_string()],
        "clusterDomain": "cluster.local",
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": false,
        // Projected tokens and ConfigMaps refresh at this period.
        "syncFrequency": "10s",
        "nodeStatusUpdateFrequency": "5s",
        "shutdownGracePeriod": "0s",
    })
}

/// kube-proxy's `KubeProxyConfiguration`: nftables mode, and no conntrack
/// sysctls (they are the host's, shared by every namespace).
pub fn kube_proxy_config(kubeconfig: &Path, node: &str, cluster_cidr: &str) -> Value {
    json!({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "nftables",
        "hostnameOverride": node,
        "clusterCIDR": cluster_cidr,
        "clientConnection": { "kubeconfig": kubeconfig.display().to_string() },
        "bindAddress": "0.0.0.0",
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
    })
}

/// CoreDNS's Corefile: `cluster.local` (and reverse lookups) from the API
/// through `kubeconfig`, listening on `ip` only. Nothing is forwarded (there
/// is no upstream): every other name is answered NXDOMAIN, as an upstream
/// resolver would, so that a resolver walking its search list gets a
/// definite answer rather than a server failure.
pub fn corefile(ip: Ipv4Addr, kubeconfig: &Path, ready_port: u16) -> String {
    format!(
        "cluster.local in-addr.arpa ip6.arpa {{
    bind {ip}
    errors
    ready 127.0.0.1:{ready_port}
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        ttl 5
    }}
    cache 5
}}
. {{
    bind {ip}
    errors
    template ANY ANY {{
        rcode NXDOMAIN
    }}
}}
",
        kubeconfig = kubeconfig.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_config_names_every_path() {
        let toml = containerd_toml(&Containerd {
            root: Path::new("/w/root"),
            state: Path::new("/w/state"),
            socket: Path::new("/w/containerd.sock"),
            runc: Path::new("/bin/runc"),
            cni_conf_dir: Path::new("/w/net.d"),
            cni_bin_dir: Path::new("/usr/lib/cni"),
            sandbox_image: "nodepulse.local/pause:v1",
        });
        for want in [
            "version = 3",
            "root = '/w/root'",
            "address = '/w/containerd.sock'",
            "address = '/w/containerd.sock.ttrpc'",
            "sandbox = 'nodepulse.local/pause:v1'",
            "BinaryName = '/bin/runc'",
            "SystemdCgroup = false",
            "restrict_oom_score_adj = true",
            "bin_dirs = ['/usr/lib/cni']",
        ] {
            assert!(toml.contains(want), "{want}:\n{toml}");
        }
    }

    #[test]
    #[should_panic(expected = "no quote")]
    fn toml_literals_refuse_quotes() {
        toml_str("it's");
    }

    #[test]
    fn kubelet_config_as_this_host_needs() {
        let c = kubelet_config(&Kubelet {
            node_ip: Ipv4Addr::new(10, 0, 0, 5),
            cgroup_root: "/np-node",
            client_ca: Path::new("/ca.crt"),
            serving_cert: Path::new("/k.crt"),
            serving_key: Path::new("/k.key"),
            runtime_socket: Path::new("/c.sock"),
            resolv_conf: Path::new("/resolv.conf"),
            cluster_dns: Ipv4Addr::new(10, 0, 0, 53),
        });
        assert_eq!(c["failCgroupV1"], false);
        assert_eq!(c["cgroupDriver"], "cgroupfs");
        assert_eq!(c["cgroupRoot"], "/np-node");
        assert_eq!(c["containerRuntimeEndpoint"], "unix:///c.sock");
        assert_eq!(c["address"], "10.0.0.5");
        assert_eq!(c["clusterDNS"][0], "10.0.0.53");
        assert_eq!(c["authentication"]["anonymous"]["enabled"], false);
    }
}
