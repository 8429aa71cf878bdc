//! Pod lists (`GET …/pods`, `…/namespaces/{ns}/pods`) encoded straight from
//! a [`MetricsView`], on several threads.
//!
//! A list of 300,000 pods used to be copied out of the store as
//! [`PodUsage`](super::PodUsage) values, sorted through pointers, encoded on
//! one thread and dropped, each step a pass of cache misses over every pod.
//! Here the view hands each pod, borrowed, to one of several visitors (the
//! store runs them on their own threads, each over its share of the nodes);
//! a visitor filters the pod and encodes it at once as a finished list item
//! into its own buffer, noting the pod's namespace (as a small number) and
//! name. The items are then ordered as every list is ordered (namespace, then
//! name, as [`sorted_pods`](super::sorted_pods)) by sorting integer keys —
//! namespace rank and the name's first eight bytes — with the full names
//! compared only where those tie, and copied into the body in parallel.
//!
//! The bytes are those of [`json::pod_list`] and [`protobuf::pod_list`]
//! for the same pods, whatever the number of visitors or how the pods are
//! spread over them: protobuf items are independent length-delimited fields
//! and JSON items are joined by commas, and the JSON writer's memos only save
//! formatting. Pods with the same namespace and name (a pod two nodes still
//! report) are ordered by their encoded bytes.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::num::NonZeroUsize;
use std::sync::OnceLock;
use std::thread;
use std::time::SystemTime;

use super::view::{MetricsView, PodRef, PodVisitor};
use super::{ApiVersion, Resource, json, protobuf, types};

/// The encoding of a list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/json`.
    Json,
    /// `application/vnd.kubernetes.protobuf`.
    Protobuf,
}

/// A pod predicate (label and field selectors). Called from the visiting
/// threads.
pub type Filter<'a> = &'a (dyn Fn(&PodRef<'_>) -> bool + Sync);

/// Which pods, how, and on how many threads.
pub struct PodList<'a> {
    /// `None`: every namespace.
    pub namespace: Option<&'a str>,
    /// Pods kept.
    pub filter: Filter<'a>,
    /// Encoding.
    pub format: Format,
    /// Served version.
    pub version: ApiVersion,
    /// Response time (`creationTimestamp` of every item).
    pub now: SystemTime,
    /// Visitors (and copying threads) to use; 1 keeps all work on this thread.
    pub threads: usize,
}

/// Threads worth using for a whole-cluster list: this machine's cores, at
/// most eight.
pub fn threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| {
        thread::available_parallelism()
            .map_or(1, NonZeroUsize::get)
            .min(8)
    })
}

/// Below this many body bytes the copy into the body stays on one thread.
const PARALLEL_COPY_MIN: usize = 1 << 20;

/// The list's body.
pub fn pod_list(view: &dyn MetricsView, list: &PodList<'_>) -> types::Result<Vec<u8>> {
    pod_list_copying(view, list, PARALLEL_COPY_MIN)
}

/// [`pod_list`], copying bodies of at least `parallel_copy_min` bytes on
/// several threads (tests make every body that large).
fn pod_list_copying(
    view: &dyn MetricsView,
    list: &PodList<'_>,
    parallel_copy_min: usize,
) -> types::Result<Vec<u8>> {
    let mut parts: Vec<Part<'_>> = (0..list.threads.max(1)).map(|_| Part::new(list)).collect();
    {
        let mut visitors: Vec<&mut dyn PodVisitor> =
            parts.iter_mut().map(|p| p as &mut dyn PodVisitor).collect();
        view.visit_pods(list.namespace, &mut visitors);
    }
    if let Some(error) = parts.iter_mut().find_map(|p| p.error.take()) {
        return Err(error);
    }
    let (items, order) = order(&parts);
    let out = assemble(&items, &order, list, parallel_copy_min);
    drop((items, order));
    free_later(parts);
    Ok(out)
}

/// Buffers this large are freed on a thread of their own, after the body
/// is made: giving back tens of megabytes takes the kernel milliseconds
/// the response need not wait for.
const FREE_LATER_MIN: usize = 8 << 20;

fn free_later(parts: Vec<Part<'_>>) {
    let buffers: Vec<(Vec<u8>, Vec<u8>, Vec<Noted>)> = parts
        .into_iter()
        .map(|p| (p.bodies, p.names, p.noted))
        .collect();
    let bytes: usize = buffers
        .iter()
        .map(|(b, n, _)| b.capacity() + n.capacity())
        .sum();
    if bytes >= FREE_LATER_MIN {
        // Should no thread be available, they are freed here.
        let _ = thread::Builder::new()
            .name("np-list-free".to_owned())
            .spawn(move || drop(buffers));
    }
}

/// A pod as a part noted it: where its item and name end in the part's
/// buffers (each starts where the previous one ends), and its namespace.
struct Noted {
    body_end: usize,
    name_end: usize,
    namespace: u32,
}

enum Encoder {
    Json(json::Items),
    Protobuf(SystemTime),
}

/// One visitor: the items of the pods it was handed, in visiting order.
struct Part<'a> {
    namespace: Option<&'a str>,
    filter: Filter<'a>,
    encoder: Encoder,
    bodies: Vec<u8>,
    names: Vec<u8>,
    noted: Vec<Noted>,
    /// Namespaces seen, by number.
    namespaces: Vec<Box<str>>,
    numbers: HashMap<Box<str>, u32>,
    /// Address of a namespace's text → its number (see `namespace_number`).
    by_address: HashMap<usize, u32, BuildHasherDefault<AddressHasher>>,
    error: Option<types::Error>,
}

impl<'a> Part<'a> {
    fn new(list: &PodList<'a>) -> Self {
        Part {
            namespace: list.namespace,
            filter: list.filter,
            encoder: match list.format {
                Format::Json => Encoder::Json(json::Items::new(list.now)),
                Format::Protobuf => Encoder::Protobuf(list.now),
            },
            // One namespace: a few dozen pods, whose items fit without
            // growing the buffers; and one namespace number, 0.
            bodies: Vec::with_capacity(if list.namespace.is_some() { 8 << 10 } else { 0 }),
            names: Vec::with_capacity(if list.namespace.is_some() { 1 << 10 } else { 0 }),
            noted: Vec::with_capacity(if list.namespace.is_some() { 64 } else { 0 }),
            namespaces: list.namespace.map(Box::from).into_iter().collect(),
            numbers: HashMap::new(),
            by_address: HashMap::default(),
            error: None,
        }
    }

    fn namespace_number(&mut self, namespace: &str) -> u32 {
        // A store hands out one shared copy of each namespace name, so the
        // address usually identifies it without hashing the text. Only
        // usually: a name freed and another allocated at its address while
        // the list is read would share it, so the text is compared too.
        let address = namespace.as_ptr() as usize;
        if let Some(&n) = self.by_address.get(&address)
            && *self.namespaces[n as usize] == *namespace
        {
            return n;
        }
        let n = match self.numbers.get(namespace) {
            Some(&n) => n,
            None => {
                let n = self.namespaces.len() as u32;
                self.namespaces.push(namespace.into());
                self.numbers.insert(namespace.into(), n);
                n
            }
        };
        self.by_address.insert(address, n);
        n
    }
}

/// Hashes a `usize` (an address) with one multiplication: addresses are not
/// chosen by clients, and this runs once per pod.
#[derive(Default, Clone, Copy)]
struct AddressHasher(u64);

impl Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_usize(&mut self, n: usize) {
        // The high bits pick the bucket group in hashbrown: mix them well.
        self.0 = (n as u64 ^ self.0).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 ^= self.0 >> 29;
    }
}

impl PodVisitor for Part<'_> {
    fn visit(&mut self, pod: &PodRef<'_>) {
        if self.error.is_some()
            || self.namespace.is_some_and(|ns| ns != pod.namespace)
            || !(self.filter)(pod)
        {
            return;
        }
        match &mut self.encoder {
            Encoder::Json(items) => {
                let start = self.bodies.len();
                if let Err(e) = items.pod(&mut self.bodies, pod) {
                    self.bodies.truncate(start);
                    self.error = Some(e);
                    return;
                }
            }
            Encoder::Protobuf(now) => protobuf::pod_item(&mut self.bodies, pod, *now),
        }
        self.names.extend_from_slice(pod.name.as_bytes());
        let namespace = match self.namespace {
            // Only that namespace's pods got this far.
            Some(_) => 0,
            None => self.namespace_number(pod.namespace),
        };
        self.noted.push(Noted {
            body_end: self.bodies.len(),
            name_end: self.names.len(),
            namespace,
        });
    }
}

/// An encoded item and its pod's name.
struct Item<'a> {
    body: &'a [u8],
    name: &'a [u8],
}

/// A name's first eight bytes, zero-padded, as a big-endian number: a
/// smaller number is a smaller name; equal numbers need the whole names.
fn name_prefix(name: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = name.len().min(8);
    bytes[..n].copy_from_slice(&name[..n]);
    u64::from_be_bytes(bytes)
}

/// Every part's items, and their indices in list order.
fn order<'p>(parts: &'p [Part<'_>]) -> (Vec<Item<'p>>, Vec<u32>) {
    // Namespace ranks over all parts: equal names, equal ranks.
    let mut all: Vec<(&str, usize, usize)> = parts
        .iter()
        .enumerate()
        .flat_map(|(p, part)| {
            part.namespaces
                .iter()
                .enumerate()
                .map(move |(n, ns)| (&**ns, p, n))
        })
        .collect();
    all.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut ranks: Vec<Vec<u32>> = parts.iter().map(|p| vec![0; p.namespaces.len()]).collect();
    let mut rank = 0u32;
    for (i, &(ns, p, n)) in all.iter().enumerate() {
        if i > 0 && all[i - 1].0 != ns {
            rank += 1;
        }
        ranks[p][n] = rank;
    }

    let total: usize = parts.iter().map(|p| p.noted.len()).sum();
    assert!(u32::try_from(total).is_ok(), "fewer than 2^32 pods");
    let mut items = Vec::with_capacity(total);
    // rank (32 bits) | name prefix (64) | index (32): sorting the numbers
    // sorts by namespace and name prefix without touching the items.
    let mut keys: Vec<u128> = Vec::with_capacity(total);
    for (part, ranks) in parts.iter().zip(&ranks) {
        let (mut body_start, mut name_start) = (0, 0);
        for noted in &part.noted {
            let name = &part.names[name_start..noted.name_end];
            keys.push(
                (u128::from(ranks[noted.namespace as usize]) << 96)
                    | (u128::from(name_prefix(name)) << 32)
                    | items.len() as u128,
            );
            items.push(Item {
                body: &part.bodies[body_start..noted.body_end],
                name,
            });
            (body_start, name_start) = (noted.body_end, noted.name_end);
        }
    }
    keys.sort_unstable();
    let mut order: Vec<u32> = keys.iter().map(|&k| k as u32).collect();
    // Runs of one namespace and name prefix (the pods of one ReplicaSet
    // share far more than eight bytes).
    let mut scratch = Vec::new();
    let mut start = 0;
    while start < keys.len() {
        let head = keys[start] >> 32;
        let mut end = start + 1;
        while end < keys.len() && keys[end] >> 32 == head {
            end += 1;
        }
        if end - start > 1 {
            order_run(&mut order[start..end], &items, &mut scratch);
        }
        start = end;
    }
    (items, order)
}

/// Orders `run`, items whose pods share the namespace and the first eight
/// bytes of the name, by whole name, then by item bytes (duplicates).
fn order_run(run: &mut [u32], items: &[Item<'_>], scratch: &mut Vec<(u64, u32)>) {
    // The names' common prefix, in one pass whose loads do not wait for
    // each other (the names are scattered over memory).
    let first = items[run[0] as usize].name;
    let mut common = first.len();
    for &i in &run[1..] {
        let name = items[i as usize].name;
        common = first[..common]
            .iter()
            .zip(name)
            .take_while(|(a, b)| a == b)
            .count();
    }
    // Past the common prefix, eight bytes decide most comparisons.
    scratch.clear();
    scratch.extend(
        run.iter()
            .map(|&i| (name_prefix(&items[i as usize].name[common..]), i)),
    );
    scratch.sort_unstable();
    for (slot, &(_, i)) in run.iter_mut().zip(scratch.iter()) {
        *slot = i;
    }
    let mut start = 0;
    while start < scratch.len() {
        let mut end = start + 1;
        while end < scratch.len() && scratch[end].0 == scratch[start].0 {
            end += 1;
        }
        if end - start > 1 {
            run[start..end].sort_unstable_by(|&a, &b| {
                let (a, b) = (&items[a as usize], &items[b as usize]);
                a.name.cmp(b.name).then_with(|| a.body.cmp(b.body))
            });
        }
        start = end;
    }
}

/// The body: list head, the items in `order` (JSON: comma-separated), list
/// tail. Large bodies are copied by `list.threads` threads, each filling its
/// own range.
fn assemble(
    items: &[Item<'_>],
    order: &[u32],
    list: &PodList<'_>,
    parallel_copy_min: usize,
) -> Vec<u8> {
    let separator: &[u8] = match list.format {
        Format::Json => b",",
        Format::Protobuf => b"",
    };
    let items_len = items.iter().map(|i| i.body.len()).sum::<usize>()
        + separator.len() * items.len().saturating_sub(1);
    let (head, tail): (Vec<u8>, &[u8]) = match list.format {
        Format::Json => {
            let mut head = Vec::with_capacity(96);
            json::list_head(&mut head, Resource::Pods.list_kind(), list.version);
            (head, json::LIST_TAIL.as_bytes())
        }
        Format::Protobuf => (protobuf::pod_list_head(list.version, items_len), b""),
    };
    let mut out = vec![0u8; head.len() + items_len + tail.len()];
    let (head_out, rest) = out.split_at_mut(head.len());
    head_out.copy_from_slice(&head);
    let (mut body, tail_out) = rest.split_at_mut(items_len);
    tail_out.copy_from_slice(tail);

    let threads = if items_len < parallel_copy_min {
        1
    } else {
        list.threads.max(1)
    };
    if threads == 1 {
        copy_items(body, order, items, separator, true);
        return out;
    }
    let per = order.len().div_ceil(threads).max(1);
    thread::scope(|scope| {
        let mut chunks = order.chunks(per).enumerate().peekable();
        while let Some((k, ids)) = chunks.next() {
            let first = k == 0;
            let len = ids
                .iter()
                .map(|&i| items[i as usize].body.len())
                .sum::<usize>()
                + separator.len() * (ids.len() - usize::from(first));
            let (mine, after) = std::mem::take(&mut body).split_at_mut(len);
            body = after;
            let mut copy = move || copy_items(mine, ids, items, separator, first);
            if chunks.peek().is_some() {
                scope.spawn(copy);
            } else {
                copy();
            }
        }
    });
    out
}

/// Reads the first byte of each slice: loads that do not depend on each
/// other, so the processor fetches them from memory all at once, where the
/// comparisons and copies that follow would wait for one at a time.
fn touch<'a>(slices: impl Iterator<Item = &'a [u8]>) {
    let mut sum = 0u8;
    for s in slices {
        sum ^= s.first().copied().unwrap_or(0);
    }
    std::hint::black_box(sum);
}

/// How many items ahead of the one copied [`copy_items`] touches.
const TOUCH_AHEAD: usize = 16;

/// Fills `out` exactly with the items `ids`, each after `separator` unless
/// it is the list's first (`first` chunk, first id).
fn copy_items(out: &mut [u8], ids: &[u32], items: &[Item<'_>], separator: &[u8], first: bool) {
    let mut at = 0;
    touch(
        ids.iter()
            .take(TOUCH_AHEAD)
            .map(|&i| items[i as usize].body),
    );
    for (j, &i) in ids.iter().enumerate() {
        if let Some(&ahead) = ids.get(j + TOUCH_AHEAD) {
            touch(std::iter::once(items[ahead as usize].body));
        }
        if !(first && j == 0) {
            out[at..at + separator.len()].copy_from_slice(separator);
            at += separator.len();
        }
        let body = items[i as usize].body;
        out[at..at + body.len()].copy_from_slice(body);
        at += body.len();
    }
    debug_assert_eq!(at, out.len(), "chunk filled exactly");
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::{Duration, UNIX_EPOCH};

    use proptest::prelude::*;
    use proto::v1::{
        ContainerName, ContainerSample, NodeMetadata, NodeReport, PodMetadata, PodSample, Usage,
    };

    use super::*;
    use crate::api::strategies::{pod, time};
    use crate::api::view::{Lookup, visit_all};
    use crate::api::{NodeUsage, PodUsage};
    use crate::store::Store;

    /// Pods handed out as `owners` says: pod `i` goes to visitor
    /// `owners[i % owners.len()] % visitors`, every visitor on its own thread.
    struct Spread {
        pods: Vec<PodUsage>,
        owners: Vec<usize>,
    }

    impl MetricsView for Spread {
        fn nodes(&self) -> Vec<NodeUsage> {
            Vec::new()
        }
        fn node(&self, _: &str) -> Lookup<NodeUsage> {
            Lookup::Unknown
        }
        fn pods(&self, namespace: Option<&str>) -> Vec<PodUsage> {
            self.pods
                .iter()
                .filter(|p| namespace.is_none_or(|ns| *p.namespace == *ns))
                .cloned()
                .collect()
        }
        fn pod(&self, _: &str, _: &str) -> Lookup<PodUsage> {
            Lookup::Unknown
        }
        fn has_data(&self) -> bool {
            true
        }
        fn visit_pods(&self, namespace: Option<&str>, visitors: &mut [&mut dyn PodVisitor]) {
            let pods = self.pods(namespace);
            let n = visitors.len();
            let mut shares: Vec<Vec<PodUsage>> = vec![Vec::new(); n];
            for (i, p) in pods.into_iter().enumerate() {
                let owner = self.owners.get(i % self.owners.len().max(1)).copied();
                shares[owner.unwrap_or(0) % n].push(p);
            }
            thread::scope(|scope| {
                for (visitor, share) in visitors.iter_mut().zip(&shares) {
                    scope.spawn(move || visit_all(share, *visitor));
                }
            });
        }
    }

    fn request<'a>(
        filter: Filter<'a>,
        namespace: Option<&'a str>,
        format: Format,
        version: ApiVersion,
        now: SystemTime,
        threads: usize,
    ) -> PodList<'a> {
        PodList {
            namespace,
            filter,
            format,
            version,
            now,
            threads,
        }
    }

    /// What the one-thread encoders make of `pods`.
    fn sequential(
        pods: &[PodUsage],
        format: Format,
        version: ApiVersion,
        now: SystemTime,
    ) -> Vec<u8> {
        match format {
            Format::Json => json::pod_list(pods, version, now).expect("encodes"),
            Format::Protobuf => protobuf::pod_list(pods, version, now),
        }
    }

    fn unique(pods: Vec<PodUsage>) -> Vec<PodUsage> {
        let mut seen = HashSet::new();
        pods.into_iter()
            .filter(|p| seen.insert((p.namespace.clone(), p.name.clone())))
            .collect()
    }

    /// Pods sharing namespaces and long name prefixes (ties of the sort
    /// keys), with duplicates.
    fn pods() -> impl Strategy<Value = Vec<PodUsage>> {
        let similar = (pod(), "[ab]{0,2}", "(app-7d4b9c8f5-|a|)[ab\\x00]{0,3}").prop_map(
            |(mut p, ns, name)| {
                p.namespace = ns.into();
                p.name = name.into();
                p
            },
        );
        proptest::collection::vec(prop_oneof![pod(), similar], 0..40)
    }

    const FORMATS: [Format; 2] = [Format::Json, Format::Protobuf];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Any number of visitors, any spread of pods over them, bodies
        /// copied in chunks (chunk boundaries anywhere): the bytes of the
        /// one-thread encoders.
        #[test]
        fn parts_make_the_bytes_of_the_sequential_encoders(
            pods in pods(),
            owners in proptest::collection::vec(0usize..8, 1..8),
            threads in 1usize..6,
            now in time(),
            copy_min in prop_oneof![Just(0usize), Just(usize::MAX), 0usize..4096],
        ) {
            let pods = unique(pods);
            let view = Spread { pods: pods.clone(), owners };
            let all = |_: &PodRef<'_>| true;
            for version in ApiVersion::ALL {
                for format in FORMATS {
                    let list = request(&all, None, format, version, now, threads);
                    let body = pod_list_copying(&view, &list, copy_min).expect("encodes");
                    prop_assert_eq!(body, sequential(&pods, format, version, now));
                }
            }
        }

        /// Filters and one namespace: the sequential bytes of the pods kept.
        #[test]
        fn filtered_lists_keep_what_the_filter_keeps(
            pods in pods(),
            owners in proptest::collection::vec(0usize..8, 1..8),
            threads in 1usize..4,
            now in time(),
            namespace in proptest::option::of("[ab]{0,2}"),
        ) {
            let pods = unique(pods);
            let view = Spread { pods: pods.clone(), owners };
            let keep = |p: &PodRef<'_>| p.name.len().is_multiple_of(2) || p.labels.len() > 2;
            let kept: Vec<PodUsage> = pods
                .iter()
                .filter(|p| namespace.as_deref().is_none_or(|ns| *p.namespace == *ns))
                .filter(|p| p.name.len().is_multiple_of(2) || p.labels.len() > 2)
                .cloned()
                .collect();
            for format in FORMATS {
                let list = request(&keep, namespace.as_deref(), format, ApiVersion::V1, now, threads);
                let body = pod_list_copying(&view, &list, 0).expect("encodes");
                prop_assert_eq!(body, sequential(&kept, format, ApiVersion::V1, now));
            }
        }

        /// Duplicate namespace/name pairs: the same bytes however the pods
        /// are spread.
        #[test]
        fn duplicates_do_not_depend_on_the_spread(
            pods in pods(),
            owners in proptest::collection::vec(0usize..8, 1..8),
            threads in 1usize..6,
            now in time(),
        ) {
            let mut pods = pods;
            let copies: Vec<PodUsage> = pods.iter().step_by(3).cloned().map(|mut p| {
                p.window += Duration::from_secs(1);
                p
            }).collect();
            pods.extend(copies);
            let all = |_: &PodRef<'_>| true;
            let spread = Spread { pods: pods.clone(), owners };
            let mut reversed = pods;
            reversed.reverse();
            let single = Spread { pods: reversed, owners: vec![0] };
            for format in FORMATS {
                let list = request(&all, None, format, ApiVersion::V1Beta1, now, threads);
                let one = request(&all, None, format, ApiVersion::V1Beta1, now, 1);
                prop_assert_eq!(
                    pod_list_copying(&spread, &list, 0).expect("encodes"),
                    pod_list_copying(&single, &one, 0).expect("encodes")
                );
            }
        }
    }

    #[test]
    fn a_reused_address_is_not_taken_for_the_old_namespace() {
        let all = |_: &PodRef<'_>| true;
        let list = request(&all, None, Format::Protobuf, ApiVersion::V1, UNIX_EPOCH, 1);
        let mut part = Part::new(&list);
        let mut text = String::from("aa");
        let a = part.namespace_number(&text);
        assert_eq!(part.namespace_number(&String::from("aa")), a, "same text");
        text.replace_range(.., "bb");
        let b = part.namespace_number(&text);
        assert_ne!(a, b, "same address, other text");
        assert_eq!(part.namespace_number("aa"), a);
        assert_eq!(part.namespace_number(&text), b);
    }

    /// `nodes` nodes of `per_node` pods in `namespaces` namespaces, two
    /// reports each so every container has a rate.
    fn store(nodes: usize, per_node: usize, namespaces: usize) -> Store {
        let store = Store::default();
        let t0 = SystemTime::now() - Duration::from_secs(20);
        for (round, at) in [t0, t0 + Duration::from_secs(15)].into_iter().enumerate() {
            let nanos = at
                .duration_since(UNIX_EPOCH)
                .expect("after 1970")
                .as_nanos() as i64;
            for node in 0..nodes {
                let mut pods = Vec::new();
                let mut metas = Vec::new();
                for j in 0..per_node {
                    let g = node * per_node + j;
                    let ids: Vec<String> =
                        (0..1 + g % 3).map(|c| format!("{g:060x}{c:04x}")).collect();
                    pods.push(PodSample {
                        uid: format!("uid-{g}"),
                        containers: ids
                            .iter()
                            .map(|id| ContainerSample {
                                id: id.clone(),
                                usage: Some(Usage {
                                    cpu_ns: (round as u64 + 1) * (1_000_000 + g as u64 * 7_919),
                                    memory_working_set_bytes: 1 << 20,
                                    ..Usage::default()
                                }),
                                start_unix_nanos: 1,
                            })
                            .collect(),
                    });
                    metas.push(PodMetadata {
                        uid: format!("uid-{g}"),
                        namespace: format!("ns-{}", g % namespaces),
                        // Shared prefixes: the sort keys tie within a namespace.
                        name: format!("app-{}-7d4b9c8f5-{g:05x}", g % 7),
                        labels: [("app".to_owned(), format!("app-{}", g % 7))].into(),
                        running: !g.is_multiple_of(11),
                        containers: ids
                            .iter()
                            .zip(["main", "sidecar", "agent"])
                            .map(|(id, name)| ContainerName {
                                id: id.clone(),
                                name: name.to_owned(),
                            })
                            .collect(),
                    });
                }
                let report = NodeReport {
                    node: format!("node-{node}"),
                    sample_unix_nanos: nanos,
                    node_usage: Some(Usage {
                        cpu_ns: 1,
                        ..Usage::default()
                    }),
                    pods,
                    metadata: Some(NodeMetadata {
                        labels: Default::default(),
                        pods: metas,
                    }),
                    cpu_source: 1,
                    seq: round as u64,
                    agent_epoch: 1,
                    metadata_continues: false,
                };
                store
                    .apply(&report, at + Duration::from_millis(1))
                    .expect("applies");
            }
        }
        store
    }

    /// The store hands its pods to several visitors on several threads
    /// (enough nodes for that): the bytes of the one-thread path through
    /// `pods()`, for every namespace and for one.
    #[test]
    fn a_store_read_in_parallel_makes_the_sequential_bytes() {
        let store = store(150, 7, 40);
        let all = |_: &PodRef<'_>| true;
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        for namespace in [None, Some("ns-3"), Some("missing")] {
            let pods = store.pods(namespace);
            assert_eq!(pods.is_empty(), namespace == Some("missing"));
            for threads in [1, 2, 3] {
                for format in FORMATS {
                    let list = request(&all, namespace, format, ApiVersion::V1Beta1, now, threads);
                    assert_eq!(
                        pod_list_copying(&store, &list, 0).expect("encodes"),
                        sequential(&pods, format, ApiVersion::V1Beta1, now),
                        "{namespace:?}, {threads} threads, {format:?}"
                    );
                }
            }
        }
    }
}
