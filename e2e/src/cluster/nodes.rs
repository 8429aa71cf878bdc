//! Simulated nodes and pods: Node objects, kubelet-style cgroups, burners,
//! pod status as a kubelet would report it.

use super::*;

impl Cluster {
    /// A simulated node: a Ready Node object with `cpu`/`memory` (e.g. `"4"`,
    /// `"8Gi"`) as capacity and allocatable, and its own cgroup subtree (the
    /// node cgroup its agent gets as `--node-cgroup`).
    pub fn add_node(&mut self, name: &str, cpu: &str, memory: &str) -> Result<()> {
        ensure!(
            !self.nodes.iter().any(|n| n.name == name),
            "node {name} exists"
        );
        ensure!(self.nodes.len() < 100, "at most 100 simulated nodes");
        let ip = node_ip(self.nodes.len());
        self.netns.add_address(ip, 32)?;
        self.create(&manifests::node(name))
            .with_context(|| format!("creating node {name}"))?;
        let status = manifests::node_status(name, ip, cpu, memory, &now_rfc3339());
        self.kubectl_ok(&[
            "patch",
            "node",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ])?;
        // TaintNodesByCondition admission added node.kubernetes.io/not-ready;
        // the node lifecycle controller that would lift it is off.
        self.kubectl_ok(&[
            "patch",
            "node",
            name,
            "--type=merge",
            "-p",
            r#"{"spec":{"taints":null}}"#,
        ])?;
        let tree = CgroupTree::new(&self.hierarchy, &format!("e2e-{name}"));
        let base = tree.base.clone();
        self.note(&format!("node {name}: ip {ip}, cgroup {base}"));
        self.nodes.push(SimNode {
            name: name.to_string(),
            ip,
            pods: Vec::new(),
            agent: None,
            base,
            tree: Arc::new(Mutex::new(tree)),
        });
        Ok(())
    }

    /// The simulated nodes' names, in the order they were added.
    pub fn nodes(&self) -> Vec<&str> {
        self.nodes.iter().map(|n| n.name.as_str()).collect()
    }

    /// A node's cgroup, relative to the v2 root (its agent's `--node-cgroup`).
    pub fn node_cgroup(&self, node: &str) -> Option<&str> {
        self.nodes
            .iter()
            .find(|n| n.name == node)
            .map(|n| n.base.as_str())
    }

    /// The v2 directory of a cgroup path relative to the v2 root.
    pub fn cgroup_dir(&self, rel: &str) -> Option<PathBuf> {
        self.hierarchy
            .v2
            .as_ref()
            .map(|root| root.join(rel.trim_start_matches('/')))
    }

    pub(super) fn node_index(&self, node: &str) -> Result<usize> {
        self.nodes
            .iter()
            .position(|n| n.name == node)
            .ok_or_else(|| anyhow!("no simulated node {node}"))
    }

    /// Creates `namespace` if needed and waits for its `default` ServiceAccount
    /// (pods are refused until kube-controller-manager has made it).
    pub fn ensure_namespace(&mut self, namespace: &str) -> Result<()> {
        if self.namespaces.contains(namespace) {
            return Ok(());
        }
        let exists = self.kubectl(&["get", "namespace", namespace])?;
        if !exists.status.success() {
            self.kubectl_ok(&["create", "namespace", namespace])?;
        }
        let ns = namespace.to_string();
        self.wait_for(
            &format!("ServiceAccount {namespace}/default"),
            Duration::from_secs(60),
            |c| {
                let out = c.kubectl(&["-n", &ns, "get", "serviceaccount", "default"])?;
                Ok(out.status.success().then_some(()))
            },
        )?;
        self.namespaces.insert(namespace.to_string());
        Ok(())
    }

    /// A pod on `node`, as a kubelet would run it: the Pod (bound to the node)
    /// is created, each container gets a cgroup named from the pod's real UID
    /// and QoS class (systemd driver, containerd) with a burner in it, and the
    /// status becomes Running/Ready with those container ids.
    pub fn add_pod(
        &mut self,
        node: &str,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
        containers: Vec<Container>,
    ) -> Result<PodInfo> {
        let idx = self.node_index(node)?;
        self.ensure_namespace(namespace)?;
        let specs: Vec<ContainerSpec<'_>> = containers
            .iter()
            .map(|c| ContainerSpec {
                name: &c.name,
                requests: &c.requests,
                limits: &c.limits,
            })
            .collect();
        let pod = manifests::pod(namespace, name, node, labels, &specs);
        let created = self
            .create(&pod)
            .with_context(|| format!("creating pod {namespace}/{name}"))?;
        let burns = containers.into_iter().map(|c| (c.name, c.burn)).collect();
        self.run_pod(idx, &created, burns)
    }

    /// Binds an existing (e.g. ReplicaSet-made, Pending) pod to `node` as the
    /// scheduler would, then runs it as [`Cluster::add_pod`] does; `burns`
    /// names what each container burns.
    pub fn adopt_pod(
        &mut self,
        node: &str,
        namespace: &str,
        name: &str,
        burns: Vec<(String, Burn)>,
    ) -> Result<PodInfo> {
        let idx = self.node_index(node)?;
        let path = format!("/api/v1/namespaces/{namespace}/pods/{name}/binding");
        let args = ["create", "--raw", path.as_str(), "-f", "-"];
        ok(
            self.kubectl_stdin(&args, manifests::binding(name, node).to_string().as_bytes())?,
            &args,
        )?;
        let pod = self.kubectl_json(&["-n", namespace, "get", "pod", name])?;
        self.run_pod(idx, &pod, burns)
    }

    /// Names of pods in `namespace` matching `selector` that no node has yet.
    pub fn unscheduled_pods(&self, namespace: &str, selector: &str) -> Result<Vec<String>> {
        let list = self.kubectl_json(&[
            "-n",
            namespace,
            "get",
            "pods",
            "-l",
            selector,
            "--field-selector=spec.nodeName=",
        ])?;
        Ok(list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .filter_map(|p| p["metadata"]["name"].as_str().map(String::from))
            .collect())
    }

    fn run_pod(
        &mut self,
        idx: usize,
        pod: &Value,
        mut burns: Vec<(String, Burn)>,
    ) -> Result<PodInfo> {
        let meta = &pod["metadata"];
        let (namespace, name, uid) = match (
            meta["namespace"].as_str(),
            meta["name"].as_str(),
            meta["uid"].as_str(),
        ) {
            (Some(ns), Some(n), Some(u)) => (ns.to_string(), n.to_string(), u.to_string()),
            _ => bail!("pod without namespace/name/uid: {meta}"),
        };
        let qos = match pod["status"]["qosClass"].as_str() {
            Some("Guaranteed") => "guaranteed",
            Some("Burstable") => "burstable",
            Some("BestEffort") => "besteffort",
            other => bail!("pod {namespace}/{name}: qosClass {other:?}"),
        };
        let names: Vec<String> = pod["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(String::from))
            .collect();
        ensure!(
            !names.is_empty(),
            "pod {namespace}/{name} has no containers"
        );
        let mut plan = Vec::new();
        for cname in &names {
            let i = burns.iter().position(|(n, _)| n == cname).ok_or_else(|| {
                anyhow!("no burn given for container {cname} of {namespace}/{name}")
            })?;
            plan.push((cname.clone(), burns.swap_remove(i).1));
        }
        let node = &self.nodes[idx];
        let mut containers = Vec::new();
        let mut burners = Vec::new();
        for (cname, burn) in plan {
            let id = testkit::container_id(CONTAINER_SEQ.fetch_add(1, Ordering::Relaxed));
            let cgroup = testkit::systemd_container(&node.base, qos, &uid, &id);
            // Forked by the spawner thread, which outlives every test thread
            // that may call this (PDEATHSIG follows the forking thread).
            let (tree, launcher, rel) = (
                Arc::clone(&node.tree),
                self.opts.launcher.clone(),
                cgroup.clone(),
            );
            burners.push(self.spawner.run(move || {
                tree.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .spawn(&rel, &burn, &launcher)
            })?);
            containers.push(ContainerInfo {
                name: cname,
                id,
                cgroup,
            });
        }
        let info = PodInfo {
            namespace,
            name,
            uid,
            node: node.name.clone(),
            qos: qos.to_string(),
            containers,
        };
        let ids: Vec<(String, String)> = info
            .containers
            .iter()
            .map(|c| (c.name.clone(), c.id.clone()))
            .collect();
        let status = manifests::pod_status(node.ip, &ids, &now_rfc3339());
        self.kubectl_ok(&[
            "-n",
            &info.namespace,
            "patch",
            "pod",
            &info.name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ])
        .with_context(|| format!("setting the status of pod {}/{}", info.namespace, info.name))?;
        self.note(&format!(
            "pod {}/{} (uid {}, {}) running on {}: {:?}",
            info.namespace,
            info.name,
            info.uid,
            info.qos,
            info.node,
            info.containers
                .iter()
                .map(|c| &c.cgroup)
                .collect::<Vec<_>>()
        ));
        self.nodes[idx].pods.push(SimPod {
            info: info.clone(),
            burners,
        });
        Ok(info)
    }

    /// A running simulated pod.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&PodInfo> {
        self.nodes
            .iter()
            .flat_map(|n| &n.pods)
            .map(|p| &p.info)
            .find(|p| p.namespace == namespace && p.name == name)
    }

    /// Replaces what `container` of a running simulated pod burns: its burner
    /// is stopped and a new one started in the same cgroup (e.g. to stop a
    /// load without replacing the pod).
    pub fn set_burn(
        &mut self,
        namespace: &str,
        name: &str,
        container: &str,
        burn: Burn,
    ) -> Result<()> {
        for node in &mut self.nodes {
            let Some(pod) = node
                .pods
                .iter_mut()
                .find(|p| p.info.namespace == namespace && p.info.name == name)
            else {
                continue;
            };
            let i = pod
                .info
                .containers
                .iter()
                .position(|c| c.name == container)
                .ok_or_else(|| anyhow!("pod {namespace}/{name} has no container {container}"))?;
            let (tree, launcher, rel) = (
                Arc::clone(&node.tree),
                self.opts.launcher.clone(),
                pod.info.containers[i].cgroup.clone(),
            );
            let burner = self.spawner.run(move || {
                tree.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .spawn(&rel, &burn, &launcher)
            })?;
            // The old burner stops as it is dropped.
            pod.burners[i] = burner;
            return Ok(());
        }
        bail!("no running simulated pod {namespace}/{name}")
    }

    /// Deletes a pod at once (there is no kubelet to finish a graceful
    /// deletion), stops its burners and removes its cgroups.
    pub fn delete_pod(&mut self, namespace: &str, name: &str) -> Result<()> {
        self.kubectl_ok(&[
            "-n",
            namespace,
            "delete",
            "pod",
            name,
            "--force",
            "--grace-period=0",
            "--ignore-not-found",
            "--wait=false",
        ])?;
        for node in &mut self.nodes {
            if let Some(i) = node
                .pods
                .iter()
                .position(|p| p.info.namespace == namespace && p.info.name == name)
            {
                let pod = node.pods.remove(i);
                let cgroups: Vec<String> = pod
                    .info
                    .containers
                    .iter()
                    .map(|c| c.cgroup.clone())
                    .collect();
                drop(pod.burners);
                for cgroup in &cgroups {
                    remove_cgroup(&self.hierarchy, cgroup);
                }
                if let Some(parent) = cgroups.first().and_then(|c| c.rsplit_once('/')) {
                    remove_cgroup(&self.hierarchy, parent.0);
                }
            }
        }
        Ok(())
    }
}

/// Removes `rel` from the v2 tree and the v1 controllers (its processes are
/// gone; an exited process may take a moment to leave a v1 cgroup).
fn remove_cgroup(h: &Hierarchy, rel: &str) {
    let rel = rel.trim_start_matches('/');
    for root in [&h.v2, &h.v1_memory, &h.v1_cpuacct].into_iter().flatten() {
        let dir = root.join(rel);
        for _ in 0..200 {
            match fs::remove_dir(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}
