//! A node's container series, keyed by container id without a heap copy of
//! the id for the ids runtimes actually use (64 lowercase hex digits:
//! containerd, CRI-O, Docker), and with a generation mark per container so a
//! report's "every container I list; the rest are gone" needs no set.
use foldhash::HashMap;

use super::rate::Series;

/// A container id: 64 lowercase hex digits as 32 bytes, anything else as is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ContainerId {
    Hex([u8; 32]),
    Other(Box<str>),
}

/// Each byte's value as a lowercase hex digit; [`NOT_HEX`] for any other.
static NIBBLES: [u8; 256] = {
    let mut t = [NOT_HEX; 256];
    let mut c = 0;
    while c < 10 {
        t[b'0' as usize + c] = c as u8;
        c += 1;
    }
    let mut c = 0;
    while c < 6 {
        t[b'a' as usize + c] = 10 + c as u8;
        c += 1;
    }
    t
};
const NOT_HEX: u8 = 0x10;

/// Decoded through a table with one test at the end: every report's every
/// id is decoded, and a branch per digit mispredicted on random hex.
fn hex(id: &str) -> Option<[u8; 32]> {
    let b = id.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    let mut bad = 0;
    for (o, [hi, lo]) in out.iter_mut().zip(b.as_chunks::<2>().0) {
        let (hi, lo) = (NIBBLES[*hi as usize], NIBBLES[*lo as usize]);
        bad |= hi | lo;
        *o = (hi << 4) | lo;
    }
    (bad & NOT_HEX == 0).then_some(out)
}

impl ContainerId {
    pub fn new(id: &str) -> Self {
        hex(id).map_or_else(|| Self::Other(id.into()), Self::Hex)
    }

    fn key(&self) -> Key<'_> {
        match self {
            Self::Hex(h) => Key::Hex(*h),
            Self::Other(s) => Key::Other(s),
        }
    }
}

/// One container's series and the last report that listed it.
#[derive(Debug)]
pub struct Slot {
    id: ContainerId,
    pub series: Series,
    pub seen: u32,
    /// Its place in the last report that listed it.
    order: u32,
}

/// The series in the order reports list them, with an index by id. An
/// agent lists its containers in the same order every time, so a report
/// finds each one where the last left off: the next slot of one array,
/// read front to back, instead of a probe of a hash table per container,
/// whose memory a node's report, once a second, always finds cold. A
/// report in another order (a new pod among the others) puts the array in
/// its order.
#[derive(Debug, Default)]
pub struct Containers {
    slots: Vec<Slot>,
    /// Each id's position in `slots`.
    hex: HashMap<[u8; 32], u32>,
    other: HashMap<Box<str>, u32>,
    /// Where the report in hand's next container is looked for first.
    next: usize,
    /// Containers the report in hand listed so far.
    listed: u32,
    /// Whether it listed one out of the array's order.
    reorder: bool,
    generation: u32,
}

/// An id as a report carries it, decoded, without a heap copy.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Key<'a> {
    Hex([u8; 32]),
    Other(&'a str),
}

impl<'a> Key<'a> {
    fn new(id: &'a str) -> Self {
        hex(id).map_or(Key::Other(id), Key::Hex)
    }
}

impl Containers {
    /// Starts a report: containers it lists are marked with the returned
    /// generation.
    pub fn next_generation(&mut self) -> u32 {
        self.generation = self.generation.wrapping_add(1);
        self.next = 0;
        self.listed = 0;
        self.reorder = false;
        self.generation
    }

    /// Looks `id` up without allocating: first where the report's order
    /// says it is, else by the index.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut Slot> {
        let key = Key::new(id);
        let at = match self.slots.get(self.next) {
            Some(slot) if slot.id.key() == key => self.next,
            _ => {
                let at = self.position(key)?;
                self.reorder = true;
                at
            }
        };
        self.next = at + 1;
        let slot = self.slots.get_mut(at)?;
        slot.order = self.listed;
        self.listed += 1;
        Some(slot)
    }

    fn position(&self, key: Key<'_>) -> Option<usize> {
        let at = match key {
            Key::Hex(h) => self.hex.get(&h),
            Key::Other(s) => self.other.get(s),
        };
        at.map(|&at| at as usize)
    }

    pub fn get(&self, id: &ContainerId) -> Option<&Slot> {
        self.slots.get(self.position(id.key())?)
    }

    /// A new container, seen in the current generation.
    pub fn insert(&mut self, id: &str, series: Series) {
        let at = self.slots.len();
        let id = ContainerId::new(id);
        index(&mut self.hex, &mut self.other, &id, at);
        self.slots.push(Slot {
            id,
            series,
            seen: self.generation,
            order: self.listed,
        });
        self.listed += 1;
        self.next = at + 1;
    }

    /// Every container's series.
    pub fn series_mut(&mut self) -> impl Iterator<Item = &mut Series> {
        self.slots.iter_mut().map(|s| &mut s.series)
    }

    /// Drops the containers the current report did not list.
    pub fn retain_seen(&mut self) {
        let g = self.generation;
        let before = self.slots.len();
        self.slots.retain(|s| s.seen == g);
        if self.reorder {
            self.slots.sort_unstable_by_key(|s| s.order);
        }
        if self.reorder || self.slots.len() != before {
            self.hex.clear();
            self.other.clear();
            for (at, slot) in self.slots.iter().enumerate() {
                index(&mut self.hex, &mut self.other, &slot.id, at);
            }
        }
        // Memory given back: a node that lost its pods, or the spare
        // capacity of the growth its first report made.
        if self.slots.capacity() > self.slots.len() + self.slots.len() / 4 {
            self.slots.shrink_to_fit();
        }
        if self.other.is_empty() {
            self.other.shrink_to_fit();
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.slots.len()
    }
}

/// Records `id` at position `at`.
fn index(
    hex: &mut HashMap<[u8; 32], u32>,
    other: &mut HashMap<Box<str>, u32>,
    id: &ContainerId,
    at: usize,
) {
    // Positions fit: a report's samples are limited far below u32
    // (`limits::Limits::max_samples`).
    let at = at as u32;
    match id {
        ContainerId::Hex(h) => hex.insert(*h, at),
        ContainerId::Other(s) => other.insert(s.clone(), at),
    };
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::store::rate::Point;

    fn series() -> Series {
        tagged(0)
    }

    /// A series whose CPU counter is `tag`.
    fn tagged(tag: u64) -> Series {
        Series::new(
            Point {
                time: SystemTime::UNIX_EPOCH,
                cpu_ns: tag,
                memory_bytes: 0,
                swap_bytes: None,
            },
            0,
        )
    }

    #[test]
    fn runtime_ids_are_kept_inline_and_others_as_given() {
        let runtime = "0123456789abcdef".repeat(4);
        assert!(matches!(ContainerId::new(&runtime), ContainerId::Hex(_)));
        for other in ["c1", &"0123456789ABCDEF".repeat(4), &"g".repeat(64)] {
            assert_eq!(ContainerId::new(other), ContainerId::Other(other.into()));
        }
        let mut c = Containers::default();
        c.next_generation();
        c.insert(&runtime, series());
        c.insert("c1", series());
        assert!(c.get_mut(&runtime).is_some());
        assert!(c.get(&ContainerId::new(&runtime)).is_some());
        assert!(
            c.get_mut(&runtime.to_uppercase()).is_none(),
            "ids are exact"
        );
        assert!(c.get(&ContainerId::new("c1")).is_some());
    }

    #[test]
    fn hex_ids_decode_exactly_and_any_other_byte_anywhere_refuses() {
        let id = "00112233445566778899aabbccddeeff0f1e2d3c4b5a69788796a5b4c3d2e1f0";
        let want: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&id[2 * i..2 * i + 2], 16).expect("hex"))
            .collect();
        assert_eq!(hex(id).map(|h| h.to_vec()), Some(want));
        for at in 0..64 {
            for bad in ["g", "G", "A", "F", "/", ":", "`", " ", "\u{7f}"] {
                let mut s = id.to_string();
                s.replace_range(at..at + 1, bad);
                assert_eq!(hex(&s), None, "{s:?}");
            }
        }
        for c in (0..=255u8).filter(|c| !c.is_ascii_digit() && !(b'a'..=b'f').contains(c)) {
            let mut b = id.as_bytes().to_vec();
            b[7] = c;
            if let Ok(s) = std::str::from_utf8(&b) {
                assert_eq!(hex(s), None, "{c:#x}");
            }
        }
    }

    #[test]
    fn containers_not_seen_in_a_generation_are_dropped() {
        let mut c = Containers::default();
        c.next_generation();
        c.insert("a", series());
        c.insert("b", series());
        let g = c.next_generation();
        c.get_mut("a").expect("a").seen = g;
        c.retain_seen();
        assert_eq!(c.len(), 1);
        assert!(c.get_mut("a").is_some() && c.get_mut("b").is_none());
    }

    /// Reports in another order, with containers gone from the middle and
    /// new ones among them, find every container's own series: where the
    /// last report's order puts it and where only the index knows it.
    #[test]
    fn any_order_finds_each_containers_own_series() {
        let ids: Vec<String> = (0..6u64)
            .map(|i| {
                if i % 3 == 2 {
                    format!("other-{i}")
                } else {
                    format!("{i:064x}")
                }
            })
            .collect();
        let mut c = Containers::default();
        c.next_generation();
        for (i, id) in ids.iter().enumerate() {
            c.insert(id, tagged(i as u64));
        }
        let cpu = |c: &mut Containers, id: &str| {
            let g = c.generation;
            c.get_mut(id).map(|s| {
                s.seen = g;
                s.series.last.cpu_ns
            })
        };
        let orders: [&[usize]; 4] = [
            &[0, 1, 2, 3, 4, 5],
            &[5, 3, 1, 0, 2, 4],
            &[0, 2, 4],
            &[4, 0, 2],
        ];
        for order in orders {
            let g = c.next_generation();
            for &i in order {
                let slot = c
                    .get_mut(&ids[i])
                    .unwrap_or_else(|| panic!("{order:?}: {i} not found"));
                assert_eq!(slot.series.last.cpu_ns, i as u64, "{order:?}: {i}");
                slot.seen = g;
            }
            c.retain_seen();
            assert_eq!(c.len(), order.len(), "{order:?}");
            for (i, id) in ids.iter().enumerate() {
                let listed = order.contains(&i);
                assert_eq!(
                    c.get(&ContainerId::new(id)).is_some(),
                    listed,
                    "{order:?}: {i}"
                );
            }
        }
        // New ones after removals, then the same ids in a fresh order.
        let g = c.next_generation();
        for &i in &[4, 0, 2] {
            c.get_mut(&ids[i]).expect("kept").seen = g;
        }
        c.insert(&ids[1], tagged(11));
        c.insert(&ids[5], tagged(15));
        c.retain_seen();
        c.next_generation();
        let order = [(5, 15), (1, 11), (2, 2), (0, 0), (4, 4)];
        for (i, want) in order {
            assert_eq!(cpu(&mut c, &ids[i]), Some(want), "{i}");
        }
        assert_eq!(cpu(&mut c, &ids[3]), None);
        assert!(c.reorder, "that order differs from the array's");
        // The array takes a report's order: the next report in it finds
        // each container at the next slot.
        c.retain_seen();
        for _ in 0..2 {
            c.next_generation();
            for (i, want) in order {
                assert_eq!(cpu(&mut c, &ids[i]), Some(want), "{i}");
            }
            assert!(!c.reorder, "the same order again needs no index");
            c.retain_seen();
        }
    }
}
