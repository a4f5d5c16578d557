//! The Kafka side: consumer configuration, the consumer context (rebalance
//! and commit callbacks) and offset commits.
//!
//! Commit contract: an offset is committed only after the database
//! transaction holding every message before it has committed. The pipeline
//! records such offsets with [`Context::record_written`] and asks the
//! [`Committer`] thread to commit them; when partitions are revoked, the
//! rebalance callback waits (briefly) for their in-flight writes and commits
//! the written offsets of those partitions before they move to another
//! member.
//!
//! Commits are synchronous, on the committer thread, because librdkafka
//! reports nothing back for rust-rdkafka's asynchronous commits (the commit
//! callback is never invoked, rust-rdkafka issue #856): a synchronous
//! commit is the only way to count failures and know what was committed.

use std::collections::HashMap;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::config::KafkaConfig;
use crate::metrics::Metrics;

/// The consumer type used throughout objmeta: polled by the poller thread,
/// paused and resumed by the pipeline, committed by the committer thread
/// (librdkafka's handle is thread-safe).
pub type KafkaConsumer = BaseConsumer<Context>;

/// A change of this member's assignment, delivered to the pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RebalanceEvent {
    Assigned(Vec<i32>),
    /// Revoked partitions: their written offsets are already committed.
    Revoked(Vec<i32>),
    /// Partitions taken away without a chance to commit (session lost).
    Lost(Vec<i32>),
}

/// Callbacks librdkafka runs from inside the consumer's poll, on the poller
/// thread: a rebalance event is sent before any message polled after it.
pub struct Context {
    topic: String,
    metrics: Metrics,
    events: UnboundedSender<RebalanceEvent>,
    /// Per partition, the next offset to commit for work already written,
    /// the offset last committed, and the batch writes in flight.
    offsets: Mutex<PartitionOffsets>,
    /// Signalled when a batch write ends, for a revoke waiting on it.
    write_ended: Condvar,
}

#[derive(Debug, Default)]
struct PartitionOffsets {
    written: HashMap<i32, i64>,
    committed: HashMap<i32, i64>,
    writing: HashMap<i32, usize>,
}

/// How long a revoke waits for the in-flight writes of its partitions, so
/// that their offsets are committed before the partitions move. Past it
/// (the database is down), the partitions move and the new owner writes the
/// same messages again, which is harmless.
const REVOKE_WAIT: Duration = Duration::from_secs(5);

impl Context {
    /// Remembers offsets whose messages are durable in the database.
    pub fn record_written(&self, offsets: &[(i32, i64)]) {
        let mut state = self.lock_offsets();
        for &(partition, offset) in offsets {
            let entry = state.written.entry(partition).or_insert(offset);
            *entry = (*entry).max(offset);
        }
    }

    fn lock_offsets(&self) -> std::sync::MutexGuard<'_, PartitionOffsets> {
        self.offsets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Synchronously commits the written offsets not committed yet, of the
    /// given partitions (all when `None`).
    pub fn commit_written<C: Consumer<Context>>(
        &self,
        consumer: &C,
        partitions: Option<&[i32]>,
    ) -> KafkaResult<()> {
        let pending: Vec<(i32, i64)> = {
            let state = self.lock_offsets();
            state
                .written
                .iter()
                .filter(|(partition, _)| partitions.is_none_or(|wanted| wanted.contains(partition)))
                .filter(|(partition, offset)| state.committed.get(partition) != Some(offset))
                .map(|(&partition, &offset)| (partition, offset))
                .collect()
        };
        if pending.is_empty() {
            return Ok(());
        }
        let result = consumer.commit(&self.offset_list(pending.iter().copied()), CommitMode::Sync);
        match &result {
            Ok(()) => {
                self.metrics.commits.with_label_values(&["ok"]).inc();
                let mut state = self.lock_offsets();
                for &(partition, offset) in &pending {
                    state.committed.insert(partition, offset);
                    self.metrics
                        .committed_offset
                        .with_label_values(&[&partition.to_string()])
                        .set(offset);
                }
            }
            Err(_) => self.metrics.commits.with_label_values(&["error"]).inc(),
        }
        result
    }

    fn offset_list(&self, offsets: impl Iterator<Item = (i32, i64)>) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        for (partition, offset) in offsets {
            // Adding an offset to a fresh list cannot fail.
            let _ = list.add_partition_offset(&self.topic, partition, Offset::Offset(offset));
        }
        list
    }

    /// Marks a batch write of these partitions as in flight.
    pub fn begin_write(&self, partitions: impl Iterator<Item = i32>) {
        let mut state = self.lock_offsets();
        for partition in partitions {
            *state.writing.entry(partition).or_default() += 1;
        }
    }

    /// The write of these partitions ended (its offsets, if it succeeded,
    /// were recorded just before): wakes a revoke waiting for it.
    pub fn end_write(&self, partitions: impl Iterator<Item = i32>) {
        let mut state = self.lock_offsets();
        for partition in partitions {
            if let Some(count) = state.writing.get_mut(&partition) {
                *count -= 1;
                if *count == 0 {
                    state.writing.remove(&partition);
                }
            }
        }
        drop(state);
        self.write_ended.notify_all();
    }

    /// Waits until no write of these partitions is in flight, or `timeout`.
    fn wait_for_writes(&self, partitions: &[i32], timeout: Duration) -> bool {
        let state = self.lock_offsets();
        let (_state, waited) = self
            .write_ended
            .wait_timeout_while(state, timeout, |state| {
                partitions.iter().any(|p| state.writing.contains_key(p))
            })
            .unwrap_or_else(PoisonError::into_inner);
        !waited.timed_out()
    }

    fn forget(&self, partitions: &[i32]) {
        let mut state = self.lock_offsets();
        for partition in partitions {
            state.written.remove(partition);
            state.committed.remove(partition);
        }
    }

    fn send(&self, event: RebalanceEvent) {
        // The receiver lives as long as the pipeline; after it is gone
        // nobody needs the event.
        let _ = self.events.send(event);
    }
}

impl ClientContext for Context {
    fn error(&self, error: KafkaError, reason: &str) {
        self.metrics.kafka_errors.inc();
        tracing::warn!(error = %error, reason, "kafka client error");
    }

    /// Exports the lag of the partitions this member owns; partitions it
    /// gave away disappear from the gauge.
    fn stats(&self, statistics: Statistics) {
        let lag = &self.metrics.consumer_lag;
        lag.reset();
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        for partition in topic.partitions.values() {
            if partition.partition >= 0 && partition.desired && partition.consumer_lag >= 0 {
                lag.with_label_values(&[&partition.partition.to_string()])
                    .set(partition.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(list) = rebalance else {
            if let Rebalance::Error(e) = rebalance {
                tracing::warn!(error = %e, "rebalance error");
            }
            return;
        };
        let partitions = partitions_of(list);
        if consumer.assignment_lost() {
            self.metrics.rebalances.with_label_values(&["lost"]).inc();
            tracing::warn!(
                ?partitions,
                "partitions lost; their uncommitted work will be redelivered"
            );
            self.forget(&partitions);
            self.send(RebalanceEvent::Lost(partitions));
            return;
        }
        self.metrics.rebalances.with_label_values(&["revoke"]).inc();
        if !self.wait_for_writes(&partitions, REVOKE_WAIT) {
            tracing::warn!(?partitions, wait = ?REVOKE_WAIT, "revoking while a write of these partitions still runs; the new owner re-reads its messages");
        }
        match self.commit_written(consumer, Some(&partitions)) {
            Ok(()) => tracing::info!(?partitions, "committed written offsets before revoke"),
            Err(e) => {
                tracing::warn!(error = %e, ?partitions, "commit before revoke failed; the new owner re-reads from the previous commit")
            }
        }
        self.forget(&partitions);
        self.send(RebalanceEvent::Revoked(partitions));
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            self.metrics.rebalances.with_label_values(&["assign"]).inc();
            self.send(RebalanceEvent::Assigned(partitions_of(list)));
        }
        let assigned = consumer.assignment().map_or(0, |a| a.count());
        self.metrics
            .assigned_partitions
            .set(i64::try_from(assigned).unwrap_or(i64::MAX));
    }
}

fn partitions_of(list: &TopicPartitionList) -> Vec<i32> {
    list.elements().iter().map(|e| e.partition()).collect()
}

/// The librdkafka settings objmeta uses, before the user's overrides.
fn base_config(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", &config.group_id)
        .set("client.id", "objmeta")
        .set("auto.offset.reset", "earliest")
        // Incremental rebalances: a joining or leaving member only moves the
        // partitions that must move; the others keep flowing.
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.partition.eof", "false")
        // Feeds the consumer lag gauge.
        .set("statistics.interval.ms", "5000")
        // Bounded prefetch, refilled promptly. librdkafka's defaults (1 MiB
        // per partition fetch, 64 MiB queued, 1 s back-off once full) keep
        // ~150 MiB of decompressed batches in memory during a catch-up and
        // leave a fast pipeline idle for most of every second; these keep
        // the resident set near 64 MiB at the same throughput.
        .set("max.partition.fetch.bytes", "131072")
        .set("queued.max.messages.kbytes", "2048")
        .set("fetch.queue.backoff.ms", "20");
    client
}

/// Creates the consumer and subscribes it to the topic.
pub fn subscribe(
    config: &KafkaConfig,
    metrics: Metrics,
) -> Result<(Arc<KafkaConsumer>, UnboundedReceiver<RebalanceEvent>), KafkaError> {
    let mut client = base_config(config);
    for (key, value) in &config.properties {
        if key == "enable.auto.commit" {
            tracing::warn!("ignoring enable.auto.commit: objmeta commits offsets itself, after each database commit");
            continue;
        }
        client.set(key, value);
    }
    client.set("enable.auto.commit", "false");
    let (events, receiver) = unbounded_channel();
    let context = Context {
        topic: config.topic.clone(),
        metrics,
        events,
        offsets: Mutex::new(PartitionOffsets::default()),
        write_ended: Condvar::new(),
    };
    let consumer: KafkaConsumer = client.create_with_context(context)?;
    consumer.subscribe(&[&config.topic])?;
    Ok((Arc::new(consumer), receiver))
}

/// Commits written offsets on its own thread, so that the main loop never
/// waits for the broker. Requests coalesce: each commit takes the newest
/// written offsets.
pub struct Committer {
    requests: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How soon the committer retries a failed commit when no new batch asks.
const COMMIT_RETRY_INTERVAL: Duration = Duration::from_secs(1);

impl Committer {
    pub fn spawn(consumer: Arc<KafkaConsumer>) -> std::io::Result<Self> {
        let (requests, receiver) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("objmeta-committer".into())
            .spawn(move || {
                // After a failed commit (e.g. IllegalGeneration while a
                // rebalance is in progress), retry on a timer too: waiting
                // for the next batch alone leaves a partition that went
                // quiet uncommitted for good.
                let mut failed = false;
                loop {
                    let request = if failed {
                        receiver.recv_timeout(COMMIT_RETRY_INTERVAL)
                    } else {
                        receiver.recv().map_err(|_| RecvTimeoutError::Disconnected)
                    };
                    if request == Err(RecvTimeoutError::Disconnected) {
                        break;
                    }
                    while receiver.try_recv().is_ok() {}
                    failed = match consumer.context().commit_written(consumer.as_ref(), None) {
                        Ok(()) => false,
                        Err(e) => {
                            tracing::warn!(error = %e, retry_in = ?COMMIT_RETRY_INTERVAL, "offset commit failed; retrying");
                            true
                        }
                    };
                }
            })?;
        Ok(Committer {
            requests: Some(requests),
            thread: Some(thread),
        })
    }

    /// Records offsets as written and asks for them to be committed.
    pub fn commit(&self, consumer: &KafkaConsumer, offsets: &[(i32, i64)]) {
        consumer.context().record_written(offsets);
        if let Some(requests) = &self.requests {
            // The thread only stops after `finish`, so sending cannot fail.
            let _ = requests.send(());
        }
    }

    /// Stops the thread after its last commit, then commits whatever is
    /// still uncommitted and waits for the broker's answer.
    pub fn finish(mut self, consumer: &KafkaConsumer) -> KafkaResult<()> {
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        consumer.context().commit_written(consumer, None)
    }
}
