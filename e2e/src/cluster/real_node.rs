//! Real nodes in the cluster (see [`crate::node`]), and what they need from
//! it: kube-scheduler, cluster DNS (CoreDNS), and images built here.

use images::catalog;

use super::*;
use crate::{
    node::{self, RealNode, cgroup::NodeCgroup, config, mountns::MountNs},
    pki::Usage,
};

/// Cluster DNS (CoreDNS), on the namespace's device: the kubelet's
/// `clusterDNS`. Pods reach it through their bridge's gateway.
pub const DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 203, 0, 53);
/// CoreDNS's `ready` endpoint, on the namespace's loopback.
const DNS_READY_PORT: u16 = 8181;
/// kube-scheduler's secure port, on the namespace's loopback.
const SCHEDULER_PORT: u16 = 10259;

/// InternalIP of real node `i` (10.203.0.50, .51, …; simulated nodes are
/// .100 and up).
fn real_node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 203, 0, 50 + i as u8)
}

/// How long a real node may take from containerd's start to Ready.
const NODE_READY: Duration = Duration::from_secs(120);

impl Cluster {
    /// A real node called `name`: containerd + runc + the CNI bridge, the
    /// kubelet and kube-proxy (see [`crate::node`]), with every image of
    /// [`images::catalog`] imported; returns once the Node is Ready. Starts
    /// cluster DNS first if it is not running.
    pub fn add_real_node(&mut self, name: &str) -> Result<()> {
        ensure!(
            self.opts.real_nodes,
            "real nodes need a cluster started with Options::real_nodes"
        );
        ensure!(
            !self.real_nodes.iter().any(|n| n.name == name),
            "node {name} exists"
        );
        ensure!(self.real_nodes.is_empty(), "one real node per cluster");
        if self.dns.is_none() {
            self.start_dns().context("starting cluster DNS")?;
        }
        let archives = self.image_archives().context("building the images")?;
        let i = self.real_nodes.len();
        let ip = real_node_ip(i);
        self.netns.add_address(ip, 32)?;
        let dir = self.work_dir.join("nodes").join(name);
        for sub in [
            "containerd/root",
            "containerd/state",
            "cni/net.d",
            "cni/ipam",
            "kubelet",
        ] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let cgroup = NodeCgroup::create(&format!(
            "{CGROUP_PREFIX}{name}-{}-{}",
            std::process::id(),
            CONTAINER_SEQ.fetch_add(1, Ordering::Relaxed)
        ))?;
        let mount_ns = MountNs::private().context("making the node's mount namespace")?;
        self.note(&format!(
            "real node {name}: ip {ip}, cgroup {}, dir {}",
            cgroup.path,
            dir.display()
        ));
        self.real_nodes.push(RealNode {
            name: name.to_string(),
            ip,
            pod_subnet: node::pod_subnet(i),
            socket: dir.join("containerd/containerd.sock"),
            dir,
            kube_proxy: None,
            kubelet: None,
            containerd: None,
            cgroup,
            mount_ns,
        });
        self.start_containerd(i)?;
        for archive in &archives {
            let n = &self.real_nodes[i];
            node::import_image(&self.bin, &n.socket, archive)?;
        }
        self.start_kubelet(i)?;
        self.start_kube_proxy(i)?;
        let node_name = name.to_string();
        self.wait_for(&format!("node {name} Ready"), NODE_READY, move |c| {
            c.real_nodes[i].ensure_running()?;
            let node = c.kubectl_json(&["get", "node", &node_name])?;
            let ready = node["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            Ok(ready.then_some(()))
        })
    }

    /// The real nodes, in the order they were added.
    pub fn real_nodes(&self) -> &[RealNode] {
        &self.real_nodes
    }

    /// The real node called `name`.
    pub fn real_node(&self, name: &str) -> Option<&RealNode> {
        self.real_nodes.iter().find(|n| n.name == name)
    }

    /// The image references the archives of [`Cluster::image_archives`] carry.
    pub fn image_reference(&self, spec: &catalog::Spec) -> Result<String> {
        let tag = if spec.name == catalog::PAUSE.name {
            binaries::upstream_kube_version()?
        } else {
            catalog::VERSION.to_string()
        };
        Ok(spec.reference(catalog::REGISTRY, &tag))
    }

    /// Every image of [`images::catalog`] as an OCI archive under the work
    /// dir, from the release binaries ([`Cluster::ours`] builds them) and the
    /// upstream pause; built once per cluster.
    pub fn image_archives(&mut self) -> Result<Vec<PathBuf>> {
        let ours = self.ours()?;
        let out = self.work_dir.join("images");
        let mut archives = Vec::new();
        for spec in catalog::ALL {
            let path = out.join(format!("{}.oci.tar", spec.name));
            if !path.exists() {
                let binary = match spec.name {
                    "agent" => ours.agent.clone(),
                    "aggregator" => ours.aggregator.clone(),
                    "burner" => ours.burner.clone(),
                    _ => self.bin.join(spec.binary),
                };
                let reference = self.image_reference(&spec)?;
                let fs = spec
                    .rootfs(&binary)
                    .with_context(|| format!("assembling the {} image", spec.name))?;
                let w = images::oci::write_archive(&path, &reference, &spec.config(), &fs)?;
                self.note(&format!(
                    "image {reference}: {} bytes, {}",
                    w.bytes, w.manifest
                ));
            }
            archives.push(path);
        }
        Ok(archives)
    }

    fn start_containerd(&mut self, i: usize) -> Result<()> {
        let pause = self.image_reference(&catalog::PAUSE)?;
        let n = &self.real_nodes[i];
        let conf_dir = n.dir.join("cni/net.d");
        let network = format!("{}-{}", self.netns.name(), n.name);
        let conflist = config::cni_conflist(
            &network,
            &format!("npbr{i}"),
            &n.pod_subnet,
            &n.dir.join("cni/ipam"),
        );
        fs::write(
            conf_dir.join("10-nodepulse-e2e.conflist"),
            conflist.to_string(),
        )
        .context("writing the CNI network")?;
        let config_path = n.dir.join("containerd/config.toml");
        let toml = config::containerd_toml(&config::Containerd {
            root: &n.dir.join("containerd/root"),
            state: &n.dir.join("containerd/state"),
            socket: &n.socket,
            runc: &self.bin.join("runc"),
            cni_conf_dir: &conf_dir,
            cni_bin_dir: Path::new(node::CNI_BIN_DIR),
            sandbox_image: &pause,
        });
        fs::write(&config_path, toml).context("writing containerd's config")?;
        let mut cmd = Command::new(self.bin.join("containerd"));
        cmd.arg(format!("--config={}", config_path.display()))
            .arg("--log-level=warn")
            // The shim (containerd-shim-runc-v2) is found on PATH.
            .env("PATH", path_with(&self.bin));
        n.adopt(&mut cmd);
        let name = format!("containerd-{}", n.name);
        let socket = n.socket.clone();
        let proc = self.start_proc(&name, cmd)?;
        self.real_nodes[i].containerd = Some(proc);
        let bin = self.bin.clone();
        self.wait_for(&format!("{name} serving"), NODE_READY, move |c| {
            c.real_nodes[i].ensure_running()?;
            if !socket.exists() {
                return Ok(None);
            }
            Ok(node::ctr(&bin, &socket, &["version"]).ok().map(|_| ()))
        })
    }

    fn start_kubelet(&mut self, i: usize) -> Result<()> {
        let (name, ip, dir) = {
            let n = &self.real_nodes[i];
            (n.name.clone(), n.ip, n.dir.clone())
        };
        let user = format!("system:node:{name}");
        let client = self
            .pki
            .client(&format!("kubelet-{name}"), &user, Some("system:nodes"))?;
        let server = format!("https://{API_IP}:{API_PORT}");
        self.write_user_kubeconfig(&user, &client, &server)?;
        let serving = self.pki.cluster_ca.issue(
            &dir,
            "kubelet-serving",
            &user,
            Some("system:nodes"),
            &[ip.to_string(), name.clone()],
            Usage::Server,
        )?;
        let resolv = dir.join("kubelet/resolv.conf");
        fs::write(&resolv, format!("nameserver {DNS_IP}\n"))?;
        let n = &self.real_nodes[i];
        let kubelet_config = config::kubelet_config(&config::Kubelet {
            node_ip: ip,
            cgroup_root: n.cgroup_root(),
            client_ca: &self.pki.cluster_ca.cert,
            serving_cert: &serving.cert,
            serving_key: &serving.key,
            runtime_socket: &n.socket,
            resolv_conf: &resolv,
            cluster_dns: DNS_IP,
        });
        let config_path = dir.join("kubelet/config.yaml");
        fs::write(&config_path, kubelet_config.to_string())?;
        let mut cmd = Command::new(self.bin.join("kubelet"));
        cmd.arg(format!("--config={}", config_path.display()))
            .arg(format!(
                "--kubeconfig={}",
                self.kubeconfig_of(&user)?.display()
            ))
            .arg(format!("--root-dir={}", dir.join("kubelet/root").display()))
            .arg(format!("--hostname-override={name}"))
            .arg(format!("--node-ip={ip}"))
            .arg("--v=1")
            .env("PATH", path_with(&self.bin));
        n.adopt(&mut cmd);
        let proc = self.start_proc(&format!("kubelet-{name}"), cmd)?;
        self.real_nodes[i].kubelet = Some(proc);
        Ok(())
    }

    fn start_kube_proxy(&mut self, i: usize) -> Result<()> {
        let (name, dir) = {
            let n = &self.real_nodes[i];
            (n.name.clone(), n.dir.clone())
        };
        let user = "system:kube-proxy";
        if self.kubeconfig_of(user).is_err() {
            let client = self.pki.client("kube-proxy", user, None)?;
            let server = format!("https://{API_IP}:{API_PORT}");
            self.write_user_kubeconfig(user, &client, &server)?;
        }
        let cfg = config::kube_proxy_config(&self.kubeconfig_of(user)?, &name, node::CLUSTER_CIDR);
        let path = dir.join("kube-proxy.yaml");
        fs::write(&path, cfg.to_string())?;
        let mut cmd = Command::new(self.bin.join("kube-proxy"));
        cmd.arg(format!("--config={}", path.display()))
            .arg("--v=1")
            .env("PATH", path_with(&self.bin));
        self.real_nodes[i].adopt(&mut cmd);
        let proc = self.start_proc(&format!("kube-proxy-{name}"), cmd)?;
        self.real_nodes[i].kube_proxy = Some(proc);
        Ok(())
    }

    /// kube-scheduler (started by [`Cluster::start`] under
    /// [`Options::real_nodes`]).
    pub(super) fn start_scheduler(&mut self) -> Result<()> {
        let user = "system:kube-scheduler";
        let client = self.pki.client("kube-scheduler", user, None)?;
        let server = format!("https://{API_IP}:{API_PORT}");
        self.write_user_kubeconfig(user, &client, &server)?;
        let kubeconfig = self.kubeconfig_of(user)?.display().to_string();
        let mut cmd = Command::new(self.bin.join("kube-scheduler"));
        cmd.arg(format!("--kubeconfig={kubeconfig}"))
            .arg(format!("--authentication-kubeconfig={kubeconfig}"))
            .arg(format!("--authorization-kubeconfig={kubeconfig}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={SCHEDULER_PORT}"))
            .arg("--leader-elect=false");
        self.scheduler = Some(self.start_proc("kube-scheduler", cmd)?);
        Ok(())
    }

    /// CoreDNS on [`DNS_IP`], serving `cluster.local` from the API as the
    /// user `system:coredns` (with the rights upstream's manifest gives it).
    fn start_dns(&mut self) -> Result<()> {
        self.apply(&manifests::list(manifests::coredns_rbac(DNS_USER)))
            .context("CoreDNS's RBAC")?;
        let client = self.pki.client("coredns", DNS_USER, None)?;
        let server = format!("https://{API_IP}:{API_PORT}");
        self.write_user_kubeconfig(DNS_USER, &client, &server)?;
        self.netns.add_address(DNS_IP, 32)?;
        let dir = self.work_dir.join("coredns");
        fs::create_dir_all(&dir)?;
        let corefile = dir.join("Corefile");
        fs::write(
            &corefile,
            config::corefile(DNS_IP, &self.kubeconfig_of(DNS_USER)?, DNS_READY_PORT),
        )?;
        let mut cmd = Command::new(self.bin.join("coredns"));
        cmd.arg("-conf").arg(&corefile).current_dir(&dir);
        self.dns = Some(self.start_proc("coredns", cmd)?);
        let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, DNS_READY_PORT));
        self.wait_for("CoreDNS ready", self.opts.ready_timeout, |c| {
            let (status, _) = c.netns.http_get(addr, "/ready")?;
            Ok((status == 200).then_some(()))
        })
    }
}

/// The user CoreDNS reads the API as.
const DNS_USER: &str = "system:coredns";

/// `bin` first, then the harness's own `PATH`.
fn path_with(bin: &Path) -> std::ffi::OsString {
    let mut path = bin.as_os_str().to_owned();
    if let Some(rest) = std::env::var_os("PATH") {
        path.push(":");
        path.push(rest);
    }
    path
}
