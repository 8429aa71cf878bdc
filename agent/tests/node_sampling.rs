//! The agent against real cgroups on this kernel: a simulated node (cgroups
//! named as the kubelet and containerd name them, processes burning known CPU
//! and holding known memory), sampled every second, checked against the
//! kernel's own per-cgroup counters over the same windows.
//!
//! One test puts a cgroupfs-driver pod in the host's v1 controllers only (as
//! a kubelet does on a hybrid host like this one; skipped on pure v2 hosts).
//!
//! Needs root, BTF and cgroup v2; skips with a message elsewhere (fails instead
//! under NODEPULSE_REQUIRE_PRIVILEGED=1, as in CI).

use std::{sync::Mutex, time::Duration};

use agent::cgroup::{Hierarchy, Tree, files::STAT_USAGE_SLACK};
use agent::{
    collector::{Collector, CpuSource, CpuSourceChoice, Options, Snapshot},
    ebpf::SwitchHook,
};
use agent_common::Stat;
use testkit::{self as support, Burn, Burner, CgroupTree, Launcher};

/// The CPU tests measure load: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Not a test: the body of burner processes the tests spawn (see support).
#[test]
#[ignore = "entry point of burner child processes"]
fn burner_entry() {
    support::burner_main();
}

fn collector(source: CpuSourceChoice, force_tick: bool) -> Collector {
    collector_with(source, force_tick, false)
}

fn collector_with(source: CpuSourceChoice, force_tick: bool, raw_tracepoint: bool) -> Collector {
    let c = Collector::new(Options {
        cpu_source: source,
        force_tick,
        force_raw_tracepoint: raw_tracepoint,
        // With the raw tracepoint, one pending slot per CPU too: every charge
        // to another cgroup than the CPU's last moves that one to the map.
        pending_slots: if raw_tracepoint {
            1
        } else {
            Options::default().pending_slots
        },
        ..Options::default()
    })
    .expect("collector");
    let want = match source {
        CpuSourceChoice::Cgroupfs => CpuSource::Cgroupfs,
        CpuSourceChoice::Switch => CpuSource::Switch,
        // This kernel has the cgroup iterator: the first choice.
        _ => CpuSource::Iterator,
    };
    assert_eq!(c.source(), want, "fallback: {:?}", c.fallback_reason());
    if let Some(ebpf) = c.ebpf() {
        // This kernel has BTF tracepoints: unless told otherwise, the cheaper
        // hook must be the one attached (its attach id comes from our own BTF
        // reader).
        let want = if raw_tracepoint {
            SwitchHook::RawTracepoint
        } else {
            SwitchHook::BtfTracepoint
        };
        assert_eq!(ebpf.hook(), want);
    }
    c
}

/// One burstable container (systemd layout) in a test tree of its own,
/// burning from the start.
struct OneContainer {
    /// Stopped before `tree` removes the cgroups (fields drop in order).
    _burner: Burner,
    tree: CgroupTree,
    path: String,
    cid: String,
}

fn one_container(h: &Hierarchy, test: &str, n: u32, burn: &Burn) -> OneContainer {
    let mut tree = CgroupTree::new(h, test);
    let (pod, cid) = (support::uid(n), support::container_id(n));
    let path = support::systemd_container(&tree.base.clone(), "burstable", &pod, &cid);
    let burner = tree.spawn(&path, burn, &Launcher::test_binary("burner_entry"));
    OneContainer {
        _burner: burner,
        tree,
        path,
        cid,
    }
}

fn container_cpu(s: &Snapshot, cid: &str) -> u64 {
    s.pods
        .values()
        .flat_map(|p| &p.containers)
        .find(|c| c.id == cid)
        .unwrap_or_else(|| panic!("container {cid} not in snapshot"))
        .cpu_ns
}

fn pod_cpu(s: &Snapshot, uid: &str) -> u64 {
    s.pods
        .get(uid)
        .unwrap_or_else(|| panic!("pod {uid} not in snapshot"))
        .cpu_ns()
}

/// The kernel's counter read just before and just after one of our reads: its
/// value at the instant we read lies between the two.
#[derive(Clone, Copy)]
struct Bracket {
    before: u64,
    after: u64,
}

/// Our Δ over a window must equal the kernel's Δ over the same window within
/// `pct` %. The kernel's Δ over exactly our window is only known to lie in
/// [before₁ − after₀, after₁ − before₀] (the reads cannot be simultaneous), so
/// ours must fall in that range widened by `pct` % (1 ms floor for idle cgroups).
fn assert_close(what: &str, ours: u64, k0: Bracket, k1: Bracket, pct: f64) {
    let low = k1.before.saturating_sub(k0.after) as f64;
    let high = (k1.after - k0.before) as f64;
    let slack = (high * pct / 100.0).max(1e6);
    let ours_f = ours as f64;
    assert!(
        ours_f >= low - slack && ours_f <= high + slack,
        "{what}: ours {:.3} ms, kernel {:.3}..{:.3} ms over the same window (allowed ±{pct} %)",
        ours_f / 1e6,
        low / 1e6,
        high / 1e6,
    );
}

#[test]
fn cpu_per_container_and_pod_matches_the_kernels_cpu_stat() {
    cpu_matches_the_kernels_cpu_stat(CpuSourceChoice::Switch, false);
}

#[test]
fn cpu_read_by_the_cgroup_iterator_matches_the_kernels_cpu_stat() {
    cpu_matches_the_kernels_cpu_stat(CpuSourceChoice::Iterator, false);
}

/// The same through the raw tracepoint (the switch hook where the BTF one
/// will not attach), with one pending-charge slot per CPU (the kernel side's
/// eviction path on every change of cgroup).
#[test]
fn cpu_charged_through_the_raw_tracepoint_matches_the_kernels_cpu_stat() {
    cpu_matches_the_kernels_cpu_stat(CpuSourceChoice::Switch, true);
}

fn cpu_matches_the_kernels_cpu_stat(source: CpuSourceChoice, raw_tracepoint: bool) {
    let Some(h) = support::privileged("cpu_per_container_and_pod") else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut tree = CgroupTree::new(&h, "cpu");
    let base = tree.base.clone();
    // Pod A, systemd driver, burstable: one spinning container, one at 50 % duty.
    let (pod_a, a1, a2) = (
        support::uid(1),
        support::container_id(1),
        support::container_id(2),
    );
    let a1_path = support::systemd_container(&base, "burstable", &pod_a, &a1);
    let a2_path = support::systemd_container(&base, "burstable", &pod_a, &a2);
    // Pod B, cgroupfs driver, best effort: one container with two spinning threads.
    let (pod_b, b1) = (support::uid(2), support::container_id(3));
    let b1_path = support::cgroupfs_container(&base, "besteffort", &pod_b, &b1);
    let pod_a_path = a1_path.rsplit_once('/').expect("parent").0.to_string();
    let pod_b_path = b1_path.rsplit_once('/').expect("parent").0.to_string();

    let mut ebpf = collector_with(source, false, raw_tracepoint);
    let mut cgfs = collector(CpuSourceChoice::Cgroupfs, false);
    let burner = Launcher::test_binary("burner_entry");
    let _burners = [
        tree.spawn(
            &a1_path,
            &Burn::Spin {
                threads: 1,
                cpu: None,
            },
            &burner,
        ),
        tree.spawn(
            &a2_path,
            &Burn::Duty {
                fraction: 0.5,
                period_ms: 20,
            },
            &burner,
        ),
        tree.spawn(
            &b1_path,
            &Burn::Spin {
                threads: 2,
                cpu: None,
            },
            &burner,
        ),
    ];
    let paths = [&a1_path, &a2_path, &b1_path, &pod_a_path, &pod_b_path];
    // Both paths read between the kernel's `before` and `after` readings.
    let sample = |ebpf: &mut Collector, cgfs: &mut Collector| {
        let before = paths.map(|p| tree.cpu_stat_ns(p));
        let snapshot = ebpf.collect().expect("collect");
        let fallback = cgfs.collect().expect("collect");
        let after = paths.map(|p| tree.cpu_stat_ns(p));
        let brackets: Vec<Bracket> = before
            .iter()
            .zip(after)
            .map(|(&before, after)| Bracket { before, after })
            .collect();
        (snapshot, fallback, brackets)
    };

    let (mut e0, mut f0, mut k0) = sample(&mut ebpf, &mut cgfs);
    for second in 1..=3 {
        std::thread::sleep(Duration::from_secs(1));
        let (e1, f1, k1) = sample(&mut ebpf, &mut cgfs);
        let de = |s1: &Snapshot, s0: &Snapshot, cid: &str| {
            container_cpu(s1, cid) - container_cpu(s0, cid)
        };
        for (i, cid) in [&a1, &a2, &b1].into_iter().enumerate() {
            let what = format!("second {second}: container {cid}");
            assert_close(&what, de(&e1, &e0, cid), k0[i], k1[i], 1.0);
        }
        for (i, uid) in [(3, &pod_a), (4, &pod_b)] {
            let ours = pod_cpu(&e1, uid) - pod_cpu(&e0, uid);
            assert_close(
                &format!("second {second}: pod {uid}"),
                ours,
                k0[i],
                k1[i],
                1.0,
            );
        }
        // The no-eBPF path: the same numbers within 2 %, beyond what the paths
        // cannot share (they read at different instants inside the brackets).
        for (i, cid) in [&a1, &a2, &b1].into_iter().enumerate() {
            let (e, f) = (de(&e1, &e0, cid) as f64, de(&f1, &f0, cid) as f64);
            let apart = (k0[i].after - k0[i].before + k1[i].after - k1[i].before) as f64;
            assert!(
                (e - f).abs() <= f * 0.02 + apart + 1e6,
                "second {second}: container {cid}: eBPF {:.3} ms vs cgroupfs {:.3} ms \
                 (reads up to {:.3} ms apart)",
                e / 1e6,
                f / 1e6,
                apart / 1e6
            );
        }
        assert_eq!(e1.pods[&pod_b].containers.len(), 1);
        assert_eq!(e1.pods[&pod_a].containers.len(), 2);
        (e0, f0, k0) = (e1, f1, k1);
    }
}

fn lone_busy_loop(source: CpuSourceChoice, force_tick: bool) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(h) = support::privileged("lone_busy_loop") else {
        return;
    };
    let mut tree = CgroupTree::new(&h, "loop");
    let (pod, cid) = (support::uid(9), support::container_id(9));
    let path = support::systemd_container(&tree.base.clone(), "guaranteed", &pod, &cid);
    let mut ebpf = collector(source, force_tick);
    let last_cpu = std::thread::available_parallelism().map_or(0, |n| n.get() as u32 - 1);
    tree.mkdir(&path);
    // The first sample sees the container idle; the loop starts right after.
    let bracket = |tree: &CgroupTree, ebpf: &mut Collector| {
        let before = tree.cpu_stat_ns(&path);
        let s = ebpf.collect().expect("collect");
        let after = tree.cpu_stat_ns(&path);
        (s, Bracket { before, after })
    };
    let (e0, k0) = bracket(&tree, &mut ebpf);
    let burner = Launcher::test_binary("burner_entry");
    let _loop = tree.spawn(
        &path,
        &Burn::Spin {
            threads: 1,
            cpu: Some(last_cpu),
        },
        &burner,
    );
    std::thread::sleep(Duration::from_secs(1));
    let (e1, k1) = bracket(&tree, &mut ebpf);
    let ours = container_cpu(&e1, &cid) - container_cpu(&e0, &cid);
    // It competes with whatever else runs on that CPU; it must have run for real.
    assert!(
        k1.before - k0.after > 100_000_000,
        "the loop barely ran: {} ms",
        (k1.before - k0.after) / 1_000_000
    );
    // With a tick the running task is charged up to the last tick: ≤ 1/100 s behind.
    let pct = if force_tick { 1.5 } else { 1.0 };
    assert_close("busy loop, first interval", ours, k0, k1, pct);
}

#[test]
fn lone_busy_loop_is_charged_in_the_first_interval() {
    lone_busy_loop(CpuSourceChoice::Switch, false);
}

/// The iterator reads the kernel's own counter, flushed at every read: a
/// loop that never leaves its CPU is exact with no test-run or clock.
#[test]
fn lone_busy_loop_is_read_by_the_cgroup_iterator_in_the_first_interval() {
    lone_busy_loop(CpuSourceChoice::Iterator, false);
}

#[test]
fn lone_busy_loop_is_charged_by_the_tick_fallback() {
    lone_busy_loop(CpuSourceChoice::Switch, true);
}

#[test]
fn working_set_excludes_page_cache() {
    working_set_excludes_page_cache_with(CpuSourceChoice::Cgroupfs);
}

/// The iterator reads memory usage from the controller's own counter: what
/// the usage file shows, exactly, once the holder stands still.
#[test]
fn working_set_is_read_by_the_cgroup_iterator_as_the_files_show_it() {
    working_set_excludes_page_cache_with(CpuSourceChoice::Iterator);
}

fn working_set_excludes_page_cache_with(source: CpuSourceChoice) {
    let Some(h) = support::privileged("working_set") else {
        return;
    };
    let mut tree = CgroupTree::new(&h, "mem");
    // Its own pod per test: the collector sees the whole host.
    let n = if source == CpuSourceChoice::Iterator {
        15
    } else {
        5
    };
    let (pod, cid) = (support::uid(n), support::container_id(n));
    let path = support::cgroupfs_container(&tree.base.clone(), "burstable", &pod, &cid);
    // Its own file per test: page cache is charged to the first toucher.
    let cache_file =
        std::env::temp_dir().join(format!("nodepulse-cache-{}-{source:?}", std::process::id()));
    const MIB: u64 = 1 << 20;
    let (held, cache) = (200u64, 100u64);
    let burner = Launcher::test_binary("burner_entry");
    let _holder = tree.spawn(
        &path,
        &Burn::Memory {
            mib: held,
            cache_mib: cache,
            file: cache_file.clone(),
        },
        &burner,
    );
    let mut c = collector(source, false);
    let s = c.collect().expect("collect");
    let _ = std::fs::remove_file(&cache_file);
    let want_memory = match source {
        CpuSourceChoice::Iterator => "iterator",
        _ => "cgroupfs",
    };
    assert_eq!(c.memory_source(), want_memory);
    let m = s.pods[&pod].containers[0].memory;
    let ws = m.working_set as f64 / MIB as f64;
    assert!(
        (ws - held as f64).abs() <= held as f64 * 0.05,
        "working set {ws:.1} MiB, held {held} MiB (usage {:.1} MiB)",
        m.usage as f64 / MIB as f64
    );
    assert!(
        m.usage - m.working_set >= (cache * MIB) * 9 / 10,
        "page cache should be in usage but not in the working set: usage {} ws {}",
        m.usage,
        m.working_set
    );
    assert_eq!(s.pods[&pod].working_set(), m.working_set);

    // Frozen: the usage is the files' (the same counter), read right
    // after; the inactive file pages are `memory.stat`'s on its schedule,
    // which the kernel's LRU batches still move by a page or so.
    tree.freeze(&path, true);
    let s = c.collect().expect("collect");
    assert_eq!(c.memory_source(), want_memory);
    let files = h.memory(Tree::V2, &path).expect("memory files");
    let ours = s.pods[&pod].containers[0].memory;
    assert_eq!(ours.usage, files.usage, "frozen: {ours:?} vs {files:?}");
    assert_eq!(ours.swap, files.swap, "frozen: {ours:?} vs {files:?}");
    assert!(
        ours.working_set.abs_diff(files.working_set) <= STAT_USAGE_SLACK,
        "frozen: {ours:?} vs {files:?}"
    );
    tree.freeze(&path, false);
}

fn container_ids(s: &Snapshot) -> Vec<String> {
    let mut ids: Vec<String> = s
        .pods
        .values()
        .flat_map(|p| p.containers.iter().map(|c| c.id.clone()))
        .collect();
    ids.sort();
    ids
}

/// The collector walks the cgroup tree only when it changes; containers made
/// or removed between two collections must still show up (or go) at the very
/// next one, and a new container's CPU from its first moment must be in its
/// first sample.
#[test]
fn containers_coming_and_going_are_seen_at_the_next_collection() {
    containers_coming_and_going(CpuSourceChoice::Switch);
}

#[test]
fn containers_coming_and_going_are_read_by_the_cgroup_iterator() {
    containers_coming_and_going(CpuSourceChoice::Iterator);
}

fn containers_coming_and_going(source: CpuSourceChoice) {
    let Some(h) = support::privileged("containers_coming_and_going") else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut tree = CgroupTree::new(&h, "churn");
    let base = tree.base.clone();
    let (pod_a, a1, a2) = (
        support::uid(11),
        support::container_id(11),
        support::container_id(12),
    );
    let (pod_b, b1) = (support::uid(12), support::container_id(13));
    let a1_path = support::systemd_container(&base, "burstable", &pod_a, &a1);
    let a2_path = support::systemd_container(&base, "burstable", &pod_a, &a2);
    let b1_path = support::cgroupfs_container(&base, "besteffort", &pod_b, &b1);
    tree.mkdir(&a1_path);
    let subtree = |source| {
        let c = Collector::new(Options {
            cpu_source: source,
            node_cgroup: base.clone(),
            ..Options::default()
        })
        .expect("collector");
        assert!(c.fallback_reason().is_none() || source == CpuSourceChoice::Cgroupfs);
        c
    };
    let mut ebpf = subtree(source);
    let mut cgfs = subtree(CpuSourceChoice::Cgroupfs);
    for c in [&mut ebpf, &mut cgfs] {
        assert_eq!(
            container_ids(&c.collect().expect("collect")),
            vec![a1.clone()]
        );
    }
    // Unchanged tree: no walk (the cgroupfs collector has no other reason to).
    let walks = cgfs.walks();
    assert_eq!(
        container_ids(&cgfs.collect().expect("collect")),
        vec![a1.clone()]
    );
    assert_eq!(cgfs.walks(), walks, "walked an unchanged tree");

    // Between two collections: a container in the known pod, and a new pod
    // whose container burns CPU from its first moment.
    tree.mkdir(&a2_path);
    let burner = Launcher::test_binary("burner_entry");
    let b1_burner = tree.spawn(
        &b1_path,
        &Burn::Duty {
            fraction: 0.5,
            period_ms: 20,
        },
        &burner,
    );
    std::thread::sleep(Duration::from_millis(300));
    let before = tree.cpu_stat_ns(&b1_path);
    let e1 = ebpf.collect().expect("collect");
    let after = tree.cpu_stat_ns(&b1_path);
    let f1 = cgfs.collect().expect("collect");
    let mut want = vec![a1.clone(), a2.clone(), b1.clone()];
    want.sort();
    assert_eq!(container_ids(&e1), want, "eBPF source");
    assert_eq!(container_ids(&f1), want, "cgroupfs source");
    // All of the new container's CPU so far, none lost to the cached walk.
    assert_close(
        "new container, first sample",
        container_cpu(&e1, &b1),
        Bracket {
            before: 0,
            after: 0,
        },
        Bracket { before, after },
        1.0,
    );

    // Gone between two collections.
    drop(b1_burner);
    tree.rmdir(&a1_path);
    let want = {
        let mut w = vec![a2.clone(), b1.clone()];
        w.sort();
        w
    };
    assert_eq!(container_ids(&ebpf.collect().expect("collect")), want);
    assert_eq!(container_ids(&cgfs.collect().expect("collect")), want);
}

/// The kernel's own counter of a v1-only cgroup: `cpuacct.usage`, ns.
fn cpuacct_ns(h: &agent::cgroup::Hierarchy, rel: &str) -> u64 {
    let root = h.v1_cpuacct.as_ref().expect("v1 cpuacct");
    std::fs::read_to_string(root.join(rel.trim_start_matches('/')).join("cpuacct.usage"))
        .expect("cpuacct.usage")
        .trim()
        .parse()
        .expect("number")
}

/// A cgroupfs-driver kubelet on a hybrid host makes pods only in the v1
/// controllers: v2 cgroup ids cannot name them, so the agent must fall back
/// to cgroupfs on its own, say why, and measure them from `cpuacct.usage` and
/// the v1 memory controller (usage − total_inactive_file).
#[test]
fn pods_only_in_cgroup_v1_are_measured_from_cgroupfs() {
    let Some(h) = support::privileged("cgroup_v1") else {
        return;
    };
    let Some(mut tree) = CgroupTree::new_v1(&h, "v1") else {
        // A pure v2 host: there is no v1 layout to measure.
        eprintln!("skipped pods_only_in_cgroup_v1: no v1 memory and cpuacct controllers here");
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let base = tree.base.clone();
    let (pod, spin, mem) = (
        support::uid(21),
        support::container_id(21),
        support::container_id(22),
    );
    let spin_path = support::cgroupfs_container(&base, "burstable", &pod, &spin);
    let mem_path = support::cgroupfs_container(&base, "burstable", &pod, &mem);
    let burner = Launcher::test_binary("burner_entry");
    let cache_file = std::env::temp_dir().join(format!("nodepulse-v1-{}", std::process::id()));
    const MIB: u64 = 1 << 20;
    let _burners = [
        tree.spawn(
            &spin_path,
            &Burn::Duty {
                fraction: 0.5,
                period_ms: 20,
            },
            &burner,
        ),
        tree.spawn(
            &mem_path,
            &Burn::Memory {
                mib: 64,
                cache_mib: 32,
                file: cache_file.clone(),
            },
            &burner,
        ),
    ];
    assert!(
        !tree.v2_dir(&spin_path).exists(),
        "the pod must not be in v2"
    );

    let mut c = Collector::new(Options {
        node_cgroup: base.clone(),
        ..Options::default()
    })
    .expect("collector");
    let b0 = cpuacct_ns(&h, &spin_path);
    let s0 = c.collect().expect("collect");
    let a0 = cpuacct_ns(&h, &spin_path);
    assert_eq!(s0.source, CpuSource::Cgroupfs);
    let reason = c.fallback_reason().expect("a reason");
    assert!(reason.contains("v1"), "{reason}");
    std::thread::sleep(Duration::from_secs(2));
    let b1 = cpuacct_ns(&h, &spin_path);
    let s1 = c.collect().expect("collect");
    let a1 = cpuacct_ns(&h, &spin_path);
    let _ = std::fs::remove_file(&cache_file);

    let ours = container_cpu(&s1, &spin) - container_cpu(&s0, &spin);
    assert_close(
        "v1 container",
        ours,
        Bracket {
            before: b0,
            after: a0,
        },
        Bracket {
            before: b1,
            after: a1,
        },
        1.0,
    );
    // Half a core for two seconds, give or take the duty cycle's granularity.
    assert!(
        (0.8e9..1.2e9).contains(&(ours as f64)),
        "0.5 core over 2 s: {ours} ns"
    );
    let m = s1.pods[&pod]
        .containers
        .iter()
        .find(|c| c.id == mem)
        .expect("memory container")
        .memory;
    let ws = m.working_set as f64 / MIB as f64;
    assert!(
        (ws - 64.0).abs() <= 64.0 * 0.05,
        "working set {ws:.1} MiB, held 64 MiB (usage {:.1} MiB)",
        m.usage as f64 / MIB as f64
    );
    assert!(
        m.usage - m.working_set >= 32 * MIB * 9 / 10,
        "page cache in usage, not in the working set: usage {} ws {}",
        m.usage,
        m.working_set
    );
    assert_eq!(s1.pods[&pod].containers.len(), 2);
}

/// A thread that was running before the agent loaded is charged from then on
/// (never for its past: at most the run it is in when first seen, which may
/// have begun a duty period before the load), and exactly from the first
/// interval on, including the run during which it is first seen.
#[test]
fn a_thread_older_than_the_agent_is_charged_from_the_load_on() {
    let Some(h) = support::privileged("older_thread") else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let OneContainer {
        tree, path, cid, ..
    } = &one_container(
        &h,
        "older",
        31,
        &Burn::Duty {
            fraction: 0.5,
            period_ms: 20,
        },
    );
    // Let it build up a past the agent must not charge.
    std::thread::sleep(Duration::from_secs(1));
    let loaded_after = tree.cpu_stat_ns(path);
    let mut ebpf = collector(CpuSourceChoice::Switch, false);
    let before0 = tree.cpu_stat_ns(path);
    let s0 = ebpf.collect().expect("collect");
    let after0 = tree.cpu_stat_ns(path);
    assert!(
        container_cpu(&s0, cid) <= after0 - loaded_after + 25_000_000,
        "charged {} ms, but only {} ms ran since the load",
        container_cpu(&s0, cid) / 1_000_000,
        (after0 - loaded_after) / 1_000_000
    );
    std::thread::sleep(Duration::from_secs(1));
    let before1 = tree.cpu_stat_ns(path);
    let s1 = ebpf.collect().expect("collect");
    let after1 = tree.cpu_stat_ns(path);
    assert_close(
        "thread older than the agent",
        container_cpu(&s1, cid) - container_cpu(&s0, cid),
        Bracket {
            before: before0,
            after: after0,
        },
        Bracket {
            before: before1,
            after: after1,
        },
        1.0,
    );
}

#[test]
fn cgroups_beyond_max_cgroups_are_counted_as_lost_and_sampling_goes_on() {
    let Some(h) = support::privileged("max_cgroups") else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _burning = one_container(
        &h,
        "full",
        41,
        &Burn::Spin {
            threads: 1,
            cpu: None,
        },
    );
    // Room for one cgroup, and at least two run: the burner's, and this
    // test's own (with the root's kernel threads, where it is elsewhere).
    let mut c = Collector::new(Options {
        cpu_source: CpuSourceChoice::Switch,
        max_cgroups: 1,
        ..Options::default()
    })
    .expect("collector");
    assert_eq!(c.source(), CpuSource::Switch, "{:?}", c.fallback_reason());
    let lost = |c: &Collector| c.ebpf().expect("eBPF").stat(Stat::CgroupMapFull);
    // Which cgroups have run by a read depends on the scheduler; a few reads
    // (each migrates this thread onto every CPU, switching out whatever ran
    // there) always see two.
    let mut s0 = c.collect().expect("a full map is not a failed read");
    for _ in 0..20 {
        if lost(&c) > 0 {
            break;
        }
        s0 = c.collect().expect("a full map is not a failed read");
    }
    let lost0 = lost(&c);
    assert!(
        lost0 > 0,
        "nothing counted as lost with room for one cgroup, after 21 reads"
    );
    // Sampling goes on: the next read works and the counter only grows.
    let s1 = c.collect().expect("a full map is not a failed read");
    assert!(lost(&c) >= lost0);
    assert_eq!(
        (s0.source, s1.source),
        (CpuSource::Switch, CpuSource::Switch)
    );
    assert!(s1.node.cpu_ns >= s0.node.cpu_ns);
}

/// A copy of this kernel's BTF in which `name` (a function or type) is
/// renamed: to the agent, a kernel without it.
fn btf_without(name: &str) -> tempfile::NamedTempFile {
    let mut btf = std::fs::read("/sys/kernel/btf/vmlinux").expect("kernel BTF");
    let needle: Vec<u8> = [name.as_bytes(), b"\0"].concat();
    let at = btf
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{name} in the kernel's BTF"));
    // Same length: every other string offset stays put.
    btf[at + needle.len() - 2] = b'_';
    let mut file = tempfile::NamedTempFile::new().expect("temporary file");
    std::io::Write::write_all(&mut file, &btf).expect("write");
    file
}

/// A kernel without cgroup iterators gets the switch program, says why, and
/// reports it; one asked for the iterator alone refuses to start.
#[test]
fn without_the_cgroup_iterator_the_switch_program_is_the_source() {
    let Some(_h) = support::privileged("without_iterator") else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let btf = btf_without("bpf_iter_cgroup");
    let options = |cpu_source| Options {
        cpu_source,
        btf_path: btf.path().to_path_buf(),
        ..Options::default()
    };
    let mut c = Collector::new(options(CpuSourceChoice::Auto)).expect("collector");
    assert_eq!(c.source(), CpuSource::Switch, "{:?}", c.fallback_reason());
    assert_eq!(c.passed_over().len(), 1, "{:?}", c.passed_over());
    assert!(
        c.passed_over()[0].contains("cgroup iterator unavailable")
            && c.passed_over()[0].contains("bpf_iter_cgroup"),
        "{:?}",
        c.passed_over()
    );
    assert_eq!(c.collect().expect("collect").source, CpuSource::Switch);
    let refused = Collector::new(options(CpuSourceChoice::Iterator))
        .err()
        .expect("--cpu-source=iterator without the iterator");
    assert!(refused.to_string().contains("iterator"), "{refused}");
}

/// More cgroups than the iterator's results hold: the ones it leaves out
/// are read from their files, so every container is still served.
#[test]
fn containers_beyond_the_iterators_capacity_are_read_from_their_files() {
    let Some(h) = support::privileged("iterator_capacity") else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut tree = CgroupTree::new(&h, "cap");
    let base = tree.base.clone();
    let ids: Vec<String> = (51..54).map(support::container_id).collect();
    for (n, cid) in (51..54).zip(&ids) {
        tree.mkdir(&support::systemd_container(
            &base,
            "burstable",
            &support::uid(n),
            cid,
        ));
    }
    let mut c = Collector::new(Options {
        cpu_source: CpuSourceChoice::Iterator,
        node_cgroup: base.clone(),
        // The node, the pods root and the QoS slice fill it.
        max_cgroups: 3,
        ..Options::default()
    })
    .expect("collector");
    let s = c.collect().expect("collect");
    assert_eq!(s.source, CpuSource::Iterator);
    let mut want = ids.clone();
    want.sort();
    assert_eq!(container_ids(&s), want, "errors: {:?}", s.errors);
}
