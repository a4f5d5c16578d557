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
use std::time::Instant;

use futures::stream::{self, StreamExt};
use time::OffsetDateTime;
use tokio::sync::Semaphore;

use crate::batch::WriteBatch;
use crate::error::SinkError;
use crate::event::{Action, Basis, Change};
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
}

impl Enricher {
    pub fn new(s3: S3, concurrency: usize, metrics: Metrics) -> Self {
        let concurrency = concurrency.max(1);
        Enricher {
            s3,
            concurrency,
            permits: Arc::new(Semaphore::new(concurrency)),
            metrics,
        }
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
        let targets: Vec<(usize, String, String)> = batch
            .changes
            .iter()
            .enumerate()
            .filter(|(_, change)| change.basis == Basis::Hint)
            .map(|(index, change)| {
                (
                    index,
                    change.object.bucket.clone(),
                    change.object.key.clone(),
                )
            })
            .collect();
        if targets.is_empty() {
            return Ok(());
        }
        let at = sink.now().await.map_err(EnrichError::Clock)?;
        attempt.touch();
        // No more HEAD futures than can run: one of the SDK's is tens of KiB, and a batch
        // holds thousands of objects.
        let mut reads = stream::iter(targets)
            .map(|(index, bucket, key)| self.head(index, bucket, key))
            .buffer_unordered(self.concurrency);
        let mut failure: Option<S3Error> = None;
        let mut unreadable = Vec::new();
        while let Some((index, result)) = reads.next().await {
            attempt.touch();
            match result {
                Ok(read) => {
                    let change = &mut batch.changes[index];
                    *change = read_change(change, read, at);
                }
                Err(S3Error::InvalidResponse { request, detail }) => {
                    unreadable.push((index, format!("{request}: {detail}")));
                }
                Err(error) => failure = Some(worse(failure, error)),
            }
        }
        drop(reads);
        dead_letter(batch, unreadable);
        failure.map_or(Ok(()), |error| Err(EnrichError::S3(error)))
    }

    /// One HEAD, under a permit, timed and counted.
    async fn head(
        &self,
        index: usize,
        bucket: String,
        key: String,
    ) -> (usize, Result<Option<ObjectRead>, S3Error>) {
        // The semaphore is never closed: acquiring only waits.
        let _permit = self.permits.acquire().await;
        let started = Instant::now();
        let result = self.s3.head(&bucket, &key).await;
        self.metrics
            .enrich_head_seconds
            .observe(started.elapsed().as_secs_f64());
        let label = match &result {
            Ok(Some(_)) => "found",
            Ok(None) => "gone",
            Err(e) => e.kind_label(),
        };
        self.metrics.enrich_heads.with_label_values(&[label]).inc();
        (index, result)
    }
}

/// The change a read makes of a hint: the object's state as the store gave it, or a
/// tombstone when the store has no such object (404), both versioned as reads at `at`.
fn read_change(hint: &Change, read: Option<ObjectRead>, at: OffsetDateTime) -> Change {
    let (event_time, sequencer, action) = match read {
        Some(read) => (
            read.last_modified,
            read.sequencer(),
            Action::Upsert(read.into_state()),
        ),
        None => (
            at,
            i64::try_from(at.unix_timestamp_nanos()).unwrap_or(i64::MAX),
            Action::Remove {
                version_id: None,
                only_if_current_version: false,
            },
        ),
    };
    Change {
        object: hint.object.clone(),
        event_name: EVENT_NAME.to_string(),
        event_time,
        sequencer,
        action,
        record: hint.record,
        basis: Basis::Read { at },
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

/// Replaces the changes at `unreadable` (with why) by dead letters carrying the event's
/// object, so that nothing is written for them and the reason is kept.
fn dead_letter(batch: &mut WriteBatch, mut unreadable: Vec<(usize, String)>) {
    unreadable.sort_unstable_by_key(|(index, _)| std::cmp::Reverse(*index));
    for (index, reason) in unreadable {
        let change = batch.changes.remove(index);
        let origin = batch.origins.remove(index);
        batch.deleted_versions.remove(index);
        let reason = format!("HeadObject for the event's object: {reason}");
        batch.dead_letters.push(change_dead_letter(
            &change,
            origin,
            "unreadable_object",
            reason,
        ));
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
