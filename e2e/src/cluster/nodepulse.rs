//! nodepulse in the cluster: aggregator replicas and their EndpointSlice,
//! agents and their Node-bound tokens, the APIServices' availability.

use super::*;

impl Cluster {
    /// nodepulse's binaries, located (and built, see [`Ours::locate`]) once.
    pub fn ours(&mut self) -> Result<Ours> {
        if let Some(o) = &self.ours {
            return Ok(o.clone());
        }
        let o = Ours::locate()?;
        self.ours = Some(o.clone());
        Ok(o)
    }

    /// [`Cluster::ours`], or `None` after printing why `part` of `test` is
    /// skipped — a panic instead under `NODEPULSE_E2E_REQUIRE_OURS=1` (set it
    /// once both binaries exist, so that a broken build or a renamed flag
    /// fails the tests rather than skipping them).
    pub fn ours_or_skip(&mut self, test: &str, part: &str) -> Option<Ours> {
        match self.ours() {
            Ok(ours) => Some(ours),
            Err(why) if std::env::var("NODEPULSE_E2E_REQUIRE_OURS").as_deref() == Ok("1") => {
                panic!("{test}: {part} needs nodepulse's binaries: {why:#}")
            }
            Err(why) => {
                eprintln!("skipped {part} of {test}: {why:#}");
                None
            }
        }
    }

    pub fn replica_count(&self) -> usize {
        self.replicas.len()
    }

    pub(super) fn endpoint_slice(&self) -> Value {
        let replicas: Vec<(Ipv4Addr, bool)> =
            self.replicas.iter().map(|r| (r.ip, r.ready)).collect();
        manifests::endpoint_slice(&replicas, AGGREGATOR_PORT, self.slice_revision)
    }

    /// Re-applies the EndpointSlice as a real update (as the EndpointSlice
    /// controller writes one when a pod's readiness changes), which makes
    /// kube-aggregator re-check the APIServices now rather than at its next
    /// 30 s round. [`Cluster::start_aggregator`] does it once a replica listens.
    pub fn publish_endpoints(&mut self) -> Result<()> {
        self.slice_revision += 1;
        self.apply(&self.endpoint_slice())
            .context("updating the EndpointSlice")?;
        Ok(())
    }

    /// Marks replica `i` ready or not in the EndpointSlice, as the EndpointSlice
    /// controller does when its readiness probe starts or stops passing.
    pub fn set_replica_ready(&mut self, i: usize, ready: bool) -> Result<()> {
        let replica = self
            .replicas
            .get_mut(i)
            .ok_or_else(|| anyhow!("no replica {i}"))?;
        replica.ready = ready;
        self.publish_endpoints()?;
        self.note(&format!("replica {i}: ready={ready}"));
        Ok(())
    }

    /// The arguments replica `i` runs with.
    pub fn aggregator_args(&self, i: usize) -> Result<AggregatorArgs> {
        let replica = self
            .replicas
            .get(i)
            .ok_or_else(|| anyhow!("no replica {i}"))?;
        Ok(AggregatorArgs {
            ip: replica.ip,
            secure_port: AGGREGATOR_PORT,
            ingest_port: INGEST_PORT,
            cert: self.pki.aggregator_serving.cert.clone(),
            key: self.pki.aggregator_serving.key.clone(),
            kubeconfig: self.kubeconfig_of(&manifests::service_account_user(
                manifests::NAMESPACE,
                manifests::AGGREGATOR_SA,
            ))?,
            metric_resolution: self.opts.metric_resolution.clone(),
            ingest_connections_per_peer: self.opts.ingest_connections_per_peer,
            extra: self.opts.aggregator_flags.clone(),
        })
    }

    /// Starts every replica that is not running, waits until each accepts
    /// connections, then publishes the EndpointSlice once. (Publishing after
    /// the first one only would list a replica that is not listening yet as
    /// ready: kube-aggregator's discovery manager, syncing as the APIServices
    /// turn Available, could reach that one, get a 503 and back off for up to
    /// a minute — which a Deployment's readiness probe prevents in a real
    /// cluster.)
    pub fn start_aggregators(&mut self) -> Result<()> {
        let idle: Vec<usize> = (0..self.replicas.len())
            .filter(|&i| self.replicas[i].proc.is_none())
            .collect();
        for &i in &idle {
            self.spawn_aggregator(i)?;
        }
        for &i in &idle {
            self.wait_aggregator_listening(i)?;
        }
        if idle.is_empty() {
            return Ok(());
        }
        self.publish_endpoints()
    }

    /// Starts replica `i` and waits until it accepts connections on its
    /// metrics port.
    pub fn start_aggregator(&mut self, i: usize) -> Result<()> {
        self.spawn_aggregator(i)?;
        self.wait_aggregator_listening(i)?;
        self.publish_endpoints()
    }

    fn spawn_aggregator(&mut self, i: usize) -> Result<()> {
        let ours = self.ours()?;
        let args = self.aggregator_args(i)?;
        if let Some(mut old) = self.replicas[i].proc.take() {
            old.stop(Duration::from_secs(10));
        }
        let cmd = binaries::aggregator_command(&ours.aggregator, &args);
        let proc = self.start_proc(&format!("aggregator-{i}"), cmd)?;
        self.replicas[i].proc = Some(proc);
        Ok(())
    }

    /// Further flags for the replicas started from now on (for flags that
    /// name files the cluster makes, such as its CA).
    pub fn add_aggregator_flags(&mut self, flags: impl IntoIterator<Item = String>) {
        self.opts.aggregator_flags.extend(flags);
    }

    /// Replaces the flags aggregators started from now get; returns the
    /// ones they replace.
    pub fn set_aggregator_flags(&mut self, flags: Vec<String>) -> Vec<String> {
        std::mem::replace(&mut self.opts.aggregator_flags, flags)
    }

    /// Replica `i`'s log, once it has been started.
    pub fn aggregator_log(&self, i: usize) -> Option<PathBuf> {
        Some(self.replicas.get(i)?.proc.as_ref()?.log().to_path_buf())
    }

    fn wait_aggregator_listening(&mut self, i: usize) -> Result<()> {
        let addr = SocketAddr::V4(SocketAddrV4::new(self.replicas[i].ip, AGGREGATOR_PORT));
        self.wait_for(
            &format!("aggregator-{i} listening on {addr}"),
            Duration::from_secs(60),
            |c| {
                if let Some(p) = c.replicas[i].proc.as_mut() {
                    p.ensure_running()?;
                }
                Ok(c.netns.tcp_open(addr).then_some(()))
            },
        )
    }

    /// SIGTERM to replica `i` (SIGKILL after 10 s); its exit status.
    pub fn stop_aggregator(&mut self, i: usize) -> Option<ExitStatus> {
        let mut proc = self.replicas.get_mut(i)?.proc.take()?;
        let status = proc.stop(Duration::from_secs(10));
        self.note(&format!("aggregator-{i} stopped: {status:?}"));
        status
    }

    /// SIGKILL to replica `i`.
    pub fn kill_aggregator(&mut self, i: usize) -> Option<ExitStatus> {
        let mut proc = self.replicas.get_mut(i)?.proc.take()?;
        let status = proc.kill();
        self.note(&format!("aggregator-{i} killed: {status:?}"));
        status
    }

    /// A token for `node`'s agent: ServiceAccount kube-system/nodepulse-agent,
    /// audience `nodepulse`, bound to the Node object (1 h).
    pub fn node_token(&self, node: &str) -> Result<String> {
        let out = self.kubectl_ok(&[
            "create",
            "token",
            manifests::AGENT_SA,
            "-n",
            manifests::NAMESPACE,
            "--audience",
            AGENT_AUDIENCE,
            "--bound-object-kind",
            "Node",
            "--bound-object-name",
            node,
            "--duration",
            "1h",
        ])?;
        Ok(out.trim().to_string())
    }

    /// The aggregator's flags to split kubelet reads across its replicas
    /// (the EndpointSlice this harness publishes lists them), with a token
    /// of its ServiceAccount for the others' ingest (audience `nodepulse`,
    /// 1 h), written into the work directory.
    pub fn replica_split_flags(&self) -> Result<Vec<String>> {
        let token = self.kubectl_ok(&[
            "create",
            "token",
            manifests::AGGREGATOR_SA,
            "-n",
            manifests::NAMESPACE,
            "--audience",
            AGENT_AUDIENCE,
            "--duration",
            "1h",
        ])?;
        let path = self.work_dir.join("replica-token");
        std::fs::write(&path, token.trim()).context("writing the replicas' token")?;
        Ok(vec![
            format!("--kubelet-replicas-service={}", manifests::SERVICE),
            format!("--kubelet-replica-token-file={}", path.display()),
            format!(
                "--kubelet-replica-ca-file={}",
                self.pki.nodepulse_ca.cert.display()
            ),
            format!("--kubelet-replica-server-name={SERVER_NAME}"),
        ])
    }

    /// Every replica's ingest URL, as an agent is given them.
    fn ingest_targets(&self) -> Vec<String> {
        self.replicas
            .iter()
            .map(|r| format!("https://{}:{INGEST_PORT}", r.ip))
            .collect()
    }

    /// An in-process agent exporter's settings for this cluster: every
    /// replica's ingest port, nodepulse's CA and server name, `token` as
    /// the credential.
    pub fn agent_export_config(&self, token: PathBuf) -> export::Config {
        export::Config {
            targets: export::Targets::Static(self.ingest_targets()),
            ca_file: Some(self.pki.nodepulse_ca.cert.clone()),
            tls_server_name: Some(SERVER_NAME.to_string()),
            token_file: Some(token),
            ..export::Config::default()
        }
    }

    /// The arguments `node`'s agent runs with (writes its token file).
    pub fn agent_args(&self, node: &str) -> Result<AgentArgs> {
        let idx = self.node_index(node)?;
        let dir = self.work_dir.join("nodes").join(node);
        fs::create_dir_all(&dir)?;
        let token_file = dir.join("token");
        fs::write(&token_file, self.node_token(node)?)?;
        Ok(AgentArgs {
            node_name: node.to_string(),
            node_cgroup: self.nodes[idx].base.clone(),
            aggregators: self.ingest_targets(),
            ca: self.pki.nodepulse_ca.cert.clone(),
            server_name: SERVER_NAME.to_string(),
            token_file,
            kubeconfig: self.kubeconfig_of(&manifests::service_account_user(
                manifests::NAMESPACE,
                manifests::AGENT_SA,
            ))?,
            interval: self.opts.agent_interval.clone(),
        })
    }

    /// Starts an agent for every node that has none running.
    pub fn start_agents(&mut self) -> Result<()> {
        let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        for name in names {
            let idx = self.node_index(&name)?;
            if self.nodes[idx].agent.is_none() {
                self.start_agent(&name)?;
            }
        }
        Ok(())
    }

    /// Starts `node`'s agent (restarts it if running).
    pub fn start_agent(&mut self, node: &str) -> Result<()> {
        let ours = self.ours()?;
        let args = self.agent_args(node)?;
        let idx = self.node_index(node)?;
        if let Some(mut old) = self.nodes[idx].agent.take() {
            old.stop(Duration::from_secs(10));
        }
        let cmd = binaries::agent_command(&ours.agent, &args);
        let proc = self.start_proc(&format!("agent-{node}"), cmd)?;
        self.nodes[idx].agent = Some(proc);
        Ok(())
    }

    /// Stops `node`'s agent; its exit status.
    pub fn stop_agent(&mut self, node: &str) -> Option<ExitStatus> {
        let idx = self.node_index(node).ok()?;
        let mut proc = self.nodes[idx].agent.take()?;
        let status = proc.stop(Duration::from_secs(10));
        self.note(&format!("agent-{node} stopped: {status:?}"));
        status
    }

    /// Fails (with its log's tail) if a started aggregator or agent has exited.
    pub fn ensure_ours_running(&mut self) -> Result<()> {
        for proc in self
            .replicas
            .iter_mut()
            .filter_map(|r| r.proc.as_mut())
            .chain(self.nodes.iter_mut().filter_map(|n| n.agent.as_mut()))
        {
            proc.ensure_running()?;
        }
        Ok(())
    }

    /// The `Available` condition of both metrics.k8s.io APIServices:
    /// `(name, status, reason, message)`.
    pub fn apiservice_conditions(&self) -> Result<Vec<(String, String, String, String)>> {
        let mut result = Vec::new();
        for version in manifests::METRICS_VERSIONS {
            let name = format!("{version}.metrics.k8s.io");
            let obj = self.kubectl_json(&["get", "apiservice", &name])?;
            let available = obj["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Available");
            let field = |k: &str| {
                available
                    .and_then(|c| c[k].as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            result.push((name, field("status"), field("reason"), field("message")));
        }
        Ok(result)
    }

    /// Waits until both metrics.k8s.io APIServices report Available=True.
    pub fn wait_apiservices_available(&mut self, timeout: Duration) -> Result<()> {
        let mut last = Vec::new();
        let result = self.wait_for("metrics.k8s.io APIServices Available", timeout, |c| {
            c.ensure_ours_running()?;
            last = c.apiservice_conditions()?;
            Ok(last
                .iter()
                .all(|(_, status, _, _)| status == "True")
                .then_some(()))
        });
        result.with_context(|| format!("last conditions: {last:?}"))
    }
}
