//! The deduplication window of usage event ids: two generations of 128-bit fingerprints
//! that rotate, so forgetting old ids costs nothing per event.
//!
//! An id is remembered for at least `window_ms` (or until `ids_max / 2` newer ids arrived,
//! whichever comes first) and at most twice that. Fingerprints are xxh3-128 of the
//! customer and the event id: a collision would need about 2^64 ids in one window.
//!
//! Each generation is an open-addressing table built for the hot path, where an insert
//! into a 10 M-id set is a cache miss on every event: the fingerprint is already a uniform
//! hash, so it is its own table index; slots are grouped four to a 64-byte cache line and
//! probed line by line, so a lookup or insert reads one line (a `HashSet<u128>` reads a
//! control group and then a bucket elsewhere). A generation grows only between batches
//! (`reserve`), never in the middle of one, and straight to the size its count bound needs,
//! so a full generation is rehashed at most once (at a few tens of thousands of ids).

use std::fmt;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{Xxh3, xxh3_128};

use crate::time::TimestampMs;

/// The fingerprint of a usage event for deduplication: scoped to its customer.
///
/// xxh3-128 of `customer ‖ 0xFF ‖ event_id`; 0xFF never occurs in UTF-8, so (customer, id)
/// pairs cannot run together.
#[inline]
pub fn fingerprint(customer: &str, event_id: &str) -> u128 {
    // Short keys (the usual case) are joined in a small stack buffer: zeroing 64 bytes is
    // two vector stores, where a buffer for the longest ids (385 bytes) would cost more
    // than the hash.
    const SHORT: usize = 64;
    let total = customer.len() + 1 + event_id.len();
    if total <= SHORT {
        let mut buffer = [0_u8; SHORT];
        buffer[..customer.len()].copy_from_slice(customer.as_bytes());
        buffer[customer.len()] = 0xFF;
        buffer[customer.len() + 1..total].copy_from_slice(event_id.as_bytes());
        xxh3_128(&buffer[..total])
    } else {
        // The streaming hasher gives the same digest as the one-shot over the joined bytes.
        let mut hasher = Xxh3::new();
        hasher.update(customer.as_bytes());
        hasher.update(&[0xFF]);
        hasher.update(event_id.as_bytes());
        hasher.digest128()
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
        // One hour, and 20 M ids (two tables of 2^24 16-byte slots, 0.5 GB when both are
        // full): producers' retries land within minutes.
        Self {
            window_ms: 3_600_000,
            ids_max: 20_000_000,
        }
    }
}

/// Fingerprint slots per cache line: each probe reads one line.
const LINE_SLOTS: usize = 4;
/// Bytes of a cache line, for aligning the slots.
const LINE_BYTES: usize = 64;
/// Fewest lines of a table (1 KiB).
const MIN_LINES: usize = 16;
/// Most lines of a new generation's first table (1 MiB): small shards never need more,
/// and a big one moves at most 3/4 of this when it jumps to its full size.
const FIRST_LINES: usize = 1 << 14;
/// Most lines a generation is sized for up front (512 MiB); beyond, it doubles as needed.
const FULL_LINES_MAX: usize = 1 << 23;

/// Whether `ids` fingerprints fit `lines` lines at a load of at most 3/4, which keeps the
/// probe to about one line and guarantees an empty slot (so probes end).
fn fits(ids: usize, lines: usize) -> bool {
    ids.saturating_mul(4) <= lines * LINE_SLOTS * 3
}

/// One generation: a set of fingerprints in open addressing. Zero marks an empty slot,
/// so the fingerprint zero is held by a flag instead.
#[derive(Default)]
struct FingerprintTable {
    /// `offset` slots of padding, then `lines × LINE_SLOTS` slots whose lines align with
    /// cache lines (the allocator only promises 16-byte alignment). Allocated zeroed, so
    /// the pages of a large table are only committed when first written.
    slots: Vec<u128>,
    /// Padding slots before the first line.
    offset: usize,
    /// Lines in the table: a power of two, or zero before the first insert.
    lines: usize,
    /// Non-zero fingerprints held.
    len: usize,
    /// Whether the fingerprint zero is held.
    has_zero: bool,
}

/// Where a fingerprint goes when it is not in the window yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vacancy {
    key: u128,
    /// The empty slot found for it in the current generation, if the table exists.
    slot: Option<usize>,
}

impl FingerprintTable {
    /// An empty table of `lines` lines.
    fn with_lines(lines: usize) -> Self {
        debug_assert!(lines.is_power_of_two());
        let slots = vec![0_u128; lines * LINE_SLOTS + LINE_SLOTS - 1];
        let misalignment = (slots.as_ptr() as usize) % LINE_BYTES;
        let offset = ((LINE_BYTES - misalignment) % LINE_BYTES) / size_of::<u128>();
        Self {
            slots,
            offset,
            lines,
            len: 0,
            has_zero: false,
        }
    }

    fn len(&self) -> usize {
        self.len + usize::from(self.has_zero)
    }

    /// The first slot of the line where `key`'s probe starts.
    #[inline]
    fn home(&self, key: u128) -> usize {
        // The low bits of a uniform hash; truncation is the point.
        #[allow(clippy::cast_possible_truncation)]
        let bits = key as usize;
        self.offset + (bits & (self.lines - 1)) * LINE_SLOTS
    }

    /// Finds `key` (non-zero): `Ok` when held, else the empty slot where it goes.
    #[inline]
    fn probe(&self, key: u128) -> Result<(), usize> {
        debug_assert!(key != 0 && self.lines > 0);
        let mut line = self.home(key);
        loop {
            // All four slots compared at once: a branch per slot would follow how full the
            // line happens to be, which no predictor can guess.
            let mut held = 0_u32;
            let mut empty = 0_u32;
            for (bit, &slot) in self.slots[line..line + LINE_SLOTS].iter().enumerate() {
                held |= u32::from(slot == key) << bit;
                empty |= u32::from(slot == 0) << bit;
            }
            // No slot is ever emptied, so a held key never sits after an empty slot.
            if held != 0 {
                return Ok(());
            }
            if empty != 0 {
                return Err(line + empty.trailing_zeros() as usize);
            }
            // The next line, wrapping: a full line sends its overflow onward.
            line += LINE_SLOTS;
            if line == self.offset + self.lines * LINE_SLOTS {
                line = self.offset;
            }
        }
    }

    fn contains(&self, key: u128) -> bool {
        if key == 0 {
            self.has_zero
        } else {
            self.lines > 0 && self.probe(key).is_ok()
        }
    }

    /// Adds `key`, growing first when needed; false when it was already held.
    fn insert(&mut self, key: u128, full_lines: usize) -> bool {
        if key == 0 {
            return !std::mem::replace(&mut self.has_zero, true);
        }
        self.reserve(1, full_lines);
        match self.probe(key) {
            Ok(()) => false,
            Err(slot) => {
                self.slots[slot] = key;
                self.len += 1;
                true
            }
        }
    }

    /// Makes room for `additional` more fingerprints without growing.
    fn reserve(&mut self, additional: usize, full_lines: usize) {
        let needed = self.len.saturating_add(additional);
        if (self.lines == 0 && additional == 0) || (self.lines > 0 && fits(needed, self.lines)) {
            return;
        }
        // First a small table; past it, straight to the size the count bound needs (so a
        // generation filling up is rehashed once, while small); past that, doubling.
        let mut lines = if self.lines == 0 {
            FIRST_LINES.min(full_lines)
        } else if self.lines < full_lines {
            full_lines
        } else {
            self.lines * 2
        };
        while !fits(needed, lines) {
            lines *= 2;
        }
        self.grow_to(lines);
    }

    fn grow_to(&mut self, lines: usize) {
        let mut grown = Self::with_lines(lines);
        for &key in self.keys() {
            match grown.probe(key) {
                Err(slot) => grown.slots[slot] = key,
                Ok(()) => unreachable!("a set holds each fingerprint once"),
            }
        }
        grown.len = self.len;
        grown.has_zero = self.has_zero;
        *self = grown;
    }

    /// The non-zero fingerprints, in table order.
    fn keys(&self) -> impl Iterator<Item = &u128> {
        self.slots.iter().filter(|&&key| key != 0)
    }

    /// This table's storage, emptied.
    fn cleared(mut self) -> Self {
        self.slots.fill(0);
        self.len = 0;
        self.has_zero = false;
        self
    }

    /// Every fingerprint, sorted.
    fn sorted(&self) -> Vec<u128> {
        let mut keys: Vec<u128> = Vec::with_capacity(self.len());
        if self.has_zero {
            keys.push(0);
        }
        keys.extend(self.keys());
        keys.sort_unstable();
        keys
    }
}

impl Clone for FingerprintTable {
    fn clone(&self) -> Self {
        if self.lines == 0 {
            return Self {
                has_zero: self.has_zero,
                ..Self::default()
            };
        }
        // A copy sits at another address, so its line alignment is worked out afresh.
        let mut copy = Self::with_lines(self.lines);
        let used = self.lines * LINE_SLOTS;
        copy.slots[copy.offset..copy.offset + used]
            .copy_from_slice(&self.slots[self.offset..self.offset + used]);
        copy.len = self.len;
        copy.has_zero = self.has_zero;
        copy
    }
}

impl fmt::Debug for FingerprintTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.sorted()).finish()
    }
}

/// The window itself.
#[derive(Clone, Debug)]
pub struct DedupWindow {
    config: DedupConfig,
    current: FingerprintTable,
    previous: FingerprintTable,
    current_started: TimestampMs,
    /// The current generation's number (the previous one is `generation - 1`).
    generation: u64,
    /// Ids added to the current generation since the last [`DedupWindow::take_added`]:
    /// the next flush writes them.
    added: Vec<u128>,
    /// Ids added to the previous generation (before its rotation) and not yet taken.
    added_previous: Vec<u128>,
}

impl DedupWindow {
    /// An empty window.
    pub fn new(config: DedupConfig, now: TimestampMs) -> Self {
        Self {
            config,
            current: FingerprintTable::default(),
            previous: FingerprintTable::default(),
            current_started: now,
            generation: 0,
            added: Vec::new(),
            added_previous: Vec::new(),
        }
    }

    /// The current generation's number; the previous generation is one less.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The oldest generation still held.
    pub fn generation_min(&self) -> u64 {
        self.generation.saturating_sub(1)
    }

    /// Ids added since the last call, per live generation (oldest first, empty ones left
    /// out), for the flush that persists them.
    pub fn take_added(&mut self) -> Vec<(u64, Vec<u128>)> {
        let mut taken = Vec::with_capacity(2);
        if !self.added_previous.is_empty() {
            taken.push((
                self.generation - 1,
                std::mem::take(&mut self.added_previous),
            ));
        }
        if !self.added.is_empty() {
            taken.push((self.generation, std::mem::take(&mut self.added)));
        }
        taken
    }

    /// Lines a generation is sized for once it outgrows its first table: its count bound
    /// (`ids_max / 2`, up to a cap) at a load of at most 3/4.
    fn full_lines(&self) -> usize {
        let bound = (self.config.ids_max / 2).max(1);
        let mut lines = MIN_LINES;
        while lines < FULL_LINES_MAX && !fits(bound, lines) {
            lines *= 2;
        }
        lines
    }

    /// Forgets the older generation when the current one is old or full enough. Called
    /// once per batch, so eviction is decided per batch, not per event.
    pub fn rotate_if_due(&mut self, now: TimestampMs) {
        let aged = now.0.saturating_sub(self.current_started.0) >= self.config.window_ms;
        let full = self.current.len() >= self.config.ids_max / 2;
        if aged || full {
            let forgotten =
                std::mem::replace(&mut self.previous, std::mem::take(&mut self.current));
            // A well-filled table has all its pages committed: clearing it for the new
            // generation costs one pass at memory speed, where a fresh one would take a
            // page fault per 4 KiB while filling (several µs each on a VM). A sparse one
            // is freed, and the new generation starts small.
            if forgotten.len.saturating_mul(8) >= forgotten.lines * LINE_SLOTS {
                self.current = forgotten.cleared();
            }
            self.current_started = now;
            self.generation += 1;
            // What the forgotten generation gained since the last flush is forgotten too.
            self.added_previous = std::mem::take(&mut self.added);
        }
    }

    /// Makes room for `additional` more ids, so that the batch about to run never grows
    /// (rehashes) a table in the middle of its events.
    pub fn reserve(&mut self, additional: usize) {
        let full_lines = self.full_lines();
        self.current.reserve(additional, full_lines);
    }

    /// Records `key`; false when it was already in the window (a duplicate).
    #[inline]
    pub fn insert(&mut self, key: u128) -> bool {
        match self.check(key) {
            Some(vacancy) => {
                self.commit(vacancy);
                true
            }
            None => false,
        }
    }

    /// Looks `key` up without recording it: `None` when it is in the window (a
    /// duplicate), else where it goes, for [`DedupWindow::commit`] once the event is
    /// accepted. Nothing may be recorded in between.
    #[inline]
    pub fn check(&self, key: u128) -> Option<Vacancy> {
        if self.previous.contains(key) {
            return None;
        }
        if key == 0 {
            return (!self.current.has_zero).then_some(Vacancy { key, slot: None });
        }
        if self.current.lines == 0 {
            return Some(Vacancy { key, slot: None });
        }
        match self.current.probe(key) {
            Ok(()) => None,
            Err(slot) => Some(Vacancy {
                key,
                slot: Some(slot),
            }),
        }
    }

    /// Records a key found absent by [`DedupWindow::check`].
    #[inline]
    pub fn commit(&mut self, vacancy: Vacancy) {
        self.added.push(vacancy.key);
        match vacancy.slot {
            // The batch reserved room, so the slot found is still the one to fill.
            Some(slot) if fits(self.current.len + 1, self.current.lines) => {
                debug_assert_eq!(self.current.slots[slot], 0);
                self.current.slots[slot] = vacancy.key;
                self.current.len += 1;
            }
            _ => {
                let full_lines = self.full_lines();
                let added = self.current.insert(vacancy.key, full_lines);
                debug_assert!(added, "a vacancy is for a key not yet held");
            }
        }
    }

    /// Reads the lines `key` would be probed in first, so that their cache misses overlap
    /// with other work; the value means nothing (pass it to `std::hint::black_box`).
    #[inline]
    pub fn touch(&self, key: u128) -> u64 {
        let mut seen = 0;
        for table in [&self.previous, &self.current] {
            if table.lines > 0 {
                // Only the low half is needed to bring the line in.
                #[allow(clippy::cast_possible_truncation)]
                let word = table.slots[table.home(key)] as u64;
                seen ^= word;
            }
        }
        seen
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
        DedupParts {
            config: self.config,
            current: self.current.sorted(),
            previous: self.previous.sorted(),
            current_started: self.current_started,
            generation: self.generation,
            added: self.added.clone(),
            added_previous: self.added_previous.clone(),
        }
    }

    /// The window's header without its ids, for a flush checkpoint (the ids are in the
    /// flushes' chunks).
    pub(crate) fn header(&self) -> DedupHeader {
        debug_assert!(
            self.added.is_empty() && self.added_previous.is_empty(),
            "a checkpoint is taken right after the flush took the added ids"
        );
        DedupHeader {
            config: self.config,
            current_started: self.current_started,
            generation: self.generation,
        }
    }

    /// A window from its header and the ids of its live generations (chunks of other
    /// generations are ignored).
    pub(crate) fn from_header(
        header: DedupHeader,
        chunks: impl IntoIterator<Item = (u64, Vec<u128>)>,
    ) -> Self {
        let (mut current, mut previous) = (Vec::new(), Vec::new());
        for (generation, keys) in chunks {
            if generation == header.generation {
                current.extend(keys);
            } else if generation + 1 == header.generation {
                previous.extend(keys);
            }
        }
        Self::from_parts(DedupParts {
            config: header.config,
            current,
            previous,
            current_started: header.current_started,
            generation: header.generation,
            added: Vec::new(),
            added_previous: Vec::new(),
        })
    }

    pub(crate) fn from_parts(parts: DedupParts) -> Self {
        let mut window = Self::new(parts.config, parts.current_started);
        window.generation = parts.generation;
        window.added = parts.added;
        window.added_previous = parts.added_previous;
        let full_lines = window.full_lines();
        for (table, keys) in [
            (&mut window.current, parts.current),
            (&mut window.previous, parts.previous),
        ] {
            table.reserve(keys.len(), full_lines);
            for key in keys {
                table.insert(key, full_lines);
            }
        }
        window
    }
}

/// The window as plain data, sorted, for snapshots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DedupParts {
    config: DedupConfig,
    current: Vec<u128>,
    previous: Vec<u128>,
    current_started: TimestampMs,
    generation: u64,
    added: Vec<u128>,
    added_previous: Vec<u128>,
}

/// The window without its ids, as a flush checkpoint keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DedupHeader {
    config: DedupConfig,
    current_started: TimestampMs,
    generation: u64,
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

    #[test]
    fn the_fingerprint_is_xxh3_128_of_the_joined_bytes_at_every_length() {
        for customer_len in [1, 7, 40, 63, 64, 128] {
            for id_len in [1, 11, 22, 23, 24, 100, 256] {
                let customer = "c".repeat(customer_len);
                let id = "é".repeat(id_len / 2) + &"x".repeat(id_len % 2);
                let mut joined = customer.as_bytes().to_vec();
                joined.push(0xFF);
                joined.extend_from_slice(id.as_bytes());
                assert_eq!(fingerprint(&customer, &id), xxh3_128(&joined));
            }
        }
    }

    #[test]
    fn zero_and_colliding_homes_are_held_apart() {
        let config = DedupConfig {
            window_ms: i64::MAX,
            ids_max: 1 << 20,
        };
        let mut window = DedupWindow::new(config, TimestampMs(0));
        // Keys sharing their low bits all start at the same line and spill onward.
        let keys: Vec<u128> = (0..40_u128).map(|high| high << 64).collect();
        for &key in &keys {
            assert!(window.insert(key), "{key:#x} is new");
        }
        for &key in &keys {
            assert!(!window.insert(key), "{key:#x} is held");
        }
        assert_eq!(window.len(), keys.len());
        let parts = window.to_parts();
        assert_eq!(parts.current, keys, "sorted, zero included");
        let restored = DedupWindow::from_parts(parts.clone());
        assert_eq!(restored.to_parts(), parts);
        assert_eq!(window.clone().to_parts(), parts);
    }

    #[test]
    fn a_checked_key_is_recorded_only_when_committed() {
        let mut window = DedupWindow::new(DedupConfig::default(), TimestampMs(0));
        window.reserve(10);
        let key = fingerprint("c", "e1");
        let vacancy = window.check(key).expect("new");
        assert_eq!(window.check(key), Some(vacancy), "not recorded by a check");
        window.commit(vacancy);
        assert_eq!(window.check(key), None);
        assert_eq!(window.len(), 1);
    }

    #[test]
    fn a_recycled_generation_starts_empty() {
        let config = DedupConfig {
            window_ms: 10,
            ids_max: 1_000,
        };
        let mut window = DedupWindow::new(config, TimestampMs(0));
        let first: Vec<u128> = (0..400).map(|n| fingerprint("a", &n.to_string())).collect();
        let second: Vec<u128> = (0..400).map(|n| fingerprint("b", &n.to_string())).collect();
        for &key in &first {
            assert!(window.insert(key));
        }
        window.rotate_if_due(TimestampMs(10));
        for &key in &second {
            assert!(window.insert(key));
        }
        // The first generation's table is well filled, so it is cleared and reused.
        window.rotate_if_due(TimestampMs(20));
        assert!(window.current.lines > 0, "reused, not freed");
        assert_eq!(window.len(), second.len());
        for &key in &second {
            assert!(!window.insert(key), "still in the window");
        }
        for &key in &first {
            assert!(window.insert(key), "forgotten after two rotations");
        }
        assert_eq!(window.len(), first.len() + second.len());
    }

    #[test]
    fn growth_keeps_every_id_and_the_snapshot_canonical() {
        let config = DedupConfig {
            window_ms: i64::MAX,
            ids_max: 400_000,
        };
        let mut window = DedupWindow::new(config, TimestampMs(0));
        let keys: Vec<u128> = (0..150_000)
            .map(|n| fingerprint("c", &n.to_string()))
            .collect();
        // Without reserving, inserts grow the table as they go: 1 MiB, then full size.
        for &key in &keys {
            assert!(window.insert(key));
        }
        window.reserve(100_000);
        for &key in &keys {
            assert!(!window.insert(key));
        }
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        assert_eq!(window.to_parts().current, sorted);
    }
}
