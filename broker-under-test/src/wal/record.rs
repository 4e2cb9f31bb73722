//! WAL record framing: `[u32 payload length][u32 CRC-32C of payload][payload]`, where the payload
//! is `[u128 topic id][i32 partition][record batch with its assigned base offset]`. The topic id
//! (not the name) ties a record to one incarnation of a topic, so a topic deleted and created
//! again under the same name never receives the old topic's records on replay.

use bytes::{BufMut, Bytes, BytesMut};

/// Length + CRC prefix of every record.
pub const FRAME_HEADER_BYTES: usize = 8;
/// A record larger than this is never written, so a length above it can only be damage.
pub const RECORD_BYTES_MAX: usize = 64 << 20;
const TOPIC_ID_BYTES: usize = 16;
/// Topic id + partition: the smallest possible payload (an empty batch).
const PAYLOAD_PREFIX_BYTES: usize = TOPIC_ID_BYTES + 4;

/// One decoded WAL record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRecord {
    pub topic_id: u128,
    pub partition: i32,
    pub batch: Bytes,
}

/// Frames one client batch for the WAL with `base_offset` written into the batch header (outside
/// the batch's own CRC). Returns the frame and, as a view into the same bytes, the stored batch:
/// the client's bytes are copied once on the produce path.
pub fn encode(topic_id: u128, partition: i32, batch: &[u8], base_offset: i64) -> (Bytes, Bytes) {
    let payload_len = PAYLOAD_PREFIX_BYTES + batch.len();
    let batch_start = FRAME_HEADER_BYTES + PAYLOAD_PREFIX_BYTES;
    let mut buf = BytesMut::with_capacity(FRAME_HEADER_BYTES + payload_len);
    buf.put_u32(payload_len as u32);
    buf.put_u32(0);
    buf.put_u128(topic_id);
    buf.put_i32(partition);
    buf.put_slice(batch);
    buf[batch_start..batch_start + 8].copy_from_slice(&base_offset.to_be_bytes());
    let crc = crc32c::crc32c(&buf[FRAME_HEADER_BYTES..]);
    buf[4..8].copy_from_slice(&crc.to_be_bytes());
    let frame = buf.freeze();
    let stored = frame.slice(batch_start..);
    (frame, stored)
}

/// Result of decoding the frame at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A valid record and the number of bytes it occupied.
    Record(WalRecord, usize),
    /// The buffer ends inside the frame.
    Incomplete,
    /// The frame is complete but damaged (CRC, length or payload layout).
    Invalid,
}

/// Decodes the frame at the start of `buf`.
pub fn decode(buf: &Bytes) -> Decoded {
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
    if crc32c::crc32c(payload) != expected {
        return Decoded::Invalid;
    }
    let topic_id = u128::from_be_bytes(payload[..TOPIC_ID_BYTES].try_into().expect("16"));
    let partition = i32::from_be_bytes(
        payload[TOPIC_ID_BYTES..PAYLOAD_PREFIX_BYTES]
            .try_into()
            .expect("4"),
    );
    let batch_start = FRAME_HEADER_BYTES + PAYLOAD_PREFIX_BYTES;
    Decoded::Record(
        WalRecord {
            topic_id,
            partition,
            batch: buf.slice(batch_start..total),
        },
        total,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let (frame, stored) = encode(7, 3, b"offset__+batch", 0x0102);
        assert_eq!(&stored[..], b"\0\0\0\0\0\0\x01\x02+batch");
        match decode(&frame) {
            Decoded::Record(rec, used) => {
                assert_eq!(used, frame.len());
                assert_eq!(rec.topic_id, 7);
                assert_eq!(rec.partition, 3);
                assert_eq!(rec.batch, stored);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn every_truncation_is_incomplete_and_every_bit_flip_is_invalid() {
        let (frame, _) = encode(1, 0, b"0123456789", 0);
        for cut in 0..frame.len() {
            assert_eq!(
                decode(&frame.slice(..cut)),
                Decoded::Incomplete,
                "cut {cut}"
            );
        }
        for byte in FRAME_HEADER_BYTES..frame.len() {
            let mut raw = frame.to_vec();
            raw[byte] ^= 0x40;
            assert_eq!(decode(&Bytes::from(raw)), Decoded::Invalid, "byte {byte}");
        }
    }
}
