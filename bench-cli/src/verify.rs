//! `--verify-acked`: after a produce run, the topic is read back from its start to each
//! partition's high watermark, and every acknowledged message must be there at the offset its
//! ack named, with its own id. What a broker loses or overwrites after acking it (a failover
//! that elects a replica without the write, a power cut) is counted, not sampled.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::produce::{payload_id, AckedAt};

/// How long one poll of the read-back waits.
const READ_BACK_POLL: Duration = Duration::from_millis(200);
/// How long the broker may take to answer metadata and watermark requests.
const READ_BACK_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The acked messages of each partition, sorted by offset, with whether the read-back found
/// each one at its offset.
pub struct Expected {
    partitions: BTreeMap<i32, Vec<(AckedAt, bool)>>,
}

impl Expected {
    pub fn new(mut acked: Vec<AckedAt>) -> Self {
        acked.sort_unstable();
        let mut partitions: BTreeMap<i32, Vec<(AckedAt, bool)>> = BTreeMap::new();
        for a in acked {
            partitions.entry(a.partition).or_default().push((a, false));
        }
        Self { partitions }
    }

    /// A message read back: the acked message at that offset with that id is found. When two
    /// acks named one offset only one of them can be there: the other stays missing.
    pub fn read(&mut self, partition: i32, offset: i64, id: Option<u64>) {
        let Some(acked) = self.partitions.get_mut(&partition) else {
            return;
        };
        let first = acked.partition_point(|(a, _)| a.offset < offset);
        if let Some((_, found)) = acked[first..]
            .iter_mut()
            .take_while(|(a, _)| a.offset == offset)
            .find(|(a, found)| !*found && Some(a.id) == id)
        {
            *found = true;
        }
    }

    pub fn acked(&self) -> u64 {
        self.partitions.values().map(|p| p.len() as u64).sum()
    }

    /// Acked messages not found at their offset.
    pub fn lost(&self) -> u64 {
        self.partitions
            .values()
            .flatten()
            .filter(|(_, found)| !found)
            .count() as u64
    }

    /// Partitions holding acked messages, and the offset past the last acked one.
    fn ends(&self) -> BTreeMap<i32, i64> {
        self.partitions
            .iter()
            .filter_map(|(p, acked)| Some((*p, acked.last()?.0.offset + 1)))
            .collect()
    }
}

/// Reads every partition with acked messages from its start until past its last acked offset
/// or its high watermark, whichever comes first, within `timeout`; marks in `expected` what
/// was found. Returns how many messages were read.
pub fn read_back(
    client: &ClientConfig,
    topic: &str,
    expected: &mut Expected,
    timeout: Duration,
) -> Result<u64, String> {
    let consumer: BaseConsumer = client
        .create()
        .map_err(|e| format!("creating the read-back consumer: {e}"))?;
    let mut remaining = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for (partition, acked_end) in expected.ends() {
        let (_, high) = consumer
            .fetch_watermarks(topic, partition, READ_BACK_REQUEST_TIMEOUT)
            .map_err(|e| format!("reading the end of partition {partition}: {e}"))?;
        // Acked offsets at or past the high watermark are lost: nothing there to read.
        let end = acked_end.min(high);
        if end > 0 {
            remaining.insert(partition, end);
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .map_err(|e| format!("read-back assignment: {e}"))?;
        }
    }
    consumer
        .assign(&assignment)
        .map_err(|e| format!("read-back assignment: {e}"))?;
    let deadline = Instant::now() + timeout;
    let mut read = 0u64;
    while !remaining.is_empty() {
        if Instant::now() >= deadline {
            return Err(format!(
                "the read-back did not reach the ends {remaining:?} within {timeout:?}"
            ));
        }
        // Errors (a leader moving, a broker down) and empty polls: the read goes on until the
        // deadline.
        if let Some(Ok(m)) = consumer.poll(READ_BACK_POLL) {
            read += 1;
            expected.read(m.partition(), m.offset(), m.payload().and_then(payload_id));
            if remaining
                .get(&m.partition())
                .is_some_and(|&end| m.offset() + 1 >= end)
            {
                remaining.remove(&m.partition());
            }
        }
    }
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(partition: i32, offset: i64, id: u64) -> AckedAt {
        AckedAt {
            partition,
            offset,
            id,
        }
    }

    #[test]
    fn every_acked_message_must_be_at_its_offset_with_its_id() {
        let mut e = Expected::new(vec![at(0, 2, 12), at(0, 0, 10), at(1, 0, 20), at(0, 1, 11)]);
        assert_eq!((e.acked(), e.lost()), (4, 4));
        e.read(0, 0, Some(10));
        e.read(0, 1, Some(99)); // another message at offset 1: 11 is lost
        e.read(0, 2, Some(12));
        e.read(0, 3, Some(13)); // not acked (timed out, or retried): no matter
        e.read(1, 0, Some(20));
        assert_eq!(e.lost(), 1);
    }

    #[test]
    fn two_acks_for_one_offset_lose_one_of_them() {
        let mut e = Expected::new(vec![at(0, 5, 1), at(0, 5, 2)]);
        e.read(0, 5, Some(2));
        e.read(0, 5, Some(2)); // read twice (a consumer seeking back): still one found
        assert_eq!(e.lost(), 1);
    }

    #[test]
    fn a_read_back_that_ends_short_finds_the_missing_tail() {
        let e = Expected::new(vec![at(0, 0, 1), at(0, 7, 2), at(3, 4, 3)]);
        assert_eq!(e.ends(), BTreeMap::from([(0, 8), (3, 5)]));
    }
}
