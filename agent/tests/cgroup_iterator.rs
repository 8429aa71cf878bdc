//! The cgroup iterator against real cgroups on this kernel: what it reads is
//! what the kernel's own `cpu.stat` shows, for every cgroup of a subtree and
//! nothing outside it, at every read (no flush by test-run, no clock), and a
//! removed cgroup leaves the results.
//!
//! Needs root, BTF, cgroup v2 and Linux 6.1 (cgroup iterators and kernel
//! function calls); skips with a message elsewhere (fails instead under
//! NODEPULSE_REQUIRE_PRIVILEGED=1, as in CI).

use std::{
    collections::{BTreeMap, HashMap},
    os::unix::fs::MetadataExt as _,
    path::Path,
    sync::Mutex,
    time::{Duration, SystemTime},
};

use agent::ebpf::iter::CgroupTotals;
use agent_common::Stat;
use testkit::{self as support, Burn, CgroupTree, Launcher};

/// The tests measure load: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Not a test: the body of burner processes the tests spawn (see support).
#[test]
#[ignore = "entry point of burner child processes"]
fn burner_entry() {
    support::burner_main();
}

/// The cgroup v2 id of `dir`: its inode number.
fn id(dir: &Path) -> u64 {
    std::fs::metadata(dir).expect("cgroup dir").ino()
}

#[test]
fn every_cgroup_of_the_subtree_reads_what_cpu_stat_shows() {
    let Some(h) = support::privileged("cgroup_iterator") else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut tree = CgroupTree::new(&h, "iter");
    let base = tree.base.clone();
    let (pod_a, pod_b) = (support::uid(1), support::uid(2));
    let spin = support::systemd_container(&base, "burstable", &pod_a, &support::container_id(1));
    let duty = support::systemd_container(&base, "burstable", &pod_a, &support::container_id(2));
    let idle = support::cgroupfs_container(&base, "besteffort", &pod_b, &support::container_id(3));
    let last_cpu = std::thread::available_parallelism().map_or(0, |n| n.get() as u32 - 1);
    let burner = Launcher::test_binary("burner_entry");
    // A lone busy loop pinned to one CPU that it never leaves: read exactly
    // at every read with no flush of any kind.
    let _spin = tree.spawn(
        &spin,
        &Burn::Spin {
            threads: 1,
            cpu: Some(last_cpu),
        },
        &burner,
    );
    let _duty = tree.spawn(
        &duty,
        &Burn::Duty {
            fraction: 0.5,
            period_ms: 20,
        },
        &burner,
    );
    tree.mkdir(&idle);
    // Every cgroup of the subtree, parents included.
    let mut paths: Vec<String> = Vec::new();
    for leaf in [&spin, &duty, &idle] {
        let mut at = leaf.as_str();
        while at.len() >= base.len() {
            if !paths.iter().any(|p| p == at) {
                paths.push(at.to_string());
            }
            at = at.rsplit_once('/').map_or("", |(parent, _)| parent);
        }
    }
    let ids: BTreeMap<u64, String> = paths
        .iter()
        .map(|p| (id(&tree.v2_dir(p)), p.clone()))
        .collect();

    let mut iter = CgroupTotals::load(Path::new("/sys/kernel/btf/vmlinux"), 4096)
        .expect("the cgroup iterator loads on this kernel");
    let start = tree.v2_dir(&base);
    let read_at = |iter: &mut CgroupTotals| -> (SystemTime, HashMap<u64, u64>) {
        let pass = iter.read(&start).expect("read");
        let totals = pass.cgroups.into_iter().map(|(id, r)| (id, r.cpu_ns));
        (pass.at, totals.collect())
    };
    let read = |iter: &mut CgroupTotals| read_at(iter).1;

    // Running: each value lies between cpu.stat read just before and just
    // after (µs, as cpu.stat shows it), and so does the walk's time.
    for round in 0..3 {
        let before: Vec<u64> = paths.iter().map(|p| tree.cpu_stat_ns(p)).collect();
        let called = SystemTime::now();
        let (at, totals) = read_at(&mut iter);
        let returned = SystemTime::now();
        let after: Vec<u64> = paths.iter().map(|p| tree.cpu_stat_ns(p)).collect();
        assert!(
            called <= at && at <= returned,
            "round {round}: the walk's time {at:?} is outside its call, {called:?} to {returned:?}"
        );
        assert_eq!(
            totals
                .keys()
                .copied()
                .collect::<std::collections::BTreeSet<_>>(),
            ids.keys().copied().collect(),
            "round {round}: exactly the subtree's cgroups ({ids:?})"
        );
        for (i, p) in paths.iter().enumerate() {
            let ours = totals[&id(&tree.v2_dir(p))] / 1000 * 1000;
            assert!(
                before[i] <= ours && ours <= after[i],
                "round {round}: {p}: ours {ours} ns, cpu.stat {}..{} ns",
                before[i],
                after[i]
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let spun = tree.cpu_stat_ns(&spin);
    assert!(spun > 1_000_000_000, "the loop barely ran: {spun} ns");

    // Frozen: every value is cpu.stat's to the microsecond.
    tree.freeze(&base, true);
    let totals = read(&mut iter);
    for p in &paths {
        assert_eq!(
            totals[&id(&tree.v2_dir(p))] / 1000,
            tree.cpu_stat_ns(p) / 1000,
            "{p}, frozen"
        );
    }
    tree.freeze(&base, false);

    // A removed cgroup leaves the results at the next read.
    let gone = id(&tree.v2_dir(&idle));
    tree.rmdir(&idle);
    let totals = read(&mut iter);
    assert!(
        !totals.contains_key(&gone),
        "a removed cgroup is still read"
    );
    assert_eq!(totals.len(), ids.len() - 1);

    // Room for fewer cgroups than the subtree has: the first ones in walk
    // order are read, the rest counted as lost, and reading goes on.
    let mut small = CgroupTotals::load(Path::new("/sys/kernel/btf/vmlinux"), 2)
        .expect("the cgroup iterator loads");
    for _ in 0..2 {
        let totals = small
            .read(&start)
            .expect("a full array is not a failed read")
            .cgroups;
        assert_eq!(totals.len(), 2);
        assert!(totals.contains_key(&id(&start)), "the start comes first");
    }
    assert_eq!(
        small.stat(Stat::CgroupMapFull),
        2 * (ids.len() as u64 - 1 - 2)
    );
}

/// The cgroup the iterator walks from is removed: reading says so instead
/// of serving the last walk again, and a cgroup made at the same path is
/// walked from then on.
#[test]
fn a_removed_start_cgroup_is_an_error_and_a_new_one_is_followed() {
    let Some(h) = support::privileged("cgroup_iterator_start") else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut tree = CgroupTree::new(&h, "iter-start");
    let start_rel = format!("{}/kubepods", tree.base);
    let child_rel = format!("{start_rel}/besteffort");
    tree.mkdir(&child_rel);
    let start = tree.v2_dir(&start_rel);
    let mut iter = CgroupTotals::load(Path::new("/sys/kernel/btf/vmlinux"), 64)
        .expect("the cgroup iterator loads");
    let first = iter.read(&start).expect("read").cgroups;
    assert!(
        first.contains_key(&id(&start)) && first.len() == 2,
        "{first:?}"
    );

    tree.rmdir(&child_rel);
    tree.rmdir(&start_rel);
    // The last walk's results are not served again: the dead cgroup walks
    // nothing, and its path names nothing to link to.
    let gone = iter.read(&start).expect_err("the start cgroup is gone");
    assert!(gone.to_string().contains("No such file"), "{gone}");

    tree.mkdir(&start_rel);
    let again = iter
        .read(&start)
        .expect("read after the start was made again")
        .cgroups;
    assert_eq!(again.keys().copied().collect::<Vec<_>>(), vec![id(&start)]);
    assert!(
        !first.contains_key(&id(&start)),
        "a new cgroup has a new id"
    );
}
