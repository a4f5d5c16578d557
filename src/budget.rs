//! The memory budget: one bound, in bytes, on the messages held between
//! the broker and the database.
//!
//! A small share goes to librdkafka's prefetch queue
//! (`queued.max.messages.kbytes`, see `kafka`); the rest is a semaphore of
//! kibibytes. The poller reserves a message's size before handing it over,
//! and the reservation travels with the message through the channel, the
//! batch and the write, and is released when the write ends or the work is
//! dropped. So the channel, the batches, the writes in flight and the dead
//! letters' full payloads together never hold more than the budget: a slow
//! database delays reading, it never makes objmeta keep more, and nothing
//! kept is ever truncated.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// What one message costs beyond its bytes: the parsed change, the batch
/// entry and the map slot, roughly.
const PER_MESSAGE_OVERHEAD: usize = 512;

/// Share of the budget left to librdkafka's prefetch queue (1/16).
const PREFETCH_SHARE: usize = 16;

/// Reservations are counted in KiB, so that a semaphore's `u32` permits
/// cover any budget.
const UNIT: usize = 1024;

#[derive(Clone, Debug)]
pub struct Budget {
    permits: Arc<Semaphore>,
    total_units: u32,
}

/// Bytes reserved for the messages of some work; released when dropped.
#[derive(Debug, Default)]
pub struct Reservation(Option<OwnedSemaphorePermit>);

impl Reservation {
    pub fn is_held(&self) -> bool {
        self.0.is_some()
    }

    /// Takes over `other`'s bytes (both are released together).
    pub fn merge(&mut self, other: Reservation) {
        match (&mut self.0, other.0) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
    }
}

impl Budget {
    /// A budget of `bytes`, of which [`Budget::prefetch_kib`] is librdkafka's.
    pub fn new(bytes: usize) -> Self {
        let pipeline = bytes - bytes / PREFETCH_SHARE;
        let total_units = u32::try_from(pipeline / UNIT).unwrap_or(u32::MAX).max(1);
        Budget {
            permits: Arc::new(Semaphore::new(total_units as usize)),
            total_units,
        }
    }

    /// librdkafka's share, as `queued.max.messages.kbytes` (at least 1).
    pub fn prefetch_kib(bytes: usize) -> usize {
        (bytes / PREFETCH_SHARE / UNIT).max(1)
    }

    /// The largest statement a write sends: 1/8 of the budget, at least
    /// 1 MiB. Each connection keeps the buffer of its largest statement, so
    /// this bounds what the write connections hold outside the budget.
    pub fn statement_bytes(bytes: usize) -> usize {
        (bytes / 8).max(1 << 20)
    }

    /// What a message of `bytes` (payload and key) costs, in units, capped
    /// at the whole budget so that one message larger than the budget still
    /// passes once nothing else is held.
    fn units(&self, bytes: usize) -> u32 {
        let units = (bytes + PER_MESSAGE_OVERHEAD).div_ceil(UNIT);
        u32::try_from(units)
            .unwrap_or(u32::MAX)
            .min(self.total_units)
    }

    /// Reserves room for a message of `bytes` if there is some now (the
    /// poller's fast path: no runtime involved).
    pub fn try_reserve(&self, bytes: usize) -> Option<Reservation> {
        let units = self.units(bytes);
        let permit = self.permits.clone().try_acquire_many_owned(units).ok()?;
        Some(Reservation(Some(permit)))
    }

    /// Reserves room for a message of `bytes`, waiting at most `wait`.
    /// `None` when there was no room in time.
    pub async fn reserve(&self, bytes: usize, wait: Duration) -> Option<Reservation> {
        if let Some(reservation) = self.try_reserve(bytes) {
            return Some(reservation);
        }
        let units = self.units(bytes);
        let acquire = self.permits.clone().acquire_many_owned(units);
        match tokio::time::timeout(wait, acquire).await {
            Ok(Ok(permit)) => Some(Reservation(Some(permit))),
            // The semaphore is never closed; a timeout means no room.
            _ => None,
        }
    }

    /// Bytes reserved right now, for the metrics.
    pub fn reserved_bytes(&self) -> usize {
        (self.total_units as usize - self.permits.available_permits()) * UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_wait_for_room_and_release_on_drop() {
        // 15 KiB for the pipeline; 8 KiB and 4 KiB messages cost 9 and 5.
        let budget = Budget::new(16 * 1024);
        let wait = Duration::from_millis(20);
        let first = budget.reserve(8 * 1024, wait).await.expect("room");
        let mut second = budget.reserve(4 * 1024, wait).await.expect("room");
        assert!(budget.reserve(8 * 1024, wait).await.is_none(), "full");
        second.merge(first);
        drop(second);
        assert_eq!(budget.reserved_bytes(), 0);
        assert!(budget.reserve(8 * 1024, wait).await.is_some());
    }

    #[tokio::test]
    async fn a_message_larger_than_the_budget_passes_alone() {
        let budget = Budget::new(64 * 1024);
        let wait = Duration::from_millis(20);
        let huge = budget.reserve(10 * 1024 * 1024, wait).await.expect("alone");
        assert!(budget.reserve(100, wait).await.is_none());
        drop(huge);
        assert!(budget.reserve(100, wait).await.is_some());
    }

    #[test]
    fn librdkafka_gets_a_sixteenth() {
        assert_eq!(Budget::prefetch_kib(32 * 1024 * 1024), 2048);
        assert_eq!(Budget::prefetch_kib(1000), 1);
    }
}
