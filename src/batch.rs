//! The "reduce" step: accumulates consumed messages into a batch that keeps
//! only the newest change per object, the dead letters, and for every
//! partition the offset to commit once the batch is written.
//!
//! Pending work is kept per partition so that the work of revoked partitions
//! can be dropped without touching the others (the new owner reads it again).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::event::{Action, Change, EventFamily, ObjectId};

/// Where a message came from: enough to commit past it or to dead-letter it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    pub partition: i32,
    pub offset: i64,
}

/// A message that could not be used, kept with its raw bytes and the reason.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    pub origin: Origin,
    pub message_key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub reason: String,
}

/// What one consumed message contributes to a batch.
#[derive(Debug)]
pub enum Contribution {
    /// Object changes (possibly none: skipped event families).
    Changes(Vec<Change>),
    DeadLetter(DeadLetter),
}

/// A batch ready to be written: one row per object, and the offsets that
/// may be committed once the rows are durable.
#[derive(Debug, Default)]
pub struct WriteBatch {
    pub changes: Vec<Change>,
    /// `origins[i]` is the message `changes[i]` came from.
    pub origins: Vec<Origin>,
    pub dead_letters: Vec<DeadLetter>,
    /// Per partition, the offset to commit (last consumed offset + 1).
    pub commit_offsets: Vec<(i32, i64)>,
    /// Messages that went into this batch, for metrics.
    pub messages: u64,
    /// Change records that went into this batch per event family, for
    /// metrics (superseded ones included: they were applied, in order).
    pub families: HashMap<EventFamily, u64>,
    /// When the oldest message of the batch was consumed.
    pub started: Option<Instant>,
}

#[derive(Debug, Default)]
struct PartitionWork {
    changes: HashMap<ObjectId, (Change, Origin)>,
    dead_letters: Vec<DeadLetter>,
    next_offset: i64,
    messages: u64,
    families: HashMap<EventFamily, u64>,
}

/// The batch being accumulated by the pipeline.
#[derive(Debug, Default)]
pub struct Batch {
    partitions: HashMap<i32, PartitionWork>,
    started: Option<Instant>,
}

impl Batch {
    /// Adds one consumed message; its offset advances whatever it holds.
    pub fn add(&mut self, origin: Origin, contribution: Contribution) {
        self.started.get_or_insert_with(Instant::now);
        let work = self.partitions.entry(origin.partition).or_default();
        work.next_offset = work.next_offset.max(origin.offset + 1);
        work.messages += 1;
        match contribution {
            Contribution::Changes(changes) => {
                for change in changes {
                    *work
                        .families
                        .entry(EventFamily::of(&change.event_name))
                        .or_default() += 1;
                    merge_into(&mut work.changes, change, origin);
                }
            }
            Contribution::DeadLetter(dead_letter) => work.dead_letters.push(dead_letter),
        }
    }

    /// Rows the batch would write: distinct objects plus dead letters.
    pub fn rows(&self) -> usize {
        self.partitions
            .values()
            .map(|w| w.changes.len() + w.dead_letters.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.partitions.is_empty()
    }

    /// When the batch reaches `max_age`, or `None` while it is empty.
    pub fn deadline(&self, max_age: Duration) -> Option<Instant> {
        self.started.map(|t| t + max_age)
    }

    /// Forgets the unwritten work of partitions this member no longer owns;
    /// their new owner consumes it again from the last committed offset.
    pub fn drop_partitions(&mut self, partitions: &[i32]) {
        for partition in partitions {
            self.partitions.remove(partition);
        }
        if self.partitions.is_empty() {
            self.started = None;
        }
    }

    /// Takes the accumulated work, leaving an empty batch.
    pub fn take(&mut self) -> WriteBatch {
        let started = self.started.take();
        let partitions = std::mem::take(&mut self.partitions);
        let mut out = WriteBatch {
            started,
            ..WriteBatch::default()
        };
        // The same object normally lives in one partition (MinIO keys its
        // messages by object), but a change of partition count can spread it:
        // merge across partitions so one statement never touches a row twice.
        let mut merged: HashMap<ObjectId, (Change, Origin)> = HashMap::new();
        for (partition, work) in partitions {
            out.commit_offsets.push((partition, work.next_offset));
            out.messages += work.messages;
            for (family, count) in work.families {
                *out.families.entry(family).or_default() += count;
            }
            out.dead_letters.extend(work.dead_letters);
            if merged.is_empty() {
                merged = work.changes;
            } else {
                for (change, origin) in work.changes.into_values() {
                    merge_into(&mut merged, change, origin);
                }
            }
        }
        out.commit_offsets.sort_unstable();
        // Rows in key order: concurrent transactions (several write lanes)
        // that happen to share keys then lock them in the same order and
        // cannot deadlock; index inserts also get better locality.
        let mut rows: Vec<(Change, Origin)> = merged.into_values().collect();
        rows.sort_unstable_by(|a, b| a.0.object.cmp(&b.0.object));
        (out.changes, out.origins) = rows.into_iter().unzip();
        out
    }
}

fn merge_into(pending: &mut HashMap<ObjectId, (Change, Origin)>, change: Change, origin: Origin) {
    match pending.get_mut(&change.object) {
        Some(current) => {
            if supersedes(&change, &current.0) {
                *current = (change, origin);
            }
        }
        None => {
            pending.insert(change.object.clone(), (change, origin));
        }
    }
}

/// The ordering rule, the same as the SQL upsert guard: a change applies
/// when its sequencer is newer, or equal unless it would undo a removal with
/// a creation. A removal of one specific version applies only while that
/// version is the current one.
pub fn supersedes(incoming: &Change, current: &Change) -> bool {
    if let Action::Remove {
        version_id,
        only_if_current_version: true,
    } = &incoming.action
    {
        if version_id.as_deref() != version_of(current) {
            return false;
        }
    }
    match incoming.sequencer.cmp(&current.sequencer) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal => is_removal(incoming) || !is_removal(current),
    }
}

fn version_of(change: &Change) -> Option<&str> {
    match &change.action {
        Action::Upsert(state) => state.version_id.as_deref(),
        Action::Remove { version_id, .. } => version_id.as_deref(),
    }
}

fn is_removal(change: &Change) -> bool {
    matches!(change.action, Action::Remove { .. })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ObjectState;
    use time::OffsetDateTime;

    fn change(key: &str, sequencer: i64, action: Action) -> Change {
        Change {
            object: ObjectId {
                bucket: "b".into(),
                key: key.into(),
            },
            event_name: "s3:ObjectCreated:Put".into(),
            event_time: OffsetDateTime::UNIX_EPOCH,
            sequencer,
            action,
        }
    }

    fn put(key: &str, sequencer: i64, version: Option<&str>) -> Change {
        change(
            key,
            sequencer,
            Action::Upsert(ObjectState {
                version_id: version.map(Into::into),
                ..ObjectState::default()
            }),
        )
    }

    fn delete(key: &str, sequencer: i64, version: Option<&str>, guarded: bool) -> Change {
        change(
            key,
            sequencer,
            Action::Remove {
                version_id: version.map(Into::into),
                only_if_current_version: guarded,
            },
        )
    }

    fn origin(partition: i32, offset: i64) -> Origin {
        Origin { partition, offset }
    }

    #[test]
    fn newer_sequencer_wins_in_any_arrival_order() {
        let (old, new) = (put("k", 1, None), put("k", 2, None));
        assert!(supersedes(&new, &old));
        assert!(!supersedes(&old, &new));
    }

    #[test]
    fn equal_sequencer_removal_beats_creation_otherwise_later_wins() {
        let (created, removed) = (put("k", 5, None), delete("k", 5, None, false));
        assert!(supersedes(&removed, &created));
        assert!(!supersedes(&created, &removed));
        assert!(supersedes(&put("k", 5, Some("v")), &created));
    }

    #[test]
    fn deleting_an_older_version_leaves_the_current_one() {
        let current = put("k", 5, Some("v2"));
        assert!(!supersedes(&delete("k", 9, Some("v1"), true), &current));
        assert!(supersedes(&delete("k", 9, Some("v2"), true), &current));
        assert!(supersedes(&delete("k", 9, Some("m1"), false), &current));
    }

    #[test]
    fn batch_keeps_newest_change_per_object_and_every_offset() {
        let mut batch = Batch::default();
        batch.add(
            origin(0, 10),
            Contribution::Changes(vec![put("a", 3, None)]),
        );
        batch.add(
            origin(0, 11),
            Contribution::Changes(vec![put("a", 1, None)]),
        );
        batch.add(origin(1, 4), Contribution::Changes(vec![put("b", 1, None)]));
        batch.add(origin(1, 5), Contribution::Changes(vec![]));
        assert_eq!(batch.rows(), 2);
        let out = batch.take();
        assert!(batch.is_empty());
        assert_eq!(out.commit_offsets, vec![(0, 12), (1, 6)]);
        assert_eq!(out.messages, 4);
        assert_eq!(out.families.get(&EventFamily::Created), Some(&3));
        let a = out
            .changes
            .iter()
            .position(|c| c.object.key == "a")
            .unwrap();
        assert_eq!(out.changes[a].sequencer, 3);
        assert_eq!(out.origins[a], origin(0, 10));
    }

    #[test]
    fn dead_letters_advance_offsets_and_count_as_rows() {
        let mut batch = Batch::default();
        let dead_letter = DeadLetter {
            origin: origin(2, 7),
            message_key: None,
            payload: Some(b"{".to_vec()),
            reason: "invalid json".into(),
        };
        batch.add(origin(2, 7), Contribution::DeadLetter(dead_letter.clone()));
        assert_eq!(batch.rows(), 1);
        let out = batch.take();
        assert_eq!(out.dead_letters, vec![dead_letter]);
        assert_eq!(out.commit_offsets, vec![(2, 8)]);
    }

    #[test]
    fn same_object_in_two_partitions_is_written_once() {
        let mut batch = Batch::default();
        batch.add(origin(0, 1), Contribution::Changes(vec![put("a", 7, None)]));
        batch.add(origin(1, 1), Contribution::Changes(vec![put("a", 4, None)]));
        let out = batch.take();
        assert_eq!(out.changes.len(), 1);
        assert_eq!(out.changes[0].sequencer, 7);
    }

    #[test]
    fn dropping_revoked_partitions_keeps_the_rest() {
        let mut batch = Batch::default();
        batch.add(origin(0, 1), Contribution::Changes(vec![put("a", 1, None)]));
        batch.add(origin(1, 1), Contribution::Changes(vec![put("b", 1, None)]));
        batch.drop_partitions(&[0]);
        let out = batch.take();
        assert_eq!(out.commit_offsets, vec![(1, 2)]);
        assert_eq!(out.changes.len(), 1);
        batch.add(origin(3, 1), Contribution::Changes(vec![]));
        batch.drop_partitions(&[3]);
        assert!(batch.is_empty());
        assert!(batch.deadline(Duration::from_secs(1)).is_none());
    }
}
