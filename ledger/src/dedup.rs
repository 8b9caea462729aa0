//! The deduplication window of usage event ids: two generations of 128-bit fingerprints
//! that rotate, so forgetting old ids costs nothing per event.
//!
//! An id is remembered for at least `window_ms` (or until `ids_max / 2` newer ids arrived,
//! whichever comes first) and at most twice that. Fingerprints are xxh3-128 of the
//! customer and the event id: a collision would need about 2^64 ids in one window.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_128;

use crate::time::TimestampMs;

/// Folds a 128-bit fingerprint to 64 bits; the fingerprint is already a good hash.
#[derive(Default)]
pub struct FoldHasher(u64);

impl Hasher for FoldHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u128 keys use this hasher; keep a correct fallback for anything else.
        for chunk in bytes.chunks(8) {
            let mut word = [0_u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(29) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u128(&mut self, value: u128) {
        // Truncation is the point: the low and high halves are independent hash bits.
        #[allow(clippy::cast_possible_truncation)]
        let folded = (value as u64) ^ ((value >> 64) as u64);
        self.0 = folded;
    }
}

type FingerprintSet = HashSet<u128, BuildHasherDefault<FoldHasher>>;

/// The fingerprint of a usage event for deduplication: scoped to its customer.
#[inline]
pub fn fingerprint(customer: &str, event_id: &str) -> u128 {
    let mut buffer = [0_u8; 1024];
    let total = customer.len() + 1 + event_id.len();
    if total <= buffer.len() {
        buffer[..customer.len()].copy_from_slice(customer.as_bytes());
        // 0xFF never occurs in UTF-8, so (customer, id) pairs cannot run together.
        buffer[customer.len()] = 0xFF;
        buffer[customer.len() + 1..total].copy_from_slice(event_id.as_bytes());
        xxh3_128(&buffer[..total])
    } else {
        let mut joined = Vec::with_capacity(total);
        joined.extend_from_slice(customer.as_bytes());
        joined.push(0xFF);
        joined.extend_from_slice(event_id.as_bytes());
        xxh3_128(&joined)
    }
}

/// Settings of the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DedupConfig {
    /// Ids are remembered at least this long.
    pub window_ms: i64,
    /// At most this many ids are held (two generations of half each).
    pub ids_max: usize,
}

impl Default for DedupConfig {
    fn default() -> Self {
        // One hour, and 20 M ids (about 0.7 GB at the set's load factor): producers'
        // retries land within minutes.
        Self {
            window_ms: 3_600_000,
            ids_max: 20_000_000,
        }
    }
}

/// The window itself.
#[derive(Clone, Debug)]
pub struct DedupWindow {
    config: DedupConfig,
    current: FingerprintSet,
    previous: FingerprintSet,
    current_started: TimestampMs,
}

impl DedupWindow {
    /// An empty window.
    pub fn new(config: DedupConfig, now: TimestampMs) -> Self {
        Self {
            config,
            current: FingerprintSet::default(),
            previous: FingerprintSet::default(),
            current_started: now,
        }
    }

    /// Forgets the older generation when the current one is old or full enough. Called
    /// once per batch, so eviction is decided per batch, not per event.
    pub fn rotate_if_due(&mut self, now: TimestampMs) {
        let aged = now.0.saturating_sub(self.current_started.0) >= self.config.window_ms;
        let full = self.current.len() >= self.config.ids_max / 2;
        if aged || full {
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.clear();
            self.current_started = now;
        }
    }

    /// Records `key`; false when it was already in the window (a duplicate).
    #[inline]
    pub fn insert(&mut self, key: u128) -> bool {
        !self.previous.contains(&key) && self.current.insert(key)
    }

    /// Forgets `key` (an event refused after it was recorded).
    pub fn remove(&mut self, key: u128) {
        self.current.remove(&key);
    }

    /// Ids held.
    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    /// True when no id is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn to_parts(&self) -> DedupParts {
        let mut current: Vec<u128> = self.current.iter().copied().collect();
        let mut previous: Vec<u128> = self.previous.iter().copied().collect();
        current.sort_unstable();
        previous.sort_unstable();
        DedupParts {
            config: self.config,
            current,
            previous,
            current_started: self.current_started,
        }
    }

    pub(crate) fn from_parts(parts: DedupParts) -> Self {
        Self {
            config: parts.config,
            current: parts.current.into_iter().collect(),
            previous: parts.previous.into_iter().collect(),
            current_started: parts.current_started,
        }
    }
}

/// The window as plain data, sorted, for snapshots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DedupParts {
    config: DedupConfig,
    current: Vec<u128>,
    previous: Vec<u128>,
    current_started: TimestampMs,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_remembered_for_at_least_the_window() {
        let config = DedupConfig {
            window_ms: 1_000,
            ids_max: 1_000,
        };
        let mut window = DedupWindow::new(config, TimestampMs(0));
        assert!(window.insert(fingerprint("c", "e1")));
        assert!(!window.insert(fingerprint("c", "e1")));
        assert!(
            window.insert(fingerprint("d", "e1")),
            "scoped to the customer"
        );
        window.rotate_if_due(TimestampMs(1_000));
        assert!(
            !window.insert(fingerprint("c", "e1")),
            "still inside the window after one rotation"
        );
        window.rotate_if_due(TimestampMs(2_000));
        assert!(
            window.insert(fingerprint("c", "e1")),
            "forgotten after two windows"
        );
    }

    #[test]
    fn the_count_bound_rotates_early() {
        let config = DedupConfig {
            window_ms: i64::MAX,
            ids_max: 4,
        };
        let mut window = DedupWindow::new(config, TimestampMs(0));
        for id in ["a", "b"] {
            assert!(window.insert(fingerprint("c", id)));
        }
        window.rotate_if_due(TimestampMs(1));
        assert_eq!(window.len(), 2);
        for id in ["c", "d"] {
            assert!(window.insert(fingerprint("c", id)));
        }
        window.rotate_if_due(TimestampMs(2));
        assert!(window.insert(fingerprint("c", "a")));
        assert!(!window.insert(fingerprint("c", "c")));
    }
}
