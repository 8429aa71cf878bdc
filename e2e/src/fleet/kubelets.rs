//! Kubelet stand-ins: one HTTPS server per node of a [`Fleet`], on the
//! node's own loopback address and [`KUBELET_PORT`], with a serving
//! certificate for that address from the cluster CA (as kubelets' serving
//! certificates are), answering `GET /metrics/resource` in the kubelet's
//! format (Prometheus text, millisecond timestamps) with the fleet's
//! counters at the moment of the request. They do not check the caller's
//! credentials: a real kubelet's authorization is a SubjectAccessReview that
//! kube-apiserver answers, which would put the stand-ins' load on it.

use std::{
    convert::Infallible,
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::SystemTime,
};

use anyhow::{Context, Result};
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::{Fleet, KUBELET_PORT, Node};
use crate::pki::Ca;

/// The running stand-ins; dropping them stops every server.
pub struct Kubelets {
    cancel: CancellationToken,
    scrapes: Arc<AtomicU64>,
}

impl Kubelets {
    /// `/metrics/resource` answers given so far, by all of them.
    pub fn scrapes(&self) -> u64 {
        self.scrapes.load(Ordering::Relaxed)
    }
}

impl Drop for Kubelets {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Every node's serving TLS: a certificate from `ca` for its address.
pub fn tls(fleet: &Fleet, ca: &Ca) -> Result<Vec<Arc<rustls::ServerConfig>>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    fleet
        .nodes
        .iter()
        .map(|node| {
            let (cert, key) = ca.issue_serving_der(&node.name, &[node.ip.to_string()])?;
            let tls = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(vec![cert], key)?;
            Ok(Arc::new(tls))
        })
        .collect()
}

/// The body of a kubelet's 403 to a client its authorizer refuses.
const FORBIDDEN: &[u8] = b"Forbidden (user=system:serviceaccount:kube-system:nodepulse, verb=get, resource=nodes, subresource=metrics)";

/// The body of a kubelet's 401 to a client it cannot authenticate (an
/// expired or foreign token).
const UNAUTHORIZED: &[u8] = b"Unauthorized";

/// What a stand-in answers `/metrics/resource` with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The node's counters, as a kubelet.
    Metrics,
    /// A 200 with a body that is no kubelet's.
    Garbage,
    /// Nothing, ever: the request hangs.
    Hang,
    /// 403, as a kubelet answers a client its authorizer refuses.
    Forbidden,
    /// 401, as a kubelet answers a token it cannot authenticate.
    Unauthorized,
}

/// Starts a stand-in for every node of `fleet`, node `i` with `tls[i]` (see
/// [`tls`]), on the current runtime (whose threads must be inside the
/// network namespace the nodes' addresses are reached in); every listener
/// is bound when this returns.
pub async fn serve(fleet: Arc<Fleet>, tls: Vec<Arc<rustls::ServerConfig>>) -> Result<Kubelets> {
    serve_with(fleet, tls, |_| Some(Answer::Metrics)).await
}

/// [`serve`], node `i` answering `answer(i)`; where that is `None`, nothing
/// listens on the node's address (connections are refused).
pub async fn serve_with(
    fleet: Arc<Fleet>,
    tls: Vec<Arc<rustls::ServerConfig>>,
    answer: impl Fn(usize) -> Option<Answer>,
) -> Result<Kubelets> {
    let cancel = CancellationToken::new();
    let scrapes = Arc::new(AtomicU64::new(0));
    for (i, tls) in tls.into_iter().enumerate() {
        let node = &fleet.nodes[i];
        let Some(answer) = answer(i) else {
            continue;
        };
        let addr = SocketAddr::from((node.ip, KUBELET_PORT));
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        tokio::spawn(accept(
            listener,
            TlsAcceptor::from(tls),
            Arc::clone(&fleet),
            (i, answer),
            Arc::clone(&scrapes),
            cancel.clone(),
        ));
    }
    Ok(Kubelets { cancel, scrapes })
}

async fn accept(
    listener: TcpListener,
    tls: TlsAcceptor,
    fleet: Arc<Fleet>,
    (node, answer): (usize, Answer),
    scrapes: Arc<AtomicU64>,
    cancel: CancellationToken,
) {
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(_) => continue,
            },
            () = cancel.cancelled() => return,
        };
        let (tls, fleet, scrapes, cancel) = (
            tls.clone(),
            Arc::clone(&fleet),
            Arc::clone(&scrapes),
            cancel.clone(),
        );
        tokio::spawn(async move {
            let Ok(stream) = tls.accept(tcp).await else {
                return;
            };
            let service = service_fn(move |request: http::Request<Incoming>| {
                let fleet = Arc::clone(&fleet);
                let scrapes = Arc::clone(&scrapes);
                async move {
                    let response = if request.uri().path() != "/metrics/resource" {
                        Response::builder()
                            .status(StatusCode::NOT_FOUND)
                            .body(Full::new(Bytes::from_static(b"404 page not found\n")))
                    } else {
                        scrapes.fetch_add(1, Ordering::Relaxed);
                        let metrics = |body: String| {
                            Response::builder()
                                .header(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")
                                .body(Full::new(Bytes::from(body)))
                        };
                        match answer {
                            Answer::Metrics => metrics(resource_metrics(
                                &fleet,
                                &fleet.nodes[node],
                                SystemTime::now(),
                            )),
                            Answer::Garbage => metrics("<html>not a kubelet</html>\n".to_owned()),
                            Answer::Hang => std::future::pending().await,
                            Answer::Forbidden => Response::builder()
                                .status(StatusCode::FORBIDDEN)
                                .body(Full::new(Bytes::from_static(FORBIDDEN))),
                            Answer::Unauthorized => Response::builder()
                                .status(StatusCode::UNAUTHORIZED)
                                .body(Full::new(Bytes::from_static(UNAUTHORIZED))),
                        }
                    };
                    Ok::<_, Infallible>(response.unwrap_or_default())
                }
            });
            let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                () = cancel.cancelled() => {}
            }
        });
    }
}

/// `node`'s `/metrics/resource` at `at`, as the kubelet writes it.
pub fn resource_metrics(fleet: &Fleet, node: &Node, at: SystemTime) -> String {
    let ms = super::unix_nanos(at) / 1_000_000;
    let start = super::unix_nanos(fleet.start) as f64 / 1e9;
    let mut out = String::with_capacity(256 * node.pods.len());
    let families = [
        (
            "container_cpu_usage_seconds_total",
            "counter",
            "Cumulative cpu time consumed by the container in core-seconds",
        ),
        (
            "container_memory_working_set_bytes",
            "gauge",
            "Current working set of the container in bytes",
        ),
        (
            "container_start_time_seconds",
            "gauge",
            "Start time of the container since unix epoch in seconds",
        ),
    ];
    for (i, (family, kind, help)) in families.iter().enumerate() {
        let _ = writeln!(
            out,
            "# HELP {family} [STABLE] {help}\n# TYPE {family} {kind}"
        );
        for p in &node.pods {
            for c in &p.containers {
                let _ = write!(
                    out,
                    "{family}{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}} ",
                    c.name, p.namespace, p.name
                );
                // The kubelet stamps readings, not the start time.
                let _ = match i {
                    0 => writeln!(out, "{} {ms}", fleet.cpu_seconds(c, at)),
                    1 => writeln!(out, "{} {ms}", c.memory),
                    _ => writeln!(out, "{start}"),
                };
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP node_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the node in core-seconds\n\
         # TYPE node_cpu_usage_seconds_total counter\n\
         node_cpu_usage_seconds_total {} {ms}\n\
         # HELP node_memory_working_set_bytes [STABLE] Current working set of the node in bytes\n\
         # TYPE node_memory_working_set_bytes gauge\n\
         node_memory_working_set_bytes {} {ms}\n\
         # HELP resource_scrape_error [STABLE] 1 if there was an error while getting container metrics, 0 otherwise\n\
         # TYPE resource_scrape_error gauge\n\
         resource_scrape_error 0",
        fleet.node_cpu_seconds(node, at),
        fleet.node_memory(node),
    );
    out
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::fleet::{Container, Pod};

    /// What the stand-ins serve reads, through the agent's own parser of the
    /// kubelet's format, as the counters the fleet defines.
    #[test]
    fn resource_metrics_in_the_kubelets_format() {
        let start = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let container = |name: &str, millicores| Container {
            name: name.into(),
            id: "1".repeat(64),
            millicores,
            memory: 64 << 20,
        };
        let fleet = Fleet {
            start,
            nodes: vec![Node {
                name: "node-00000".into(),
                uid: "u".into(),
                ip: crate::fleet::node_ip(0),
                pods: vec![Pod {
                    namespace: "fleet-0".into(),
                    name: "node-00000-web-0".into(),
                    uid: "p".into(),
                    containers: vec![container("app", 250), container("sidecar", 10)],
                }],
            }],
        };
        let at = start + Duration::from_secs(100);
        let body = resource_metrics(&fleet, &fleet.nodes[0], at);
        let parsed = agent::kubelet::parse::parse(body.as_bytes(), at);
        assert_eq!(parsed.error_count, 0, "{:?}\n{body}", parsed.errors);
        let stats = parsed.stats;
        assert!(!stats.scrape_error);
        let node = stats.node.expect("node stats");
        // 260m of containers and 150m of the rest, for 100 s.
        assert_eq!(node.cpu.cumulative_ns, 41_000_000_000);
        assert_eq!(node.cpu.time, at);
        assert_eq!(node.memory.working_set_bytes, (128 << 20) + (1 << 30));
        let [pod] = &stats.pods[..] else {
            panic!("pods: {:?}", stats.pods)
        };
        assert_eq!(
            (pod.namespace.as_str(), pod.name.as_str()),
            ("fleet-0", "node-00000-web-0")
        );
        let cpu: Vec<(&str, u64)> = pod
            .containers
            .iter()
            .map(|c| (c.name.as_str(), c.cpu.cumulative_ns))
            .collect();
        assert_eq!(cpu, [("app", 25_000_000_000), ("sidecar", 1_000_000_000)]);
        assert!(pod.containers.iter().all(|c| c.start_time == Some(start)));
    }
}
