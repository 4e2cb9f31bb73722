//! A read-only view of a Kafka record batch (magic v2) as it arrives in a Produce request.
//!
//! The broker never decompresses or re-encodes client records: it checks the framing and the
//! CRC-32C, reads the few header fields it needs (record count, producer id and sequence), and
//! patches the base offset in place. The base offset and partition leader epoch are outside the
//! CRC, so patching them keeps the client's bytes valid (the WAL framing in `wal::record` writes
//! the base offset while it copies the batch, once). Request and response bodies are decoded
//! by the `kafka-protocol` crate; this module only reads fixed header offsets of the batch.

use bytes::Bytes;
use thiserror::Error;

/// Bytes before the records: everything up to and including the record count.
pub const BATCH_HEADER_BYTES: usize = 61;
/// `baseOffset` (8) + `batchLength` (4): the part not counted by `batchLength`.
const LOG_OVERHEAD_BYTES: usize = 12;
/// `partitionLeaderEpoch`: the epoch of the leader that appended the batch (outside the CRC).
pub const LEADER_EPOCH_OFFSET: usize = 12;
const MAGIC_OFFSET: usize = 16;
const CRC_OFFSET: usize = 17;
const ATTRIBUTES_OFFSET: usize = 21;
const LAST_OFFSET_DELTA_OFFSET: usize = 23;
const MAX_TIMESTAMP_OFFSET: usize = 35;
const PRODUCER_ID_OFFSET: usize = 43;
const PRODUCER_EPOCH_OFFSET: usize = 51;
const BASE_SEQUENCE_OFFSET: usize = 53;
const RECORD_COUNT_OFFSET: usize = 57;
const SUPPORTED_MAGIC: i8 = 2;
/// Attribute bit marking a transactional batch; transactions are not supported by this broker.
const TRANSACTIONAL_FLAG: i16 = 0x10;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BatchError {
    #[error("record batch is truncated: {have} bytes, header says {need}")]
    Truncated { have: usize, need: usize },
    #[error("unsupported record batch magic {0} (only v2 is accepted)")]
    UnsupportedMagic(i8),
    #[error("record batch CRC mismatch: header {expected:#010x}, computed {computed:#010x}")]
    CrcMismatch { expected: u32, computed: u32 },
    #[error("record batch of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("record batch declares {count} records but last offset delta {delta}")]
    InconsistentCount { count: i32, delta: i32 },
    #[error("transactional batches are not supported")]
    Transactional,
    #[error("produce request carries no records")]
    Empty,
}

/// Header fields the broker acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub record_count: i32,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

/// Reads the header fields of a batch whose framing was already checked.
pub fn header(buf: &[u8]) -> BatchHeader {
    BatchHeader {
        record_count: be_i32(buf, RECORD_COUNT_OFFSET),
        producer_id: be_i64(buf, PRODUCER_ID_OFFSET),
        producer_epoch: be_i16(buf, PRODUCER_EPOCH_OFFSET),
        base_sequence: be_i32(buf, BASE_SEQUENCE_OFFSET),
    }
}

/// One validated batch from a Produce request: its bytes and header fields.
#[derive(Debug, Clone)]
pub struct BatchView {
    pub bytes: Bytes,
    pub header: BatchHeader,
}

impl BatchView {
    /// Offsets this batch occupies once a base offset is assigned.
    pub fn offset_count(&self) -> i64 {
        i64::from(self.header.record_count)
    }
}

fn be_i16(buf: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([buf[at], buf[at + 1]])
}
fn be_i32(buf: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}
fn be_i64(buf: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

/// Base offset of a stored batch (after the broker assigned it).
/// The epoch of the leader that appended the batch.
pub fn leader_epoch(batch: &[u8]) -> i32 {
    be_i32(batch, LEADER_EPOCH_OFFSET)
}

pub fn base_offset(batch: &[u8]) -> i64 {
    be_i64(batch, 0)
}

/// Last offset of a stored batch: base offset + last offset delta.
pub fn last_offset(batch: &[u8]) -> i64 {
    be_i64(batch, 0) + i64::from(be_i32(batch, LAST_OFFSET_DELTA_OFFSET))
}

/// Max timestamp of a stored batch.
pub fn max_timestamp(batch: &[u8]) -> i64 {
    be_i64(batch, MAX_TIMESTAMP_OFFSET)
}

/// Length of the batch that starts at `buf[0]`, or `None` if fewer than 12 bytes are present.
pub fn framed_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < LOG_OVERHEAD_BYTES {
        return None;
    }
    let batch_length = be_i32(buf, 8);
    usize::try_from(batch_length)
        .ok()
        .map(|len| len + LOG_OVERHEAD_BYTES)
}

/// Checks one batch's framing and CRC without copying it.
pub fn check_stored(buf: &[u8]) -> Result<(), BatchError> {
    if buf.len() < BATCH_HEADER_BYTES {
        return Err(BatchError::Truncated {
            have: buf.len(),
            need: BATCH_HEADER_BYTES,
        });
    }
    let need = framed_len(buf).unwrap_or(usize::MAX);
    if need < BATCH_HEADER_BYTES || need > buf.len() {
        return Err(BatchError::Truncated {
            have: buf.len(),
            need,
        });
    }
    let magic = buf[MAGIC_OFFSET] as i8;
    if magic != SUPPORTED_MAGIC {
        return Err(BatchError::UnsupportedMagic(magic));
    }
    let expected = u32::from_be_bytes(buf[CRC_OFFSET..CRC_OFFSET + 4].try_into().expect("4"));
    let computed = crc32c::crc32c(&buf[ATTRIBUTES_OFFSET..need]);
    if expected != computed {
        return Err(BatchError::CrcMismatch { expected, computed });
    }
    Ok(())
}

/// Splits the records of one partition of a Produce request into validated batches.
///
/// Everything is checked before anything is stored, so a bad batch rejects the whole partition.
pub fn parse_produce_records(
    records: &Bytes,
    batch_bytes_max: usize,
) -> Result<Vec<BatchView>, BatchError> {
    if records.is_empty() {
        return Err(BatchError::Empty);
    }
    let mut batches = Vec::with_capacity(1);
    let mut at = 0;
    while at < records.len() {
        let rest = &records[at..];
        let len = framed_len(rest).ok_or(BatchError::Truncated {
            have: rest.len(),
            need: LOG_OVERHEAD_BYTES,
        })?;
        if len > batch_bytes_max {
            return Err(BatchError::TooLarge {
                size: len,
                limit: batch_bytes_max,
            });
        }
        check_stored(rest)?;
        let header = &rest[..BATCH_HEADER_BYTES];
        let attributes = be_i16(header, ATTRIBUTES_OFFSET);
        if attributes & TRANSACTIONAL_FLAG != 0 {
            return Err(BatchError::Transactional);
        }
        let record_count = be_i32(header, RECORD_COUNT_OFFSET);
        let delta = be_i32(header, LAST_OFFSET_DELTA_OFFSET);
        if record_count <= 0 || delta != record_count - 1 {
            return Err(BatchError::InconsistentCount {
                count: record_count,
                delta,
            });
        }
        batches.push(BatchView {
            bytes: records.slice(at..at + len),
            header: self::header(header),
        });
        at += len;
    }
    Ok(batches)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a minimal valid v2 batch with `count` empty-valued records (test helper).
    pub(crate) fn sample_batch(count: i32, producer_id: i64, base_sequence: i32) -> Bytes {
        let mut records = Vec::new();
        for i in 0..count {
            // length(varint), attributes, ts delta, offset delta(varint), key len -1, value len 0, headers 0
            let body = [0u8, 0, (i as u8) << 1, 1, 0, 0];
            records.push((body.len() as u8) << 1);
            records.extend_from_slice(&body);
        }
        let mut buf = Vec::new();
        buf.extend_from_slice(&0i64.to_be_bytes());
        buf.extend_from_slice(&0i32.to_be_bytes()); // length, patched below
        buf.extend_from_slice(&0i32.to_be_bytes()); // leader epoch
        buf.push(2);
        buf.extend_from_slice(&0u32.to_be_bytes()); // crc, patched below
        buf.extend_from_slice(&0i16.to_be_bytes());
        buf.extend_from_slice(&(count - 1).to_be_bytes());
        buf.extend_from_slice(&1_000i64.to_be_bytes());
        buf.extend_from_slice(&1_000i64.to_be_bytes());
        buf.extend_from_slice(&producer_id.to_be_bytes());
        buf.extend_from_slice(&0i16.to_be_bytes());
        buf.extend_from_slice(&base_sequence.to_be_bytes());
        buf.extend_from_slice(&count.to_be_bytes());
        buf.extend_from_slice(&records);
        let len = (buf.len() - 12) as i32;
        buf[8..12].copy_from_slice(&len.to_be_bytes());
        let crc = crc32c::crc32c(&buf[21..]);
        buf[17..21].copy_from_slice(&crc.to_be_bytes());
        Bytes::from(buf)
    }

    #[test]
    fn valid_batch_parses_and_patching_keeps_crc_valid() {
        let batch = sample_batch(3, -1, -1);
        let views = parse_produce_records(&batch, 1 << 20).unwrap();
        assert_eq!(views.len(), 1);
        assert_eq!(views[0].header.record_count, 3);
        let (_, patched) = crate::wal::record::encode(1, 0, &views[0].bytes, 42, 7);
        check_stored(&patched).unwrap();
        assert_eq!(base_offset(&patched), 42);
        assert_eq!(leader_epoch(&patched), 7);
        assert_eq!(last_offset(&patched), 44);
    }

    #[test]
    fn flipped_bit_is_a_crc_mismatch() {
        let mut raw = sample_batch(2, -1, -1).to_vec();
        let last = raw.len() - 1;
        raw[last] ^= 0x01;
        let err = parse_produce_records(&Bytes::from(raw), 1 << 20).unwrap_err();
        assert!(matches!(err, BatchError::CrcMismatch { .. }));
    }

    #[test]
    fn oversize_and_truncated_batches_are_rejected() {
        let batch = sample_batch(2, -1, -1);
        assert!(matches!(
            parse_produce_records(&batch, 10),
            Err(BatchError::TooLarge { .. })
        ));
        let cut = batch.slice(..batch.len() - 1);
        assert!(matches!(
            parse_produce_records(&cut, 1 << 20),
            Err(BatchError::Truncated { .. })
        ));
        assert_eq!(
            parse_produce_records(&Bytes::new(), 1 << 20).unwrap_err(),
            BatchError::Empty
        );
    }
}
