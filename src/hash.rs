//! A fast hash for maps whose keys this process chooses: its own stream ids, the endpoint
//! paths it registered, the addresses its callers name. std's SipHash resists a peer that
//! picks colliding keys, and costs a measurable share of a small request (every request
//! hashes a stream id two or three times and a path once). A peer picks none of these
//! keys, so the multiply-rotate hash rustc uses for its own tables (FxHash) is enough.
//! Maps keyed by what a peer sends (the server's streams) keep SipHash.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` keyed by values this process chose.
pub(crate) type LocalMap<K, V> = HashMap<K, V, BuildHasherDefault<LocalHasher>>;

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

#[derive(Default, Clone, Copy)]
pub(crate) struct LocalHasher {
    hash: u64,
}

impl LocalHasher {
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for LocalHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_ids_spread_over_the_high_bits_the_table_probes_with() {
        // hashbrown keeps the top 7 bits of a hash as each slot's tag; ids that differed
        // only in low bits would all share one tag and every probe would compare keys
        // (an identity hash gives 1 tag here; random hashes about 80).
        let tags: std::collections::HashSet<u64> = (1..=128u64)
            .map(|id| {
                let mut hasher = LocalHasher::default();
                hasher.write_u64(id);
                hasher.finish() >> 57
            })
            .collect();
        assert!(tags.len() > 32, "only {} distinct tags", tags.len());
    }

    #[test]
    fn strings_that_differ_past_a_word_or_in_length_hash_apart() {
        let hash = |text: &str| {
            let mut hasher = LocalHasher::default();
            hasher.write(text.as_bytes());
            hasher.finish()
        };
        assert_ne!(hash("ns/comp/endpoint/1"), hash("ns/comp/endpoint/2"));
        assert_ne!(hash("abcdefgh"), hash("abcdefgh\0"));
        let mut map: LocalMap<String, u32> = LocalMap::default();
        map.insert("bench/echo/unary".to_owned(), 1);
        map.insert("bench/echo/stream".to_owned(), 2);
        assert_eq!(map.get("bench/echo/unary"), Some(&1));
        assert_eq!(map.get("bench/echo/stream"), Some(&2));
    }
}
