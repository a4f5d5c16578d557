//! The main loop: consume, reduce into batches, write them, commit.
//!
//! Partitions are spread over a few write lanes (`partition % lanes`). Each
//! lane accumulates its own batch and has at most one write in flight, run
//! by a spawned task on its own connection, so several transactions run
//! at once while fetching and parsing continue. What may be committed is
//! decided by the [`Ledger`] alone: it takes a message only when it was
//! polled under its partition's current assignment, and names an offset
//! only once every message before it in that assignment is written. When a
//! lane's next batch is full before its write finishes, the loop pauses
//! fetching from that lane's partitions only, so a lane stuck on a lock or a
//! slow statement does not stop the others; the messages already fetched
//! for it are still taken (a bounded overshoot). Only if a lane's batch grows
//! far past its size anyway does the loop stop taking messages; the poller
//! then waits and, if that lasts, pauses fetching (and keeps polling), which
//! bounds memory.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use tokio::sync::mpsc::{Receiver, UnboundedReceiver};
use tokio::task::JoinSet;
use tokio::time::sleep_until;
use tokio_util::sync::CancellationToken;

use crate::batch::Batch;
use crate::budget::Budget;
use crate::enrich::Enricher;
use crate::error::{Error, SinkError};
use crate::event::Decoding;
use crate::http::Health;
use crate::kafka::{Committer, KafkaConsumer, RebalanceEvent};
use crate::metrics::Metrics;
use crate::offsets::{Ledger, WriteTicket};
use crate::poller::{Consumed, Polled, Poller};
use crate::sink::Sink;
use crate::writer::{Writer, Written};

/// How long shutdown waits for the final commit and the consumer's close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(15);

/// How far past its size a paused lane's batch may grow with the messages
/// fetched before the pause (the poller's channel holds 2048).
const OVERSHOOT_ROWS: usize = 4096;

/// How long a lane's write may run, with its next batch full, before the
/// lane's partitions are paused; longer than a normal batch write.
const LANE_PAUSE_AFTER: Duration = Duration::from_secs(2);

/// Tuning of the loop, from the run configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    pub topic: String,
    pub batch_max_rows: usize,
    pub batch_max_age: Duration,
    pub retry_max_backoff: Duration,
    /// How long shutdown waits for the last writes before giving up on them.
    pub shutdown_timeout: Duration,
    /// Batches written at the same time (one connection each).
    pub write_lanes: usize,
    /// Bytes of messages held between librdkafka's queue and the database.
    pub memory_budget: usize,
    /// How messages are decoded (`--source`, `--enrich`).
    pub decoding: Decoding,
    /// Whether every change is appended to `object_history` (`--history`).
    pub history: bool,
}

/// The batch of some partitions, and the write of its previous one, if it
/// is still running.
#[derive(Default)]
struct Lane {
    batch: Batch,
    writing: Option<WriteTicket>,
    /// When the running write started.
    write_started: Option<Instant>,
}

pub struct Pipeline {
    consumer: Arc<KafkaConsumer>,
    poller: Poller,
    messages: Receiver<Polled>,
    committer: Committer,
    rebalances: UnboundedReceiver<RebalanceEvent>,
    writer: Writer,
    metrics: Metrics,
    health: Arc<Health>,
    settings: Settings,
    lanes: Vec<Lane>,
    writes: JoinSet<Written>,
    ledger: Ledger,
    budget: Budget,
    /// Partitions paused because their lane's next batch is full.
    paused: BTreeSet<i32>,
    /// Messages of the batches shutdown abandoned at its deadline.
    abandoned: u64,
}

impl Pipeline {
    pub fn new(
        consumer: Arc<KafkaConsumer>,
        rebalances: UnboundedReceiver<RebalanceEvent>,
        sink: Sink,
        metrics: Metrics,
        health: Arc<Health>,
        settings: Settings,
        enricher: Option<Arc<Enricher>>,
    ) -> Result<Self, Error> {
        let thread_error = |e: std::io::Error| Error::Config(format!("starting a thread: {e}"));
        let committer = Committer::spawn(consumer.clone()).map_err(thread_error)?;
        let budget = Budget::new(settings.memory_budget);
        let (poller, messages) = Poller::spawn(
            consumer.clone(),
            metrics.clone(),
            budget.clone(),
            settings.decoding,
        )
        .map_err(thread_error)?;
        let writer = Writer {
            sink,
            metrics: metrics.clone(),
            health: health.clone(),
            retry_max_backoff: settings.retry_max_backoff,
            statement_bytes: Budget::statement_bytes(settings.memory_budget),
            abandon: CancellationToken::new(),
            enricher,
        };
        let lanes = (0..settings.write_lanes.max(1))
            .map(|_| Lane {
                batch: Batch::new(settings.history),
                ..Lane::default()
            })
            .collect();
        Ok(Pipeline {
            consumer,
            poller,
            messages,
            committer,
            rebalances,
            writer,
            metrics,
            health,
            settings,
            lanes,
            writes: JoinSet::new(),
            ledger: Ledger::default(),
            budget,
            paused: BTreeSet::new(),
            abandoned: 0,
        })
    }

    /// Runs until `shutdown` is cancelled (then drains) or a fatal error.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), Error> {
        self.health.progressed();
        let idle_tick = self.settings.batch_max_age.max(Duration::from_millis(100));
        loop {
            let flush_at = self.flush_deadline(idle_tick);
            let writing = !self.writes.is_empty();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(event) = self.rebalances.recv() => self.on_rebalance(event),
                Some(joined) = self.writes.join_next(), if writing => self.on_joined(joined)?,
                polled = self.messages.recv(), if self.accepts_messages() => match polled {
                    Some(polled) => self.on_consumed(polled),
                    None => return Err(Error::Config("the kafka poller thread stopped".into())),
                },
                _ = sleep_until(flush_at.into()) => self.on_tick(),
            }
            self.flush_due_lanes();
            self.pause_stuck_lanes();
        }
        self.drain().await
    }

    /// The earliest moment a lane's batch is due by age; an idle loop still
    /// wakes now and then to report progress.
    fn flush_deadline(&self, idle_tick: Duration) -> Instant {
        self.lanes
            .iter()
            .filter(|lane| lane.writing.is_none())
            .filter_map(|lane| lane.batch.deadline(self.settings.batch_max_age))
            .min()
            .unwrap_or_else(|| Instant::now() + idle_tick)
    }

    fn lane_of(&self, partition: i32) -> usize {
        usize::try_from(partition).unwrap_or(0) % self.lanes.len()
    }

    fn on_rebalance(&mut self, event: RebalanceEvent) {
        match event {
            RebalanceEvent::Assigned { partitions, epoch } => {
                tracing::info!(?partitions, epoch, "partitions assigned");
                // Work left from an earlier ownership never mixes with the
                // new one (the ledger refuses its messages and results).
                self.drop_work(&partitions);
                self.ledger.assign(&partitions, epoch);
                self.health.set_in_group(true);
            }
            RebalanceEvent::Lost(partitions) => {
                tracing::warn!(
                    ?partitions,
                    "partitions lost; dropping their unwritten work"
                );
                self.health.set_in_group(false);
                self.drop_work(&partitions);
                self.ledger.lose(&partitions);
            }
            RebalanceEvent::Revoked { partitions, reply } => {
                tracing::info!(
                    ?partitions,
                    "partitions revoked; dropping their unwritten work"
                );
                self.drop_work(&partitions);
                self.ledger.revoke(&partitions, reply);
            }
        }
    }

    fn drop_work(&mut self, partitions: &[i32]) {
        // Resume what this member paused: a partition that moves, or comes
        // back, must not stay paused.
        let paused: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|p| self.paused.contains(p))
            .collect();
        self.set_paused(&paused, false);
        for lane in &mut self.lanes {
            lane.batch.drop_partitions(partitions);
        }
    }

    fn on_consumed(&mut self, polled: Polled) {
        // Apply the rebalance events sent before this message was polled
        // (the epoch check below is what makes a late one harmless).
        while let Ok(event) = self.rebalances.try_recv() {
            self.on_rebalance(event);
        }
        match polled {
            Ok(Consumed {
                origin,
                epoch,
                contribution,
                reservation,
                ..
            }) if self.ledger.accepts(origin.partition, epoch) => {
                let lane = self.lane_of(origin.partition);
                self.lanes[lane]
                    .batch
                    .add(origin, contribution, reservation);
            }
            Ok(Consumed { origin, epoch, .. }) => {
                tracing::debug!(
                    partition = origin.partition,
                    offset = origin.offset,
                    epoch,
                    "message polled under an earlier assignment, skipped"
                );
            }
            Err(e) => {
                self.metrics.kafka_errors.inc();
                tracing::warn!(error = %e, "kafka consume error");
            }
        }
    }

    fn on_tick(&mut self) {
        self.report_buffered();
        if self.writes.is_empty() && self.lanes.iter().all(|lane| lane.batch.is_empty()) {
            self.health.progressed();
        }
    }

    fn on_joined(&mut self, joined: Result<Written, tokio::task::JoinError>) -> Result<(), Error> {
        // A writer task never panics by design; if one did, its lane is
        // unknown: stop with a fatal error (nothing was committed for it).
        let written = joined.unwrap_or_else(|e| Written::crashed(0, &e));
        self.on_written(written)
    }

    fn on_written(&mut self, written: Written) -> Result<(), Error> {
        let ticket = self
            .lanes
            .get_mut(written.lane)
            .and_then(|lane| lane.writing.take())
            .unwrap_or_default();
        self.resume_lane(written.lane);
        written.record(&self.metrics);
        if let Err(e) = written.result {
            self.ledger.write_failed(&ticket);
            if matches!(e, Error::Database(SinkError::Abandoned)) {
                // Shutdown's deadline: nothing of it was committed, and its
                // offsets are not; `drain` reports it.
                self.abandoned += written.messages;
                return Ok(());
            }
            return Err(e);
        }
        // Events sent before the write ended decide what is still ours.
        while let Ok(event) = self.rebalances.try_recv() {
            self.on_rebalance(event);
        }
        self.ledger.write_done(&ticket);
        self.report_buffered();
        self.committer.commit(self.ledger.commit_offsets());
        self.health.progressed();
        Ok(())
    }

    fn report_buffered(&self) {
        let bytes = i64::try_from(self.budget.reserved_bytes()).unwrap_or(i64::MAX);
        self.metrics.buffered_bytes.set(bytes);
    }

    /// Whether a lane's next batch is full while its previous one has been
    /// written for longer than a normal write takes (a lock, a slow
    /// statement): then its partitions are paused, so that it stops taking
    /// the memory budget from the other lanes. Ordinary backpressure (a
    /// write of 50 ms) must not pause: librdkafka drops a paused
    /// partition's prefetched messages and fetches them again on resume.
    fn lane_is_stuck(&self, index: usize) -> bool {
        let lane = &self.lanes[index];
        lane.writing.is_some()
            && lane.batch.rows() >= self.settings.batch_max_rows
            && lane
                .write_started
                .is_some_and(|started| started.elapsed() >= LANE_PAUSE_AFTER)
    }

    /// Pauses the owned partitions of every stuck lane (see
    /// [`Pipeline::lane_is_stuck`]) not paused yet.
    fn pause_stuck_lanes(&mut self) {
        for index in 0..self.lanes.len() {
            if !self.lane_is_stuck(index) {
                continue;
            }
            let partitions: Vec<i32> = self
                .ledger
                .owned()
                .filter(|&p| self.lane_of(p) == index && !self.paused.contains(&p))
                .collect();
            if !partitions.is_empty() {
                tracing::debug!(
                    lane = index,
                    ?partitions,
                    "lane stuck on its write, pausing its partitions"
                );
                self.set_paused(&partitions, true);
            }
        }
    }

    /// Backpressure, per lane: the partitions of a lane whose next batch is
    /// full are paused (see `on_consumed`) until its write is done; the
    /// other lanes go on.
    fn resume_lane(&mut self, index: usize) {
        let partitions: Vec<i32> = self
            .paused
            .iter()
            .copied()
            .filter(|&p| self.lane_of(p) == index)
            .collect();
        self.set_paused(&partitions, false);
    }

    fn set_paused(&mut self, partitions: &[i32], pause: bool) {
        if partitions.is_empty() {
            return;
        }
        let mut list = rdkafka::TopicPartitionList::new();
        for &partition in partitions {
            list.add_partition(&self.settings.topic, partition);
        }
        let done = if pause {
            self.consumer.pause(&list)
        } else {
            self.consumer.resume(&list)
        };
        if let Err(e) = done {
            tracing::warn!(error = %e, pause, ?partitions, "pausing or resuming partitions");
        }
        for &partition in partitions {
            if pause {
                self.paused.insert(partition);
            } else {
                self.paused.remove(&partition);
            }
        }
    }

    /// Last-resort backpressure: the messages fetched before a lane was
    /// paused still arrive; if its batch grows far beyond its size anyway,
    /// take no more messages until its write is done.
    fn accepts_messages(&self) -> bool {
        let limit = self.settings.batch_max_rows.saturating_mul(2) + OVERSHOOT_ROWS;
        !self
            .lanes
            .iter()
            .any(|lane| lane.writing.is_some() && lane.batch.rows() >= limit)
    }

    /// Starts a write for every idle lane whose batch is full or old enough.
    fn flush_due_lanes(&mut self) {
        let now = Instant::now();
        for index in 0..self.lanes.len() {
            let lane = &self.lanes[index];
            let full = lane.batch.rows() >= self.settings.batch_max_rows;
            let old = lane
                .batch
                .deadline(self.settings.batch_max_age)
                .is_some_and(|deadline| deadline <= now);
            if lane.writing.is_none() && (full || old) {
                self.start_write(index);
            }
        }
    }

    fn start_write(&mut self, index: usize) {
        let batch = self.lanes[index].batch.take();
        self.lanes[index].writing = Some(self.ledger.begin_write(&batch.commit_offsets));
        self.lanes[index].write_started = Some(Instant::now());
        tracing::debug!(
            lane = index,
            rows = batch.changes.len(),
            messages = batch.messages,
            "writing batch"
        );
        self.metrics
            .batch_rows
            .observe((batch.changes.len() + batch.dead_letters.len()) as f64);
        self.writes.spawn(self.writer.clone().write(index, batch));
    }

    /// Shutdown: stop reading, finish the in-flight write, write what is
    /// left, commit synchronously, then close the consumer (on drop).
    async fn drain(mut self) -> Result<(), Error> {
        tracing::info!("shutting down: writing what was consumed");
        let deadline = tokio::time::Instant::now() + self.settings.shutdown_timeout;
        let abandon = self.writer.abandon.clone();
        let abandon_at_deadline = tokio::spawn(async move {
            tokio::time::sleep_until(deadline).await;
            abandon.cancel();
        });
        let result = self.finish_writes().await;
        abandon_at_deadline.abort();
        result?;
        let abandoned = self.abandoned;
        self.health.set_in_group(false);
        // The final commit and closing the consumer (librdkafka's last
        // callbacks, leaving the group) block: run them off the async
        // workers, and do not let a broker that stopped answering hold the
        // exit forever.
        let Pipeline {
            consumer,
            poller,
            messages,
            committer,
            rebalances,
            ..
        } = self;
        drop(messages);
        // Closing revokes what is left: with nobody to answer, the callback
        // must not wait for the loop (the final commit comes first, below).
        drop(rebalances);
        let closing = tokio::task::spawn_blocking(move || {
            poller.stop();
            if let Err(e) = committer.finish(&consumer) {
                tracing::warn!(error = %e, "final offset commit failed; a restart re-reads the last batch");
            }
            // Dropping closes the consumer: it revokes what is left and
            // leaves the group, except as a static member, which keeps its
            // partitions for a restart. No unsubscribe first: that sends
            // LeaveGroup even for a static member (librdkafka skips it only
            // on close).
            drop(consumer);
        });
        match tokio::time::timeout(CLOSE_TIMEOUT, closing).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "closing the kafka consumer"),
            Err(_) => tracing::warn!(
                timeout = ?CLOSE_TIMEOUT,
                "the kafka consumer did not close in time; exiting without waiting"
            ),
        }
        if abandoned > 0 {
            return Err(Error::Abandoned {
                messages: abandoned,
            });
        }
        tracing::info!("shut down cleanly");
        Ok(())
    }

    /// Waits for the running writes, then writes every lane's remainder.
    async fn finish_writes(&mut self) -> Result<(), Error> {
        while let Some(joined) = self.writes.join_next().await {
            self.on_joined(joined)?;
        }
        for index in 0..self.lanes.len() {
            if !self.lanes[index].batch.is_empty() {
                self.start_write(index);
            }
        }
        while let Some(joined) = self.writes.join_next().await {
            self.on_joined(joined)?;
        }
        Ok(())
    }
}
