//! Enrichment: where a store's events fall short (no user metadata, or no order objmeta can
//! trust: `event::Store::events_are_the_state`), an event is only a hint that its object
//! changed. Before a batch holding hints is written, every hinted object is read once with
//! HeadObject, and the hint is replaced by what the store says: a read of the bucket,
//! versioned like a backfill's (sql/0004) by Last-Modified and by `read_at`, the database's
//! clock sampled after the batch's events were consumed and before its first HEAD.
//!
//! Why that ends at the newest state, whatever the lanes and replicas race: every change of an
//! object is followed by its event, and the event by a read that starts after it was
//! consumed; that read's `read_at` is later than the change, so the read with the latest
//! `read_at` (the one the row keeps) started after the object's last change and saw it.
//!
//! HEAD failures never lose or skip anything: the batch is not written, so its offsets are not
//! committed, until every hint is read. A refusal (403: a missing permission, or wrong keys) is
//! a configuration problem, not a bad message: it is retried with backoff, the member reports
//! not ready, and the log names the bucket and the permission. Only an answer that can never
//! be stored (a response objmeta cannot read) turns the record into a dead letter.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use time::OffsetDateTime;
use tokio::sync::Semaphore;

use std::collections::{HashMap, HashSet};

use crate::batch::{Origin, VersionRow, WriteBatch};
use crate::error::SinkError;
use crate::event::{Action, Basis, Change, ObjectId};
use crate::http::Attempt;
use crate::metrics::Metrics;
use crate::s3::{ObjectRead, S3Error, S3};
use crate::sink::{change_dead_letter, Sink};

/// The `event_name` of a row whose state was read for an event (the other reads are
/// `objmeta:Backfill` and `objmeta:Reconcile`).
pub const EVENT_NAME: &str = "objmeta:Enrich";

/// Why a round of reads did not read every hint.
#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    #[error("reading the database clock for the reads: {0}")]
    Clock(SinkError),
    /// The first failed HEAD of the round (a refusal first: it needs a human).
    #[error("{0}")]
    S3(S3Error),
}

/// Reads hinted objects, at most `concurrency` HEADs at a time across all write lanes.
pub struct Enricher {
    s3: S3,
    concurrency: usize,
    permits: Arc<Semaphore>,
    metrics: Metrics,
    attempt_limit: Duration,
}

impl Enricher {
    /// `attempt_limit`: how long a round may go without an answer before liveness counts it
    /// as hung.
    pub fn new(s3: S3, concurrency: usize, metrics: Metrics, attempt_limit: Duration) -> Self {
        let concurrency = concurrency.max(1);
        Enricher {
            s3,
            concurrency,
            permits: Arc::new(Semaphore::new(concurrency)),
            metrics,
            attempt_limit,
        }
    }

    pub fn attempt_limit(&self) -> Duration {
        self.attempt_limit
    }

    /// One round: reads every hint of `batch` not read yet, concurrently. A read that
    /// succeeds replaces its hint even when others fail, so that the next round reads only
    /// what is left; an answer that cannot be stored replaces its change by a dead letter.
    pub async fn read_hints(
        &self,
        batch: &mut WriteBatch,
        sink: &Sink,
        attempt: &Attempt,
    ) -> Result<(), EnrichError> {
        let targets = hinted_objects(batch);
        if targets.is_empty() {
            return Ok(());
        }
        let at = sink.now().await.map_err(EnrichError::Clock)?;
        attempt.touch();
        // No more HEAD futures than can run: one of the SDK's is tens of KiB, and a batch
        // holds thousands of objects.
        let mut reads = stream::iter(targets)
            .map(|object| self.head(object))
            .buffer_unordered(self.concurrency);
        let mut failure: Option<S3Error> = None;
        let mut answers = HashMap::new();
        while let Some((object, result)) = reads.next().await {
            attempt.touch();
            match result {
                Ok(read) => {
                    answers.insert(object, Answer::Read(read));
                }
                Err(S3Error::InvalidResponse { request, detail }) => {
                    answers.insert(object, Answer::Unreadable(format!("{request}: {detail}")));
                }
                Err(error) => failure = Some(worse(failure, error)),
            }
        }
        drop(reads);
        apply(batch, answers, at);
        failure.map_or(Ok(()), |error| Err(EnrichError::S3(error)))
    }

    /// One HEAD, under a permit, timed and counted.
    async fn head(&self, object: ObjectId) -> (ObjectId, Result<Option<ObjectRead>, S3Error>) {
        // The semaphore is never closed: acquiring only waits.
        let _permit = self.permits.acquire().await;
        let started = Instant::now();
        let result = self.s3.head(&object.bucket, &object.key).await;
        self.metrics
            .enrich_head_seconds
            .observe(started.elapsed().as_secs_f64());
        let label = match &result {
            Ok(Some(_)) => "found",
            Ok(None) => "gone",
            Err(e) => e.kind_label(),
        };
        self.metrics.enrich_heads.with_label_values(&[label]).inc();
        (object, result)
    }
}

/// What HeadObject said of one hinted object.
enum Answer {
    /// Its state (`None`: no such object).
    Read(Option<ObjectRead>),
    /// A response objmeta cannot read, and why.
    Unreadable(String),
}

fn is_hint(change: &Change) -> bool {
    change.basis == Basis::Hint
}

/// Whether a row (a version's change, and its delete beside it) rests on a hint.
fn rests_on_hint(change: &Change, delete: Option<&(Change, Origin)>) -> bool {
    is_hint(change) || delete.is_some_and(|(delete, _)| is_hint(delete))
}

/// The objects with a hint among the batch's rows, each once.
fn hinted_objects(batch: &WriteBatch) -> Vec<ObjectId> {
    let mut objects: Vec<ObjectId> = (0..batch.changes.len())
        .filter(|&i| rests_on_hint(&batch.changes[i], batch.deletes[i].as_ref()))
        .map(|i| batch.changes[i].object.clone())
        .collect();
    objects.dedup();
    objects
}

/// Replaces the hint rows of every answered object: by one read row (the object's state now,
/// whichever versions its hints named), or by dead letters when the answer cannot be read.
/// The history keeps the read instead of the hints. Objects without an answer keep their
/// hints for the next round.
fn apply(batch: &mut WriteBatch, answers: HashMap<ObjectId, Answer>, at: OffsetDateTime) {
    let mut rows = Vec::new();
    let mut reads: Vec<(Change, Origin)> = Vec::new();
    let mut read_objects = HashSet::new();
    for row in batch.take_rows() {
        let hinted = rests_on_hint(&row.change, row.delete.as_ref());
        match answers.get(&row.change.object) {
            Some(Answer::Read(read)) if hinted => {
                // The object's first hint row carries the read; the others go.
                if read_objects.insert(row.change.object.clone()) {
                    reads.push((read_change(&row.change, read.clone(), at), row.origin));
                }
            }
            Some(Answer::Unreadable(reason)) if hinted => {
                let reason = format!("HeadObject for the event's object: {reason}");
                batch.dead_letters.push(change_dead_letter(
                    &row.change,
                    row.origin,
                    "unreadable_object",
                    reason,
                ));
            }
            _ => rows.push(row),
        }
    }
    if !batch.history.is_empty() {
        batch
            .history
            .retain(|(change, _)| !(is_hint(change) && answers.contains_key(&change.object)));
        batch.history.extend(reads.iter().cloned());
    }
    rows.extend(reads.into_iter().map(|(change, origin)| VersionRow {
        change,
        origin,
        delete: None,
    }));
    batch.set_rows(rows);
}

/// The change a read makes of a hint: the object's state as the store gave it, or a
/// tombstone when the store has no such object (404), both versioned as reads at `at`.
fn read_change(hint: &Change, read: Option<ObjectRead>, at: OffsetDateTime) -> Change {
    let object = hint.object.clone();
    let change = match read {
        Some(read) => read.into_change(object, EVENT_NAME, at),
        None => Change {
            object,
            event_name: EVENT_NAME.to_string(),
            event_time: at,
            sequencer: i64::try_from(at.unix_timestamp_nanos()).unwrap_or(i64::MAX),
            action: Action::Remove {
                version_id: None,
                only_if_current_version: false,
            },
            record: 0,
            basis: Basis::Read { at },
        },
    };
    Change {
        record: hint.record,
        ..change
    }
}

/// Of two failures, the one to report: a refusal, which a human must fix, over a transient
/// error, which fixes itself.
fn worse(current: Option<S3Error>, new: S3Error) -> S3Error {
    match current {
        Some(current) if !current.is_retriable() || new.is_retriable() => current,
        _ => new,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Metadata, ObjectId, ObjectState};
    use crate::s3::S3Request;
    use time::macros::datetime;

    fn hint() -> Change {
        Change {
            object: ObjectId {
                bucket: "b".into(),
                key: "a+b".into(),
            },
            event_name: "s3:ObjectCreated:Put".into(),
            event_time: datetime!(2026-01-15 10:00:00 UTC),
            sequencer: 7,
            action: Action::Upsert(ObjectState::default()),
            record: 3,
            basis: Basis::Hint,
        }
    }

    const AT: OffsetDateTime = datetime!(2026-01-15 10:00:02.5 UTC);

    #[test]
    fn a_found_object_becomes_a_read_of_its_state() {
        let read = ObjectRead {
            etag: Some("abc".into()),
            size: Some(5),
            last_modified: datetime!(2026-01-15 10:00:01 UTC),
            version_id: None,
            content_type: Some("text/plain".into()),
            user_metadata: Metadata::default(),
            system_metadata: Metadata::default(),
        };
        let change = read_change(&hint(), Some(read.clone()), AT);
        assert_eq!(change.event_name, EVENT_NAME);
        assert_eq!(change.basis, Basis::Read { at: AT });
        assert_eq!(change.sequencer, read.sequencer());
        assert_eq!(change.event_time, read.last_modified);
        assert_eq!(change.record, 3);
        assert_eq!(change.action, Action::Upsert(read.into_state()));
    }

    #[test]
    fn a_missing_object_becomes_a_tombstone_read_at_the_start() {
        let change = read_change(&hint(), None, AT);
        assert_eq!(change.basis, Basis::Read { at: AT });
        assert_eq!(change.event_time, AT);
        assert_eq!(change.sequencer, 1_768_471_202_500_000_000);
        assert!(matches!(
            change.action,
            Action::Remove {
                only_if_current_version: false,
                ..
            }
        ));
    }

    #[test]
    fn a_refusal_is_reported_before_a_transient_error() {
        let request = S3Request::Head {
            bucket: "b".into(),
            key: "k".into(),
        };
        let denied = || S3Error::AccessDenied {
            request: request.clone(),
            code: None,
        };
        let timeout = || S3Error::Timeout {
            request: request.clone(),
            detail: "slow".into(),
        };
        assert!(matches!(
            worse(Some(timeout()), denied()),
            S3Error::AccessDenied { .. }
        ));
        assert!(matches!(
            worse(Some(denied()), timeout()),
            S3Error::AccessDenied { .. }
        ));
        assert!(matches!(worse(None, timeout()), S3Error::Timeout { .. }));
    }
}
