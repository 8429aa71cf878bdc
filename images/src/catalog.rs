//! What each image holds and how it runs.
//!
//! nodepulse's two images (published by the release workflow) and two that
//! only tests and the demo use: a burner with a known load, and the pod
//! sandbox (`pause`) a node without registry access needs.
use std::path::Path;

use crate::{Config, Result, Rootfs};

/// `PATH` in every image (what Docker gives a `FROM scratch` image).
pub const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The images' tag: the workspace's version, which the manifests in
/// `deploy/` name.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The registry the published images go to.
pub const REGISTRY: &str = "ghcr.io/nodepulse";
/// Where the test-only images are named: never pushed anywhere.
pub const LOCAL_REGISTRY: &str = "nodepulse.local";

/// One image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spec {
    /// Short name (`cargo xtask image agent`).
    pub name: &'static str,
    /// Repository within the registry.
    pub repository: &'static str,
    /// Whether it is published (else named under [`LOCAL_REGISTRY`]).
    pub published: bool,
    /// The program's file name in `target/release` (or the upstream bin dir).
    pub binary: &'static str,
    /// Where the program goes; the entrypoint.
    pub path: &'static str,
    /// `uid:gid` it runs as unless the pod says otherwise.
    pub user: &'static str,
    pub cmd: &'static [&'static str],
    pub exposed_ports: &'static [u16],
    /// `/etc/passwd`, `/etc/group`, `/etc/nsswitch.conf` and `/tmp`, as a
    /// distroless base has them; the pause image has nothing but itself.
    pub base: bool,
    /// The Dockerfile that builds the same image, if any.
    pub dockerfile: Option<&'static str>,
}

/// The node agent (DaemonSet). uid 0: Kubernetes gives added capabilities
/// (BPF, PERFMON) to root only; the DaemonSet drops every other one.
pub const AGENT: Spec = Spec {
    name: "agent",
    repository: "nodepulse-agent",
    published: true,
    binary: "nodepulse-agent",
    path: "/usr/local/bin/nodepulse-agent",
    user: "0:0",
    cmd: &["run"],
    exposed_ports: &[],
    base: true,
    dockerfile: Some("deploy/Dockerfile.agent"),
};

/// The aggregator (Deployment): non-root, as distroless's `nonroot`.
pub const AGGREGATOR: Spec = Spec {
    name: "aggregator",
    repository: "nodepulse-aggregator",
    published: true,
    binary: "nodepulse-aggregator",
    path: "/usr/local/bin/nodepulse-aggregator",
    user: "65532:65532",
    cmd: &[],
    exposed_ports: &[10250, 8443],
    base: true,
    dockerfile: Some("deploy/Dockerfile.aggregator"),
};

/// A workload with a known load (`nodepulse-burner --cpu 250m --memory 64Mi`).
pub const BURNER: Spec = Spec {
    name: "burner",
    repository: "burner",
    published: false,
    binary: "nodepulse-burner",
    path: "/usr/local/bin/nodepulse-burner",
    user: "65532:65532",
    cmd: &[],
    exposed_ports: &[],
    base: true,
    dockerfile: None,
};

/// The pod sandbox: upstream's `pause.c`, static, as `registry.k8s.io/pause`
/// has it (`/pause`, uid 65535).
pub const PAUSE: Spec = Spec {
    name: "pause",
    repository: "pause",
    published: false,
    binary: "pause",
    path: "/pause",
    user: "65535:65535",
    cmd: &[],
    exposed_ports: &[],
    base: false,
    dockerfile: None,
};

pub const ALL: [Spec; 4] = [AGENT, AGGREGATOR, BURNER, PAUSE];

/// The spec called `name`.
pub fn find(name: &str) -> Option<Spec> {
    ALL.into_iter().find(|s| s.name == name)
}

const PASSWD: &str = "root:x:0:0:root:/root:/sbin/nologin\n\
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n\
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n";
const GROUP: &str = "root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n";
/// glibc's lookups as Debian configures them (hosts file first, then DNS).
const NSSWITCH: &str = "passwd: files\ngroup: files\nhosts: files dns\n";

impl Spec {
    /// `<registry>/<repository>:<tag>`; test-only images always under
    /// [`LOCAL_REGISTRY`].
    pub fn reference(&self, registry: &str, tag: &str) -> String {
        let registry = if self.published {
            registry
        } else {
            LOCAL_REGISTRY
        };
        format!(
            "{}/{}:{tag}",
            registry.trim_end_matches('/'),
            self.repository
        )
    }

    pub fn config(&self) -> Config {
        Config {
            user: self.user.to_string(),
            entrypoint: vec![self.path.to_string()],
            cmd: self.cmd.iter().map(|s| s.to_string()).collect(),
            env: vec![PATH_ENV.to_string()],
            exposed_ports: self.exposed_ports.to_vec(),
        }
    }

    /// The image's filesystem around `binary` (the program built for this
    /// machine).
    pub fn rootfs(&self, binary: &Path) -> Result<Rootfs> {
        let mut fs = Rootfs::new();
        if self.base {
            fs.file("/etc/passwd", 0o644, PASSWD.into())?;
            fs.file("/etc/group", 0o644, GROUP.into())?;
            fs.file("/etc/nsswitch.conf", 0o644, NSSWITCH.into())?;
            fs.dir("/tmp", 0o1777)?;
        }
        fs.executable(self.path, binary)?;
        Ok(fs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        assert_eq!(
            AGENT.reference("ghcr.io/nodepulse", "0.1.0"),
            "ghcr.io/nodepulse/nodepulse-agent:0.1.0"
        );
        assert_eq!(
            AGGREGATOR.reference("registry.example/ops/", "dev"),
            "registry.example/ops/nodepulse-aggregator:dev"
        );
        assert_eq!(
            PAUSE.reference("ghcr.io/nodepulse", "v1.37.2"),
            "nodepulse.local/pause:v1.37.2"
        );
        assert_eq!(find("burner"), Some(BURNER));
        assert_eq!(find("nope"), None);
    }

    #[test]
    fn a_dynamic_executable_brings_its_loader_and_libraries() {
        // This test binary is itself a dynamic executable of this machine.
        let me = std::env::current_exe().expect("current_exe");
        let fs = AGENT.rootfs(&me).expect("rootfs");
        let paths: Vec<&str> = fs.entries().keys().map(String::as_str).collect();
        assert!(
            paths.contains(&"/usr/local/bin/nodepulse-agent"),
            "{paths:?}"
        );
        assert!(paths.contains(&"/etc/passwd"), "{paths:?}");
        assert!(
            paths.iter().any(|p| p.contains("/libc.so")),
            "libc: {paths:?}"
        );
        assert!(
            paths.iter().any(|p| p.contains("/ld-linux")),
            "the program's interpreter: {paths:?}"
        );
    }

    /// Docker users build the published images from `deploy/Dockerfile.*`:
    /// their last stage copies the root filesystem `cargo xtask image
    /// --rootfs` writes, into `scratch`, and must declare what [`Spec::config`]
    /// says.
    #[test]
    fn the_dockerfiles_build_the_same_images() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for spec in ALL {
            let Some(file) = spec.dockerfile else {
                continue;
            };
            let text = std::fs::read_to_string(root.join(file)).expect("join");
            let last = &text[text
                .rfind("\nFROM ")
                .unwrap_or_else(|| panic!("{file}: no FROM"))..];
            let lines: Vec<&str> = last
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .collect();
            let has = |want: &str| {
                assert!(
                    lines.contains(&want),
                    "{file}: the last stage lacks `{want}`:\n{}",
                    lines.join("\n")
                )
            };
            has("FROM scratch");
            has("COPY --from=build /rootfs/ /");
            has(&format!("ENV {PATH_ENV}"));
            has(&format!("USER {}", spec.user));
            has(&format!("ENTRYPOINT [\"{}\"]", spec.path));
            if !spec.cmd.is_empty() {
                let cmd: Vec<String> = spec.cmd.iter().map(|c| format!("\"{c}\"")).collect();
                has(&format!("CMD [{}]", cmd.join(", ")));
            }
            for port in spec.exposed_ports {
                assert!(
                    lines.iter().any(|l| l.starts_with("EXPOSE ")
                        && l.split_whitespace().any(|p| p == port.to_string())),
                    "{file}: EXPOSE {port}"
                );
            }
            assert!(
                text.contains(&format!("cargo xtask image --rootfs /rootfs {}", spec.name)),
                "{file}: the build stage must write the root filesystem with `cargo xtask image --rootfs /rootfs {}`",
                spec.name
            );
        }
    }
}
