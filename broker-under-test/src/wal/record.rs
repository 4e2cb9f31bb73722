//! WAL record framing: `[u32 payload length][u32 CRC-32C][payload]`, where the payload is
//! `[u128 topic id][i32 partition][record batch with its assigned base offset]`. The topic id
//! (not the name) ties a record to one incarnation of a topic, so a topic deleted and created
//! again under the same name never receives the old topic's records on replay.
//!
//! A payload whose third part is 8 bytes instead of a batch (a batch has at least 61) is a
//! truncation: a follower cut its log at that offset to follow a new leader, and replay must cut
//! there too before it appends what the WAL holds after it.
//!
//! On disk the CRC is the payload's CRC-32C XOR the segment's stamp (`SegmentStamp`: the
//! CRC-32C of the number of the segment the frame is in). A frame leaves the produce path with
//! the CRC of its payload alone (`encode`); the WAL writer stamps it for the segment it lands
//! in. A segment file is reused without being zeroed (`storage`), and a record it held in an
//! earlier life then fails its CRC in the new segment, so it reads as the end of the segment's
//! data, never as a record. RocksDB's recyclable log format keeps the log number in each
//! record's checksummed header for the same reason; an XOR costs the writer one instruction per
//! frame instead of a CRC step.

use bytes::{BufMut, Bytes, BytesMut};

/// Length + CRC prefix of every record.
pub const FRAME_HEADER_BYTES: usize = 8;
/// A record larger than this is never written, so a length above it can only be damage.
pub const RECORD_BYTES_MAX: usize = 64 << 20;
const TOPIC_ID_BYTES: usize = 16;
/// Topic id + partition: the smallest possible payload (an empty batch).
const PAYLOAD_PREFIX_BYTES: usize = TOPIC_ID_BYTES + 4;

/// Bytes of a truncation record's offset.
const TRUNCATION_BYTES: usize = 8;

/// The segment-end frame's partition (with topic id 0 and no body): no topic has id 0, and
/// no partition index is negative.
const SEGMENT_END_PARTITION: i32 = -1;
/// Bytes of the frame that closes a segment.
pub const SEGMENT_END_BYTES: usize = FRAME_HEADER_BYTES + PAYLOAD_PREFIX_BYTES;

/// What one WAL record holds for its partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalEntry {
    /// A stored batch.
    Batch(Bytes),
    /// The partition's log was cut to end at this offset.
    Truncation(i64),
}

/// One decoded WAL record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRecord {
    pub topic_id: u128,
    pub partition: i32,
    pub entry: WalEntry,
}

/// Frames one client batch for the WAL with `base_offset` and `leader_epoch` written into the
/// batch header (outside the batch's own CRC). Returns the frame and, as a view into the same
/// bytes, the stored batch: the client's bytes are copied once on the produce path.
pub fn encode(
    topic_id: u128,
    partition: i32,
    batch: &[u8],
    base_offset: i64,
    leader_epoch: i32,
) -> (Bytes, Bytes) {
    let batch_start = FRAME_HEADER_BYTES + PAYLOAD_PREFIX_BYTES;
    let mut buf = frame_start(topic_id, partition, batch.len());
    buf.put_slice(batch);
    buf[batch_start..batch_start + 8].copy_from_slice(&base_offset.to_be_bytes());
    let epoch_at = batch_start + crate::batch::LEADER_EPOCH_OFFSET;
    buf[epoch_at..epoch_at + 4].copy_from_slice(&leader_epoch.to_be_bytes());
    let frame = seal(buf);
    let stored = frame.slice(batch_start..);
    (frame, stored)
}

/// Frames a truncation of `partition`'s log to `end_offset`.
pub fn encode_truncation(topic_id: u128, partition: i32, end_offset: i64) -> Bytes {
    let mut buf = frame_start(topic_id, partition, TRUNCATION_BYTES);
    buf.put_i64(end_offset);
    seal(buf)
}

/// Frames the end of segment `seq`, stamped: the writer closed it here, and what follows is
/// preallocated space. Recovery requires it in every segment but the last, so a closed
/// segment whose tail was lost is told apart from one that ended.
pub fn encode_segment_end(seq: u64) -> Bytes {
    let mut frame = seal(frame_start(0, SEGMENT_END_PARTITION, 0)).to_vec();
    SegmentStamp::of(seq).apply(&mut frame);
    Bytes::from(frame)
}

/// What every frame's CRC in one segment is XORed with: the CRC-32C of the segment's number
/// (8 bytes, big-endian). Two segments' stamps differ whenever their numbers differ only in
/// the low 32 bits (CRC-32C is linear, and its polynomial divides no nonzero polynomial of
/// lower degree), so for every segment below number 2^32 an earlier segment's record fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SegmentStamp(u32);

impl SegmentStamp {
    pub fn of(seq: u64) -> Self {
        Self(crc32c::crc32c(&seq.to_be_bytes()))
    }

    /// Stamps the CRC of the complete frame at the start of `frame`, as `encode` wrote it
    /// (payload only). Applied once per frame written.
    pub fn apply(self, frame: &mut [u8]) {
        let crc = u32::from_be_bytes(frame[4..8].try_into().expect("4"));
        frame[4..8].copy_from_slice(&(crc ^ self.0).to_be_bytes());
    }
}

/// A frame's header (CRC still zero) and payload prefix, with room for `body_len` more bytes.
fn frame_start(topic_id: u128, partition: i32, body_len: usize) -> BytesMut {
    let payload_len = PAYLOAD_PREFIX_BYTES + body_len;
    let mut buf = BytesMut::with_capacity(FRAME_HEADER_BYTES + payload_len);
    buf.put_u32(payload_len as u32);
    buf.put_u32(0);
    buf.put_u128(topic_id);
    buf.put_i32(partition);
    buf
}

/// Writes the payload's CRC into a complete frame.
fn seal(mut buf: BytesMut) -> Bytes {
    let crc = crc32c::crc32c(&buf[FRAME_HEADER_BYTES..]);
    buf[4..8].copy_from_slice(&crc.to_be_bytes());
    buf.freeze()
}

/// Result of decoding the frame at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A valid record and the number of bytes it occupied.
    Record(WalRecord, usize),
    /// The segment ends here (`encode_segment_end`).
    SegmentEnd,
    /// The buffer ends inside the frame.
    Incomplete,
    /// The frame is complete but damaged (CRC, length or payload layout).
    Invalid,
}

/// Decodes the frame at the start of `buf`, read from segment `seq`.
pub fn decode(buf: &Bytes, seq: u64) -> Decoded {
    if buf.len() < FRAME_HEADER_BYTES {
        return Decoded::Incomplete;
    }
    let payload_len = u32::from_be_bytes(buf[0..4].try_into().expect("4")) as usize;
    if !(PAYLOAD_PREFIX_BYTES..=RECORD_BYTES_MAX).contains(&payload_len) {
        return Decoded::Invalid;
    }
    let total = FRAME_HEADER_BYTES + payload_len;
    if buf.len() < total {
        return Decoded::Incomplete;
    }
    let expected = u32::from_be_bytes(buf[4..8].try_into().expect("4"));
    let payload = &buf[FRAME_HEADER_BYTES..total];
    if crc32c::crc32c(payload) ^ SegmentStamp::of(seq).0 != expected {
        return Decoded::Invalid;
    }
    let topic_id = u128::from_be_bytes(payload[..TOPIC_ID_BYTES].try_into().expect("16"));
    let partition = i32::from_be_bytes(
        payload[TOPIC_ID_BYTES..PAYLOAD_PREFIX_BYTES]
            .try_into()
            .expect("4"),
    );
    if topic_id == 0 && partition == SEGMENT_END_PARTITION && payload_len == PAYLOAD_PREFIX_BYTES {
        return Decoded::SegmentEnd;
    }
    let batch_start = FRAME_HEADER_BYTES + PAYLOAD_PREFIX_BYTES;
    let entry = if payload_len == PAYLOAD_PREFIX_BYTES + TRUNCATION_BYTES {
        WalEntry::Truncation(i64::from_be_bytes(
            buf[batch_start..total].try_into().expect("8"),
        ))
    } else {
        WalEntry::Batch(buf.slice(batch_start..total))
    };
    Decoded::Record(
        WalRecord {
            topic_id,
            partition,
            entry,
        },
        total,
    )
}

/// The truncations recorded in `buf`, segment `seq`, in order: (topic id, partition, end
/// offset). Stops at the first frame that is not a record: the segment's end, or where its
/// data ends or is damaged (recovery's full pass tells which).
pub fn truncations(buf: &Bytes, seq: u64) -> Vec<(u128, i32, i64)> {
    let mut found = Vec::new();
    let mut pos = 0;
    while let Decoded::Record(record, used) = decode(&buf.slice(pos..), seq) {
        if let WalEntry::Truncation(end) = record.entry {
            found.push((record.topic_id, record.partition, end));
        }
        pos += used;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEQ: u64 = 7;

    /// `frame` as the writer writes it into segment `seq`.
    fn stamped(frame: &[u8], seq: u64) -> Bytes {
        let mut frame = frame.to_vec();
        SegmentStamp::of(seq).apply(&mut frame);
        Bytes::from(frame)
    }

    #[test]
    fn round_trip() {
        let (frame, stored) = encode(7, 3, b"offset__lengEPOC+batch", 0x0102, 0x0a0b);
        assert_eq!(&stored[..], b"\0\0\0\0\0\0\x01\x02leng\0\0\x0a\x0b+batch");
        let frame = stamped(&frame, SEQ);
        match decode(&frame, SEQ) {
            Decoded::Record(rec, used) => {
                assert_eq!(used, frame.len());
                assert_eq!(rec.topic_id, 7);
                assert_eq!(rec.partition, 3);
                assert_eq!(rec.entry, WalEntry::Batch(stored));
            }
            other => panic!("unexpected {other:?}"),
        }
        let frame = stamped(&encode_truncation(7, 3, 1234), SEQ);
        match decode(&frame, SEQ) {
            Decoded::Record(rec, used) => {
                assert_eq!(used, frame.len());
                assert_eq!((rec.topic_id, rec.partition), (7, 3));
                assert_eq!(rec.entry, WalEntry::Truncation(1234));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_frame_is_a_record_only_in_the_segment_it_was_stamped_for() {
        // A recycled segment file still holds the frames of its earlier lives.
        let (frame, _) = encode(1, 0, &[7u8; 70], 0, 0);
        for seq in [0, 1, 2, 1 << 40, u64::MAX] {
            let frame = stamped(&frame, seq);
            assert!(matches!(decode(&frame, seq), Decoded::Record(..)));
            for other in [seq.wrapping_add(1), seq.wrapping_sub(1), seq ^ (1 << 63)] {
                assert_eq!(
                    decode(&frame, other),
                    Decoded::Invalid,
                    "{seq} read as {other}"
                );
            }
        }
        let end = encode_segment_end(SEQ);
        assert_eq!(decode(&end, SEQ + 1), Decoded::Invalid);
        assert_eq!(decode(&frame, SEQ), Decoded::Invalid, "never stamped");
    }

    #[test]
    fn segment_stamps_are_distinct_and_never_zero() {
        // Consecutive numbers, and numbers that share their low 32 bits.
        let stamps: std::collections::HashSet<SegmentStamp> = (1..=200_000u64)
            .chain((1..=1_000u64).map(|high| (high << 32) | 7))
            .map(SegmentStamp::of)
            .collect();
        assert_eq!(stamps.len(), 201_000);
        assert!(
            !stamps.contains(&SegmentStamp(0)),
            "a stamp that stamps nothing"
        );
    }

    #[test]
    fn a_segment_end_is_told_from_an_empty_batch_and_from_zeros() {
        let end = encode_segment_end(SEQ);
        assert_eq!(end.len(), SEGMENT_END_BYTES);
        assert_eq!(decode(&end, SEQ), Decoded::SegmentEnd);
        let empty = stamped(&seal(frame_start(0, 0, 0)), SEQ);
        assert!(matches!(decode(&empty, SEQ), Decoded::Record(..)));
        assert_eq!(decode(&Bytes::from(vec![0u8; 64]), SEQ), Decoded::Invalid);
    }

    #[test]
    fn truncations_are_found_among_batches_in_order_up_to_the_first_non_record() {
        let mut wal = Vec::new();
        wal.extend_from_slice(&stamped(&encode(1, 0, &[7u8; 70], 0, 0).0, SEQ));
        wal.extend_from_slice(&stamped(&encode_truncation(1, 0, 40), SEQ));
        wal.extend_from_slice(&stamped(&encode(2, 3, &[7u8; 90], 5, 1).0, SEQ));
        wal.extend_from_slice(&stamped(&encode_truncation(2, 3, 9), SEQ));
        let torn = stamped(&encode_truncation(1, 0, 1), SEQ);
        let whole = Bytes::from(wal.clone());
        wal.extend_from_slice(&torn[..torn.len() - 1]);
        assert_eq!(truncations(&Bytes::from(wal), SEQ), [(1, 0, 40), (2, 3, 9)]);
        // Nothing past the segment's end, nor past a damaged frame, nor of an earlier life.
        let mut damaged_batch = stamped(&encode(1, 0, &[7u8; 70], 0, 0).0, SEQ).to_vec();
        damaged_batch[40] ^= 1;
        for stop in [
            encode_segment_end(SEQ).to_vec(),
            damaged_batch,
            stamped(&encode(1, 0, &[7u8; 70], 0, 0).0, SEQ - 1).to_vec(),
        ] {
            let mut wal = whole.to_vec();
            wal.extend_from_slice(&stop);
            wal.extend_from_slice(&stamped(&encode_truncation(1, 0, 2), SEQ));
            assert_eq!(truncations(&Bytes::from(wal), SEQ), [(1, 0, 40), (2, 3, 9)]);
        }
    }

    #[test]
    fn every_truncation_is_incomplete_and_every_bit_flip_is_invalid() {
        let frame = stamped(&encode(1, 0, b"0123456789abcdef", 0, 0).0, SEQ);
        for cut in 0..frame.len() {
            assert_eq!(
                decode(&frame.slice(..cut), SEQ),
                Decoded::Incomplete,
                "cut {cut}"
            );
        }
        for byte in FRAME_HEADER_BYTES..frame.len() {
            let mut raw = frame.to_vec();
            raw[byte] ^= 0x40;
            assert_eq!(
                decode(&Bytes::from(raw), SEQ),
                Decoded::Invalid,
                "byte {byte}"
            );
        }
    }
}
