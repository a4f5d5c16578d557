//! The Kafka poller: a dedicated thread that polls the consumer, parses
//! each message into a batch contribution and hands it to the pipeline.
//!
//! Why a thread and not rust-rdkafka's `StreamConsumer`: its waker is only
//! called when librdkafka's queue goes from empty to non-empty, so a poll
//! that consumes an internal event (statistics, commit results) can leave
//! the stream asleep with messages waiting (rust-rdkafka issue #665). A
//! blocking `poll` with a timeout cannot miss a message, serves rebalance
//! callbacks without depending on the async loop, and moves JSON parsing
//! off the loop that writes to the database.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use tokio::sync::mpsc::{channel, Receiver, Sender};

use crate::batch::{Contribution, DeadLetter, Origin};
use crate::event;
use crate::kafka::KafkaConsumer;
use crate::metrics::Metrics;

/// How long one poll waits for a message; bounds how quickly the thread
/// notices that it should stop.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);

/// Parsed messages in flight between the poller and the pipeline; the
/// poller waits when the pipeline is this far behind.
const CHANNEL_CAPACITY: usize = 8192;

/// One poll result, in consumption order.
pub type Polled = Result<(Origin, Contribution), KafkaError>;

/// Handle on the poller thread.
pub struct Poller {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Poller {
    /// Starts polling; messages arrive on the returned receiver.
    pub fn spawn(
        consumer: Arc<KafkaConsumer>,
        metrics: Metrics,
    ) -> std::io::Result<(Self, Receiver<Polled>)> {
        let (sender, receiver) = channel(CHANNEL_CAPACITY);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
            .name("objmeta-poller".into())
            .spawn({
                let stop = stop.clone();
                move || poll_until_stopped(&consumer, &metrics, &sender, &stop)
            })?;
        Ok((
            Poller {
                stop,
                thread: Some(thread),
            },
            receiver,
        ))
    }

    /// Stops polling and waits for the thread to end (at most one poll
    /// timeout, or until the pipeline drained what it was blocked on).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Poller {
    /// On an early return (a fatal error) the thread still ends by itself,
    /// releasing the consumer, within one poll timeout.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn poll_until_stopped(
    consumer: &KafkaConsumer,
    metrics: &Metrics,
    sender: &Sender<Polled>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) {
        let polled = match consumer.poll(POLL_TIMEOUT) {
            None => continue,
            Some(Ok(message)) => Ok(contribution(&message, metrics)),
            Some(Err(e)) => Err(e),
        };
        if sender.blocking_send(polled).is_err() {
            // The pipeline is gone: nothing left to feed.
            return;
        }
    }
}

/// Turns one message into what it contributes to a batch, counting its
/// records by family and outcome.
fn contribution(message: &BorrowedMessage<'_>, metrics: &Metrics) -> (Origin, Contribution) {
    let origin = Origin {
        partition: message.partition(),
        offset: message.offset(),
    };
    match event::parse(message.payload()) {
        Ok(parsed) => {
            for family in &parsed.skipped {
                metrics
                    .events
                    .with_label_values(&[family.label(), "skipped"])
                    .inc();
            }
            (origin, Contribution::Changes(parsed.changes))
        }
        Err(e) => {
            metrics
                .events
                .with_label_values(&["unknown", "dead_lettered"])
                .inc();
            metrics.dead_letters.with_label_values(&[e.label()]).inc();
            tracing::warn!(partition = origin.partition, offset = origin.offset, error = %e, "dead-lettering message");
            let dead_letter = DeadLetter {
                origin,
                message_key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().map(<[u8]>::to_vec),
                reason: e.to_string(),
            };
            (origin, Contribution::DeadLetter(dead_letter))
        }
    }
}
