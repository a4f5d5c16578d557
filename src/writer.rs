//! The batch writer: one spawned task per batch write. It first reads the
//! objects whose events are only hints (`enrich`), retrying failed reads,
//! then writes, retrying retriable database errors with capped, jittered
//! backoff (in smaller statements when the batch may be too big, see
//! `split`), and reports the metrics of a finished write. Every attempt is
//! registered with `Health`, so a member that retries stays alive and one
//! whose attempt hangs does not.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::batch::WriteBatch;
use crate::enrich::{EnrichError, Enricher};
use crate::error::{Disposition, Error, SinkError};
use crate::event::Basis;
use crate::event::EventFamily;
use crate::http::Health;
use crate::metrics::Metrics;
use crate::retry::Backoff;
use crate::sink::{Sink, WriteReport};
use crate::split::Plan;

/// First delay after a retriable failure; doubles up to the configured cap.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);

/// What a finished write hands back to the pipeline.
pub struct Written {
    /// The lane that wrote the batch.
    pub lane: usize,
    /// Messages the batch holds (reported when shutdown abandoned it).
    pub messages: u64,
    families: HashMap<EventFamily, u64>,
    pub result: Result<WriteReport, Error>,
}

impl Written {
    /// A writer task that died (a bug): a fatal error, nothing committed.
    pub fn crashed(lane: usize, error: &tokio::task::JoinError) -> Self {
        Written {
            lane,
            messages: 0,
            families: HashMap::new(),
            result: Err(Error::Database(SinkError::Pool {
                context: "batch writer task",
                message: error.to_string(),
                disposition: Disposition::Fatal,
            })),
        }
    }

    /// Counts what a successful write did.
    pub fn record(&self, metrics: &Metrics) {
        let Ok(report) = &self.result else {
            return;
        };
        for (family, count) in &self.families {
            metrics
                .events
                .with_label_values(&[family.label(), "written"])
                .inc_by(*count);
        }
        let rows = &metrics.rows;
        rows.with_label_values(&["upserted"])
            .inc_by(report.upserted);
        rows.with_label_values(&["tombstoned"])
            .inc_by(report.tombstoned);
        rows.with_label_values(&["stale"]).inc_by(report.stale);
        rows.with_label_values(&["rejected"])
            .inc_by(report.rejected);
        for (reason, inserted) in report.dead_letters.iter() {
            metrics
                .dead_letters
                .with_label_values(&[reason])
                .inc_by(inserted);
        }
    }
}

/// Everything a write task needs besides its batch.
#[derive(Clone)]
pub struct Writer {
    pub sink: Sink,
    pub metrics: Metrics,
    pub health: Arc<Health>,
    pub retry_max_backoff: Duration,
    /// Most bytes of column values in one statement (a share of the memory
    /// budget, see `split::Plan::with_budget`).
    pub statement_bytes: usize,
    /// Cancelled at the shutdown deadline: abandons the retries and the
    /// attempt in flight (its statement is cancelled, nothing of it commits).
    pub abandon: CancellationToken,
    /// Reads the objects of hints; `None` without an S3 endpoint.
    pub enricher: Option<Arc<Enricher>>,
}

impl Writer {
    /// Reads the batch's hints, then writes it, retrying retriable failures
    /// until it succeeds, a fatal error occurs, or shutdown abandons it
    /// (`SinkError::Abandoned`).
    pub async fn write(self, lane: usize, mut batch: WriteBatch) -> Written {
        let started = Instant::now();
        let result = match self.enrich(&mut batch).await {
            Ok(()) => self.store(&batch).await.map_err(Error::Database),
            Err(e) => Err(e),
        };
        self.metrics
            .flush_seconds
            .observe(started.elapsed().as_secs_f64());
        Written {
            lane,
            messages: batch.messages,
            families: batch.families,
            result,
        }
    }

    /// Replaces every hint of the batch by a read of its object, retrying
    /// with backoff until all are read: nothing of the batch is written (and
    /// no offset committed) before. While reads fail the member is not ready.
    async fn enrich(&self, batch: &mut WriteBatch) -> Result<(), Error> {
        if !batch.changes.iter().any(|c| c.basis == Basis::Hint) {
            return Ok(());
        }
        let Some(enricher) = &self.enricher else {
            return Err(Error::Config(
                "events of a store that sends no user metadata or no usable order (versitygw, \
                 AWS) need HeadObject: set S3_ENDPOINT (--s3-endpoint) and its keys, or \
                 --enrich never to write such events as they are"
                    .to_string(),
            ));
        };
        let mut backoff = Backoff::new(FIRST_RETRY_DELAY, self.retry_max_backoff);
        loop {
            let attempt = self.health.attempt_within(enricher.attempt_limit());
            let round = tokio::select! {
                biased;
                _ = self.abandon.cancelled() => return Err(Error::Database(SinkError::Abandoned)),
                round = enricher.read_hints(batch, &self.sink, &attempt) => round,
            };
            drop(attempt);
            let error = match round {
                Ok(()) => {
                    self.health.set_s3_readable(true);
                    return Ok(());
                }
                Err(e) => e,
            };
            let delay = backoff.next_delay();
            match &error {
                EnrichError::S3(e) if !e.is_retriable() => {
                    self.health.set_s3_readable(false);
                    tracing::error!(error = %error, retry_in = ?delay, "cannot read a changed object; its batch waits (offsets not committed)");
                }
                _ => {
                    tracing::warn!(error = %error, retry_in = ?delay, "reading changed objects failed, retrying");
                }
            }
            tokio::select! {
                _ = self.abandon.cancelled() => return Err(Error::Database(SinkError::Abandoned)),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Writes the batch, retrying as the module documentation says.
    async fn store(&self, batch: &WriteBatch) -> Result<WriteReport, SinkError> {
        let mut backoff = Backoff::new(FIRST_RETRY_DELAY, self.retry_max_backoff);
        let mut plan = Plan::with_budget(&batch.changes, self.statement_bytes);
        loop {
            let attempt = self.health.attempt();
            let written = tokio::select! {
                biased;
                _ = self.abandon.cancelled() => return Err(SinkError::Abandoned),
                written = self.sink.write_attempt(batch, &mut plan, &attempt) => written,
            };
            drop(attempt);
            let error = match written {
                Ok(report) => {
                    self.health.set_database_ready(true);
                    record_delays(batch, &self.metrics);
                    return Ok(report);
                }
                Err(e) => e,
            };
            self.metrics
                .db_errors
                .with_label_values(&[error.kind_label()])
                .inc();
            if !error.is_retried() {
                return Err(error);
            }
            self.health.set_database_ready(false);
            let delay = backoff.next_delay();
            tracing::warn!(error = %error, retry_in = ?delay, rows = batch.changes.len(), "batch write failed, retrying");
            tokio::select! {
                _ = self.abandon.cancelled() => return Err(SinkError::Abandoned),
                _ = tokio::time::sleep(delay) => self.metrics.db_retries.inc(),
            }
        }
    }
}

/// Observes, for every written change, the delay from its event time to
/// now (just after the commit), and advances the freshness gauge.
fn record_delays(batch: &WriteBatch, metrics: &Metrics) {
    let now = time::OffsetDateTime::now_utc();
    let mut newest = None;
    for change in &batch.changes {
        let delay = (now - change.event_time).as_seconds_f64().max(0.0);
        metrics.event_delay.observe(delay);
        newest = newest.max(Some(change.event_time));
    }
    if let Some(newest) = newest {
        let seconds = newest.unix_timestamp_nanos() as f64 / 1e9;
        if seconds > metrics.last_event_timestamp.get() {
            metrics.last_event_timestamp.set(seconds);
        }
    }
}
