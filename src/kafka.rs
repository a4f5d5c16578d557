//! The Kafka side: consumer configuration, the consumer context (rebalance
//! and statistics callbacks) and offset commits.
//!
//! Commit contract: an offset is committed only after the database
//! transaction holding every message before it has committed. The pipeline's
//! [`crate::offsets::Ledger`] is the only place that knows which offsets
//! those are; the [`Committer`] thread commits the snapshots the pipeline
//! hands it, and a revoke callback commits what the pipeline answers it.
//!
//! Rebalance callbacks run inside the consumer's poll, on the poller thread.
//! Each one advances the [`Context`]'s epoch before telling the pipeline, and
//! the poller stamps every message with the epoch current when it was polled,
//! so the pipeline can refuse a message polled before its partition was
//! lost and assigned again, whatever order the two channels deliver in.
//!
//! Commits are synchronous, on the committer thread, because librdkafka
//! reports nothing back for rust-rdkafka's asynchronous commits (the commit
//! callback is never invoked, rust-rdkafka issue #856): a synchronous
//! commit is the only way to count failures and know what was committed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::statistics::{Statistics, Topic};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::config::KafkaConfig;
use crate::metrics::Metrics;
use crate::offsets::{Epoch, RevokeReply};
use crate::redact::Redactor;

/// The consumer type used throughout objmeta: polled by the poller thread,
/// paused and resumed by it, committed by the committer thread (librdkafka's
/// handle is thread-safe).
pub type KafkaConsumer = BaseConsumer<Context>;

/// A change of this member's assignment, delivered to the pipeline.
#[derive(Debug)]
pub enum RebalanceEvent {
    /// Messages of these partitions polled under `epoch` or later belong to
    /// this assignment.
    Assigned { partitions: Vec<i32>, epoch: Epoch },
    /// The callback waits (briefly) on `reply` for the written offsets of
    /// these partitions, commits them, and lets the partitions move.
    Revoked {
        partitions: Vec<i32>,
        reply: RevokeReply,
    },
    /// Partitions taken away without a chance to commit (session lost).
    Lost(Vec<i32>),
}

/// Callbacks librdkafka runs from inside the consumer's poll, on the poller
/// thread.
pub struct Context {
    topic: String,
    metrics: Metrics,
    events: UnboundedSender<RebalanceEvent>,
    /// Advanced by every rebalance callback; read by the poller after each
    /// poll to stamp the message it returned.
    epoch: AtomicU64,
    /// The offsets last committed successfully, so that unchanged ones are
    /// not committed again.
    committed: Mutex<BTreeMap<i32, i64>>,
    /// The partitions this member owns, from the rebalance callbacks
    /// themselves: asking librdkafka (`assignment()`) from inside a callback
    /// that closing the consumer runs blocks forever.
    owned: Mutex<BTreeSet<i32>>,
    /// Keeps the `-X` values out of what librdkafka reports.
    redactor: Redactor,
}

/// How long a revoke waits for the in-flight writes of its partitions, so
/// that their offsets are committed before the partitions move. Past it
/// (the database is down), the partitions move and the new owner writes the
/// same messages again, which is harmless.
const REVOKE_WAIT: Duration = Duration::from_secs(5);

impl Context {
    /// The epoch now: a message polled now belongs to the assignments made
    /// at or before it.
    pub fn epoch(&self) -> Epoch {
        self.epoch.load(Ordering::Acquire)
    }

    fn next_epoch(&self) -> Epoch {
        self.epoch.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Synchronously commits those of `offsets` that differ from what was
    /// committed last.
    pub fn commit<C: Consumer<Context>>(
        &self,
        consumer: &C,
        offsets: &[(i32, i64)],
    ) -> KafkaResult<()> {
        let pending: Vec<(i32, i64)> = {
            let committed = self.lock_committed();
            offsets
                .iter()
                .copied()
                .filter(|(partition, offset)| committed.get(partition) != Some(offset))
                .collect()
        };
        if pending.is_empty() {
            return Ok(());
        }
        let result = consumer.commit(&self.offset_list(&pending), CommitMode::Sync);
        match &result {
            Ok(()) => {
                self.metrics.commits.with_label_values(&["ok"]).inc();
                let mut committed = self.lock_committed();
                for &(partition, offset) in &pending {
                    committed.insert(partition, offset);
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

    fn lock_committed(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, i64>> {
        lock(&self.committed)
    }

    fn offset_list(&self, offsets: &[(i32, i64)]) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        for &(partition, offset) in offsets {
            // Adding an offset to a fresh list cannot fail.
            let _ = list.add_partition_offset(&self.topic, partition, Offset::Offset(offset));
        }
        list
    }

    /// Forgets what was committed for partitions that moved away: when they
    /// come back, their group offset may have been moved by another member.
    fn forget(&self, partitions: &[i32]) {
        let mut committed = self.lock_committed();
        for partition in partitions {
            committed.remove(partition);
        }
    }

    /// Records partitions gained (`gained`) or given up (revoked or lost;
    /// the cooperative protocol lists only those that move) and exports
    /// how many this member owns.
    fn own(&self, partitions: &[i32], gained: bool) {
        let mut owned = lock(&self.owned);
        for &partition in partitions {
            if gained {
                owned.insert(partition);
            } else {
                owned.remove(&partition);
            }
        }
        self.metrics
            .assigned_partitions
            .set(i64::try_from(owned.len()).unwrap_or(i64::MAX));
    }

    fn send(&self, event: RebalanceEvent) {
        // The receiver lives as long as the pipeline; after it is gone
        // nobody needs the event.
        let _ = self.events.send(event);
    }

    /// Asks the pipeline for the written offsets of revoked partitions
    /// (it answers once their in-flight writes end) and commits them.
    fn revoke<C: Consumer<Context>>(&self, consumer: &C, partitions: Vec<i32>) {
        let (reply, answer) = sync_channel(1);
        self.send(RebalanceEvent::Revoked {
            partitions: partitions.clone(),
            reply,
        });
        match answer.recv_timeout(REVOKE_WAIT) {
            Ok(offsets) => match self.commit(consumer, &offsets) {
                Ok(()) => tracing::info!(?partitions, "committed written offsets before revoke"),
                Err(e) => {
                    tracing::warn!(error = %e, ?partitions, "commit before revoke failed; the new owner re-reads from the previous commit")
                }
            },
            // The pipeline is gone: it made its final commit before closing
            // the consumer, whose revoke this is.
            Err(RecvTimeoutError::Disconnected) => {}
            Err(RecvTimeoutError::Timeout) => {
                tracing::warn!(?partitions, wait = ?REVOKE_WAIT, "revoking while a write of these partitions still runs; the new owner re-reads its messages")
            }
        }
        self.forget(&partitions);
    }
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.redactor.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.metrics.kafka_errors.inc();
        self.redactor.client_error(&error, reason);
    }

    /// Exports the lag of the partitions this member owns (partitions it
    /// gave away disappear from the gauge) and the topic's partition count,
    /// which keeps its last value while the statistics omit the topic.
    fn stats(&self, statistics: Statistics) {
        let lag = &self.metrics.consumer_lag;
        lag.reset();
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        self.metrics.topic_partitions.set(broker_partitions(topic));
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
        self.next_epoch();
        self.own(&partitions, false);
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
        self.revoke(consumer, partitions);
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            self.metrics.rebalances.with_label_values(&["assign"]).inc();
            let epoch = self.next_epoch();
            let partitions = partitions_of(list);
            self.own(&partitions, true);
            self.send(RebalanceEvent::Assigned { partitions, epoch });
        }
    }
}

/// The topic's partitions in the broker's metadata. Statistics also list
/// librdkafka's internal unassigned partition (-1) and desired partitions the
/// metadata does not know (`unknown`); neither exists on the broker.
fn broker_partitions(topic: &Topic) -> i64 {
    let count = topic
        .partitions
        .values()
        .filter(|p| p.partition >= 0 && !p.unknown)
        .count();
    i64::try_from(count).unwrap_or(i64::MAX)
}

fn partitions_of(list: &TopicPartitionList) -> Vec<i32> {
    list.elements().iter().map(|e| e.partition()).collect()
}

/// The librdkafka settings objmeta uses, before the user's overrides;
/// `prefetch_kib` is the memory budget's share for librdkafka's queue.
fn base_config(config: &KafkaConfig, prefetch_kib: usize) -> ClientConfig {
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
        // the resident set near 64 MiB at the same throughput. The queue's
        // size is the memory budget's share (1 MiB of the default 16 MiB).
        .set("max.partition.fetch.bytes", "131072")
        .set("queued.max.messages.kbytes", prefetch_kib.to_string())
        .set("fetch.queue.backoff.ms", "20");
    client
}

/// Creates the consumer and subscribes it to the topic.
/// Errors never carry a `-X` value (see `redact`).
pub fn subscribe(
    config: &KafkaConfig,
    prefetch_kib: usize,
    metrics: Metrics,
) -> Result<(Arc<KafkaConsumer>, UnboundedReceiver<RebalanceEvent>), KafkaError> {
    let mut client = base_config(config, prefetch_kib);
    let properties = config.user_properties();
    for (key, value) in &properties {
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
        epoch: AtomicU64::new(0),
        committed: Mutex::new(BTreeMap::new()),
        owned: Mutex::new(BTreeSet::new()),
        redactor: Redactor::new(&properties),
    };
    let redactor = context.redactor.clone();
    let consumer: KafkaConsumer = client
        .create_with_context(context)
        .map_err(|e| redactor.error(e))?;
    consumer
        .subscribe(&[&config.topic])
        .map_err(|e| redactor.error(e))?;
    Ok((Arc::new(consumer), receiver))
}

/// Commits offsets on its own thread, so that the main loop never waits for
/// the broker. Requests coalesce: each commit takes the newest snapshot the
/// pipeline handed over.
pub struct Committer {
    latest: Arc<Mutex<Vec<(i32, i64)>>>,
    requests: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How soon the committer retries a failed commit when no new batch asks.
const COMMIT_RETRY_INTERVAL: Duration = Duration::from_secs(1);

impl Committer {
    pub fn spawn(consumer: Arc<KafkaConsumer>) -> std::io::Result<Self> {
        let (requests, receiver) = std::sync::mpsc::channel::<()>();
        let latest = Arc::new(Mutex::new(Vec::new()));
        let snapshot = latest.clone();
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
                    let offsets = lock(&snapshot).clone();
                    failed = match consumer.context().commit(consumer.as_ref(), &offsets) {
                        Ok(()) => false,
                        Err(e) => {
                            tracing::warn!(error = %e, retry_in = ?COMMIT_RETRY_INTERVAL, "offset commit failed; retrying");
                            true
                        }
                    };
                }
            })?;
        Ok(Committer {
            latest,
            requests: Some(requests),
            thread: Some(thread),
        })
    }

    /// Hands over the offsets that may be committed now (the ledger's whole
    /// snapshot) and asks for them to be committed.
    pub fn commit(&self, offsets: Vec<(i32, i64)>) {
        *lock(&self.latest) = offsets;
        if let Some(requests) = &self.requests {
            // The thread only stops after `finish`, so sending cannot fail.
            let _ = requests.send(());
        }
    }

    /// Stops the thread after its last commit, then commits the last
    /// snapshot and waits for the broker's answer.
    pub fn finish(mut self, consumer: &KafkaConsumer) -> KafkaResult<()> {
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let offsets = lock(&self.latest).clone();
        consumer.context().commit(consumer, &offsets)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
