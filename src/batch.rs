//! The "reduce" step: accumulates consumed messages into a batch that keeps,
//! per object, only what can still decide its row, the dead letters, and
//! for every partition the offset to commit once the batch is written.
//!
//! The ordering rules (docs/reliability.md, "Ordering rules") make an
//! object's state a function of the *set* of its events, so that
//! duplicates, any delivery order and any batch split end in the same row.
//! An object's state is two parts, each kept by "newest wins" under one
//! total order ([`OrderKey`]):
//! - `current`: the newest creation or unconditional removal (delete
//!   marker, delete without a version id, lifecycle expiration);
//! - `deleted_versions`: per version id, the newest delete of that one
//!   version (`ObjectRemoved:Delete` with a `versionId`), kept only while it
//!   is newer than `current`.
//!
//! The object is live when `current` is a creation whose version has no
//! such delete. The database row holds the same two parts and the upsert
//! merges them the same way (sink.rs), so merging in the batch first changes
//! nothing but the number of rows written.
//!
//! Pending work is kept per partition so that the work of revoked partitions
//! can be dropped without touching the others (the new owner reads it again).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use time::format_description::well_known::Rfc3339;

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

/// The total order of an object's changes: sequencer first; at an equal
/// sequencer a removal beats a creation; then the Kafka position of the
/// event, which only means "later" within one partition but is a
/// deterministic tie-break across partitions too (the higher partition
/// wins). A state without a position (none yet: rows from the bucket itself
/// in a later version) sorts below any event at the same sequencer.
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

/// Whether `change` deletes one specific version (and so only matters when
/// that version is the current one).
pub fn deletes_one_version(change: &Change) -> bool {
    matches!(
        change.action,
        Action::Remove {
            only_if_current_version: true,
            ..
        }
    )
}

/// One object's reduced state within a batch.
#[derive(Debug, Default)]
struct Reduced {
    current: Option<(Change, Origin)>,
    /// Version id -> newest delete of that version, newer than `current`.
    deleted_versions: BTreeMap<String, (Change, Origin)>,
}

impl Reduced {
    /// Adds one change; on an equal key the later one wins (only records of
    /// one message share a key, and they always reach the same batch).
    fn add(&mut self, change: Change, origin: Origin) {
        let key = OrderKey::of(&change, origin);
        if deletes_one_version(&change) {
            let version = version_of(&change).unwrap_or_default().to_string();
            let newer = self
                .deleted_versions
                .get(&version)
                .is_none_or(|(old, o)| key >= OrderKey::of(old, *o));
            if newer && self.current_key().is_none_or(|current| key > current) {
                self.deleted_versions.insert(version, (change, origin));
            }
            return;
        }
        if self.current_key().is_none_or(|current| key >= current) {
            self.current = Some((change, origin));
            self.deleted_versions
                .retain(|_, (old, o)| OrderKey::of(old, *o) > key);
        }
    }

    fn current_key(&self) -> Option<OrderKey> {
        self.current.as_ref().map(|(c, o)| OrderKey::of(c, *o))
    }

    fn merge(&mut self, other: Reduced) {
        for (change, origin) in other.current.into_iter() {
            self.add(change, origin);
        }
        for (change, origin) in other.deleted_versions.into_values() {
            self.add(change, origin);
        }
    }

    /// The row to write: the current change (or, when there is none, the
    /// newest version delete standing in for it) and the version deletes as
    /// JSON text, in the shape the table keeps them. `None` only for a
    /// state that never received a change.
    fn into_row(self) -> Option<(Change, Origin, String)> {
        let json = deleted_versions_json(&self.deleted_versions);
        let row = match self.current {
            Some(current) => current,
            None => self
                .deleted_versions
                .into_values()
                .max_by_key(|(c, o)| OrderKey::of(c, *o))?,
        };
        Some((row.0, row.1, json))
    }
}

/// `{"<version id>": {"sequencer": …, "partition": …, "offset": …,
/// "event_time": "…"}, …}`, or `{}`.
fn deleted_versions_json(deletes: &BTreeMap<String, (Change, Origin)>) -> String {
    if deletes.is_empty() {
        return EMPTY_JSON.to_string();
    }
    let entries: serde_json::Map<String, serde_json::Value> = deletes
        .iter()
        .map(|(version, (change, origin))| {
            let entry = serde_json::json!({
                "sequencer": change.sequencer,
                "partition": origin.partition,
                "offset": origin.offset,
                "event_time": change.event_time.format(&Rfc3339).unwrap_or_default(),
            });
            (version.clone(), entry)
        })
        .collect();
    serde_json::Value::Object(entries).to_string()
}

const EMPTY_JSON: &str = "{}";

/// A batch ready to be written: one row per object, and the offsets that
/// may be committed once the rows are durable.
#[derive(Debug, Default)]
pub struct WriteBatch {
    /// Per object, its current change, or when the batch has none its
    /// newest version delete (then a row with no current state).
    pub changes: Vec<Change>,
    /// `origins[i]` is the message `changes[i]` came from.
    pub origins: Vec<Origin>,
    /// `deleted_versions[i]`: the version deletes of `changes[i]`'s object
    /// newer than its current change, as JSON object text (`{}` mostly).
    pub deleted_versions: Vec<String>,
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
    objects: HashMap<ObjectId, Reduced>,
    dead_letters: Vec<DeadLetter>,
    next_offset: i64,
    messages: u64,
    families: HashMap<EventFamily, u64>,
    reservation: Reservation,
}

/// The batch being accumulated by the pipeline.
#[derive(Debug, Default)]
pub struct Batch {
    partitions: HashMap<i32, PartitionWork>,
    started: Option<Instant>,
}

impl Batch {
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
                    work.objects
                        .entry(change.object.clone())
                        .or_default()
                        .add(change, origin);
                }
            }
            Contribution::DeadLetter(dead_letter) => work.dead_letters.push(dead_letter),
        }
    }

    /// Rows the batch would write: distinct objects plus dead letters.
    pub fn rows(&self) -> usize {
        self.partitions
            .values()
            .map(|w| w.objects.len() + w.dead_letters.len())
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
        let mut merged: HashMap<ObjectId, Reduced> = HashMap::new();
        for (partition, work) in partitions {
            out.commit_offsets.push((partition, work.next_offset));
            out.messages += work.messages;
            for (family, count) in work.families {
                *out.families.entry(family).or_default() += count;
            }
            out.dead_letters.extend(work.dead_letters);
            out.reservation.merge(work.reservation);
            if merged.is_empty() {
                merged = work.objects;
            } else {
                for (object, reduced) in work.objects {
                    merged.entry(object).or_default().merge(reduced);
                }
            }
        }
        out.commit_offsets.sort_unstable();
        // Rows in key order: concurrent transactions (several write lanes)
        // that happen to share keys then lock them in the same order and
        // cannot deadlock; index inserts also get better locality.
        let mut rows: Vec<(Change, Origin, String)> =
            merged.into_values().filter_map(Reduced::into_row).collect();
        rows.sort_unstable_by(|a, b| a.0.object.cmp(&b.0.object));
        out.changes.reserve(rows.len());
        out.origins.reserve(rows.len());
        out.deleted_versions.reserve(rows.len());
        for (change, origin, deleted_versions) in rows {
            out.changes.push(change);
            out.origins.push(origin);
            out.deleted_versions.push(deleted_versions);
        }
        out
    }
}

fn version_of(change: &Change) -> Option<&str> {
    match &change.action {
        Action::Upsert(state) => state.version_id.as_deref(),
        Action::Remove { version_id, .. } => version_id.as_deref(),
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
        let out = reduce(vec![
            (put("k", 5, Some("b")), origin(0, 9)),
            (put("k", 5, Some("a")), origin(0, 3)),
        ]);
        assert_eq!(version_of(&out.changes[0]), Some("b"));
    }

    #[test]
    fn a_version_delete_of_the_current_version_survives_the_reduction() {
        // The example: Put v1, Put v2, Delete v2 in one batch must
        // end as one event at a time does (the object is not live).
        let out = reduce(vec![
            (put("k", 1, Some("v1")), origin(0, 1)),
            (put("k", 2, Some("v2")), origin(0, 2)),
            (delete("k", 3, Some("v2"), true), origin(0, 3)),
        ]);
        assert_eq!(version_of(&out.changes[0]), Some("v2"));
        let deleted: serde_json::Value = serde_json::from_str(&out.deleted_versions[0]).unwrap();
        assert_eq!(deleted["v2"]["sequencer"], 3);
    }

    #[test]
    fn version_deletes_older_than_the_current_state_are_pruned() {
        let out = reduce(vec![
            (delete("k", 3, Some("v1"), true), origin(0, 1)),
            (put("k", 4, Some("v2")), origin(0, 2)),
        ]);
        assert_eq!(out.deleted_versions, vec!["{}".to_string()]);
    }

    #[test]
    fn only_version_deletes_make_a_row_without_current_state() {
        let out = reduce(vec![
            (delete("k", 3, Some("v1"), true), origin(0, 1)),
            (delete("k", 5, Some("v2"), true), origin(0, 2)),
        ]);
        assert!(deletes_one_version(&out.changes[0]));
        let deleted: serde_json::Value = serde_json::from_str(&out.deleted_versions[0]).unwrap();
        assert_eq!(deleted.as_object().unwrap().len(), 2);
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
        assert_eq!(out.deleted_versions.len(), out.changes.len());
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
