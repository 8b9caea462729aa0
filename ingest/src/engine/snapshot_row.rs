//! The bytes of a shard's snapshot row in the store (table `snapshots`, key = shard number
//! big-endian): the next log offset, the Kafka source marks, then the shard's own snapshot.
//!
//! Layout: offset (u64 BE) ‖ usage_next (u64 BE) ‖ commands_next (u64 BE) ‖ has marks (u8:
//! 1 or 0) ‖ `Shard::snapshot` bytes.

use super::SourceMarks;

/// Bytes before the shard's own snapshot.
pub const HEADER_BYTES: usize = 8 + 8 + 8 + 1;

/// A decoded snapshot row, borrowing the shard's bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct SnapshotRow<'a> {
    /// The next log offset to apply after the snapshot.
    pub next_offset: u64,
    /// Where the Kafka sources continue, if the journal ever held a batch from Kafka.
    pub sources: Option<SourceMarks>,
    /// The shard's own snapshot (`Shard::restore` takes it).
    pub shard: &'a [u8],
}

/// The row's bytes.
pub fn encode(next_offset: u64, sources: Option<SourceMarks>, shard: &[u8]) -> Vec<u8> {
    let marks = sources.unwrap_or_default();
    let mut value = Vec::with_capacity(HEADER_BYTES + shard.len());
    value.extend(next_offset.to_be_bytes());
    value.extend(marks.usage_next.to_be_bytes());
    value.extend(marks.commands_next.to_be_bytes());
    value.push(u8::from(sources.is_some()));
    value.extend(shard);
    value
}

/// Reads a row; `None` when it is shorter than its header or its marks flag is not 0 or 1.
pub fn decode(bytes: &[u8]) -> Option<SnapshotRow<'_>> {
    if bytes.len() < HEADER_BYTES {
        return None;
    }
    let (header, shard) = bytes.split_at(HEADER_BYTES);
    let word = |at: usize| {
        let mut eight = [0_u8; 8];
        eight.copy_from_slice(&header[at..at + 8]);
        u64::from_be_bytes(eight)
    };
    let sources = match header[24] {
        0 => None,
        1 => Some(SourceMarks {
            usage_next: word(8),
            commands_next: word(16),
        }),
        _ => return None,
    };
    Some(SnapshotRow {
        next_offset: word(0),
        sources,
        shard,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_and_short_ones_are_refused() {
        let marks = SourceMarks {
            usage_next: 7,
            commands_next: 3,
        };
        let bytes = encode(42, Some(marks), b"shard");
        assert_eq!(
            decode(&bytes),
            Some(SnapshotRow {
                next_offset: 42,
                sources: Some(marks),
                shard: b"shard"
            })
        );
        assert_eq!(
            decode(&encode(1, None, b"")).map(|row| row.sources),
            Some(None)
        );
        assert_eq!(decode(&bytes[..HEADER_BYTES - 1]), None);
        let mut bad_flag = bytes.clone();
        bad_flag[24] = 9;
        assert_eq!(decode(&bad_flag), None);
    }
}
