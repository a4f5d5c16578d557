//! The "reduce" step: accumulates consumed messages into a batch that keeps,
//! per object version, only what can still decide its row, every change for
//! the history, the dead letters, and for every partition the offset to
//! commit once the batch is written.
//!
//! The ordering rules (docs/versions.md) make every row a function of the
//! *set* of changes, so that duplicates, any delivery order and any batch
//! split end in the same rows. A version (bucket, key, version id; `null`
//! without one) has two registers, each "newest wins" under one total order
//! ([`OrderKey`]):
//! - its state: the newest creation of that version, delete marker, or
//!   removal naming it (a delete without a version id names `null`);
//! - its permanent delete: the newest `ObjectRemoved:Delete` with that
//!   version id ([`deletes_one_version`]).
//!
//! The database keeps the same registers (sql/0005's `object_versions`),
//! merges them the same way and derives each object's current row from
//! them, so reducing in the batch first changes nothing but the number of
//! rows written.
//!
//! Pending work is kept per partition so that the work of revoked partitions
//! can be dropped without touching the others (the new owner reads it again).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::budget::Reservation;
use crate::event::{Action, Change, EventFamily, ObjectId};

/// Where a message came from: enough to commit past it or to dead-letter it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    pub partition: i32,
    pub offset: i64,
}

/// A message (or one record of it) that could not be used, kept with its
/// raw bytes and the reason.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLetter {
    pub origin: Origin,
    /// Which record of the message: the index in `Records` of a change the
    /// database refused; 0 for a message that could not be parsed as a whole
    /// (it is the only dead letter of its offset). Part of the row's key.
    pub record: u32,
    /// The `reason` label of `objmeta_dead_letters_total`.
    pub code: &'static str,
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

/// The total order of a version's changes: sequencer first; at an equal
/// sequencer a removal beats a creation; then the Kafka position of the
/// event, which only means "later" within one partition but is a
/// deterministic tie-break across partitions too (the higher partition
/// wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct OrderKey {
    pub sequencer: i64,
    pub removal: bool,
    pub partition: i32,
    pub offset: i64,
}

impl OrderKey {
    pub fn of(change: &Change, origin: Origin) -> Self {
        OrderKey {
            sequencer: change.sequencer,
            removal: matches!(change.action, Action::Remove { .. }),
            partition: origin.partition,
            offset: origin.offset,
        }
    }
}

/// Whether `change` permanently deletes one specific version (its second
/// register), rather than being a version's state.
pub fn deletes_one_version(change: &Change) -> bool {
    matches!(
        change.action,
        Action::Remove {
            only_if_current_version: true,
            ..
        }
    )
}

/// The version id a change names, `null` (S3's word) without one.
pub fn version_key(change: &Change) -> &str {
    let version = match &change.action {
        Action::Upsert(state) => state.version_id.as_deref(),
        Action::Remove { version_id, .. } => version_id.as_deref(),
    };
    version.unwrap_or(NULL_VERSION)
}

/// The version id of an unversioned object, as S3 spells it.
pub const NULL_VERSION: &str = "null";

/// One object version.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct VersionId {
    object: ObjectId,
    version: String,
}

/// One version's changes within a batch and its two registers (indexes
/// into `changes`). `changes` holds every change when the history is kept,
/// and only the registers' otherwise.
#[derive(Debug, Default)]
struct Reduced {
    changes: Vec<(Change, Origin)>,
    state: Option<usize>,
    delete: Option<usize>,
}

impl Reduced {
    /// Adds one change; on an equal key the later one wins (only records of
    /// one message share a key, and they always reach the same batch).
    fn add(&mut self, change: Change, origin: Origin, keep: bool) {
        let key = OrderKey::of(&change, origin);
        let slot = match deletes_one_version(&change) {
            true => &mut self.delete,
            false => &mut self.state,
        };
        let newer = slot.is_none_or(|i| {
            let (old, o) = &self.changes[i];
            key >= OrderKey::of(old, *o)
        });
        match (*slot, newer, keep) {
            // Without the history, a superseded register's change is of no more use.
            (Some(i), true, false) => self.changes[i] = (change, origin),
            (_, false, false) => {}
            (_, newer, _) => {
                if newer {
                    *slot = Some(self.changes.len());
                }
                self.changes.push((change, origin));
            }
        }
    }

    fn merge(&mut self, other: Reduced, keep: bool) {
        for (change, origin) in other.changes {
            self.add(change, origin, keep);
        }
    }

    /// The version's row (its state, or its delete standing in for it, and
    /// its delete beside a state), and, when `history` is kept, each
    /// distinct change of the version once.
    fn into_row(mut self, history: &mut Vec<(Change, Origin)>, keep: bool) -> Option<VersionRow> {
        let take =
            |changes: &[(Change, Origin)], index: Option<usize>| index.map(|i| changes[i].clone());
        let (state, delete) = match keep {
            true => (
                take(&self.changes, self.state),
                take(&self.changes, self.delete),
            ),
            false => {
                let mut slots: Vec<Option<(Change, Origin)>> =
                    self.changes.drain(..).map(Some).collect();
                let mut out = |index: Option<usize>| index.and_then(|i| slots[i].take());
                (out(self.state), out(self.delete))
            }
        };
        if keep {
            self.changes
                .sort_by(|a, b| history_key(&a.0).cmp(&history_key(&b.0)));
            self.changes
                .dedup_by(|a, b| history_key(&a.0) == history_key(&b.0));
            history.append(&mut self.changes);
        }
        let ((change, origin), delete) = match (state, delete) {
            (Some(state), delete) => (state, delete),
            (None, Some(delete)) => (delete, None),
            (None, None) => return None,
        };
        Some(VersionRow {
            change,
            origin,
            delete,
        })
    }
}

/// What makes a history row unique besides its version (sql/0005).
fn history_key(change: &Change) -> (i64, &str) {
    (change.sequencer, change.event_name.as_str())
}

/// One row of a write batch: a version's state change (or its permanent delete when the
/// batch has no state), where it came from, and its permanent delete beside a state.
#[derive(Debug)]
pub struct VersionRow {
    pub change: Change,
    pub origin: Origin,
    pub delete: Option<(Change, Origin)>,
}

/// A batch ready to be written: one row per object version, and the offsets
/// that may be committed once the rows are durable.
#[derive(Debug, Default)]
pub struct WriteBatch {
    /// Per object version, its state change, or when the batch has none its
    /// permanent delete; in (object, version) order.
    pub changes: Vec<Change>,
    /// `origins[i]` is the message `changes[i]` came from.
    pub origins: Vec<Origin>,
    /// `deletes[i]`: the permanent delete of `changes[i]`'s version beside its state.
    pub deletes: Vec<Option<(Change, Origin)>>,
    /// Every distinct change of the batch, for `object_history` (empty when it is not kept).
    pub history: Vec<(Change, Origin)>,
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
    /// The memory budget its messages hold until the write ends.
    pub reservation: Reservation,
}

#[derive(Debug, Default)]
struct PartitionWork {
    versions: HashMap<VersionId, Reduced>,
    dead_letters: Vec<DeadLetter>,
    next_offset: i64,
    messages: u64,
    families: HashMap<EventFamily, u64>,
    reservation: Reservation,
}

/// The batch being accumulated by the pipeline.
#[derive(Debug)]
pub struct Batch {
    partitions: HashMap<i32, PartitionWork>,
    started: Option<Instant>,
    /// Whether every change goes to `object_history` (`--history`).
    history: bool,
}

impl Default for Batch {
    /// A batch that keeps the history, as objmeta does by default.
    fn default() -> Self {
        Batch::new(true)
    }
}

impl Batch {
    pub fn new(history: bool) -> Self {
        Batch {
            partitions: HashMap::new(),
            started: None,
            history,
        }
    }

    /// Adds one consumed message, and the budget it holds; its offset
    /// advances whatever it holds.
    pub fn add(&mut self, origin: Origin, contribution: Contribution, reservation: Reservation) {
        self.started.get_or_insert_with(Instant::now);
        let work = self.partitions.entry(origin.partition).or_default();
        work.next_offset = work.next_offset.max(origin.offset + 1);
        work.messages += 1;
        work.reservation.merge(reservation);
        match contribution {
            Contribution::Changes(changes) => {
                for change in changes {
                    *work
                        .families
                        .entry(EventFamily::of(&change.event_name))
                        .or_default() += 1;
                    let id = VersionId {
                        object: change.object.clone(),
                        version: version_key(&change).to_string(),
                    };
                    let keep = self.history;
                    work.versions
                        .entry(id)
                        .or_default()
                        .add(change, origin, keep);
                }
            }
            Contribution::DeadLetter(dead_letter) => work.dead_letters.push(dead_letter),
        }
    }

    /// Rows the batch would write: distinct object versions plus dead letters.
    pub fn rows(&self) -> usize {
        self.partitions
            .values()
            .map(|w| w.versions.len() + w.dead_letters.len())
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
        let mut merged: HashMap<VersionId, Reduced> = HashMap::new();
        for (partition, work) in partitions {
            out.commit_offsets.push((partition, work.next_offset));
            out.messages += work.messages;
            for (family, count) in work.families {
                *out.families.entry(family).or_default() += count;
            }
            out.dead_letters.extend(work.dead_letters);
            out.reservation.merge(work.reservation);
            if merged.is_empty() {
                merged = work.versions;
            } else {
                for (version, reduced) in work.versions {
                    merged
                        .entry(version)
                        .or_default()
                        .merge(reduced, self.history);
                }
            }
        }
        out.commit_offsets.sort_unstable();
        let rows = merged
            .into_values()
            .filter_map(|reduced| reduced.into_row(&mut out.history, self.history))
            .collect();
        out.set_rows(rows);
        out
    }
}

impl WriteBatch {
    /// Takes the rows out (to replace some: enrichment).
    pub fn take_rows(&mut self) -> Vec<VersionRow> {
        std::mem::take(&mut self.changes)
            .into_iter()
            .zip(std::mem::take(&mut self.origins))
            .zip(std::mem::take(&mut self.deletes))
            .map(|((change, origin), delete)| VersionRow {
                change,
                origin,
                delete,
            })
            .collect()
    }

    /// Sets the rows, in (object, version) order: concurrent transactions (several write
    /// lanes) that happen to share keys then lock them in the same order and cannot
    /// deadlock; index inserts also get better locality.
    pub fn set_rows(&mut self, mut rows: Vec<VersionRow>) {
        rows.sort_unstable_by(|a, b| {
            (&a.change.object, version_key(&a.change))
                .cmp(&(&b.change.object, version_key(&b.change)))
        });
        self.changes = Vec::with_capacity(rows.len());
        self.origins = Vec::with_capacity(rows.len());
        self.deletes = Vec::with_capacity(rows.len());
        for row in rows {
            self.changes.push(row.change);
            self.origins.push(row.origin);
            self.deletes.push(row.delete);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Basis, ObjectState};
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
            record: 0,
            basis: Basis::Event,
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

    fn reduce(changes: Vec<(Change, Origin)>) -> WriteBatch {
        let mut batch = Batch::default();
        for (change, origin) in changes {
            batch.add(
                origin,
                Contribution::Changes(vec![change]),
                Reservation::default(),
            );
        }
        batch.take()
    }

    #[test]
    fn newer_sequencer_wins_in_any_arrival_order() {
        for order in [[1, 2], [2, 1]] {
            let out = reduce(
                order
                    .iter()
                    .map(|&s| (put("k", s, None), origin(0, s)))
                    .collect(),
            );
            assert_eq!(out.changes.len(), 1);
            assert_eq!(out.changes[0].sequencer, 2);
        }
    }

    #[test]
    fn equal_sequencer_removal_beats_creation_then_later_position() {
        let out = reduce(vec![
            (delete("k", 5, None, false), origin(0, 1)),
            (put("k", 5, None), origin(0, 2)),
        ]);
        assert!(matches!(out.changes[0].action, Action::Remove { .. }));
        let tagged = |n: usize| {
            let mut change = put("k", 5, Some("b"));
            change.event_name = format!("s3:ObjectCreated:PutTagging{n}");
            change
        };
        let out = reduce(vec![(tagged(1), origin(0, 9)), (tagged(2), origin(0, 3))]);
        assert_eq!(out.changes.len(), 1);
        assert_eq!(out.changes[0].event_name, "s3:ObjectCreated:PutTagging1");
    }

    #[test]
    fn each_version_keeps_its_state_and_its_permanent_delete() {
        // Put v1, Put v2, Delete v2 in one batch: two version rows, v2's
        // carrying its delete, so that the database reveals v1.
        let out = reduce(vec![
            (put("k", 1, Some("v1")), origin(0, 1)),
            (put("k", 2, Some("v2")), origin(0, 2)),
            (delete("k", 3, Some("v2"), true), origin(0, 3)),
        ]);
        let versions: Vec<&str> = out.changes.iter().map(version_key).collect();
        assert_eq!(versions, vec!["v1", "v2"]);
        assert!(out.deletes[0].is_none());
        let (delete, at) = out.deletes[1].as_ref().expect("v2's delete");
        assert_eq!((delete.sequencer, *at), (3, origin(0, 3)));
        assert_eq!(out.history.len(), 3);
    }

    #[test]
    fn a_delete_before_its_creation_is_kept_beside_it() {
        let out = reduce(vec![
            (delete("k", 3, Some("v1"), true), origin(0, 1)),
            (put("k", 2, Some("v1")), origin(0, 2)),
        ]);
        assert_eq!(out.changes.len(), 1);
        assert!(matches!(out.changes[0].action, Action::Upsert(_)));
        assert_eq!(out.deletes[0].as_ref().map(|d| d.0.sequencer), Some(3));
    }

    #[test]
    fn only_a_permanent_delete_makes_a_row_of_its_own() {
        let out = reduce(vec![
            (delete("k", 3, Some("v1"), true), origin(0, 1)),
            (delete("k", 5, Some("v2"), true), origin(0, 2)),
        ]);
        assert_eq!(out.changes.len(), 2);
        assert!(out.changes.iter().all(deletes_one_version));
        assert!(out.deletes.iter().all(Option::is_none));
    }

    #[test]
    fn history_keeps_each_distinct_change_once_and_only_when_asked() {
        let changes = || {
            vec![
                (put("k", 1, None), origin(0, 1)),
                (put("k", 1, None), origin(0, 2)),
                (put("k", 2, None), origin(0, 3)),
                (delete("k", 3, None, false), origin(0, 4)),
            ]
        };
        let out = reduce(changes());
        let kept: Vec<i64> = out.history.iter().map(|(c, _)| c.sequencer).collect();
        assert_eq!(kept, vec![1, 2, 3]);
        let mut batch = Batch::new(false);
        for (change, origin) in changes() {
            batch.add(
                origin,
                Contribution::Changes(vec![change]),
                Reservation::default(),
            );
        }
        let out = batch.take();
        assert!(out.history.is_empty());
        assert_eq!(out.changes.len(), 1);
        assert_eq!(out.changes[0].sequencer, 3);
    }

    #[test]
    fn batch_keeps_newest_change_per_object_and_every_offset() {
        let mut batch = Batch::default();
        batch.add(
            origin(0, 10),
            Contribution::Changes(vec![put("a", 3, None)]),
            Reservation::default(),
        );
        batch.add(
            origin(0, 11),
            Contribution::Changes(vec![put("a", 1, None)]),
            Reservation::default(),
        );
        batch.add(
            origin(1, 4),
            Contribution::Changes(vec![put("b", 1, None)]),
            Reservation::default(),
        );
        batch.add(
            origin(1, 5),
            Contribution::Changes(vec![]),
            Reservation::default(),
        );
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
        assert_eq!(out.deletes.len(), out.changes.len());
        assert_eq!(out.changes[a].sequencer, 3);
        assert_eq!(out.origins[a], origin(0, 10));
    }

    #[test]
    fn dead_letters_advance_offsets_and_count_as_rows() {
        let mut batch = Batch::default();
        let dead_letter = DeadLetter {
            origin: origin(2, 7),
            record: 0,
            code: "invalid_json",
            message_key: None,
            payload: Some(b"{".to_vec()),
            reason: "invalid json".into(),
        };
        batch.add(
            origin(2, 7),
            Contribution::DeadLetter(dead_letter.clone()),
            Reservation::default(),
        );
        assert_eq!(batch.rows(), 1);
        let out = batch.take();
        assert_eq!(out.dead_letters, vec![dead_letter]);
        assert_eq!(out.commit_offsets, vec![(2, 8)]);
    }

    #[test]
    fn same_object_in_two_partitions_is_written_once() {
        let mut batch = Batch::default();
        batch.add(
            origin(0, 1),
            Contribution::Changes(vec![put("a", 7, None)]),
            Reservation::default(),
        );
        batch.add(
            origin(1, 1),
            Contribution::Changes(vec![put("a", 4, None)]),
            Reservation::default(),
        );
        let out = batch.take();
        assert_eq!(out.changes.len(), 1);
        assert_eq!(out.changes[0].sequencer, 7);
    }

    #[test]
    fn dropping_revoked_partitions_keeps_the_rest() {
        let mut batch = Batch::default();
        batch.add(
            origin(0, 1),
            Contribution::Changes(vec![put("a", 1, None)]),
            Reservation::default(),
        );
        batch.add(
            origin(1, 1),
            Contribution::Changes(vec![put("b", 1, None)]),
            Reservation::default(),
        );
        batch.drop_partitions(&[0]);
        let out = batch.take();
        assert_eq!(out.commit_offsets, vec![(1, 2)]);
        assert_eq!(out.changes.len(), 1);
        batch.add(
            origin(3, 1),
            Contribution::Changes(vec![]),
            Reservation::default(),
        );
        batch.drop_partitions(&[3]);
        assert!(batch.is_empty());
        assert!(batch.deadline(Duration::from_secs(1)).is_none());
    }
}
