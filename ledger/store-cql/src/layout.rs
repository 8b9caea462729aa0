//! How the store's opaque keys and values map onto CQL rows: which partition a key lives in,
//! the bounds of a prefix scan, and the one-byte envelope that says whether a value is
//! stored inline or out of line in chunks. Pure functions, unit-tested here, so the async
//! code in `kv.rs` only moves bytes.
//!
//! Partitioning (see the README for the why): a key's *bucket* is its bytes up to and
//! including its first `0x00` byte, when it has one (`customer 0x00 credit_type 0x00 seq`
//! gives `customer 0x00`: one customer's ledger is one CQL partition). Keys without a zero
//! byte share the table's *root* partition (bucket = empty). Zero buckets are contiguous,
//! non-overlapping key ranges whose bytewise order is the order of their keys, so a scan
//! walks them in bucket order and merges the root partition's keys in.

use refill_store::StoreError;

/// The bucket of the keys that hold no zero byte: the table's root partition.
pub const ROOT_BUCKET: &[u8] = &[];

/// Longest table name taken: table names are part of CQL partition keys (at most 64 KiB in
/// all), and a short bound keeps room for the key.
pub const TABLE_NAME_BYTES_MAX: usize = 255;

/// Longest key taken. Keys are CQL clustering and partition key components, which the
/// servers cap at 65,535 bytes; half of that leaves room for the table name and the
/// composite encoding.
pub const KEY_BYTES_MAX: usize = 32 * 1024;

/// Largest value stored inline in its `kv` row. Larger values go out of line, in chunks of
/// [`CHUNK_BYTES`], so that no single mutation comes near the servers' mutation size limit
/// (half of `commitlog_segment_size`, 16 MiB by default) and multi-partition batches stay
/// small (Cassandra refuses those above `batch_size_fail_threshold`).
pub const INLINE_VALUE_BYTES_MAX: usize = 64 * 1024;

/// Size of one out-of-line chunk (the last one may be shorter).
pub const CHUNK_BYTES: usize = 1024 * 1024;

/// Envelope tag of a value stored inline: the value's bytes follow.
const TAG_INLINE: u8 = 0;
/// Envelope tag of a value stored in chunks: version (i64 BE), length (u64 BE) and chunk
/// count (u32 BE) follow.
const TAG_CHUNKED: u8 = 1;
/// Length of a chunked envelope.
const CHUNKED_ENVELOPE_BYTES: usize = 1 + 8 + 8 + 4;

/// The bucket (partition) of `key`: its bytes through its first zero byte, or the root.
pub fn bucket(key: &[u8]) -> &[u8] {
    match key.iter().position(|&b| b == 0) {
        Some(zero) => &key[..=zero],
        None => ROOT_BUCKET,
    }
}

/// Whether every key starting with `prefix` lies in one bucket (the prefix holds a zero).
pub fn prefix_has_one_bucket(prefix: &[u8]) -> bool {
    prefix.contains(&0)
}

/// The smallest byte string greater than every string that starts with `prefix`, or `None`
/// when there is none (the prefix is empty or all `0xff`).
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let last = prefix.iter().rposition(|&b| b != 0xff)?;
    let mut successor = prefix[..=last].to_vec();
    successor[last] += 1;
    Some(successor)
}

/// The key range `[lower, upper)` of a scan of `prefix` from `start`, or `None` when it is
/// empty. `upper` is `None` when the range is unbounded above.
pub fn scan_range(prefix: &[u8], start: &[u8]) -> Option<(Vec<u8>, Option<Vec<u8>>)> {
    let lower = if start > prefix { start } else { prefix };
    let upper = prefix_successor(prefix);
    if let Some(upper) = &upper
        && lower >= upper.as_slice()
    {
        return None;
    }
    Some((lower.to_vec(), upper))
}

/// The lowest bucket that can hold a key at or after `lower`, for the bucket directory query:
/// `lower` itself when it holds no zero (a zero bucket below it ends before it), else the
/// bucket of `lower`.
pub fn first_bucket_at_or_after(lower: &[u8]) -> &[u8] {
    match lower.iter().position(|&b| b == 0) {
        Some(zero) => &lower[..=zero],
        None => lower,
    }
}

/// Checks a table name and key against what the schema can hold.
pub fn check_key(table: &str, key: &[u8]) -> Result<(), StoreError> {
    if table.len() > TABLE_NAME_BYTES_MAX {
        return Err(StoreError::InvalidRequest(format!(
            "expected a table name of at most {TABLE_NAME_BYTES_MAX} bytes, found {} bytes",
            table.len()
        )));
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(StoreError::InvalidRequest(format!(
            "expected a key of at most {KEY_BYTES_MAX} bytes in table {table:?}, found {} bytes",
            key.len()
        )));
    }
    Ok(())
}

/// The `kv.value` cell of an inline value.
pub fn inline_envelope(value: &[u8]) -> Vec<u8> {
    let mut cell = Vec::with_capacity(1 + value.len());
    cell.push(TAG_INLINE);
    cell.extend_from_slice(value);
    cell
}

/// Where a chunked value lives: `kv_chunks` rows `(table, key, version, 0..chunks)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunked {
    /// The write timestamp of the batch that wrote it (microseconds), also its version.
    pub version: i64,
    /// Total length in bytes.
    pub len: u64,
    /// Number of chunks.
    pub chunks: u32,
}

impl Chunked {
    /// The chunk layout of a value of `len` bytes written at `version`.
    pub fn of_len(version: i64, len: usize) -> Result<Self, StoreError> {
        let chunks = u32::try_from(len.div_ceil(CHUNK_BYTES)).map_err(|_| {
            StoreError::InvalidRequest(format!(
                "expected a value of at most {} bytes, found {len}",
                u64::from(u32::MAX) * CHUNK_BYTES as u64
            ))
        })?;
        Ok(Self {
            version,
            len: len as u64,
            chunks,
        })
    }

    /// The `kv.value` cell that points at the chunks.
    pub fn envelope(&self) -> Vec<u8> {
        let mut cell = Vec::with_capacity(CHUNKED_ENVELOPE_BYTES);
        cell.push(TAG_CHUNKED);
        cell.extend_from_slice(&self.version.to_be_bytes());
        cell.extend_from_slice(&self.len.to_be_bytes());
        cell.extend_from_slice(&self.chunks.to_be_bytes());
        cell
    }
}

/// A decoded `kv.value` cell.
#[derive(Debug, PartialEq, Eq)]
pub enum Stored {
    /// The value itself.
    Inline(Vec<u8>),
    /// A pointer to the value's chunks.
    Chunked(Chunked),
}

/// Decodes a `kv.value` cell (`table` and `key` only name it in errors).
pub fn decode_envelope(table: &str, key: &[u8], mut cell: Vec<u8>) -> Result<Stored, StoreError> {
    match cell.first() {
        Some(&TAG_INLINE) => {
            cell.remove(0);
            Ok(Stored::Inline(cell))
        }
        Some(&TAG_CHUNKED) if cell.len() == CHUNKED_ENVELOPE_BYTES => {
            let field = |range: std::ops::Range<usize>| -> [u8; 8] {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&cell[range]);
                bytes
            };
            let mut chunks = [0u8; 4];
            chunks.copy_from_slice(&cell[17..21]);
            Ok(Stored::Chunked(Chunked {
                version: i64::from_be_bytes(field(1..9)),
                len: u64::from_be_bytes(field(9..17)),
                chunks: u32::from_be_bytes(chunks),
            }))
        }
        found => Err(StoreError::Corrupt(format!(
            "expected the value of key {key:?} in table {table:?} to start with tag {TAG_INLINE} \
             (inline) or {TAG_CHUNKED} (chunked, {CHUNKED_ENVELOPE_BYTES} bytes), found tag \
             {found:?} in {} bytes",
            cell.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_is_through_the_first_zero_or_root() {
        assert_eq!(bucket(b"cus_1\0usd\0\0\0\x07"), b"cus_1\0");
        assert_eq!(bucket(b"pending/abc"), ROOT_BUCKET);
        assert_eq!(bucket(b""), ROOT_BUCKET);
        assert_eq!(bucket(&[0, 0, 0, 1]), &[0]);
    }

    #[test]
    fn zero_buckets_sort_like_their_keys() {
        // Every key of a lower zero bucket sorts before every key of a higher one.
        let keys: [&[u8]; 6] = [
            b"a\0",
            b"a\0\xff\xff",
            b"a\x01\0",
            b"ab\0",
            b"ab\0\0",
            b"b\0",
        ];
        for pair in keys.windows(2) {
            assert!(pair[0] < pair[1]);
            assert!(bucket(pair[0]) <= bucket(pair[1]), "{pair:?}");
        }
    }

    #[test]
    fn successor_skips_trailing_ff() {
        assert_eq!(prefix_successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_successor(&[0x61, 0xff]), Some(vec![0x62]));
        assert_eq!(prefix_successor(&[0xff, 0xff]), None);
        assert_eq!(prefix_successor(b""), None);
    }

    #[test]
    fn scan_range_takes_the_later_bound_and_spots_empty_ranges() {
        assert_eq!(
            scan_range(b"ab", b""),
            Some((b"ab".to_vec(), Some(b"ac".to_vec())))
        );
        assert_eq!(
            scan_range(b"ab", b"abc"),
            Some((b"abc".to_vec(), Some(b"ac".to_vec())))
        );
        assert_eq!(
            scan_range(b"ab", b"abe\xff").map(|r| r.0),
            Some(b"abe\xff".to_vec())
        );
        assert_eq!(scan_range(b"ab", b"ac"), None);
        assert_eq!(scan_range(b"", b"x"), Some((b"x".to_vec(), None)));
    }

    #[test]
    fn directory_lower_bound() {
        assert_eq!(first_bucket_at_or_after(b"cus"), b"cus");
        assert_eq!(first_bucket_at_or_after(b"cus\0usd"), b"cus\0");
    }

    #[test]
    fn envelopes_round_trip() {
        assert_eq!(
            decode_envelope("t", b"k", inline_envelope(b"")).ok(),
            Some(Stored::Inline(Vec::new()))
        );
        assert_eq!(
            decode_envelope("t", b"k", inline_envelope(b"abc")).ok(),
            Some(Stored::Inline(b"abc".to_vec()))
        );
        let chunked = Chunked::of_len(1_700_000_000_000_000, 3 * CHUNK_BYTES + 1).expect("fits");
        assert_eq!(chunked.chunks, 4);
        assert_eq!(
            decode_envelope("t", b"k", chunked.envelope()).ok(),
            Some(Stored::Chunked(chunked))
        );
        assert!(matches!(
            decode_envelope("t", b"k", Vec::new()),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            decode_envelope("t", b"k", vec![TAG_CHUNKED, 1, 2]),
            Err(StoreError::Corrupt(_))
        ));
    }
}
