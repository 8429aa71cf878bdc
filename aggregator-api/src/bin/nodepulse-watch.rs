//! `nodepulse-watch`: follows an aggregator's watch stream and prints a live
//! table of node and pod usage.
use std::{fmt::Write as _, io::IsTerminal, path::PathBuf};

use aggregator_api::api::quantity::{format_bytes, format_cpu_nanocores};
use anyhow::Context as _;
use clap::Parser;
use proto::v1::{NodeMetrics, PodMetrics, WatchRequest, metrics_client::MetricsClient};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

#[derive(Parser)]
#[command(version, about = "Follow nodepulse's metrics stream as a live table")]
struct Args {
    /// The aggregator's gRPC address (`https://host:8443`).
    #[arg(long, env = "NODEPULSE_SERVER")]
    server: String,
    /// CA bundle for the server's certificate (https only).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Name to verify in the server's certificate.
    #[arg(long)]
    server_name: Option<String>,
    /// Bearer token file (needs RBAC `watch` on metrics.k8s.io pods/nodes).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Only this node.
    #[arg(long)]
    node: Option<String>,
    /// Only pods in this namespace.
    #[arg(short, long)]
    namespace: Option<String>,
    /// Label selector.
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// Exit after this many events.
    #[arg(long)]
    count: Option<u64>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut endpoint = Endpoint::from_shared(args.server.clone()).context("--server")?;
    if let Some(ca) = &args.ca {
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
        if let Some(name) = &args.server_name {
            tls = tls.domain_name(name.clone());
        }
        endpoint = endpoint.tls_config(tls)?;
    }
    let mut client = MetricsClient::new(endpoint.connect().await.context("connecting")?);
    let mut request = tonic::Request::new(WatchRequest {
        node: args.node.unwrap_or_default(),
        namespace: args.namespace.unwrap_or_default(),
        label_selector: args.selector.unwrap_or_default(),
        nodes: false,
        pods: false,
    });
    if let Some(path) = &args.token_file {
        let header = support::token::TokenFile::new(path).header()?;
        request.metadata_mut().insert(
            "authorization",
            tonic::metadata::AsciiMetadataValue::try_from(header.as_bytes())?,
        );
    }
    let mut stream = client.watch(request).await.context("watch")?.into_inner();
    let mut nodes: std::collections::BTreeMap<String, NodeMetrics> = Default::default();
    let mut pods: std::collections::BTreeMap<String, PodMetrics> = Default::default();
    let mut seen = 0u64;
    while let Some(event) = stream.message().await.context("stream")? {
        if event.snapshot {
            nodes.clear();
            pods.clear();
        }
        for n in event.nodes {
            nodes.insert(n.name.clone(), n);
        }
        for p in event.pods {
            pods.insert(format!("{}/{}", p.namespace, p.name), p);
        }
        for k in event.removed_nodes {
            nodes.remove(&k);
        }
        for k in event.removed_pods {
            pods.remove(&k);
        }
        let table = render(&nodes, &pods);
        #[allow(clippy::print_stdout)]
        if std::io::stdout().is_terminal() {
            print!("\x1b[2J\x1b[H{table}");
        } else {
            println!("{table}");
        }
        seen += 1;
        if args.count.is_some_and(|c| seen >= c) {
            break;
        }
    }
    Ok(())
}

/// Names from the stream as they may go to a terminal: control characters
/// (which could move the cursor or recolour the screen) escaped, length cut.
fn shown(s: &str) -> String {
    aggregator_api::untrusted::shown(s)
}

fn render(
    nodes: &std::collections::BTreeMap<String, NodeMetrics>,
    pods: &std::collections::BTreeMap<String, PodMetrics>,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:<40} {:>12} {:>12}", "NODE", "CPU", "MEMORY");
    for n in nodes.values() {
        let u = n.usage.unwrap_or_default();
        let _ = writeln!(
            out,
            "{:<40} {:>12} {:>12}",
            shown(&n.name),
            format_cpu_nanocores(u.cpu_nanocores),
            format_bytes(u.memory_working_set_bytes)
        );
    }
    let _ = writeln!(
        out,
        "\n{:<50} {:<20} {:>12} {:>12}",
        "NAMESPACE/POD", "NODE", "CPU", "MEMORY"
    );
    for (key, p) in pods {
        let (cpu, mem) = p.containers.iter().fold((0, 0), |(c, m), x| {
            let u = x.usage.unwrap_or_default();
            (c + u.cpu_nanocores, m + u.memory_working_set_bytes)
        });
        let _ = writeln!(
            out,
            "{:<50} {:<20} {:>12} {:>12}",
            shown(key),
            shown(&p.node),
            format_cpu_nanocores(cpu),
            format_bytes(mem)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_never_reach_the_terminal() {
        let mut pods = std::collections::BTreeMap::new();
        let evil = PodMetrics {
            namespace: "ns".into(),
            name: "p\u{1b}[2J\u{7}".into(),
            node: "n\nforged".into(),
            ..PodMetrics::default()
        };
        pods.insert("ns/p\u{1b}[2J\u{7}".to_string(), evil);
        let table = render(&Default::default(), &pods);
        assert!(
            !table.contains('\u{1b}') && !table.contains('\u{7}'),
            "{table:?}"
        );
        assert!(table.contains("n\\nforged"), "{table}");
    }
}
