//! The Kubernetes objects the harness creates, as JSON.
//!
//! Nodes and pods are written as a kubelet would leave them (status set
//! through the status subresource); nodepulse's registration mirrors
//! metrics-server's manifests (contract §3.1, §3.6) with the Service pointed
//! at a selector-less Service whose EndpointSlice the harness itself manages,
//! standing in for the EndpointSlice controller and the replicas' readiness.

use std::net::Ipv4Addr;

use serde_json::{Map, Value, json};

/// Namespace of everything nodepulse runs as.
pub const NAMESPACE: &str = "kube-system";
/// The Service the APIServices point at.
pub const SERVICE: &str = "nodepulse";
/// Its port's name; the EndpointSlice port must carry the same name.
pub const SERVICE_PORT_NAME: &str = "https";
/// The EndpointSlice the harness manages for [`SERVICE`].
pub const ENDPOINT_SLICE: &str = "nodepulse-e2e";
/// ServiceAccount the aggregator runs as (its client cert's user is
/// `system:serviceaccount:kube-system:nodepulse`).
pub const AGGREGATOR_SA: &str = "nodepulse";
/// ServiceAccount of the agents (their Node-bound tokens and their client cert).
pub const AGENT_SA: &str = "nodepulse-agent";
/// ClusterRole granting only get and list on metrics.k8s.io pods and nodes.
pub const METRICS_GET_LIST_ROLE: &str = "e2e:metrics-get-list";
/// The image named in pod specs; never pulled (there is no kubelet).
pub const IMAGE: &str = "registry.k8s.io/pause:3.10";
/// Versions of metrics.k8s.io that are registered.
pub const METRICS_VERSIONS: [&str; 2] = ["v1beta1", "v1"];

/// The username of a ServiceAccount.
pub fn service_account_user(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// A `v1/List` of `items` (what `kubectl apply -f -` takes in one go).
pub fn list(items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

fn cluster_role_binding(name: &str, role: &str, subject: Value) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [subject],
    })
}

/// A RoleBinding in nodepulse's namespace.
fn role_binding(name: &str, role: &str, subject: Value) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
        "subjects": [subject],
    })
}

fn sa_subject(name: &str) -> Value {
    json!({"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE})
}

/// The `args` of the first container in a Deployment manifest (YAML as
/// upstream writes it: one `- --flag` per line under `args:`).
pub fn container_args(manifest: &str) -> Vec<String> {
    let mut lines = manifest.lines().skip_while(|l| l.trim() != "args:").skip(1);
    let mut args = Vec::new();
    for line in lines.by_ref() {
        match line.trim().strip_prefix("- ") {
            Some(arg) if arg.starts_with("--") => args.push(arg.to_owned()),
            _ => break,
        }
    }
    args
}

/// A pod on a real node whose containers run the burner image
/// (`nodepulse-burner <args>`, e.g. `["--cpu=300m"]`), each requesting 50m
/// and 16 MiB; stopped within a second of its deletion.
pub fn burner_pod(
    image: &str,
    namespace: &str,
    name: &str,
    containers: &[(&str, &[&str])],
) -> Value {
    let containers: Vec<Value> = containers
        .iter()
        .map(|(name, args)| {
            json!({
                "name": name,
                "image": image,
                // Imported into the node's containerd; no registry to pull from.
                "imagePullPolicy": "Never",
                "args": args,
                "resources": {"requests": {"cpu": "50m", "memory": "16Mi"}},
            })
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {
            "containers": containers,
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
        },
    })
}

/// What CoreDNS's `kubernetes` plugin reads, as upstream's manifest grants it
/// (ClusterRole `system:coredns`), bound to the user `user`.
pub fn coredns_rbac(user: &str) -> Vec<Value> {
    vec![
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "system:coredns"},
            "rules": [
                {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"], "verbs": ["list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
            ],
        }),
        cluster_role_binding(
            "system:coredns",
            "system:coredns",
            json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}),
        ),
    ]
}

/// ServiceAccounts, RBAC, the Service and the APIServices of nodepulse, plus
/// the role the `metrics_reader` test user is bound to.
pub fn nodepulse_objects(metrics_reader: &str, service_port: u16) -> Vec<Value> {
    let metrics_rule = |verbs: &[&str]| json!({"apiGroups": ["metrics.k8s.io"], "resources": ["pods", "nodes"], "verbs": verbs});
    let mut objects = vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": AGGREGATOR_SA, "namespace": NAMESPACE}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": AGENT_SA, "namespace": NAMESPACE}}),
        // What the aggregator reads itself (the binding check's pod lists, each
        // Node's capacity, the nodes read from their kubelet and their pods):
        // exactly what deploy/components.yaml grants.
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "nodepulse"},
            "rules": [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
                {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]},
            ],
        }),
        cluster_role_binding("nodepulse", "nodepulse", sa_subject(AGGREGATOR_SA)),
        // Delegated authentication and authorization (TokenReview, SubjectAccessReview).
        cluster_role_binding(
            "nodepulse:system:auth-delegator",
            "system:auth-delegator",
            sa_subject(AGGREGATOR_SA),
        ),
        // The extension-apiserver-authentication ConfigMap.
        role_binding(
            "nodepulse-auth-reader",
            "extension-apiserver-authentication-reader",
            sa_subject(AGGREGATOR_SA),
        ),
        // Which replicas are ready, to split kubelet reads among them
        // (--kubelet-replicas-service): as deploy/components.yaml grants.
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "nodepulse-replicas", "namespace": NAMESPACE},
            "rules": [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}],
        }),
        role_binding(
            "nodepulse-replicas",
            "nodepulse-replicas",
            sa_subject(AGGREGATOR_SA),
        ),
        // The agents list and watch their node's pods and GET their node:
        // exactly what deploy/components.yaml grants, so these tests prove it
        // is enough.
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "nodepulse-agent"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
                      {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}],
        }),
        cluster_role_binding("nodepulse-agent", "nodepulse-agent", sa_subject(AGENT_SA)),
        // For readers, aggregated into view/edit/admin (metrics-server ships it).
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {
                "name": "system:aggregated-metrics-reader",
                "labels": {
                    "rbac.authorization.k8s.io/aggregate-to-view": "true",
                    "rbac.authorization.k8s.io/aggregate-to-edit": "true",
                    "rbac.authorization.k8s.io/aggregate-to-admin": "true",
                },
            },
            "rules": [metrics_rule(&["get", "list", "watch"])],
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": METRICS_GET_LIST_ROLE},
            "rules": [metrics_rule(&["get", "list"])],
        }),
        cluster_role_binding(
            METRICS_GET_LIST_ROLE,
            METRICS_GET_LIST_ROLE,
            json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": metrics_reader}),
        ),
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": SERVICE, "namespace": NAMESPACE,
                         "labels": {"app.kubernetes.io/name": "nodepulse"}},
            "spec": {"ports": [{"name": SERVICE_PORT_NAME, "port": 443, "protocol": "TCP",
                                "targetPort": service_port}]},
        }),
    ];
    for version in METRICS_VERSIONS {
        objects.push(json!({
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": format!("{version}.metrics.k8s.io"),
                         "labels": {"app.kubernetes.io/name": "nodepulse"}},
            "spec": {
                "service": {"name": SERVICE, "namespace": NAMESPACE, "port": 443},
                "group": "metrics.k8s.io",
                "version": version,
                "insecureSkipTLSVerify": true,
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
        }));
    }
    objects
}

/// The EndpointSlice of [`SERVICE`]: one endpoint per replica, `ready` as
/// given. `revision` goes into an annotation: bumping it makes every apply an
/// update that kube-aggregator's availability controller reacts to at once.
pub fn endpoint_slice(replicas: &[(Ipv4Addr, bool)], port: u16, revision: u64) -> Value {
    let endpoints: Vec<Value> = replicas
        .iter()
        .map(|(ip, ready)| {
            json!({
                "addresses": [ip.to_string()],
                "conditions": {"ready": ready, "serving": ready, "terminating": false},
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": ENDPOINT_SLICE,
            "namespace": NAMESPACE,
            "labels": {
                "kubernetes.io/service-name": SERVICE,
                // Not the EndpointSlice controller's: it leaves this slice alone.
                "endpointslice.kubernetes.io/managed-by": "e2e.nodepulse.dev",
            },
            "annotations": {"e2e.nodepulse.dev/revision": revision.to_string()},
        },
        "addressType": "IPv4",
        "ports": [{"name": SERVICE_PORT_NAME, "port": port, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

/// A Node object (status comes separately: [`node_status`]).
pub fn node(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "e2e.nodepulse.dev/simulated": "true",
            },
        },
    })
}

/// A merge patch for a node's status: Ready, with `cpu`/`memory` both
/// capacity and allocatable.
pub fn node_status(name: &str, ip: Ipv4Addr, cpu: &str, memory: &str, now: &str) -> Value {
    let resources = json!({"cpu": cpu, "memory": memory, "pods": "110"});
    let condition = |kind: &str, status: &str, reason: &str| {
        json!({"type": kind, "status": status, "reason": reason,
               "message": "simulated by the nodepulse e2e harness",
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    json!({"status": {
        "capacity": resources,
        "allocatable": resources,
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID"),
            condition("Ready", "True", "KubeletReady"),
        ],
        "addresses": [{"type": "InternalIP", "address": ip.to_string()},
                      {"type": "Hostname", "address": name}],
        "nodeInfo": {"operatingSystem": "linux", "architecture": "amd64",
                     "containerRuntimeVersion": "containerd://simulated"},
    }})
}

/// One container of a pod spec: name, requests, limits.
pub struct ContainerSpec<'a> {
    pub name: &'a str,
    pub requests: &'a [(String, String)],
    pub limits: &'a [(String, String)],
}

fn resource_map(pairs: &[(String, String)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect::<Map<_, _>>(),
    )
}

/// A Pod already bound to `node` (there is no scheduler).
pub fn pod(
    namespace: &str,
    name: &str,
    node: &str,
    labels: &[(&str, &str)],
    containers: &[ContainerSpec<'_>],
) -> Value {
    let labels: Map<String, Value> = labels
        .iter()
        .map(|(k, v)| ((*k).to_string(), Value::String((*v).to_string())))
        .collect();
    let containers: Vec<Value> = containers
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "image": IMAGE,
                "resources": {"requests": resource_map(c.requests),
                              "limits": resource_map(c.limits)},
            })
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "nodeName": node,
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "containers": containers,
        },
    })
}

/// A Binding of a pod to a node (the scheduler's `pods/binding` call).
pub fn binding(pod: &str, node: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod},
           "target": {"apiVersion": "v1", "kind": "Node", "name": node}})
}

/// A merge patch for a pod's status: Running and Ready, each container running
/// as `containerd://<id>` since `now`.
pub fn pod_status(host_ip: Ipv4Addr, containers: &[(String, String)], now: &str) -> Value {
    let condition = |kind: &str| json!({"type": kind, "status": "True", "lastTransitionTime": now});
    let statuses: Vec<Value> = containers
        .iter()
        .map(|(name, id)| {
            json!({
                "name": name,
                "ready": true,
                "started": true,
                "restartCount": 0,
                "image": IMAGE,
                "imageID": format!("{IMAGE}@sha256:{}", "0".repeat(64)),
                "containerID": format!("containerd://{id}"),
                "state": {"running": {"startedAt": now}},
            })
        })
        .collect();
    json!({"status": {
        "phase": "Running",
        "hostIP": host_ip.to_string(),
        "hostIPs": [{"ip": host_ip.to_string()}],
        "startTime": now,
        "conditions": [
            condition("PodReadyToStartContainers"),
            condition("Initialized"),
            condition("Ready"),
            condition("ContainersReady"),
            condition("PodScheduled"),
        ],
        "containerStatuses": statuses,
    }})
}

/// A TokenReview of `token` for `audience` (to check what an agent presents).
pub fn token_review(token: &str, audience: &str) -> Value {
    json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
           "spec": {"token": token, "audiences": [audience]}})
}

/// A SelfSubjectAccessReview: may I `verb` `group`/`resource` (in
/// `namespace`, named `name`)?
pub fn self_subject_access_review(
    verb: &str,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> Value {
    // `nodes/metrics`: resource `nodes`, subresource `metrics`.
    let mut attributes = match resource.split_once('/') {
        Some((resource, sub)) => {
            json!({"verb": verb, "group": group, "resource": resource, "subresource": sub})
        }
        None => json!({"verb": verb, "group": group, "resource": resource}),
    };
    if let Some(ns) = namespace {
        attributes["namespace"] = Value::String(ns.to_string());
    }
    if let Some(name) = name {
        attributes["name"] = Value::String(name.to_string());
    }
    json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
           "spec": {"resourceAttributes": attributes}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_slice_port_name_matches_the_service() {
        let objects = nodepulse_objects("reader", 443);
        let service = objects
            .iter()
            .find(|o| o["kind"] == "Service")
            .expect("service");
        let slice = endpoint_slice(&[(Ipv4Addr::new(10, 203, 0, 10), true)], 443, 1);
        assert_eq!(
            service["spec"]["ports"][0]["name"],
            slice["ports"][0]["name"]
        );
        assert_eq!(
            slice["metadata"]["labels"]["kubernetes.io/service-name"],
            SERVICE
        );
        assert_eq!(slice["endpoints"][0]["conditions"]["ready"], true);
    }

    #[test]
    fn both_metrics_versions_are_registered_against_the_service() {
        let objects = nodepulse_objects("reader", 443);
        let names: Vec<&str> = objects
            .iter()
            .filter(|o| o["kind"] == "APIService")
            .filter(|o| o["spec"]["service"]["name"] == SERVICE)
            .filter_map(|o| o["metadata"]["name"].as_str())
            .collect();
        assert_eq!(names, ["v1beta1.metrics.k8s.io", "v1.metrics.k8s.io"]);
    }
}
