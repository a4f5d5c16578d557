//! The Kafka side: consumer configuration, the consumer context (rebalance
//! and commit callbacks) and offset commits.
//!
//! Commit contract: an offset is committed only after the database
//! transaction holding every message before it has committed. The pipeline
//! records such offsets with [`Context::record_written`] and commits them
//! asynchronously; when partitions are revoked, the rebalance callback
//! commits the written offsets of those partitions synchronously, before
//! they move to another member.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::config::KafkaConfig;
use crate::metrics::Metrics;

/// The consumer type used throughout objmeta.
pub type KafkaConsumer = StreamConsumer<Context>;

/// A change of this member's assignment, delivered to the pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RebalanceEvent {
    Assigned(Vec<i32>),
    /// Revoked partitions: their written offsets are already committed.
    Revoked(Vec<i32>),
    /// Partitions taken away without a chance to commit (session lost).
    Lost(Vec<i32>),
}

/// Callbacks librdkafka runs from inside the consumer's poll, that is from
/// inside the pipeline's `recv()`: they never run concurrently with it.
pub struct Context {
    topic: String,
    metrics: Metrics,
    events: UnboundedSender<RebalanceEvent>,
    /// Per partition, the next offset to commit for work already written.
    written: Mutex<HashMap<i32, i64>>,
}

impl Context {
    /// Remembers offsets whose messages are durable in the database.
    pub fn record_written(&self, offsets: &[(i32, i64)]) {
        let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        for &(partition, offset) in offsets {
            let entry = written.entry(partition).or_insert(offset);
            *entry = (*entry).max(offset);
        }
    }

    /// Written offsets of the given partitions (all when `None`), as a list
    /// ready to commit.
    pub fn written_offsets(&self, partitions: Option<&[i32]>) -> TopicPartitionList {
        let written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        let selected = written
            .iter()
            .filter(|(partition, _)| partitions.is_none_or(|wanted| wanted.contains(partition)))
            .map(|(&partition, &offset)| (partition, offset));
        self.offset_list(selected)
    }

    fn offset_list(&self, offsets: impl Iterator<Item = (i32, i64)>) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        for (partition, offset) in offsets {
            // Adding an offset to a fresh list cannot fail.
            let _ = list.add_partition_offset(&self.topic, partition, Offset::Offset(offset));
        }
        list
    }

    fn forget(&self, partitions: &[i32]) {
        let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        for partition in partitions {
            written.remove(partition);
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
        let offsets = self.written_offsets(Some(&partitions));
        if offsets.count() > 0 {
            match consumer.commit(&offsets, CommitMode::Sync) {
                Ok(()) => tracing::info!(?partitions, "committed written offsets before revoke"),
                Err(e) => {
                    tracing::warn!(error = %e, ?partitions, "commit before revoke failed; the new owner re-reads from the previous commit")
                }
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

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                self.metrics.commits.with_label_values(&["ok"]).inc();
                for element in offsets.elements() {
                    if let Offset::Offset(offset) = element.offset() {
                        self.metrics
                            .committed_offset
                            .with_label_values(&[&element.partition().to_string()])
                            .set(offset);
                    }
                }
            }
            Err(e) => {
                self.metrics.commits.with_label_values(&["error"]).inc();
                tracing::warn!(error = %e, "offset commit failed; it is retried with the next batch");
            }
        }
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
        .set("enable.partition.eof", "false");
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
        written: Mutex::new(HashMap::new()),
    };
    let consumer: KafkaConsumer = client.create_with_context(context)?;
    consumer.subscribe(&[&config.topic])?;
    Ok((Arc::new(consumer), receiver))
}

/// Commits the given offsets without waiting; the result reaches the
/// commit callback.
pub fn commit_async(consumer: &KafkaConsumer, offsets: &[(i32, i64)]) -> KafkaResult<()> {
    let context = consumer.context();
    context.record_written(offsets);
    let list = context.offset_list(offsets.iter().copied());
    if list.count() == 0 {
        return Ok(());
    }
    consumer.commit(&list, CommitMode::Async)
}

/// Commits every written offset and waits for the broker's answer
/// (shutdown).
pub fn commit_all_sync(consumer: &KafkaConsumer) -> KafkaResult<()> {
    let list = consumer.context().written_offsets(None);
    if list.count() == 0 {
        return Ok(());
    }
    consumer.commit(&list, CommitMode::Sync)
}

/// Pauses or resumes fetching from the given partitions.
pub fn set_paused(
    consumer: &KafkaConsumer,
    topic: &str,
    partitions: &[i32],
    paused: bool,
) -> KafkaResult<()> {
    let mut list = TopicPartitionList::new();
    for &partition in partitions {
        list.add_partition(topic, partition);
    }
    if paused {
        consumer.pause(&list)
    } else {
        consumer.resume(&list)
    }
}
