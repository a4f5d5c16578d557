//! The main loop: consume, reduce into a batch, write it, commit.
//!
//! One batch is written at a time by a spawned task while the loop keeps
//! filling the next batch from the poller: fetching and parsing overlap the
//! database write. When the next batch is full before the write finishes,
//! the loop stops taking messages; the poller then pauses fetching (and
//! keeps polling), which bounds memory.
//!
//! Offsets of a batch are committed only after its transaction commits,
//! and only for partitions this member still owns.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use tokio::sync::mpsc::{Receiver, UnboundedReceiver};
use tokio::task::JoinHandle;
use tokio::time::sleep_until;
use tokio_util::sync::CancellationToken;

use crate::batch::{Batch, Contribution, Origin, WriteBatch};
use crate::error::{Disposition, Error, SinkError};
use crate::event::EventFamily;
use crate::http::Health;
use crate::kafka::{Committer, KafkaConsumer, RebalanceEvent};
use crate::metrics::Metrics;
use crate::poller::{Polled, Poller};
use crate::retry::Backoff;
use crate::sink::{Sink, WriteReport};

/// Tuning of the loop, from the run configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    pub topic: String,
    pub batch_max_rows: usize,
    pub batch_max_age: Duration,
    pub retry_max_backoff: Duration,
    /// How long shutdown waits for the last writes before giving up on them.
    pub shutdown_timeout: Duration,
}

/// The result of one spawned batch write.
struct Written {
    commit_offsets: Vec<(i32, i64)>,
    families: HashMap<EventFamily, u64>,
    result: Result<WriteReport, SinkError>,
}

pub struct Pipeline {
    consumer: Arc<KafkaConsumer>,
    poller: Poller,
    messages: Receiver<Polled>,
    committer: Committer,
    rebalances: UnboundedReceiver<RebalanceEvent>,
    sink: Sink,
    metrics: Metrics,
    health: Arc<Health>,
    settings: Settings,
    batch: Batch,
    in_flight: Option<JoinHandle<Written>>,
    /// Cancelled to abandon the in-flight write's retries at shutdown.
    abandon: CancellationToken,
    assigned: BTreeSet<i32>,
}

impl Pipeline {
    pub fn new(
        consumer: Arc<KafkaConsumer>,
        rebalances: UnboundedReceiver<RebalanceEvent>,
        sink: Sink,
        metrics: Metrics,
        health: Arc<Health>,
        settings: Settings,
    ) -> Result<Self, Error> {
        let thread_error = |e: std::io::Error| Error::Config(format!("starting a thread: {e}"));
        let committer = Committer::spawn(consumer.clone()).map_err(thread_error)?;
        let (poller, messages) =
            Poller::spawn(consumer.clone(), metrics.clone()).map_err(thread_error)?;
        Ok(Pipeline {
            consumer,
            poller,
            messages,
            committer,
            rebalances,
            sink,
            metrics,
            health,
            settings,
            batch: Batch::default(),
            in_flight: None,
            abandon: CancellationToken::new(),
            assigned: BTreeSet::new(),
        })
    }

    /// Runs until `shutdown` is cancelled (then drains) or a fatal error.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), Error> {
        self.health.progressed();
        let idle_tick = self.settings.batch_max_age.max(Duration::from_millis(100));
        loop {
            let flush_at = self.flush_deadline(idle_tick);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(event) = self.rebalances.recv() => self.on_rebalance(event),
                written = wait_for(&mut self.in_flight) => self.on_written(written)?,
                polled = self.messages.recv(), if self.accepts_messages() => match polled {
                    Some(polled) => self.on_consumed(polled),
                    None => return Err(Error::Config("the kafka poller thread stopped".into())),
                },
                _ = sleep_until(flush_at.into()) => self.on_tick(),
            }
            self.flush_if_due();
        }
        self.drain().await
    }

    /// When the batch is due by age; an idle loop still wakes now and then
    /// to report progress.
    fn flush_deadline(&self, idle_tick: Duration) -> Instant {
        self.batch
            .deadline(self.settings.batch_max_age)
            .unwrap_or_else(|| Instant::now() + idle_tick)
    }

    fn on_rebalance(&mut self, event: RebalanceEvent) {
        match event {
            RebalanceEvent::Assigned(partitions) => {
                tracing::info!(?partitions, "partitions assigned");
                self.assigned.extend(partitions.iter().copied());
                self.health.set_in_group(true);
            }
            RebalanceEvent::Lost(partitions) => {
                tracing::warn!(
                    ?partitions,
                    "partitions lost; dropping their unwritten work"
                );
                self.health.set_in_group(false);
                self.forget_partitions(&partitions);
            }
            RebalanceEvent::Revoked(partitions) => {
                tracing::info!(
                    ?partitions,
                    "partitions revoked; dropping their unwritten work"
                );
                self.forget_partitions(&partitions);
            }
        }
    }

    fn forget_partitions(&mut self, partitions: &[i32]) {
        for partition in partitions {
            self.assigned.remove(partition);
        }
        self.batch.drop_partitions(partitions);
    }

    fn on_consumed(&mut self, consumed: Result<(Origin, Contribution), KafkaError>) {
        // A rebalance callback sends its event before the poller sends any
        // later message: apply it first.
        while let Ok(event) = self.rebalances.try_recv() {
            self.on_rebalance(event);
        }
        match consumed {
            Ok((origin, contribution)) if self.assigned.contains(&origin.partition) => {
                self.batch.add(origin, contribution);
            }
            Ok((origin, _)) => {
                tracing::debug!(
                    partition = origin.partition,
                    "message of a partition no longer assigned, skipped"
                );
            }
            Err(e) => {
                self.metrics.kafka_errors.inc();
                tracing::warn!(error = %e, "kafka consume error");
            }
        }
    }

    fn on_tick(&mut self) {
        if self.batch.is_empty() && self.in_flight.is_none() {
            self.health.progressed();
        }
    }

    fn on_written(&mut self, written: Written) -> Result<(), Error> {
        let report = match written.result {
            Ok(report) => report,
            Err(e) => return Err(Error::Database(e)),
        };
        self.record_report(&report, &written.families);
        while let Ok(event) = self.rebalances.try_recv() {
            self.on_rebalance(event);
        }
        let owned: Vec<(i32, i64)> = written
            .commit_offsets
            .into_iter()
            .filter(|(partition, _)| self.assigned.contains(partition))
            .collect();
        self.committer.commit(&self.consumer, &owned);
        self.health.progressed();
        Ok(())
    }

    fn record_report(&self, report: &WriteReport, families: &HashMap<EventFamily, u64>) {
        for (family, count) in families {
            self.metrics
                .events
                .with_label_values(&[family.label(), "written"])
                .inc_by(*count);
        }
        let rows = &self.metrics.rows;
        rows.with_label_values(&["upserted"])
            .inc_by(report.upserted);
        rows.with_label_values(&["tombstoned"])
            .inc_by(report.tombstoned);
        rows.with_label_values(&["stale"]).inc_by(report.stale);
        rows.with_label_values(&["rejected"])
            .inc_by(report.rejected);
        if report.rejected > 0 {
            self.metrics
                .dead_letters
                .with_label_values(&["database_rejected"])
                .inc_by(report.rejected);
        }
    }

    /// Backpressure: a full batch waits for the running write to finish
    /// before it takes more messages.
    fn accepts_messages(&self) -> bool {
        self.in_flight.is_none() || self.batch.rows() < self.settings.batch_max_rows
    }

    /// Starts a write when the batch is due (full or old enough) and none
    /// is in flight.
    fn flush_if_due(&mut self) {
        let full = self.batch.rows() >= self.settings.batch_max_rows;
        let old = self
            .batch
            .deadline(self.settings.batch_max_age)
            .is_some_and(|deadline| deadline <= Instant::now());
        if (full || old) && self.in_flight.is_none() {
            self.start_write();
        }
    }

    fn start_write(&mut self) {
        let batch = self.batch.take();
        tracing::debug!(
            rows = batch.changes.len(),
            messages = batch.messages,
            "writing batch"
        );
        self.metrics
            .batch_rows
            .observe((batch.changes.len() + batch.dead_letters.len()) as f64);
        let task = write_with_retry(
            self.sink.clone(),
            batch,
            self.metrics.clone(),
            self.health.clone(),
            Backoff::new(Duration::from_millis(100), self.settings.retry_max_backoff),
            self.abandon.clone(),
        );
        self.in_flight = Some(tokio::spawn(task));
    }

    /// Shutdown: stop reading, finish the in-flight write, write what is
    /// left, commit synchronously, then leave the group (on drop).
    async fn drain(mut self) -> Result<(), Error> {
        tracing::info!("shutting down: writing what was consumed");
        let deadline = tokio::time::Instant::now() + self.settings.shutdown_timeout;
        let abandon = self.abandon.clone();
        let abandon_at_deadline = tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            abandon.cancel();
        });
        let result = self.finish_writes().await;
        abandon_at_deadline.abort();
        result?;
        if let Err(e) = self.committer.finish(&self.consumer) {
            tracing::warn!(error = %e, "final offset commit failed; a restart re-reads the last batch");
        }
        self.health.set_in_group(false);
        // Closing the consumer runs librdkafka's last callbacks and leaves
        // the group: blocking work, kept off the async workers.
        let Pipeline {
            consumer,
            poller,
            messages,
            ..
        } = self;
        drop(messages);
        let closed = tokio::task::spawn_blocking(move || {
            poller.stop();
            consumer.unsubscribe();
            drop(consumer);
        });
        if let Err(e) = closed.await {
            tracing::warn!(error = %e, "closing the kafka consumer");
        }
        tracing::info!("shut down cleanly");
        Ok(())
    }

    async fn finish_writes(&mut self) -> Result<(), Error> {
        if let Some(mut task) = self.in_flight.take() {
            let written = join(&mut task).await;
            self.on_written(written)?;
        }
        if !self.batch.is_empty() {
            self.start_write();
            if let Some(mut task) = self.in_flight.take() {
                let written = join(&mut task).await;
                self.on_written(written)?;
            }
        }
        Ok(())
    }
}

/// Waits for the in-flight write; pending forever when there is none, so
/// the select arm stays quiet.
async fn wait_for(in_flight: &mut Option<JoinHandle<Written>>) -> Written {
    match in_flight {
        Some(task) => {
            let written = join(task).await;
            *in_flight = None;
            written
        }
        None => std::future::pending().await,
    }
}

async fn join(task: &mut JoinHandle<Written>) -> Written {
    match task.await {
        Ok(written) => written,
        // A panic in the writer is a bug; report it as a fatal write error
        // rather than unwinding the loop (nothing was committed for it).
        Err(e) => Written {
            commit_offsets: Vec::new(),
            families: HashMap::new(),
            result: Err(SinkError::Pool {
                context: "batch writer task",
                message: e.to_string(),
                disposition: Disposition::Fatal,
            }),
        },
    }
}

/// Writes one batch, retrying retriable failures with capped, jittered
/// backoff until it succeeds, a fatal error occurs, or shutdown abandons it.
async fn write_with_retry(
    sink: Sink,
    batch: WriteBatch,
    metrics: Metrics,
    health: Arc<Health>,
    mut backoff: Backoff,
    abandon: CancellationToken,
) -> Written {
    let started = Instant::now();
    let result = loop {
        match sink.write(&batch).await {
            Ok(report) => {
                health.set_database_ready(true);
                record_delays(&batch, &metrics);
                break Ok(report);
            }
            Err(e) => {
                metrics.db_errors.with_label_values(&[e.kind_label()]).inc();
                if e.disposition() != Disposition::Retriable {
                    break Err(e);
                }
                health.set_database_ready(false);
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, rows = batch.changes.len(), "batch write failed, retrying");
                tokio::select! {
                    _ = abandon.cancelled() => break Err(e),
                    _ = tokio::time::sleep(delay) => metrics.db_retries.inc(),
                }
            }
        }
    };
    metrics
        .flush_seconds
        .observe(started.elapsed().as_secs_f64());
    Written {
        commit_offsets: batch.commit_offsets,
        families: batch.families,
        result,
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
