//! The data the API serves, as an interface: the store implements it, tests
//! use small in-memory doubles.
use std::time::{Duration, SystemTime};

use super::{ContainerUsage, Labels, NodeUsage, PodUsage};

/// A single-object lookup: the three answers have three different `Status`
/// bodies (contract §1.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<T> {
    /// The object is unknown (no such node; pod missing or not Running).
    Unknown,
    /// The object is known but has no metrics yet.
    NoMetrics,
    /// The object with its metrics.
    Found(T),
}

/// One container of a [`PodRef`], borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerRef<'a> {
    /// Container name.
    pub name: &'a str,
    /// CPU rate in nanocores.
    pub cpu_nanocores: u64,
    /// Memory working set in bytes.
    pub memory_bytes: u64,
    /// Swap in use in bytes, when known.
    pub swap_bytes: Option<u64>,
}

impl<'a> From<&'a ContainerUsage> for ContainerRef<'a> {
    fn from(c: &'a ContainerUsage) -> Self {
        ContainerRef {
            name: &c.name,
            cpu_nanocores: c.cpu_nanocores,
            memory_bytes: c.memory_bytes,
            swap_bytes: c.swap_bytes,
        }
    }
}

/// What a [`PodUsage`] says, borrowed from the data source for the time of
/// one [`PodVisitor::visit`]: a list of 300,000 pods is encoded from these
/// without copying a pod (or touching a reference count) first.
#[derive(Debug, Clone, Copy)]
pub struct PodRef<'a> {
    /// Pod namespace.
    pub namespace: &'a str,
    /// Pod name.
    pub name: &'a str,
    /// The live Pod object's labels.
    pub labels: &'a Labels,
    /// Timestamp of the pod's earliest container.
    pub timestamp: SystemTime,
    /// Window of that container.
    pub window: Duration,
    /// Containers in response order (as [`PodUsage::containers`]).
    pub containers: &'a [ContainerRef<'a>],
}

/// Receives the pods of [`MetricsView::visit_pods`].
pub trait PodVisitor: Send {
    /// One pod.
    fn visit(&mut self, pod: &PodRef<'_>);
}

/// Visits `pods` as [`PodRef`]s, in order.
pub fn visit_all(pods: &[PodUsage], visitor: &mut dyn PodVisitor) {
    let mut containers = Vec::new();
    for p in pods {
        containers.clear();
        containers.extend(p.containers.iter().map(ContainerRef::from));
        visitor.visit(&PodRef {
            namespace: &p.namespace,
            name: &p.name,
            labels: &p.labels,
            timestamp: p.timestamp,
            window: p.window,
            containers: &containers,
        });
    }
}

/// What the server reads. Called on every request, so implementations
/// answer from memory and never block on I/O.
pub trait MetricsView: Send + Sync + 'static {
    /// Nodes with complete metrics, any order (the server sorts and filters).
    fn nodes(&self) -> Vec<NodeUsage>;
    /// One node; the server applies `--node-selector` on top.
    fn node(&self, name: &str) -> Lookup<NodeUsage>;
    /// Running pods with complete metrics; `None` = all namespaces.
    fn pods(&self, namespace: Option<&str>) -> Vec<PodUsage>;
    /// One pod; `Unknown` also for a pod that is not Running.
    fn pod(&self, namespace: &str, name: &str) -> Lookup<PodUsage>;
    /// True once the store holds metrics for at least one node (readyz).
    fn has_data(&self) -> bool;

    /// Hands every pod [`pods`](Self::pods) would return to exactly one of
    /// `visitors`, in any order; an implementation may run the visitors on
    /// as many threads at once (the caller sizes the slice to the cores it
    /// wants used). The default visits `pods(namespace)` with the first.
    fn visit_pods(&self, namespace: Option<&str>, visitors: &mut [&mut dyn PodVisitor]) {
        if let Some(first) = visitors.first_mut() {
            visit_all(&self.pods(namespace), *first);
        }
    }
}

/// Calls `f` with `pod` as a [`PodRef`] (no allocation for up to four
/// containers).
pub fn with_pod_ref<R>(pod: &PodUsage, f: impl FnOnce(&PodRef<'_>) -> R) -> R {
    with_containers(
        pod.containers.len(),
        |i| ContainerRef::from(&pod.containers[i]),
        |containers| {
            f(&PodRef {
                namespace: &pod.namespace,
                name: &pod.name,
                labels: &pod.labels,
                timestamp: pod.timestamp,
                window: pod.window,
                containers,
            })
        },
    )
}

/// Calls `f` with the `n` containers `container(0..n)` makes, on the stack
/// when there are at most four (as good as every pod).
pub fn with_containers<'a, R>(
    n: usize,
    container: impl Fn(usize) -> ContainerRef<'a>,
    f: impl FnOnce(&[ContainerRef<'a>]) -> R,
) -> R {
    const INLINE: usize = 4;
    if n <= INLINE {
        let mut inline = [ContainerRef {
            name: "",
            cpu_nanocores: 0,
            memory_bytes: 0,
            swap_bytes: None,
        }; INLINE];
        for (i, slot) in inline.iter_mut().enumerate().take(n) {
            *slot = container(i);
        }
        f(&inline[..n])
    } else {
        let containers: Vec<ContainerRef<'a>> = (0..n).map(container).collect();
        f(&containers)
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::api::ContainerUsage;

    #[test]
    fn pod_refs_carry_every_container_in_order_on_the_stack_or_not() {
        for n in 0..9 {
            let pod = PodUsage {
                namespace: "ns".into(),
                name: "p".into(),
                labels: Labels::default(),
                timestamp: UNIX_EPOCH,
                window: Duration::from_secs(15),
                containers: (0..n)
                    .map(|i| ContainerUsage {
                        name: format!("c{i}").into(),
                        cpu_nanocores: i,
                        memory_bytes: 2 * i,
                        swap_bytes: (i % 2 == 1).then_some(i),
                    })
                    .collect(),
            };
            let seen: Vec<(String, u64, u64, Option<u64>)> = with_pod_ref(&pod, |p| {
                p.containers
                    .iter()
                    .map(|c| {
                        (
                            c.name.to_owned(),
                            c.cpu_nanocores,
                            c.memory_bytes,
                            c.swap_bytes,
                        )
                    })
                    .collect()
            });
            let expected: Vec<(String, u64, u64, Option<u64>)> = pod
                .containers
                .iter()
                .map(|c| {
                    (
                        c.name.to_string(),
                        c.cpu_nanocores,
                        c.memory_bytes,
                        c.swap_bytes,
                    )
                })
                .collect();
            assert_eq!(seen, expected, "{n} containers");
        }
    }
}
