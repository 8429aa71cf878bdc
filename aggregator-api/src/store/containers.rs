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
}

/// One container's series and the last report that listed it.
#[derive(Debug)]
pub struct Slot {
    pub series: Series,
    pub seen: u32,
}

#[derive(Debug, Default)]
pub struct Containers {
    hex: HashMap<[u8; 32], Slot>,
    other: HashMap<Box<str>, Slot>,
    generation: u32,
}

impl Containers {
    /// Starts a report: containers it lists are marked with the returned
    /// generation.
    pub fn next_generation(&mut self) -> u32 {
        self.generation = self.generation.wrapping_add(1);
        self.generation
    }

    /// Looks `id` up without allocating.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut Slot> {
        match hex(id) {
            Some(h) => self.hex.get_mut(&h),
            None => self.other.get_mut(id),
        }
    }

    pub fn get(&self, id: &ContainerId) -> Option<&Slot> {
        match id {
            ContainerId::Hex(h) => self.hex.get(h),
            ContainerId::Other(s) => self.other.get(s),
        }
    }

    /// A new container, seen in the current generation.
    pub fn insert(&mut self, id: &str, series: Series) {
        let slot = Slot {
            series,
            seen: self.generation,
        };
        match ContainerId::new(id) {
            ContainerId::Hex(h) => self.hex.insert(h, slot),
            ContainerId::Other(s) => self.other.insert(s, slot),
        };
    }

    /// Every container's series.
    pub fn series_mut(&mut self) -> impl Iterator<Item = &mut Series> {
        self.hex
            .values_mut()
            .chain(self.other.values_mut())
            .map(|s| &mut s.series)
    }

    /// Drops the containers the current report did not list.
    pub fn retain_seen(&mut self) {
        let g = self.generation;
        self.hex.retain(|_, s| s.seen == g);
        self.other.retain(|_, s| s.seen == g);
        // Empty maps give their memory back (a node that lost its pods).
        if self.other.is_empty() {
            self.other.shrink_to_fit();
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.hex.len() + self.other.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::store::rate::Point;

    fn series() -> Series {
        Series::new(
            Point {
                time: SystemTime::UNIX_EPOCH,
                cpu_ns: 0,
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
}
