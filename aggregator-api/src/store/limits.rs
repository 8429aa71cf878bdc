//! Limits on what a report carries: Kubernetes' own rules for label keys and
//! values (apimachinery `validation.IsQualifiedName` and `IsValidLabelValue`)
//! and for names (namespaces and container names are DNS-1123 labels, pod
//! names DNS-1123 subdomains), the shapes of pod UIDs and container ids,
//! counts, and uniqueness (one pod per UID and per name, one container per id
//! and, within a pod, per name).
//!
//! Everything an agent sends comes from objects kube-apiserver has already
//! validated, so a report over these limits is from a broken or hostile
//! agent: it is refused whole (a clear error, counted in
//! [`Stats::bad_metadata`](super::Stats)), never clamped into something the
//! metrics API would then serve as if the cluster had it, and never kept in
//! memory.
use foldhash::{HashSet, HashSetExt};
use proto::v1::NodeMetadata;

/// Longest label key prefix (a DNS-1123 subdomain).
pub const MAX_PREFIX: usize = 253;
/// Longest label key name and label value.
pub const MAX_LABEL_NAME: usize = 63;
/// Longest namespace and container name (DNS-1123 labels).
pub const MAX_DNS_LABEL: usize = 63;
/// Longest pod name (a DNS-1123 subdomain).
pub const MAX_OBJECT_NAME: usize = 253;
/// Longest pod uid and container id kept; real ones are 36 and 64 bytes.
pub const MAX_ID: usize = 128;

/// Count limits, configurable because clusters differ (node feature
/// discovery puts hundreds of labels on nodes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most labels on one node or pod.
    pub max_labels: usize,
    /// Most containers one pod may list or report.
    pub max_containers: usize,
    /// Most container samples one report may carry, in all its pods.
    pub max_samples: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_labels: 256,
            max_containers: 256,
            // 2,000 pods (the report limit) of four containers.
            max_samples: 8_000,
        }
    }
}

/// What is wrong with a report's metadata.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Problem {
    #[error("label key \"{key}\" on {object}: {why}")]
    LabelKey {
        object: String,
        key: String,
        why: &'static str,
    },
    #[error("label \"{key}\" on {object}: value \"{value}\" {why}")]
    LabelValue {
        object: String,
        key: String,
        value: String,
        why: &'static str,
    },
    #[error("{object} has {count} labels, more than the limit of {limit}")]
    TooManyLabels {
        object: String,
        count: usize,
        limit: usize,
    },
    #[error("pod {pod} lists {count} containers, more than the limit of {limit}")]
    TooManyContainers {
        pod: String,
        count: usize,
        limit: usize,
    },
    #[error("{what} \"{value}\" is longer than {limit} bytes")]
    TooLong {
        what: &'static str,
        value: String,
        limit: usize,
    },
    #[error("{what} \"{value}\" {why}")]
    BadName {
        what: &'static str,
        value: String,
        why: &'static str,
    },
    #[error("{what} \"{value}\" appears more than once")]
    Duplicate { what: &'static str, value: String },
    #[error("the report carries {count} container samples, more than the limit of {limit}")]
    TooManySamples { count: usize, limit: usize },
}

use crate::untrusted::shown;

fn alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, without the length rule.
fn qualified_chars(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && alnum(b[0])
        && alnum(b[b.len() - 1])
        && b.iter()
            .all(|&c| alnum(c) || c == b'-' || c == b'_' || c == b'.')
}

/// apimachinery `IsDNS1123Subdomain`.
pub fn dns1123_subdomain(s: &str) -> bool {
    s.len() <= MAX_PREFIX
        && s.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
                && b.iter()
                    .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        })
}

/// A node name: a non-empty DNS-1123 subdomain, as Kubernetes requires.
pub fn node_name(s: &str) -> bool {
    !s.is_empty() && dns1123_subdomain(s)
}

/// apimachinery `IsDNS1123Label`: namespaces, container names.
pub fn dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_DNS_LABEL
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

/// A pod UID or container id: what kube-apiserver and container runtimes
/// make (a UUID, a config hash, 64 hex digits), never anything else.
pub fn id(s: &str) -> bool {
    // Every byte is looked at (no early exit) through a table: a check of
    // every id of every report, which per-class branches made mispredict on
    // random hex digits.
    !s.is_empty() && s.len() <= MAX_ID && s.bytes().fold(true, |ok, c| ok & ID_BYTES[c as usize])
}

/// The bytes [`id`] allows.
static ID_BYTES: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.';
        c += 1;
    }
    t
};

fn name(what: &'static str, value: &str, ok: bool, why: &'static str) -> Result<(), Problem> {
    if ok {
        return Ok(());
    }
    Err(Problem::BadName {
        what,
        value: shown(value),
        why,
    })
}

const LABEL_RULE: &str = "is not a lowercase RFC 1123 label (a-z, 0-9, '-'; at most 63)";
const SUBDOMAIN_RULE: &str =
    "is not a lowercase RFC 1123 subdomain (a-z, 0-9, '-', '.'; at most 253)";
const ID_RULE: &str = "is not an id (A-Z, a-z, 0-9, '-', '_', '.'; 1 to 128)";

/// Checks a pod UID or container id's shape.
pub fn check_id(what: &'static str, value: &str) -> Result<(), Problem> {
    name(what, value, id(value), ID_RULE)
}

/// apimachinery `IsQualifiedName`: the rule for label keys.
pub fn label_key(key: &str) -> Result<(), &'static str> {
    let name = match key.split_once('/') {
        None => key,
        Some((prefix, name)) => {
            if prefix.is_empty() {
                return Err("prefix part must be non-empty");
            }
            if prefix.len() > MAX_PREFIX {
                return Err("prefix part must be no more than 253 characters");
            }
            if !dns1123_subdomain(prefix) {
                return Err("prefix part must be a lowercase RFC 1123 subdomain");
            }
            if name.contains('/') {
                return Err("a qualified name has at most one '/'");
            }
            name
        }
    };
    if name.is_empty() {
        return Err("name part must be non-empty");
    }
    if name.len() > MAX_LABEL_NAME {
        return Err("name part must be no more than 63 characters");
    }
    if !qualified_chars(name) {
        return Err(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
        );
    }
    Ok(())
}

/// apimachinery `IsValidLabelValue`.
pub fn label_value(value: &str) -> Result<(), &'static str> {
    if value.len() > MAX_LABEL_NAME {
        return Err("must be no more than 63 characters");
    }
    if !value.is_empty() && !qualified_chars(value) {
        return Err(
            "must be empty or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
        );
    }
    Ok(())
}

fn labels<'a>(
    object: impl Fn() -> String,
    labels: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
    limits: &Limits,
) -> Result<(), Problem> {
    if labels.len() > limits.max_labels {
        return Err(Problem::TooManyLabels {
            object: object(),
            count: labels.len(),
            limit: limits.max_labels,
        });
    }
    for (k, v) in labels {
        label_key(k).map_err(|why| Problem::LabelKey {
            object: object(),
            key: shown(k),
            why,
        })?;
        label_value(v).map_err(|why| Problem::LabelValue {
            object: object(),
            key: shown(k),
            value: shown(v),
            why,
        })?;
    }
    Ok(())
}

fn length(what: &'static str, value: &str, limit: usize) -> Result<(), Problem> {
    if value.len() > limit {
        return Err(Problem::TooLong {
            what,
            value: shown(value),
            limit,
        });
    }
    Ok(())
}

/// Checks a report's metadata against Kubernetes' rules and `limits`.
pub fn check(node: &str, meta: &NodeMetadata, limits: &Limits) -> Result<(), Problem> {
    labels(|| format!("node {node}"), meta.labels.iter(), limits)?;
    let mut uids = HashSet::with_capacity(meta.pods.len());
    let mut names = HashSet::with_capacity(meta.pods.len());
    let mut ids = HashSet::new();
    for pod in &meta.pods {
        length("pod uid", &pod.uid, MAX_ID)?;
        length("namespace", &pod.namespace, MAX_DNS_LABEL)?;
        length("pod name", &pod.name, MAX_OBJECT_NAME)?;
        check_id("pod uid", &pod.uid)?;
        name(
            "namespace",
            &pod.namespace,
            dns1123_label(&pod.namespace),
            LABEL_RULE,
        )?;
        name(
            "pod name",
            &pod.name,
            !pod.name.is_empty() && dns1123_subdomain(&pod.name),
            SUBDOMAIN_RULE,
        )?;
        let object = || format!("pod {}/{}", shown(&pod.namespace), shown(&pod.name));
        if !uids.insert(pod.uid.as_str()) {
            return Err(Problem::Duplicate {
                what: "pod uid",
                value: shown(&pod.uid),
            });
        }
        if !names.insert((pod.namespace.as_str(), pod.name.as_str())) {
            return Err(Problem::Duplicate {
                what: "pod",
                value: object(),
            });
        }
        labels(object, pod.labels.iter(), limits)?;
        if pod.containers.len() > limits.max_containers {
            return Err(Problem::TooManyContainers {
                pod: object(),
                count: pod.containers.len(),
                limit: limits.max_containers,
            });
        }
        let mut container_names = HashSet::with_capacity(pod.containers.len());
        for c in &pod.containers {
            length("container id", &c.id, MAX_ID)?;
            length("container name", &c.name, MAX_DNS_LABEL)?;
            check_id("container id", &c.id)?;
            name(
                "container name",
                &c.name,
                dns1123_label(&c.name),
                LABEL_RULE,
            )?;
            if !ids.insert(c.id.as_str()) {
                return Err(Problem::Duplicate {
                    what: "container id",
                    value: shown(&c.id),
                });
            }
            if !container_names.insert(c.name.as_str()) {
                return Err(Problem::Duplicate {
                    what: "container name",
                    value: format!("{}/{}", object(), shown(&c.name)),
                });
            }
        }
    }
    Ok(())
}

/// Checks a report's samples: pod UIDs and container ids of the right
/// shape, each id once, at most `max_containers` per pod and `max_samples`
/// in all.
pub fn check_samples(pods: &[proto::v1::PodSample], limits: &Limits) -> Result<(), Problem> {
    let count: usize = pods.iter().map(|p| p.containers.len()).sum();
    if count > limits.max_samples {
        return Err(Problem::TooManySamples {
            count,
            limit: limits.max_samples,
        });
    }
    let mut uids = HashSet::with_capacity(pods.len());
    let mut ids = HashSet::with_capacity(count);
    for pod in pods {
        check_id("pod uid", &pod.uid)?;
        if !uids.insert(pod.uid.as_str()) {
            return Err(Problem::Duplicate {
                what: "pod uid",
                value: shown(&pod.uid),
            });
        }
        if pod.containers.len() > limits.max_containers {
            return Err(Problem::TooManyContainers {
                pod: shown(&pod.uid),
                count: pod.containers.len(),
                limit: limits.max_containers,
            });
        }
        for c in &pod.containers {
            check_id("container id", &c.id)?;
            if !ids.insert(c.id.as_str()) {
                return Err(Problem::Duplicate {
                    what: "container id",
                    value: shown(&c.id),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::v1::{ContainerName, PodMetadata};

    #[test]
    fn label_keys_follow_apimachinery() {
        for ok in [
            "app",
            "a",
            "app.kubernetes.io/name",
            "k8s-app",
            "A_b.c-9",
            "example.com/Some_Name",
            &format!("{}/{}", "a".repeat(253), "n".repeat(63)),
        ] {
            assert_eq!(label_key(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "/name",
            "example.com/",
            "-app",
            "app-",
            "a b",
            "Example.com/name",
            "a/b/c",
            "ex_ample.com/name",
            &"n".repeat(64),
            &format!("{}/n", "a".repeat(254)),
        ] {
            assert!(label_key(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn label_values_follow_apimachinery() {
        for ok in ["", "v", "1.2.3", "Some_Value-9", &"v".repeat(63)] {
            assert_eq!(label_value(ok), Ok(()), "{ok}");
        }
        for bad in ["-v", "v.", "a/b", "a b", "ü", &"v".repeat(64)] {
            assert!(label_value(bad).is_err(), "{bad:?} must be refused");
        }
    }

    fn pod(labels: &[(&str, &str)], containers: usize) -> PodMetadata {
        PodMetadata {
            uid: "u".into(),
            namespace: "ns".into(),
            name: "p".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            running: true,
            containers: (0..containers)
                .map(|i| ContainerName {
                    id: format!("c{i}"),
                    name: format!("n{i}"),
                })
                .collect(),
        }
    }

    #[test]
    fn metadata_over_the_limits_is_a_clear_error() {
        let limits = Limits {
            max_labels: 2,
            max_containers: 2,
            max_samples: 10,
        };
        let fine = NodeMetadata {
            labels: [("zone".to_string(), "a".to_string())].into(),
            pods: vec![pod(&[("app", "web"), ("tier", "")], 2)],
        };
        assert_eq!(check("n1", &fine, &limits), Ok(()));

        let mut m = fine.clone();
        m.pods[0] = pod(&[("a", "1"), ("b", "2"), ("c", "3")], 1);
        assert_eq!(
            check("n1", &m, &limits),
            Err(Problem::TooManyLabels {
                object: "pod ns/p".into(),
                count: 3,
                limit: 2
            })
        );
        m.pods[0] = pod(&[], 3);
        assert!(matches!(
            check("n1", &m, &limits),
            Err(Problem::TooManyContainers { count: 3, .. })
        ));
        m.pods[0] = pod(&[("app", &"x".repeat(64))], 1);
        let err = check("n1", &m, &limits).expect_err("value too long");
        assert!(matches!(err, Problem::LabelValue { .. }));
        assert!(err.to_string().contains("no more than 63"), "{err}");
        m.pods[0].labels.clear();
        m.pods[0].namespace = "n".repeat(64);
        assert!(matches!(
            check("n1", &m, &limits),
            Err(Problem::TooLong {
                what: "namespace",
                ..
            })
        ));

        let mut m = fine;
        m.labels.insert("bad key".into(), "v".into());
        let err = check("n1", &m, &limits).expect_err("bad key");
        assert!(
            matches!(&err, Problem::LabelKey { object, .. } if object == "node n1"),
            "{err}"
        );
    }

    #[test]
    fn ids_allow_letters_digits_dash_underscore_and_dot_only() {
        let ok = |c: u8| c.is_ascii_alphanumeric() || b"-_.".contains(&c);
        for c in 0..=255u8 {
            for at in [0, 5, 35] {
                let mut b = b"0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0".to_vec();
                b[at] = c;
                if let Ok(s) = std::str::from_utf8(&b) {
                    assert_eq!(id(s), ok(c), "{s:?}");
                }
            }
        }
        assert!(id(&"a".repeat(MAX_ID)) && !id(&"a".repeat(MAX_ID + 1)) && !id(""));
        assert!(!id("caf\u{e9}"), "multi-byte characters are refused");
    }

    #[test]
    fn error_messages_do_not_echo_huge_input() {
        let m = NodeMetadata {
            labels: [("k".repeat(100_000), String::new())].into(),
            pods: Vec::new(),
        };
        let err = check("n1", &m, &Limits::default()).expect_err("too long");
        assert!(err.to_string().len() < 400, "{}", err.to_string().len());
    }
}
