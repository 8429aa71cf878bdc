//! `cargo xtask demo`: a node simulated on this machine's real cgroups, watched
//! by the agent's live table.
use std::{os::unix::process::CommandExt, path::Path, process::Command};

use anyhow::{Context, Result, bail};
use testkit::{Burn, CgroupTree, Launcher};

pub fn run(root: &Path, seconds: Option<u64>) -> Result<()> {
    let Some(hierarchy) = testkit::privileged("demo") else {
        bail!("the demo creates cgroups and loads eBPF: run it as root on a BTF kernel");
    };
    let mut build = Command::new("cargo");
    build
        .current_dir(root)
        .args(["build", "--release", "--package", "agent"]);
    let status = build.status().context("building the agent")?;
    if !status.success() {
        bail!("building the agent failed: {status}");
    }

    let mut tree = CgroupTree::new(&hierarchy, "demo");
    let base = tree.base.clone();
    let launcher = Launcher {
        program: std::env::current_exe()?,
        args: vec!["burn".into()],
    };
    let mut burners = Vec::new();
    let pods: [(&str, Burn); 4] = [
        (
            "web",
            Burn::Spin {
                threads: 1,
                cpu: None,
            },
        ),
        (
            "batch",
            Burn::Duty {
                fraction: 0.25,
                period_ms: 20,
            },
        ),
        (
            "cache",
            Burn::Memory {
                mib: 128,
                cache_mib: 64,
                file: std::env::temp_dir().join(format!("nodepulse-demo-{}", std::process::id())),
            },
        ),
        (
            "idle",
            Burn::Duty {
                fraction: 0.02,
                period_ms: 50,
            },
        ),
    ];
    for (n, (name, burn)) in pods.iter().enumerate() {
        let n = n as u32 + 1;
        let (uid, cid) = (testkit::uid(n), testkit::container_id(n));
        let path = if n % 2 == 1 {
            testkit::systemd_container(&base, "burstable", &uid, &cid)
        } else {
            testkit::cgroupfs_container(&base, "besteffort", &uid, &cid)
        };
        eprintln!("simulated pod {name}: uid {uid}, container {}", &cid[..12]);
        burners.push(tree.spawn(&path, burn, &launcher));
    }

    // Ctrl-C reaches the agent (same process group) and ends it; this process
    // ignores it so that it can clean up afterwards.
    // SAFETY: setting a signal disposition; no handler code runs.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let mut agent = Command::new(root.join("target/release/nodepulse-agent"));
    agent.args(["top", "--interval", "1"]);
    if let Some(s) = seconds {
        agent.args(["--count", &s.to_string()]);
    }
    // SAFETY: restoring the default disposition in the child before exec is
    // async-signal-safe.
    unsafe {
        agent.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    let status = agent.status().context("running nodepulse-agent top")?;
    drop(burners);
    drop(tree);
    if let Some(file) = pods.iter().find_map(|(_, b)| match b {
        Burn::Memory { file, .. } => Some(file.clone()),
        _ => None,
    }) {
        let _ = std::fs::remove_file(file);
    }
    eprintln!("demo ended ({status}); simulated pods removed");
    Ok(())
}
