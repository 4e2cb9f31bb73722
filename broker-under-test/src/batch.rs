//! A read-only view of a Kafka record batch (magic v2) as it arrives in a Produce request.
//!
//! The broker never re-encodes client records: it checks the framing and the CRC-32C, walks
//! the records of every batch, decompressing a compressed one to do so (a valid CRC over
//! malformed records would otherwise be stored and break every consumer that reads past it;
//! the batch is stored as it came), reads the few header
//! fields it needs (record count, producer id and sequence), and patches the base offset in
//! place. The base offset and partition leader epoch are outside the CRC, so patching them
//! keeps the client's bytes valid (the WAL framing in `wal::record` writes the base offset
//! while it copies the batch, once). Request and response bodies are decoded
//! by the `kafka-protocol` crate; this module only reads fixed header offsets of the batch.

use bytes::Bytes;
use thiserror::Error;

use crate::compression;

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
/// Attribute bits naming the compression codec; 0 is none, 1-4 gzip, snappy, lz4, zstd.
const COMPRESSION_MASK: i16 = 0x07;
const COMPRESSION_CODEC_MAX: i16 = 4;

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
    #[error("unknown compression codec {0}")]
    UnknownCompression(i16),
    #[error("record {index} of the batch is malformed: {why}")]
    MalformedRecord { index: i32, why: &'static str },
    #[error("the records of a {codec} batch do not decompress: {why}")]
    Undecompressable { codec: &'static str, why: String },
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
        match attributes & COMPRESSION_MASK {
            0 => check_records(&rest[BATCH_HEADER_BYTES..len], record_count)?,
            codec if codec > COMPRESSION_CODEC_MAX => {
                return Err(BatchError::UnknownCompression(codec))
            }
            codec => {
                let body = &rest[BATCH_HEADER_BYTES..len];
                let records = compression::decompress(codec, body).map_err(|why| {
                    BatchError::Undecompressable {
                        codec: compression::codec_name(codec),
                        why,
                    }
                })?;
                check_records(&records, record_count)?;
            }
        }
        batches.push(BatchView {
            bytes: records.slice(at..at + len),
            header: self::header(header),
        });
        at += len;
    }
    Ok(batches)
}

/// A cursor over the records of an uncompressed batch, reading Kafka's zigzag varints.
struct Records<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Records<'_> {
    /// A zigzag varint of at most `bytes_max` bytes (5 for an int, 10 for a long).
    fn varint(&mut self, bytes_max: usize) -> Result<i64, &'static str> {
        let mut raw: u64 = 0;
        for i in 0..bytes_max {
            let byte = *self.buf.get(self.at).ok_or("ends inside a varint")?;
            self.at += 1;
            raw |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok((raw >> 1) as i64 ^ -((raw & 1) as i64));
            }
        }
        Err("a varint longer than its type")
    }

    fn int(&mut self) -> Result<i64, &'static str> {
        self.varint(5)
    }

    /// Skips a length-prefixed field; `nullable` allows the length -1 (null). Returns the
    /// field's bytes.
    fn skip_field(&mut self, nullable: bool) -> Result<&[u8], &'static str> {
        let len = self.int()?;
        if len == -1 && nullable {
            return Ok(&[]);
        }
        let len = usize::try_from(len).map_err(|_| "a negative field length")?;
        if len > self.buf.len().saturating_sub(self.at) {
            return Err("a field longer than its record");
        }
        self.at += len;
        Ok(&self.buf[self.at - len..self.at])
    }

    /// Checks one record that fills this cursor's buffer from its position to its end.
    fn check_record(&mut self, index: i32) -> Result<(), &'static str> {
        let end = self.buf.len();
        self.at += 1; // attributes
        self.varint(10)?; // timestamp delta
        if self.int()? != i64::from(index) {
            return Err("its offset delta is not its index");
        }
        self.skip_field(true)?; // key
        self.skip_field(true)?; // value
        let headers = self.int()?;
        if headers < 0 {
            return Err("a negative header count");
        }
        for _ in 0..headers {
            // A header key is a String in the protocol: consumers decode it as UTF-8.
            std::str::from_utf8(self.skip_field(false)?).map_err(|_| "a header key not UTF-8")?;
            self.skip_field(true)?; // header value
        }
        if self.at != end {
            return Err("its fields do not fill its length");
        }
        Ok(())
    }
}

/// Walks the `count` records of an uncompressed batch body (the bytes after the batch header):
/// each record's fields must fill exactly its declared length, its offset delta must be its
/// index (consumers compute offsets from it), and the records must fill the body exactly.
/// The same checks as Kafka's `DefaultRecord.readFrom`, without copying anything.
fn check_records(body: &[u8], count: i32) -> Result<(), BatchError> {
    let mut records = Records { buf: body, at: 0 };
    for index in 0..count {
        let malformed = |why| BatchError::MalformedRecord { index, why };
        let len = records.int().map_err(malformed)?;
        let len = usize::try_from(len).map_err(|_| malformed("a negative record length"))?;
        if len > body.len() - records.at {
            return Err(malformed("longer than the batch"));
        }
        let end = records.at + len;
        let mut record = Records {
            buf: &body[..end],
            at: records.at,
        };
        record.check_record(index).map_err(malformed)?;
        records.at = end;
    }
    if records.at != body.len() {
        return Err(BatchError::MalformedRecord {
            index: count,
            why: "bytes after the last record",
        });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::test_rng::Rng;

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

    /// A batch as a client library encodes it: random keys, values (some null) and headers.
    fn client_batch(rng: &mut Rng) -> Bytes {
        use kafka_protocol::protocol::StrBytes;
        use kafka_protocol::records::{
            Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
        };
        let count = 1 + rng.below(12) as i64;
        let records: Vec<Record> = (0..count)
            .map(|offset| Record {
                transactional: false,
                control: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset,
                sequence: -1,
                timestamp: 1_700_000_000_000 + rng.below(1_000_000) as i64,
                key: (rng.below(3) > 0).then(|| rng.bytes(40)),
                value: (rng.below(5) > 0).then(|| rng.bytes(300)),
                headers: (0..rng.below(3))
                    .map(|h| {
                        let key = StrBytes::from_string(format!("h{h}"));
                        (key, (rng.below(2) > 0).then(|| rng.bytes(20)))
                    })
                    .collect(),
                delete_horizon: false,
            })
            .collect();
        let mut buf = bytes::BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        };
        RecordBatchEncoder::encode(&mut buf, &records, &options).unwrap();
        buf.freeze()
    }

    /// Makes a damaged batch's length and CRC valid again, as a hostile client would.
    fn reseal(batch: &mut [u8]) {
        let len = (batch.len() - LOG_OVERHEAD_BYTES) as i32;
        batch[8..12].copy_from_slice(&len.to_be_bytes());
        let crc = crc32c::crc32c(&batch[ATTRIBUTES_OFFSET..]);
        batch[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    }

    #[test]
    fn every_batch_a_client_library_encodes_is_accepted() {
        let mut rng = Rng(0x5eed_0001);
        for case in 0..2_000 {
            let batch = client_batch(&mut rng);
            let parsed = parse_produce_records(&batch, 1 << 20);
            assert!(parsed.is_ok(), "case {case}: {parsed:?}");
        }
    }

    /// Hostile records under a valid CRC: bytes flipped, records cut or padded, lengths
    /// changed, the batch resealed. Whatever is accepted, a consumer's decoder reads back
    /// whole: the declared number of records at consecutive offsets. (Without the record
    /// walk, most of these were stored.)
    #[test]
    fn every_accepted_batch_decodes_whole_whatever_its_records_hold() {
        use kafka_protocol::records::RecordBatchDecoder;
        let mut rng = Rng(0x5eed_0002);
        let (mut accepted, mut refused) = (0, 0);
        for case in 0..5_000 {
            let mut batch = client_batch(&mut rng).to_vec();
            for _ in 0..1 + rng.below(3) {
                let body = BATCH_HEADER_BYTES as u64..batch.len() as u64;
                let at = (body.start + rng.below(body.end - body.start)) as usize;
                match rng.below(4) {
                    0 => batch[at] ^= 1 << rng.below(8),
                    1 => batch[at] = rng.below(256) as u8,
                    2 => batch.truncate(at.max(BATCH_HEADER_BYTES + 1)),
                    _ => batch.insert(at, rng.below(256) as u8),
                }
            }
            reseal(&mut batch);
            let batch = Bytes::from(batch);
            let Ok(views) = parse_produce_records(&batch, 1 << 20) else {
                refused += 1;
                continue;
            };
            accepted += 1;
            let mut stored = views[0].bytes.clone();
            let decoded = RecordBatchDecoder::decode(&mut stored)
                .unwrap_or_else(|e| panic!("case {case}: accepted but undecodable: {e}"));
            let offsets: Vec<i64> = decoded.records.iter().map(|r| r.offset).collect();
            let want: Vec<i64> = (0..i64::from(views[0].header.record_count)).collect();
            assert_eq!(offsets, want, "case {case}: accepted with other offsets");
        }
        assert!(refused > 2_500, "{refused} of 5000 damaged batches refused");
        assert!(accepted > 0, "some damage (in values) leaves valid records");
    }

    /// `batch` (uncompressed) with its records compressed by `codec`, resealed.
    fn with_codec(batch: &[u8], codec: i16) -> Bytes {
        let mut out = batch[..BATCH_HEADER_BYTES].to_vec();
        let attributes = be_i16(&out, ATTRIBUTES_OFFSET) | codec;
        out[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2].copy_from_slice(&attributes.to_be_bytes());
        out.extend(compression::tests::compress(
            codec,
            &batch[BATCH_HEADER_BYTES..],
        ));
        reseal(&mut out);
        Bytes::from(out)
    }

    /// The records of a compressed batch are walked like an uncompressed batch's: damaged
    /// records, compressed by each codec, are accepted exactly when the same records
    /// uncompressed are. (Before, every one was accepted: its CRC was valid.)
    #[test]
    fn a_compressed_batch_is_accepted_exactly_when_its_records_are() {
        let mut rng = Rng(0x5eed_0003);
        let (mut refused, mut cases) = (0, 0);
        for case in 0..1_000 {
            let mut batch = client_batch(&mut rng).to_vec();
            // The encoder may split the records into several batches: keep the first.
            batch.truncate(framed_len(&batch).expect("a whole batch"));
            if case % 4 != 0 {
                let body = BATCH_HEADER_BYTES as u64..batch.len() as u64;
                let at = (body.start + rng.below(body.end - body.start)) as usize;
                batch[at] = rng.below(256) as u8;
                reseal(&mut batch);
            }
            let plain = parse_produce_records(&Bytes::from(batch.clone()), 1 << 20);
            for codec in 1..=4 {
                let compressed = parse_produce_records(&with_codec(&batch, codec), 1 << 20);
                assert_eq!(
                    compressed.as_ref().err(),
                    plain.as_ref().err(),
                    "case {case}, {}",
                    compression::codec_name(codec)
                );
                cases += 1;
                refused += usize::from(compressed.is_err());
            }
        }
        assert!(refused > cases / 20, "{refused} of {cases} refused");
        assert!(refused < cases, "valid compressed batches are accepted");
    }

    #[test]
    fn a_compressed_batch_that_does_not_decompress_is_corrupt() {
        let mut batch = with_codec(&sample_batch(3, -1, -1), 1).to_vec();
        let last = batch.len() - 1;
        batch[last] ^= 0xff; // the gzip trailer's length
        reseal(&mut batch);
        let err = parse_produce_records(&Bytes::from(batch), 1 << 20).unwrap_err();
        assert!(
            matches!(err, BatchError::Undecompressable { codec: "gzip", .. }),
            "{err}"
        );
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
