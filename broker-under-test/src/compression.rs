//! The records of a compressed batch, decompressed so that they can be walked before the batch
//! is stored, as Kafka's broker does: a valid CRC over malformed records would otherwise reach
//! every consumer that reads past them. The batch is still stored as the client sent it.
//!
//! The codecs are Kafka's: gzip, snappy (in the xerial framing the Java client writes, or raw),
//! LZ4 frames, zstd. Each decompression is bounded: a few KiB of zeros can expand to
//! gigabytes, and the request-byte budget counts only the compressed bytes a client sent.

use std::io::{self, Read};

/// A compressed batch may expand to at most this many bytes of records; beyond it the batch is
/// refused (CORRUPT_MESSAGE). Kafka's own batches stay far below it: a producer closes a batch at
/// `batch.size` (16 KiB by default) of uncompressed records, and the broker's batch limit is
/// 1 MiB of compressed ones.
pub const DECOMPRESSED_BYTES_MAX: usize = 64 << 20;

/// The xerial snappy stream header: magic (8 bytes), version and compatible version (4 each).
const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_BYTES: usize = 16;

/// The name Kafka gives compression codec `codec` (attribute bits 0-2).
pub fn codec_name(codec: i16) -> &'static str {
    match codec {
        0 => "none",
        1 => "gzip",
        2 => "snappy",
        3 => "lz4",
        4 => "zstd",
        _ => "unknown",
    }
}

/// The records of a batch compressed with `codec` (1-4), at most `DECOMPRESSED_BYTES_MAX`.
pub fn decompress(codec: i16, compressed: &[u8]) -> Result<Vec<u8>, String> {
    let decompressed = match codec {
        1 => read_bounded(flate2::read::GzDecoder::new(compressed)),
        2 => snappy(compressed),
        3 => read_bounded(lz4_flex::frame::FrameDecoder::new(compressed)),
        4 => zstd::stream::read::Decoder::new(compressed).and_then(read_bounded),
        other => return Err(format!("unknown compression codec {other}")),
    };
    decompressed.map_err(|e| e.to_string())
}

/// Reads `reader` to its end, failing past `DECOMPRESSED_BYTES_MAX`.
fn read_bounded(reader: impl Read) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    reader
        .take(DECOMPRESSED_BYTES_MAX as u64 + 1)
        .read_to_end(&mut out)?;
    if out.len() > DECOMPRESSED_BYTES_MAX {
        return Err(too_large());
    }
    Ok(out)
}

fn too_large() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the records expand past {DECOMPRESSED_BYTES_MAX} bytes"),
    )
}

/// Snappy as Kafka clients write it: the xerial framing (a header, then blocks each prefixed by
/// its compressed length, big-endian) or, without its magic, one raw block.
fn snappy(compressed: &[u8]) -> io::Result<Vec<u8>> {
    let invalid = |e: snap::Error| io::Error::new(io::ErrorKind::InvalidData, e);
    let mut out = Vec::new();
    let append_block = |block: &[u8], out: &mut Vec<u8>| -> io::Result<()> {
        let len = snap::raw::decompress_len(block).map_err(invalid)?;
        if out.len() + len > DECOMPRESSED_BYTES_MAX {
            return Err(too_large());
        }
        let at = out.len();
        out.resize(at + len, 0);
        snap::raw::Decoder::new()
            .decompress(block, &mut out[at..])
            .map_err(invalid)?;
        Ok(())
    };
    if !compressed.starts_with(XERIAL_MAGIC) {
        append_block(compressed, &mut out)?;
        return Ok(out);
    }
    let mut rest = compressed.get(XERIAL_HEADER_BYTES..).unwrap_or_default();
    while !rest.is_empty() {
        let (len, after) = rest
            .split_at_checked(4)
            .ok_or_else(|| truncated("length"))?;
        let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
        let (block, after) = after
            .split_at_checked(len)
            .ok_or_else(|| truncated("block"))?;
        append_block(block, &mut out)?;
        rest = after;
    }
    Ok(out)
}

fn truncated(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("the snappy stream ends inside a block {what}"),
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// `records` compressed with `codec` as a Kafka client would.
    pub(crate) fn compress(codec: i16, records: &[u8]) -> Vec<u8> {
        match codec {
            1 => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(records).unwrap();
                e.finish().unwrap()
            }
            2 => {
                let block = snap::raw::Encoder::new().compress_vec(records).unwrap();
                let mut out = XERIAL_MAGIC.to_vec();
                out.extend_from_slice(&1i32.to_be_bytes());
                out.extend_from_slice(&1i32.to_be_bytes());
                out.extend_from_slice(&(block.len() as u32).to_be_bytes());
                out.extend_from_slice(&block);
                out
            }
            3 => {
                let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
                e.write_all(records).unwrap();
                e.finish().unwrap()
            }
            4 => zstd::stream::encode_all(records, 1).unwrap(),
            other => panic!("codec {other}"),
        }
    }

    #[test]
    fn every_codec_round_trips() {
        let records: Vec<u8> = (0..10_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for codec in 1..=4 {
            let compressed = compress(codec, &records);
            assert_eq!(
                decompress(codec, &compressed).unwrap(),
                records,
                "{}",
                codec_name(codec)
            );
            let cut = &compressed[..compressed.len() / 2];
            assert!(
                decompress(codec, cut).is_err(),
                "{} cut short",
                codec_name(codec)
            );
        }
        let raw_snappy = snap::raw::Encoder::new().compress_vec(&records).unwrap();
        assert_eq!(decompress(2, &raw_snappy).unwrap(), records);
    }

    #[test]
    fn a_bomb_is_refused_at_the_bound() {
        let zeros = vec![0u8; DECOMPRESSED_BYTES_MAX + 1];
        for codec in 1..=4 {
            let compressed = compress(codec, &zeros);
            // Snappy's format caps its ratio near 21:1; the others go far beyond.
            assert!(compressed.len() < zeros.len() / 20);
            let err = decompress(codec, &compressed).unwrap_err();
            assert!(err.contains("expand past"), "{}: {err}", codec_name(codec));
        }
    }
}
