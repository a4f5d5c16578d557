//! Partition ownership and offset bookkeeping: the one place that knows
//! which partitions this member owns, under which assignment epoch, which
//! writes of theirs are in flight, and how far each one is written.
//!
//! Contract: [`Ledger::commit_offsets`] never names an offset past the end of
//! its partition's contiguous written prefix *in the current epoch*. Three
//! rules make that hold whatever the order in which messages, rebalance
//! events and write results reach the pipeline:
//! - every message carries the epoch it was polled under, and a message
//!   polled before its partition was last assigned (or after it was revoked)
//!   is refused ([`Ledger::accepts`]);
//! - a write result counts only for the epoch its batch was started in;
//! - a partition's written prefix advances only over finished writes at the
//!   front of its queue of writes, so a later batch that finishes first
//!   waits for the earlier one.
//!
//! Pure: no I/O, no clock. The pipeline owns the only `Ledger`, on its task.

use std::collections::{BTreeMap, VecDeque};
use std::sync::mpsc::SyncSender;

/// A number that grows with every rebalance callback of the consumer. A
/// partition's epoch is the value at its assignment; a message's is the
/// value when it was polled.
pub type Epoch = u64;

/// The written offsets of revoked partitions, handed to the rebalance
/// callback waiting for them so it can commit before the partitions move.
pub type RevokeReply = SyncSender<Vec<(i32, i64)>>;

/// One batch write of one partition: the offset after its last message.
#[derive(Debug)]
struct Flight {
    end: i64,
    done: bool,
}

#[derive(Debug)]
struct Partition {
    epoch: Epoch,
    /// Revoked, or a write of it failed: no more messages; in-flight
    /// writes may still finish, and a pending revoke may take it.
    closed: bool,
    flights: VecDeque<Flight>,
    /// End of the contiguous written prefix in this epoch.
    written: Option<i64>,
}

/// A revoke waiting for in-flight writes of its partitions.
struct PendingRevoke {
    partitions: Vec<i32>,
    reply: RevokeReply,
}

/// Identifies the writes a batch started, to report their end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteTicket {
    flights: Vec<(i32, Epoch, i64)>,
}

#[derive(Default)]
pub struct Ledger {
    partitions: BTreeMap<i32, Partition>,
    pending_revokes: Vec<PendingRevoke>,
}

impl Ledger {
    /// Takes ownership of `partitions` from `epoch` on. Any earlier state of
    /// them (a revoke that timed out, a loss) is forgotten: results of its
    /// writes no longer count.
    pub fn assign(&mut self, partitions: &[i32], epoch: Epoch) {
        for &partition in partitions {
            self.partitions.insert(
                partition,
                Partition {
                    epoch,
                    closed: false,
                    flights: VecDeque::new(),
                    written: None,
                },
            );
        }
    }

    /// The partitions were taken away without a chance to commit: forget
    /// them now; their in-flight writes end uncounted.
    pub fn lose(&mut self, partitions: &[i32]) {
        for partition in partitions {
            self.partitions.remove(partition);
        }
    }

    /// The partitions are being revoked: refuse their messages from now on,
    /// and answer `reply` with their written offsets once none of their
    /// writes is in flight (at once when none is).
    pub fn revoke(&mut self, partitions: &[i32], reply: RevokeReply) {
        for partition in partitions {
            if let Some(state) = self.partitions.get_mut(partition) {
                state.closed = true;
            }
        }
        self.pending_revokes.push(PendingRevoke {
            partitions: partitions.to_vec(),
            reply,
        });
        self.answer_revokes();
    }

    /// Whether a message of `partition` polled under `epoch` belongs to the
    /// current ownership of that partition.
    pub fn accepts(&self, partition: i32, epoch: Epoch) -> bool {
        self.partitions
            .get(&partition)
            .is_some_and(|state| !state.closed && epoch >= state.epoch)
    }

    /// The partitions owned now (closed ones included).
    pub fn owned(&self) -> impl Iterator<Item = i32> + '_ {
        self.partitions.keys().copied()
    }

    /// Records the start of a batch write holding messages up to `end`
    /// (exclusive) for each of its partitions. Partitions not owned are left
    /// out of the ticket: their work cannot be committed anyway.
    pub fn begin_write(&mut self, ends: &[(i32, i64)]) -> WriteTicket {
        let mut ticket = WriteTicket::default();
        for &(partition, end) in ends {
            if let Some(state) = self.partitions.get_mut(&partition) {
                state.flights.push_back(Flight { end, done: false });
                ticket.flights.push((partition, state.epoch, end));
            }
        }
        ticket
    }

    /// The write of `ticket` committed in the database: advance the written
    /// prefixes it completes.
    pub fn write_done(&mut self, ticket: &WriteTicket) {
        for &(partition, epoch, end) in &ticket.flights {
            let Some(state) = self.partitions.get_mut(&partition) else {
                continue;
            };
            if state.epoch != epoch {
                continue;
            }
            if let Some(flight) = state.flights.iter_mut().find(|f| f.end == end && !f.done) {
                flight.done = true;
            }
            while state.flights.front().is_some_and(|f| f.done) {
                if let Some(flight) = state.flights.pop_front() {
                    state.written = Some(flight.end);
                }
            }
        }
        self.answer_revokes();
    }

    /// The write of `ticket` failed or was abandoned: nothing of it counts.
    /// Its partitions take no more messages and commit no further than
    /// what was written before it (a failed write ends the run anyway).
    pub fn write_failed(&mut self, ticket: &WriteTicket) {
        for &(partition, epoch, _) in &ticket.flights {
            if let Some(state) = self.partitions.get_mut(&partition) {
                if state.epoch == epoch {
                    state.closed = true;
                    state.flights.clear();
                }
            }
        }
        self.answer_revokes();
    }

    /// Per owned partition, the offset that may be committed now: the end
    /// of its contiguous written prefix in the current epoch.
    pub fn commit_offsets(&self) -> Vec<(i32, i64)> {
        self.partitions
            .iter()
            .filter_map(|(&partition, state)| state.written.map(|end| (partition, end)))
            .collect()
    }

    /// Answers every pending revoke whose partitions have no write in
    /// flight, then forgets those partitions.
    fn answer_revokes(&mut self) {
        let partitions = &self.partitions;
        let busy = |p: &i32| partitions.get(p).is_some_and(|s| !s.flights.is_empty());
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending_revokes)
            .into_iter()
            .partition(|revoke| !revoke.partitions.iter().any(busy));
        self.pending_revokes = waiting;
        for revoke in ready {
            self.finish_revoke(revoke);
        }
    }

    fn finish_revoke(&mut self, revoke: PendingRevoke) {
        let mut offsets = Vec::new();
        for partition in &revoke.partitions {
            // Only a partition still closed is ours to answer for: one
            // assigned again since (the callback gave up waiting) belongs to
            // its new epoch.
            if self.partitions.get(partition).is_some_and(|s| s.closed) {
                if let Some(state) = self.partitions.remove(partition) {
                    offsets.extend(state.written.map(|end| (*partition, end)));
                }
            }
        }
        // The callback may have stopped waiting; then the new owner re-reads
        // from the previous commit, which is harmless.
        let _ = revoke.reply.try_send(offsets);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{sync_channel, Receiver};

    fn reply() -> (RevokeReply, Receiver<Vec<(i32, i64)>>) {
        sync_channel(1)
    }

    impl Ledger {
        fn owns(&self, partition: i32) -> bool {
            self.partitions.contains_key(&partition)
        }
    }

    fn partitions_of(ticket: &WriteTicket) -> Vec<i32> {
        ticket
            .flights
            .iter()
            .map(|&(partition, _, _)| partition)
            .collect()
    }

    #[test]
    fn written_prefix_is_committed_after_the_write() {
        let mut ledger = Ledger::default();
        ledger.assign(&[0, 1], 1);
        assert!(ledger.accepts(0, 1));
        let ticket = ledger.begin_write(&[(0, 10), (1, 5)]);
        assert_eq!(ledger.commit_offsets(), vec![]);
        ledger.write_done(&ticket);
        assert_eq!(ledger.commit_offsets(), vec![(0, 10), (1, 5)]);
    }

    #[test]
    fn a_later_write_that_finishes_first_waits_for_the_earlier_one() {
        let mut ledger = Ledger::default();
        ledger.assign(&[0], 1);
        let first = ledger.begin_write(&[(0, 10)]);
        let second = ledger.begin_write(&[(0, 20)]);
        ledger.write_done(&second);
        assert_eq!(ledger.commit_offsets(), vec![]);
        ledger.write_done(&first);
        assert_eq!(ledger.commit_offsets(), vec![(0, 20)]);
    }

    #[test]
    fn messages_polled_before_a_loss_are_refused_after_reassignment() {
        let mut ledger = Ledger::default();
        ledger.assign(&[0], 1);
        ledger.lose(&[0]);
        assert!(!ledger.accepts(0, 1));
        ledger.assign(&[0], 3);
        assert!(!ledger.accepts(0, 1), "polled under the old ownership");
        assert!(!ledger.accepts(0, 2), "polled between loss and assignment");
        assert!(ledger.accepts(0, 3));
        assert!(ledger.accepts(0, 7));
    }

    #[test]
    fn a_write_of_a_lost_partition_never_commits_even_after_reassignment() {
        let mut ledger = Ledger::default();
        ledger.assign(&[0], 1);
        let old = ledger.begin_write(&[(0, 200)]);
        ledger.lose(&[0]);
        ledger.write_done(&old);
        assert_eq!(ledger.commit_offsets(), vec![]);
        ledger.assign(&[0], 2);
        ledger.write_done(&old);
        assert_eq!(ledger.commit_offsets(), vec![], "old epoch's write");
        let new = ledger.begin_write(&[(0, 120)]);
        ledger.write_done(&new);
        assert_eq!(ledger.commit_offsets(), vec![(0, 120)]);
    }

    #[test]
    fn a_write_done_before_the_loss_is_dropped_with_the_partition() {
        let mut ledger = Ledger::default();
        ledger.assign(&[0], 1);
        let ticket = ledger.begin_write(&[(0, 50)]);
        ledger.write_done(&ticket);
        ledger.lose(&[0]);
        assert_eq!(ledger.commit_offsets(), vec![]);
        assert!(!ledger.owns(0));
    }

    #[test]
    fn revoke_without_writes_in_flight_answers_at_once() {
        let mut ledger = Ledger::default();
        ledger.assign(&[0, 1], 1);
        let ticket = ledger.begin_write(&[(0, 10)]);
        ledger.write_done(&ticket);
        let (tx, rx) = reply();
        ledger.revoke(&[0], tx);
        assert_eq!(rx.try_recv().unwrap(), vec![(0, 10)]);
        assert!(!ledger.owns(0));
        assert!(ledger.accepts(1, 1));
        assert_eq!(ledger.commit_offsets(), vec![]);
    }

    #[test]
    fn revoke_waits_for_the_writes_in_flight_and_refuses_new_messages() {
        let mut ledger = Ledger::default();
        ledger.assign(&[0, 1], 1);
        let ticket = ledger.begin_write(&[(0, 10), (1, 4)]);
        let (tx, rx) = reply();
        ledger.revoke(&[0], tx);
        assert!(
            rx.try_recv().is_err(),
            "a write of partition 0 is in flight"
        );
        assert!(!ledger.accepts(0, 1));
        ledger.write_done(&ticket);
        assert_eq!(rx.try_recv().unwrap(), vec![(0, 10)]);
        assert_eq!(ledger.commit_offsets(), vec![(1, 4)]);
    }

    #[test]
    fn a_revoke_given_up_on_does_not_touch_the_reassigned_partition() {
        let mut ledger = Ledger::default();
        ledger.assign(&[0], 1);
        let old = ledger.begin_write(&[(0, 10)]);
        let (tx, rx) = reply();
        ledger.revoke(&[0], tx);
        drop(rx); // the callback stopped waiting
        ledger.assign(&[0], 5);
        ledger.write_done(&old);
        assert!(ledger.owns(0));
        assert!(ledger.accepts(0, 5));
        assert_eq!(ledger.commit_offsets(), vec![]);
    }

    #[test]
    fn a_failed_write_blocks_its_partition_at_the_prefix_before_it() {
        let mut ledger = Ledger::default();
        ledger.assign(&[0], 1);
        let first = ledger.begin_write(&[(0, 10)]);
        ledger.write_done(&first);
        let failed = ledger.begin_write(&[(0, 20)]);
        let (tx, rx) = reply();
        ledger.revoke(&[0], tx);
        ledger.write_failed(&failed);
        assert_eq!(rx.try_recv().unwrap(), vec![(0, 10)]);
    }

    #[test]
    fn partitions_not_owned_are_left_out_of_a_write() {
        let mut ledger = Ledger::default();
        ledger.assign(&[1], 1);
        let ticket = ledger.begin_write(&[(0, 10), (1, 3)]);
        assert_eq!(partitions_of(&ticket), vec![1]);
        ledger.write_done(&ticket);
        assert_eq!(ledger.commit_offsets(), vec![(1, 3)]);
    }
}
