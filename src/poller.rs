//! The Kafka poller: a dedicated thread that polls the consumer, parses
//! each message into a batch contribution and hands it to the pipeline.
//!
//! Backpressure: when the pipeline stops taking messages (its next batch is
//! full while a write is still running) the channel fills up and the poller
//! waits for room, while librdkafka's bounded prefetch queue holds the rest.
//! When the wait lasts longer than a normal write (the database is down or
//! very slow), the poller pauses fetching from every assigned partition and
//! keeps polling, so the member stays in its group (no `max.poll.interval.ms`
//! eviction) and rebalance callbacks keep running; it resumes fetching once
//! the pipeline takes messages again. Pausing only after a while matters:
//! librdkafka drops its prefetched messages on pause and fetches them again
//! on resume.
//!
//! Why a thread and not rust-rdkafka's `StreamConsumer`: its waker is only
//! called when librdkafka's queue goes from empty to non-empty, so a poll
//! that consumes an internal event (statistics, commit results) can leave
//! the stream asleep with messages waiting (rust-rdkafka issue #665). A
//! blocking `poll` with a timeout cannot miss a message, serves rebalance
//! callbacks without depending on the async loop, and moves JSON parsing
//! off the loop that writes to the database.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::TopicPartitionList;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::mpsc::{channel, Receiver, Sender};

use crate::batch::{Contribution, DeadLetter, Origin};
use crate::budget::{Budget, Reservation};
use crate::event::{self, Decoding};
use crate::kafka::KafkaConsumer;
use crate::metrics::Metrics;
use crate::offsets::Epoch;

/// How long one poll waits for a message; bounds how quickly the thread
/// notices that it should stop.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);

/// How long the poller waits for room in the channel before it pauses
/// fetching; longer than a normal batch write.
const PAUSE_AFTER: Duration = Duration::from_secs(2);

/// While paused, how long the poller waits for room between two polls.
const PAUSED_WAIT: Duration = Duration::from_millis(50);

/// Parsed messages in flight between the poller and the pipeline; the
/// poller waits when the pipeline is this far behind.
const CHANNEL_CAPACITY: usize = 2048;

/// One consumed message: where it came from, the epoch it was polled under
/// (see `offsets`) and what it contributes to a batch.
#[derive(Debug)]
pub struct Consumed {
    pub origin: Origin,
    pub epoch: Epoch,
    pub contribution: Contribution,
    /// The message's size (payload and key), what it costs of the budget.
    pub bytes: usize,
    /// Its share of the memory budget, taken before it is handed over.
    pub reservation: Reservation,
}

/// One poll result, in consumption order.
pub type Polled = Result<Consumed, KafkaError>;

/// Handle on the poller thread.
pub struct Poller {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Poller {
    /// Starts polling; messages arrive on the returned receiver. Must be
    /// called within the tokio runtime: the thread waits for room in the
    /// channel with the runtime's timers.
    pub fn spawn(
        consumer: Arc<KafkaConsumer>,
        metrics: Metrics,
        budget: Budget,
        decoding: Decoding,
    ) -> std::io::Result<(Self, Receiver<Polled>)> {
        let (sender, receiver) = channel(CHANNEL_CAPACITY);
        let stop = Arc::new(AtomicBool::new(false));
        let runtime = tokio::runtime::Handle::current();
        let thread = std::thread::Builder::new()
            .name("objmeta-poller".into())
            .spawn({
                let stop = stop.clone();
                move || {
                    let feed = Feed {
                        consumer: &consumer,
                        metrics: &metrics,
                        sender: &sender,
                        runtime: &runtime,
                        budget: &budget,
                        decoding,
                    };
                    feed.run(&stop);
                }
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

/// What the poller thread works with.
struct Feed<'a> {
    consumer: &'a KafkaConsumer,
    metrics: &'a Metrics,
    sender: &'a Sender<Polled>,
    runtime: &'a tokio::runtime::Handle,
    budget: &'a Budget,
    decoding: Decoding,
}

impl Feed<'_> {
    fn run(&self, stop: &AtomicBool) {
        // Messages polled but not yet accepted by the pipeline, oldest first.
        // More than one is possible while paused: a poll that only serves
        // callbacks may still return a message buffered before the pause,
        // or one of a partition assigned since.
        let mut held: VecDeque<Polled> = VecDeque::new();
        let mut paused: Option<TopicPartitionList> = None;
        while !stop.load(Ordering::Relaxed) {
            let wait = if paused.is_some() {
                PAUSED_WAIT
            } else {
                PAUSE_AFTER
            };
            if !hand_over(&mut held, |polled| self.offer(polled, wait)) {
                return; // the pipeline is gone
            }
            paused = update_pause(self.consumer, self.metrics, paused, !held.is_empty());
            // While behind, poll only to serve callbacks and stay in the group.
            let timeout = if held.is_empty() {
                POLL_TIMEOUT
            } else {
                Duration::ZERO
            };
            if let Some(polled) = self.poll(timeout) {
                held.push_back(polled);
            }
        }
    }

    fn poll(&self, timeout: Duration) -> Option<Polled> {
        let polled = self.consumer.poll(timeout)?;
        // Read after the poll: the callbacks it ran have advanced the epoch,
        // and the message it returned belongs to the assignment they made.
        let epoch = self.consumer.context().epoch();
        match polled {
            Ok(message) => {
                let bytes = message.payload_len() + message.key_len();
                let (origin, contribution) = contribution(&message, self.metrics, &self.decoding);
                Some(Ok(Consumed {
                    origin,
                    epoch,
                    contribution,
                    bytes,
                    reservation: Reservation::default(),
                }))
            }
            Err(e) => Some(Err(e)),
        }
    }

    /// Hands one message to the pipeline, waiting up to `wait` for room in
    /// the memory budget and then in the channel.
    fn offer(&self, polled: Polled, wait: Duration) -> Offer {
        let mut polled = polled;
        if let Ok(consumed) = &mut polled {
            if !self.reserve(consumed, wait) {
                return Offer::Full(polled);
            }
        }
        let polled = match self.sender.try_send(polled) {
            Ok(()) => return Offer::Taken,
            Err(TrySendError::Closed(_)) => return Offer::Closed,
            Err(TrySendError::Full(polled)) => polled,
        };
        let room = self
            .runtime
            .block_on(async { tokio::time::timeout(wait, self.sender.reserve()).await });
        match room {
            Ok(Ok(permit)) => {
                permit.send(polled);
                Offer::Taken
            }
            Ok(Err(_closed)) => Offer::Closed,
            Err(_elapsed) => Offer::Full(polled),
        }
    }
}

impl Feed<'_> {
    /// Takes the message's share of the budget unless it already holds it;
    /// `false` when there was no room within `wait`.
    fn reserve(&self, consumed: &mut Consumed, wait: Duration) -> bool {
        if consumed.bytes == 0 || consumed.reservation.is_held() {
            return true;
        }
        let reserved = self.budget.try_reserve(consumed.bytes).or_else(|| {
            self.runtime
                .block_on(self.budget.reserve(consumed.bytes, wait))
        });
        match reserved {
            Some(reservation) => {
                consumed.reservation = reservation;
                true
            }
            None => false,
        }
    }
}

enum Offer {
    Taken,
    Full(Polled),
    Closed,
}

/// Offers the held messages in order and keeps, in order, those the
/// pipeline had no room for. `false` when the pipeline is gone.
fn hand_over(held: &mut VecDeque<Polled>, mut offer: impl FnMut(Polled) -> Offer) -> bool {
    while let Some(polled) = held.pop_front() {
        match offer(polled) {
            Offer::Taken => {}
            Offer::Full(polled) => {
                held.push_front(polled);
                return true;
            }
            Offer::Closed => return false,
        }
    }
    true
}

/// Pauses the current assignment while the pipeline is behind (again when
/// the assignment changed), resumes it when it caught up. Returns what is
/// paused now.
fn update_pause(
    consumer: &KafkaConsumer,
    metrics: &Metrics,
    paused: Option<TopicPartitionList>,
    behind: bool,
) -> Option<TopicPartitionList> {
    if !behind {
        if let Some(list) = paused {
            // Resume what is assigned now: the assignment may have changed
            // while paused, and resuming an unpaused partition is harmless.
            let list = consumer.assignment().unwrap_or(list);
            if let Err(e) = consumer.resume(&list) {
                tracing::warn!(error = %e, "resuming partitions");
            }
            metrics.paused.set(0);
        }
        return None;
    }
    let assignment = match consumer.assignment() {
        Ok(assignment) => assignment,
        Err(e) => {
            tracing::warn!(error = %e, "reading the assignment");
            return paused;
        }
    };
    if paused.as_ref().map(TopicPartitionList::to_topic_map) == Some(assignment.to_topic_map()) {
        return paused;
    }
    if let Err(e) = consumer.pause(&assignment) {
        tracing::warn!(error = %e, "pausing partitions");
    }
    metrics.paused.set(1);
    Some(assignment)
}

/// Turns one message into what it contributes to a batch, counting its
/// records by family and outcome, and by store.
fn contribution(
    message: &BorrowedMessage<'_>,
    metrics: &Metrics,
    decoding: &Decoding,
) -> (Origin, Contribution) {
    let origin = Origin {
        partition: message.partition(),
        offset: message.offset(),
    };
    match event::parse_with(message.payload(), decoding) {
        Ok(parsed) => {
            for (store, family) in &parsed.seen {
                let source = store.map_or("unknown", event::Store::label);
                metrics
                    .source_events
                    .with_label_values(&[source, family.label()])
                    .inc();
            }
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
            // objmeta_dead_letters_total counts the row once it is stored.
            tracing::warn!(partition = origin.partition, offset = origin.offset, error = %e, "dead-lettering message");
            let dead_letter = DeadLetter {
                origin,
                record: 0,
                code: e.label(),
                message_key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().map(<[u8]>::to_vec),
                reason: e.to_string(),
            };
            (origin, Contribution::DeadLetter(dead_letter))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Contribution;

    fn message(offset: i64) -> Polled {
        let origin = Origin {
            partition: 0,
            offset,
        };
        Ok(Consumed {
            origin,
            epoch: 1,
            contribution: Contribution::Changes(Vec::new()),
            bytes: 0,
            reservation: Reservation::default(),
        })
    }

    fn offsets(held: &VecDeque<Polled>) -> Vec<i64> {
        held.iter()
            .map(|polled| polled.as_ref().map_or(-1, |c| c.origin.offset))
            .collect()
    }

    #[test]
    fn a_full_pipeline_keeps_every_held_message_in_order() {
        let mut held: VecDeque<Polled> = (1..=4).map(message).collect();
        let mut taken = Vec::new();
        let accepted = hand_over(&mut held, |polled| {
            if taken.len() == 2 {
                return Offer::Full(polled);
            }
            if let Ok(consumed) = &polled {
                taken.push(consumed.origin.offset);
            }
            Offer::Taken
        });
        assert!(accepted);
        assert_eq!(taken, vec![1, 2]);
        assert_eq!(offsets(&held), vec![3, 4]);
        assert!(hand_over(&mut held, |_| Offer::Taken));
        assert!(held.is_empty());
    }

    #[test]
    fn a_closed_pipeline_stops_the_hand_over() {
        let mut held: VecDeque<Polled> = (1..=2).map(message).collect();
        assert!(!hand_over(&mut held, |_| Offer::Closed));
    }
}
