//! Which pod and container a cgroup belongs to, from its path alone.
//!
//! The kubelet lays pods out in one of two ways, and container runtimes name
//! container cgroups in their own ways:
//!
//! * systemd driver: `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid, '-' as '_'>.slice/cri-containerd-<id>.scope`
//!   (`crio-<id>.scope`, `docker-<id>.scope`); guaranteed pods sit directly under
//!   `kubepods.slice` as `kubepods-pod<uid>.slice`. A kubelet `--cgroup-root` adds a
//!   prefix (`kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod<uid>.slice`).
//! * cgroupfs driver: `kubepods/burstable/pod<uid>/<id>`, guaranteed `kubepods/pod<uid>/<id>`.
//!
//! Anything below a container (a runtime's or an init system's sub-cgroups) is
//! part of that container. Paths outside the kubelet's tree are not pods and
//! parse to `None`; paths inside it that do not follow the layout are errors.
use std::fmt;

/// Errors for paths inside the kubelet's tree that do not follow its layout.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("cgroup {path:?}: pod component {component:?} does not hold a valid pod UID")]
    PodUid { path: String, component: String },
    #[error(
        "cgroup {path:?}: {component:?} under a pod is not a container cgroup of a known runtime"
    )]
    Container { path: String, component: String },
    #[error("cgroup {path:?}: unexpected component {component:?} in the kubelet's pods tree")]
    Unexpected { path: String, component: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A pod's QoS class, from the slice or directory it sits in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl QosClass {
    /// As the pod's `status.qosClass` spells it.
    pub fn name(self) -> &'static str {
        match self {
            QosClass::Guaranteed => "Guaranteed",
            QosClass::Burstable => "Burstable",
            QosClass::BestEffort => "BestEffort",
        }
    }
}

impl fmt::Display for QosClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The runtime that named a container cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    /// cgroupfs driver: a bare container id, the runtime does not say.
    Unnamed,
}

impl Runtime {
    /// The scheme of a Pod's `status.containerStatuses[].containerID`.
    pub fn scheme(self) -> Option<&'static str> {
        match self {
            Runtime::Containerd => Some("containerd"),
            Runtime::CriO => Some("cri-o"),
            Runtime::Docker => Some("docker"),
            Runtime::Unnamed => None,
        }
    }
}

/// Where a cgroup sits in the kubelet's tree.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    /// The kubelet's pods root (`kubepods.slice`, `kubepods`).
    PodsRoot,
    /// A QoS class's slice (`kubepods-burstable.slice`, `kubepods/besteffort`).
    Qos(QosClass),
    /// A pod's cgroup.
    Pod { uid: String, qos: QosClass },
    /// A runtime's helper inside a pod (CRI-O's `crio-conmon-<id>.scope`) or below
    /// one: part of the pod's cgroup, not of any container.
    PodHelper { pod_uid: String, qos: QosClass },
    /// A container's cgroup, or (`nested`) a cgroup below one.
    Container {
        pod_uid: String,
        qos: QosClass,
        id: String,
        runtime: Runtime,
        nested: bool,
    },
}

/// Parses a cgroup path relative to the hierarchy's root (leading `/` optional).
pub fn parse(path: &str) -> Result<Option<Identity>> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let Some(root) = parts.iter().position(|p| is_pods_root(p)) else {
        return Ok(None);
    };
    let systemd = parts[root].ends_with(".slice");
    let mut qos = QosClass::Guaranteed;
    let mut id = Identity::PodsRoot;
    for &component in &parts[root + 1..] {
        let err_unexpected = || Error::Unexpected {
            path: path.to_string(),
            component: component.to_string(),
        };
        id = match id {
            Identity::PodsRoot | Identity::Qos(_) => {
                if let Some(class) = qos_component(component, systemd) {
                    if !matches!(id, Identity::PodsRoot) {
                        return Err(err_unexpected());
                    }
                    qos = class;
                    Identity::Qos(class)
                } else {
                    let uid = pod_component(component, systemd).ok_or_else(err_unexpected)?;
                    if !valid_uid(&uid) {
                        return Err(Error::PodUid {
                            path: path.to_string(),
                            component: component.to_string(),
                        });
                    }
                    Identity::Pod { uid, qos }
                }
            }
            Identity::Pod { uid, qos } if is_runtime_helper(component, systemd) => {
                Identity::PodHelper { pod_uid: uid, qos }
            }
            helper @ Identity::PodHelper { .. } => helper,
            Identity::Pod { uid, qos } => {
                let (cid, runtime) =
                    container_component(component, systemd).ok_or_else(|| Error::Container {
                        path: path.to_string(),
                        component: component.to_string(),
                    })?;
                Identity::Container {
                    pod_uid: uid,
                    qos,
                    id: cid,
                    runtime,
                    nested: false,
                }
            }
            Identity::Container {
                pod_uid,
                qos,
                id,
                runtime,
                ..
            } => Identity::Container {
                pod_uid,
                qos,
                id,
                runtime,
                nested: true,
            },
        };
    }
    Ok(Some(id))
}

fn is_pods_root(component: &str) -> bool {
    component == "kubepods"
        || component == "kubepods.slice"
        || component.ends_with("-kubepods.slice")
}

fn qos_component(component: &str, systemd: bool) -> Option<QosClass> {
    if systemd {
        let stem = component.strip_suffix(".slice")?;
        if stem.ends_with("kubepods-burstable") {
            Some(QosClass::Burstable)
        } else if stem.ends_with("kubepods-besteffort") {
            Some(QosClass::BestEffort)
        } else {
            None
        }
    } else {
        match component {
            "burstable" => Some(QosClass::Burstable),
            "besteffort" => Some(QosClass::BestEffort),
            _ => None,
        }
    }
}

/// The pod UID in a pod component, with systemd's `_` turned back into `-`.
fn pod_component(component: &str, systemd: bool) -> Option<String> {
    if systemd {
        let stem = component.strip_suffix(".slice")?;
        let at = stem.rfind("-pod")?;
        if !stem[..at].ends_with("kubepods")
            && !stem[..at].ends_with("kubepods-burstable")
            && !stem[..at].ends_with("kubepods-besteffort")
        {
            return None;
        }
        Some(stem[at + 4..].replace('_', "-"))
    } else {
        component.strip_prefix("pod").map(str::to_string)
    }
}

/// Pod UIDs are UUIDs, or for static pods a 32-digit hex hash of their config.
fn valid_uid(uid: &str) -> bool {
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    let groups: Vec<&str> = uid.split('-').collect();
    match groups.as_slice() {
        [a, b, c, d, e] => {
            [a.len(), b.len(), c.len(), d.len(), e.len()] == [8, 4, 4, 4, 12]
                && groups.iter().all(|g| hex(g))
        }
        [h] => h.len() == 32 && hex(h),
        _ => false,
    }
}

fn is_runtime_helper(component: &str, systemd: bool) -> bool {
    systemd && component.starts_with("crio-conmon-") && component.ends_with(".scope")
}

fn valid_container_id(id: &str) -> bool {
    (12..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit())
}

fn container_component(component: &str, systemd: bool) -> Option<(String, Runtime)> {
    let (id, runtime) = if systemd {
        let stem = component.strip_suffix(".scope")?;
        if let Some(id) = stem.strip_prefix("cri-containerd-") {
            (id, Runtime::Containerd)
        } else if let Some(id) = stem.strip_prefix("crio-") {
            (id, Runtime::CriO)
        } else {
            (stem.strip_prefix("docker-")?, Runtime::Docker)
        }
    } else {
        (component, Runtime::Unnamed)
    };
    valid_container_id(id).then(|| (id.to_string(), runtime))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0c3a8ec8-6a39-4b5c-a5e3-2f0cb7a8e1d4";
    const UID_SYSTEMD: &str = "0c3a8ec8_6a39_4b5c_a5e3_2f0cb7a8e1d4";
    const CID: &str = "4f1e0e5a6b1fd1d7c6c3b5d8a77d7e3fe9a2c0c0f4b7e2e3b9e5d1f1a2b3c4d5";

    fn container(qos: QosClass, runtime: Runtime, nested: bool) -> Option<Identity> {
        Some(Identity::Container {
            pod_uid: UID.into(),
            qos,
            id: CID.into(),
            runtime,
            nested,
        })
    }

    #[test]
    fn systemd_layouts() {
        let burstable = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice"
        );
        assert_eq!(parse("/kubepods.slice"), Ok(Some(Identity::PodsRoot)));
        assert_eq!(
            parse("/kubepods.slice/kubepods-besteffort.slice"),
            Ok(Some(Identity::Qos(QosClass::BestEffort)))
        );
        assert_eq!(
            parse(&burstable),
            Ok(Some(Identity::Pod {
                uid: UID.into(),
                qos: QosClass::Burstable
            }))
        );
        for (scope, runtime) in [
            (format!("cri-containerd-{CID}.scope"), Runtime::Containerd),
            (format!("crio-{CID}.scope"), Runtime::CriO),
            (format!("docker-{CID}.scope"), Runtime::Docker),
        ] {
            assert_eq!(
                parse(&format!("{burstable}/{scope}")),
                Ok(container(QosClass::Burstable, runtime, false))
            );
            assert_eq!(
                parse(&format!("{burstable}/{scope}/init.scope")),
                Ok(container(QosClass::Burstable, runtime, true))
            );
        }
        // Guaranteed pods sit directly under kubepods.slice.
        assert_eq!(
            parse(&format!(
                "kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice/cri-containerd-{CID}.scope"
            )),
            Ok(container(QosClass::Guaranteed, Runtime::Containerd, false))
        );
        // Best effort, under a kubelet --cgroup-root prefix.
        assert_eq!(
            parse(&format!(
                "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/\
                 kubelet-kubepods-besteffort-pod{UID_SYSTEMD}.slice/crio-{CID}.scope"
            )),
            Ok(container(QosClass::BestEffort, Runtime::CriO, false))
        );
    }

    #[test]
    fn runtime_helpers_belong_to_the_pod() {
        let pod = format!("kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice");
        let helper = Some(Identity::PodHelper {
            pod_uid: UID.into(),
            qos: QosClass::Guaranteed,
        });
        assert_eq!(
            parse(&format!("{pod}/crio-conmon-{CID}.scope")),
            Ok(helper.clone())
        );
        assert_eq!(
            parse(&format!("{pod}/crio-conmon-{CID}.scope/x")),
            Ok(helper)
        );
    }

    #[test]
    fn cgroupfs_layouts() {
        assert_eq!(parse("kubepods"), Ok(Some(Identity::PodsRoot)));
        assert_eq!(
            parse(&format!("/kubepods/burstable/pod{UID}/{CID}")),
            Ok(container(QosClass::Burstable, Runtime::Unnamed, false))
        );
        assert_eq!(
            parse(&format!("/kubepods/besteffort/pod{UID}")),
            Ok(Some(Identity::Pod {
                uid: UID.into(),
                qos: QosClass::BestEffort
            }))
        );
        assert_eq!(
            parse(&format!("/kubepods/pod{UID}/{CID}")),
            Ok(container(QosClass::Guaranteed, Runtime::Unnamed, false))
        );
        // Static pods: a 32-digit config hash as UID.
        let hash = "7b2f0c9d1e3a4b5c6d7e8f9012345678";
        assert_eq!(
            parse(&format!("/kubepods/burstable/pod{hash}")),
            Ok(Some(Identity::Pod {
                uid: hash.into(),
                qos: QosClass::Burstable
            }))
        );
    }

    #[test]
    fn paths_outside_the_pods_tree_are_not_pods() {
        for p in [
            "",
            "/",
            "system.slice/containerd.service",
            "user.slice",
            "kubepods2/x",
        ] {
            assert_eq!(parse(p), Ok(None), "{p}");
        }
    }

    #[test]
    fn malformed_paths_are_clear_errors() {
        let cases = [
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podnot-a-uid.slice",
            "kubepods/burstable/pod1234",
            "kubepods/burstable/besteffort",
            "kubepods.slice/kubepods-burstable.slice/kubepods-besteffort.slice",
            "kubepods.slice/something.slice",
            "kubepods/burstable/podzz",
        ];
        for p in cases {
            let err = parse(p).expect_err(p);
            assert!(err.to_string().contains(p), "{err}");
        }
        let pod = format!("kubepods/burstable/pod{UID}");
        for child in ["notacontainer", "abc", "cri-containerd-xyz.scope"] {
            assert!(matches!(
                parse(&format!("{pod}/{child}")),
                Err(Error::Container { .. })
            ));
        }
        let pod = format!("kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice");
        for child in [
            CID.to_string(),
            "cri-containerd-.scope".into(),
            format!("runc-{CID}.scope"),
        ] {
            assert!(
                matches!(
                    parse(&format!("{pod}/{child}")),
                    Err(Error::Container { .. })
                ),
                "{child}"
            );
        }
    }

    #[test]
    fn never_panics_on_odd_input() {
        for p in [
            "kubepods.slice/-pod.slice",
            "kubepods.slice/kubepods-pod.slice",
            "kubepods/pod",
            "kubepods/pod/",
            "kubepods.slice/.slice",
            "//kubepods//burstable//",
            "kubepods/\u{0}/x",
            "kubepods.slice/kubepods-pod\u{e9}\u{e9}.slice",
        ] {
            let _ = parse(p);
        }
    }
}
