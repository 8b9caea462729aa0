//! Customer → shard: the partition Kafka's default partitioner (Java's `murmur2`, and
//! librdkafka's `murmur2_random` for keyed records) gives the customer id as a key. Using it
//! for every log keeps one rule: an event a producer sends to `refill.usage` with the
//! customer id as key lands on the partition whose shard owns that customer.

/// Kafka's murmur2 hash of `key` (the 32-bit variant of `org.apache.kafka.common.utils.
/// Utils.murmur2`, seed 0x9747b28c).
pub fn murmur2(key: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = key.len();
    // Kafka hashes the length as a Java int; keys are far below 2^31 bytes.
    let mut h: u32 = SEED ^ (length as u32);
    let mut chunks = key.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if let Some(&first) = tail.first() {
        h ^= u32::from(first);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition of `key` among `partitions` under Kafka's default partitioner:
/// `toPositive(murmur2(key)) % partitions`.
pub fn kafka_partition_of(key: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0, "a topic has at least one partition");
    (murmur2(key) & 0x7fff_ffff) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafkas_own_test_vectors() {
        // From Kafka's UtilsTest.testMurmur2 (signed Java ints).
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (key, expected) in cases {
            assert_eq!(
                murmur2(key) as i32,
                expected,
                "murmur2 of {:?}",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn partitions_are_in_range_and_stable() {
        for partitions in 1..20 {
            for customer in ["acme", "globex", "", "a", "ab", "abc", "abcd"] {
                let partition = kafka_partition_of(customer.as_bytes(), partitions);
                assert!(partition < partitions);
                assert_eq!(
                    partition,
                    kafka_partition_of(customer.as_bytes(), partitions)
                );
            }
        }
    }
}
