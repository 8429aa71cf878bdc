//! Limits on the metadata a report carries: Kubernetes' own rules for label
//! keys and values (apimachinery `validation.IsQualifiedName` and
//! `IsValidLabelValue`), Kubernetes' lengths for names, and counts.
//!
//! Everything an agent sends comes from objects kube-apiserver has already
//! validated, so a report over these limits is from a broken or hostile
//! agent: it is refused whole (a clear error, counted in
//! [`Stats::bad_metadata`](super::Stats)), never clamped into something the
//! metrics API would then serve as if the cluster had it, and never kept in
//! memory.
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
    /// Most containers one pod may list.
    pub max_containers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_labels: 256,
            max_containers: 256,
        }
    }
}

/// What is wrong with a report's metadata.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Problem {
    #[error("label key {key:?} on {object}: {why}")]
    LabelKey {
        object: String,
        key: String,
        why: &'static str,
    },
    #[error("label {key:?} on {object}: value {value:?} {why}")]
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
    #[error("{what} {value:?} is longer than {limit} bytes")]
    TooLong {
        what: &'static str,
        value: String,
        limit: usize,
    },
}

/// At most this much of untrusted text goes into an error message.
fn shown(s: &str) -> String {
    s.chars().take(80).collect()
}

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
    for pod in &meta.pods {
        length("pod uid", &pod.uid, MAX_ID)?;
        length("namespace", &pod.namespace, MAX_DNS_LABEL)?;
        length("pod name", &pod.name, MAX_OBJECT_NAME)?;
        let object = || format!("pod {}/{}", shown(&pod.namespace), shown(&pod.name));
        labels(object, pod.labels.iter(), limits)?;
        if pod.containers.len() > limits.max_containers {
            return Err(Problem::TooManyContainers {
                pod: object(),
                count: pod.containers.len(),
                limit: limits.max_containers,
            });
        }
        for c in &pod.containers {
            length("container id", &c.id, MAX_ID)?;
            length("container name", &c.name, MAX_DNS_LABEL)?;
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
    fn error_messages_do_not_echo_huge_input() {
        let m = NodeMetadata {
            labels: [("k".repeat(100_000), String::new())].into(),
            pods: Vec::new(),
        };
        let err = check("n1", &m, &Limits::default()).expect_err("too long");
        assert!(err.to_string().len() < 400, "{}", err.to_string().len());
    }
}
