//! A partition's leader epochs and the offset where each began: Kafka's leader-epoch cache.
//! Every stored batch carries the epoch of the leader that appended it (`partitionLeaderEpoch`
//! in its header), so the history is rebuilt from the log when it is opened and kept up to date
//! on each append; it needs no file of its own.
//!
//! A follower sends the epoch of its last batch with each fetch; the leader answers with the
//! end of that epoch in its own log (`end_offset_for`), and a follower holding more than that
//! cuts its log there (see `replication::fetcher`). That is how a broker that led before a
//! failover drops what the new leader never had.

use crate::batch;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EpochHistory {
    /// (epoch, start offset), epochs strictly increasing.
    starts: Vec<(i32, i64)>,
}

impl EpochHistory {
    /// Notes a stored batch appended at the end of the log.
    pub fn note(&mut self, stored: &[u8]) {
        let epoch = batch::leader_epoch(stored);
        // Batches from clients written before epochs were stamped carry -1 or 0; an epoch lower
        // than the latest cannot follow it in a log this broker wrote.
        if epoch >= 0 && self.starts.last().is_none_or(|&(last, _)| epoch > last) {
            self.starts.push((epoch, batch::base_offset(stored)));
        }
    }

    /// The epoch of the last batch, -1 for none.
    pub fn latest(&self) -> i32 {
        self.starts.last().map_or(-1, |&(epoch, _)| epoch)
    }

    /// Kafka's OffsetsForLeaderEpoch answer: the largest epoch not above `epoch` and the offset
    /// where it ends in this log (where the next epoch starts, or `log_end`). With no such
    /// epoch: -1 and the start of the earliest epoch (this log shares nothing at or below
    /// `epoch` past that), or `log_end` for a log without epochs.
    pub fn end_offset_for(&self, epoch: i32, log_end: i64) -> (i32, i64) {
        let after = self.starts.partition_point(|&(e, _)| e <= epoch);
        let end = self.starts.get(after).map_or(log_end, |&(_, start)| start);
        match after.checked_sub(1) {
            Some(floor) => (self.starts[floor].0, end),
            None => (-1, end),
        }
    }

    /// Forgets epochs that start at or past `end` (the log was cut there).
    pub fn truncate(&mut self, end: i64) {
        self.starts.retain(|&(_, start)| start < end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch_at(base: i64, epoch: i32) -> Vec<u8> {
        let mut b = vec![0u8; batch::BATCH_HEADER_BYTES];
        b[..8].copy_from_slice(&base.to_be_bytes());
        b[batch::LEADER_EPOCH_OFFSET..batch::LEADER_EPOCH_OFFSET + 4]
            .copy_from_slice(&epoch.to_be_bytes());
        b
    }

    fn history(batches: &[(i64, i32)]) -> EpochHistory {
        let mut h = EpochHistory::default();
        for &(base, epoch) in batches {
            h.note(&batch_at(base, epoch));
        }
        h
    }

    #[test]
    fn an_epoch_ends_where_the_next_one_starts() {
        // Epoch 0 at 0, epoch 2 at 10 (epoch 1 wrote nothing), epoch 5 at 30; log end 40.
        let h = history(&[(0, 0), (4, 0), (10, 2), (20, 2), (30, 5)]);
        assert_eq!(h.latest(), 5);
        assert_eq!(h.end_offset_for(0, 40), (0, 10));
        assert_eq!(
            h.end_offset_for(1, 40),
            (0, 10),
            "no epoch 1: epoch 0's end"
        );
        assert_eq!(h.end_offset_for(2, 40), (2, 30));
        assert_eq!(h.end_offset_for(5, 40), (5, 40));
        assert_eq!(h.end_offset_for(7, 40), (5, 40));
        assert_eq!(history(&[(5, 3)]).end_offset_for(1, 9), (-1, 5));
        assert_eq!(EpochHistory::default().end_offset_for(1, 9), (-1, 9));
    }

    #[test]
    fn unstamped_and_older_batches_start_no_epoch_and_a_cut_forgets_what_follows() {
        let mut h = history(&[(0, -1), (3, 1), (5, 0), (8, 3)]);
        assert_eq!(h, history(&[(3, 1), (8, 3)]));
        h.truncate(8);
        assert_eq!(h.latest(), 1);
        h.truncate(3);
        assert_eq!(h.latest(), -1);
    }

    /// Random histories: the answer for every epoch is an epoch boundary or the log end, and
    /// a follower cut at min(leader's end, its own end) for the same epoch never keeps a batch
    /// of a later epoch than the leader has there.
    #[test]
    fn answers_are_boundaries_for_random_histories() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..500 {
            let mut batches = Vec::new();
            let (mut offset, mut epoch) = (0i64, 0i32);
            for _ in 0..next(12) {
                epoch += i32::try_from(next(3)).expect("small");
                batches.push((offset, epoch));
                offset += 1 + i64::try_from(next(5)).expect("small");
            }
            let h = history(&batches);
            let boundaries: Vec<i64> = h.starts.iter().map(|&(_, s)| s).collect();
            for asked in -1..=epoch + 1 {
                let (found, end) = h.end_offset_for(asked, offset);
                assert!(found <= asked.max(-1));
                assert!(
                    end == offset || boundaries.contains(&end),
                    "{batches:?} {asked}"
                );
                // Every batch below `end` has an epoch not above `asked`.
                assert!(batches.iter().all(|&(b, e)| b >= end || e <= asked));
            }
        }
    }
}
