//! The bucket as the source of truth: `objmeta backfill` and `objmeta
//! reconcile` list a bucket (ListObjectsV2, a page at a time), read each
//! object's metadata (from the listing where the store puts it there,
//! otherwise one HeadObject per object, several at once) and write the rows
//! by the version scheme of sql/0004: a read never overwrites a newer state,
//! and replaces an older one.
//!
//! Data flows one way: pages → reads (concurrent, finishing in any order)
//! → batches written in one transaction each, with the checkpoint. The
//! checkpoint is the last key of the *contiguous* written part of the
//! listing, so a resumed listing never skips an object whose read was still
//! in flight. A reconcile also records the keys it found, and once the
//! listing is complete removes the rows of objects it did not find (only
//! rows written before it started: an object created meanwhile stays).
//!
//! Memory is bounded by the window: a new page is listed only while fewer
//! than [`WINDOW`] listed objects are not yet behind the checkpoint.

mod progress;
pub mod schedule;
pub mod store;
pub mod versions;

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::error::SinkError;
use crate::retry::Backoff;
use crate::s3::{ListPage, S3Error, S3};

pub use progress::Progress;
use store::{Advance, Checkpoint, Drift, Outcome, ReadRow, Store};

/// Listed objects not yet behind the checkpoint before listing pauses: two
/// pages of ListObjectsV2.
const WINDOW: usize = 2000;

/// Reads of one object at most when the rows stay unsettled (an event of
/// the same second that happened during the read): the first, and two more
/// after [`REREAD_DELAY`], each started later than the event.
const MAX_READS: u32 = 3;

/// Wait before reading an unsettled object again, so that the new read
/// starts clearly after the event it must be ordered against.
const REREAD_DELAY: Duration = Duration::from_secs(1);

/// How long a batch of finished reads waits for more before it is written.
const BATCH_MAX_AGE: Duration = Duration::from_millis(200);

/// First delay after a failed request; doubles up to [`RETRY_MAX_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(200);
const RETRY_MAX_DELAY: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Backfill,
    Reconcile,
}

impl Kind {
    /// The `kind` of `bucket_listings`.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Backfill => "backfill",
            Kind::Reconcile => "reconcile",
        }
    }

    /// The `event_name` of the rows it writes: the row's origin.
    pub fn event_name(self) -> &'static str {
        match self {
            Kind::Backfill => "objmeta:Backfill",
            Kind::Reconcile => "objmeta:Reconcile",
        }
    }
}

/// One listing: a bucket and prefix, backfilled or reconciled.
#[derive(Clone, Debug)]
pub struct Target {
    pub bucket: String,
    pub prefix: String,
    pub kind: Kind,
}

impl Target {
    /// One target per bucket, all with `prefix` and `kind`.
    pub fn each(buckets: &[String], prefix: &str, kind: Kind) -> Vec<Target> {
        buckets
            .iter()
            .map(|bucket| Target {
                bucket: bucket.clone(),
                prefix: prefix.to_string(),
                kind,
            })
            .collect()
    }
}

/// How a listing runs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// HeadObject requests in flight at once.
    pub concurrency: usize,
    /// Rows written per transaction at most.
    pub batch_rows: usize,
    /// Forget an interrupted listing instead of resuming it.
    pub restart: bool,
    /// How long one S3 request keeps being retried.
    pub retry_timeout: Duration,
}

/// What became of the objects of one listing, over every run of it: each
/// listed object whose row is written ends in exactly one of inserted,
/// updated, unchanged, skipped, unsettled, gone or errors. Stored with the
/// checkpoint, so that a resumed listing reports (and records as drift) the
/// whole listing, and an error before an interruption still fails it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Tally {
    pub listed: u64,
    /// Rows created (or brought back from a tombstone): missing from the table.
    pub inserted: u64,
    /// Rows that held an older state: stale.
    pub updated: u64,
    pub unchanged: u64,
    /// The table already held a newer state.
    pub skipped: u64,
    /// Still undecided after every re-read (see `MAX_READS`).
    pub unsettled: u64,
    /// Listed, then gone before its HeadObject (404).
    pub gone: u64,
    /// Objects whose read failed for good.
    pub errors: u64,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, other: Tally) {
        self.listed += other.listed;
        self.inserted += other.inserted;
        self.updated += other.updated;
        self.unchanged += other.unchanged;
        self.skipped += other.skipped;
        self.unsettled += other.unsettled;
        self.gone += other.gone;
        self.errors += other.errors;
    }
}

impl Tally {
    fn count(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Inserted => self.inserted += 1,
            Outcome::Updated => self.updated += 1,
            Outcome::Unchanged => self.unchanged += 1,
            Outcome::Skipped => self.skipped += 1,
            Outcome::Unsettled => self.unsettled += 1,
        }
    }
}

/// What one listing did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub bucket: String,
    pub prefix: String,
    pub kind: &'static str,
    /// The run continued an interrupted listing.
    pub resumed: bool,
    /// The key it continued after (the checkpoint it started from).
    pub resumed_after: Option<String>,
    /// The listing reached its end (only then does a reconcile remove rows).
    pub complete: bool,
    #[serde(flatten)]
    pub tally: Tally,
    /// Rows of objects that no longer exist, removed by a reconcile.
    pub removed: u64,
    /// Reads repeated (in this run) to settle a same-second tie with an event.
    pub rereads: u64,
    /// Older versions and delete markers a backfill of a versioned bucket wrote.
    pub versions: u64,
    /// Requests retried (in this run) after throttling or a connection error.
    pub retries: u64,
    pub seconds: f64,
    /// Why the listing stopped before its end.
    pub stopped: Option<String>,
}

impl Summary {
    /// Whether the command should exit with success.
    pub fn succeeded(&self) -> bool {
        self.complete && self.tally.errors == 0 && self.stopped.is_none()
    }

    fn drift(&self) -> Drift {
        Drift {
            listed: self.tally.listed,
            missing: self.tally.inserted,
            stale: self.tally.updated,
            removed: self.removed,
            errors: self.tally.errors,
        }
    }
}

/// Why a listing cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum ListingError {
    #[error("{0}")]
    S3(#[from] S3Error),
    #[error("database: {0}")]
    Database(#[from] SinkError),
}

/// The database's clock, read once and carried on by this process's
/// monotonic clock. `now()` is a lower bound of the database's time (the
/// sample is taken as it arrives), which is the safe side for a read's
/// start: a read that seems older can only lose a tie it might have won.
#[derive(Clone, Copy, Debug)]
pub struct DbClock {
    db: OffsetDateTime,
    at: Instant,
}

impl DbClock {
    pub async fn sample(store: &Store) -> Result<DbClock, SinkError> {
        let db = store.now().await?;
        Ok(DbClock {
            db,
            at: Instant::now(),
        })
    }

    pub fn now(&self) -> OffsetDateTime {
        self.db + self.at.elapsed()
    }
}

/// Lists every target in turn; a target that fails is reported in its
/// summary and the others still run. Stops early (with what is written
/// checkpointed) when `shutdown` is cancelled.
pub async fn run(
    s3: &S3,
    store: &Store,
    targets: &[Target],
    settings: &Settings,
    progress: &Progress,
    shutdown: &CancellationToken,
) -> Vec<Summary> {
    let mut summaries = Vec::with_capacity(targets.len());
    for target in targets {
        if shutdown.is_cancelled() {
            break;
        }
        let summary = list(s3, store, target, settings, progress, shutdown).await;
        summaries.push(summary);
    }
    summaries
}

/// One listing, start to end (or to where it stopped).
async fn list(
    s3: &S3,
    store: &Store,
    target: &Target,
    settings: &Settings,
    progress: &Progress,
    shutdown: &CancellationToken,
) -> Summary {
    let started = Instant::now();
    let mut summary = Summary {
        bucket: target.bucket.clone(),
        prefix: target.prefix.clone(),
        kind: target.kind.label(),
        ..Summary::default()
    };
    let result = async {
        // Held to the end of the listing, sweep and record included.
        let (checkpoint, _lock) = store.begin(target, settings.restart).await?;
        let clock = DbClock::sample(store).await?;
        summary.resumed = checkpoint.resumed;
        summary.tally = checkpoint.tally;
        summary.resumed_after = checkpoint.position.clone();
        let mut listing = Listing::new(s3, store, target, settings, clock, &checkpoint);
        let bar = progress.start(target, checkpoint.resumed);
        let ended = listing.run(&mut summary, &bar, shutdown).await;
        bar.finish(&summary);
        ended?;
        if listing.complete {
            if target.kind == Kind::Backfill {
                versions::backfill(s3, store, target, settings, &mut summary).await?;
            }
            finish(store, target, &checkpoint, &mut summary).await?;
        }
        Ok::<(), ListingError>(())
    }
    .await;
    if let Err(e) = result {
        summary.stopped = Some(e.to_string());
    }
    summary.seconds = started.elapsed().as_secs_f64();
    summary
}

/// The end of a complete listing: a reconcile removes what it did not find
/// and records its drift; the checkpoint goes.
async fn finish(
    store: &Store,
    target: &Target,
    checkpoint: &Checkpoint,
    summary: &mut Summary,
) -> Result<(), SinkError> {
    summary.complete = true;
    let drift = match target.kind {
        Kind::Reconcile => {
            summary.removed = store.sweep(target, checkpoint.started_at).await?;
            Some(summary.drift())
        }
        Kind::Backfill => None,
    };
    store.finish(target, checkpoint.started_at, drift).await
}

/// One listed object, numbered in listing order.
#[derive(Clone, Debug)]
struct Entry {
    index: u64,
    key: String,
    /// Reads done so far.
    reads: u32,
}

/// What reading one object gave.
enum Read {
    Found(ReadRow),
    /// 404: gone between the listing and the read.
    Gone,
    /// An error of this object only; the others go on.
    Failed(S3Error),
    /// An error every read would hit (permissions, the server unreachable
    /// after retries): the listing stops.
    Fatal(S3Error),
    /// Shutdown came first.
    Interrupted,
}

struct Done {
    entry: Entry,
    read: Read,
    retries: u64,
}

type Pending<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A page and when its request started, or why there is none.
struct Fetched {
    page: Result<ListPage, S3Error>,
    requested_at: OffsetDateTime,
    retries: u64,
}

struct Listing<'a> {
    s3: &'a S3,
    store: &'a Store,
    target: &'a Target,
    settings: &'a Settings,
    clock: DbClock,
    /// Listed objects not yet behind the checkpoint, in listing order.
    order: VecDeque<(u64, String)>,
    /// Indices in `order` whose rows are written (or that need none).
    done: HashSet<u64>,
    /// Objects waiting for a read slot.
    to_read: VecDeque<Entry>,
    /// Finished reads waiting to be written.
    ready: Vec<Done>,
    ready_since: Option<Instant>,
    next_index: u64,
    start_after: Option<String>,
    continuation: Option<String>,
    listed_all: bool,
    /// Ask for MinIO's listing metadata until a page shows it unsupported.
    with_metadata: bool,
    /// The listing reached its end and every row is written.
    complete: bool,
}

impl<'a> Listing<'a> {
    fn new(
        s3: &'a S3,
        store: &'a Store,
        target: &'a Target,
        settings: &'a Settings,
        clock: DbClock,
        checkpoint: &Checkpoint,
    ) -> Self {
        Listing {
            s3,
            store,
            target,
            settings,
            clock,
            order: VecDeque::new(),
            done: HashSet::new(),
            to_read: VecDeque::new(),
            ready: Vec::new(),
            ready_since: None,
            next_index: 0,
            start_after: checkpoint.position.clone(),
            continuation: None,
            listed_all: false,
            with_metadata: true,
            complete: false,
        }
    }

    async fn run(
        &mut self,
        summary: &mut Summary,
        bar: &progress::Bar,
        shutdown: &CancellationToken,
    ) -> Result<(), ListingError> {
        let reads_stop = shutdown.child_token();
        let mut page: Option<Pending<Fetched>> = None;
        let mut reads: FuturesUnordered<Pending<Done>> = FuturesUnordered::new();
        let mut fatal: Option<ListingError> = None;
        loop {
            let stopping = fatal.is_some() || shutdown.is_cancelled();
            if !stopping {
                if page.is_none() && !self.listed_all && self.order.len() < WINDOW {
                    page = Some(self.fetch_page());
                }
                while reads.len() < self.settings.concurrency {
                    let Some(entry) = self.to_read.pop_front() else {
                        break;
                    };
                    reads.push(self.read(entry, reads_stop.clone()));
                }
            }
            let idle = page.is_none() && reads.is_empty() && self.to_read.is_empty();
            let flush = self.ready.len() >= self.settings.batch_rows
                || (!self.ready.is_empty() && (idle || (stopping && reads.is_empty())));
            if flush {
                self.write(summary).await?;
                bar.update(summary);
                continue;
            }
            if stopping && reads.is_empty() {
                break;
            }
            if idle && self.ready.is_empty() {
                self.complete = self.listed_all;
                break;
            }
            let flush_at = self.ready_since.map(|t| t + BATCH_MAX_AGE);
            tokio::select! {
                _ = shutdown.cancelled(), if !stopping => {
                    // Stop listing and reading; what finished is written above.
                    page = None;
                    reads_stop.cancel();
                }
                fetched = async { page.as_mut().expect("guarded").await }, if page.is_some() => {
                    page = None;
                    summary.retries += fetched.retries;
                    match fetched.page {
                        Ok(listed) => self.take_page(listed, fetched.requested_at),
                        Err(e) => {
                            fatal = Some(e.into());
                            reads_stop.cancel();
                        }
                    }
                    bar.update(summary);
                }
                Some(done) = reads.next(), if !reads.is_empty() => {
                    summary.retries += done.retries;
                    match done.read {
                        Read::Fatal(e) => {
                            fatal.get_or_insert(e.into());
                            reads_stop.cancel();
                        }
                        // Not written, so not behind the checkpoint: read again on resume.
                        Read::Interrupted => {}
                        read => {
                            self.ready_since.get_or_insert_with(Instant::now);
                            self.ready.push(Done { read, ..done });
                        }
                    }
                }
                _ = sleep_until(flush_at), if flush_at.is_some() => {
                    self.write(summary).await?;
                    bar.update(summary);
                }
            }
        }
        match fatal {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Lists the next page, retrying throttling and connection errors.
    fn fetch_page(&self) -> Pending<Fetched> {
        let s3 = self.s3.clone();
        let target = self.target.clone();
        let start_after = self.start_after.clone();
        let continuation = self.continuation.clone();
        let with_metadata = self.with_metadata;
        let clock = self.clock;
        let retry_timeout = self.settings.retry_timeout;
        Box::pin(async move {
            let mut retries = 0;
            let mut requested_at = clock.now();
            let page = with_retries(
                retry_timeout,
                "an S3 request",
                S3Error::is_retriable,
                &mut retries,
                || {
                    requested_at = clock.now();
                    s3.list_page(
                        &target.bucket,
                        &target.prefix,
                        start_after.as_deref(),
                        continuation.as_deref(),
                        with_metadata,
                    )
                },
            )
            .await;
            Fetched {
                page,
                requested_at,
                retries,
            }
        })
    }

    /// Takes a listed page: its objects join the listing order, to be read
    /// (or, with the listing's own metadata, straight to be written).
    fn take_page(&mut self, page: ListPage, requested_at: OffsetDateTime) {
        if self.with_metadata && !page.metadata_supported {
            self.with_metadata = false;
            tracing::info!(bucket = %self.target.bucket, "the listing carries no object metadata: one HeadObject per object");
        }
        self.listed_all = page.next.is_none();
        self.continuation = page.next;
        for listed in page.objects {
            let index = self.next_index;
            self.next_index += 1;
            self.order.push_back((index, listed.key.clone()));
            match listed.read {
                // The listing carried the object's state: no HeadObject.
                Some(read) => {
                    self.ready_since.get_or_insert_with(Instant::now);
                    let row = ReadRow {
                        key: listed.key.clone(),
                        read,
                        read_at: requested_at,
                    };
                    self.ready.push(Done {
                        entry: Entry {
                            index,
                            key: listed.key,
                            reads: 1,
                        },
                        read: Read::Found(row),
                        retries: 0,
                    });
                }
                None => self.to_read.push_back(Entry {
                    index,
                    key: listed.key,
                    reads: 0,
                }),
            }
        }
    }

    /// Reads one object with HeadObject.
    fn read(&self, mut entry: Entry, stop: CancellationToken) -> Pending<Done> {
        let s3 = self.s3.clone();
        let bucket = self.target.bucket.clone();
        let clock = self.clock;
        let retry_timeout = self.settings.retry_timeout;
        Box::pin(async move {
            let mut retries = 0;
            let attempt = async {
                if entry.reads > 0 {
                    tokio::time::sleep(REREAD_DELAY).await;
                }
                let mut read_at = clock.now();
                let result = with_retries(
                    retry_timeout,
                    "an S3 request",
                    S3Error::is_retriable,
                    &mut retries,
                    || {
                        read_at = clock.now();
                        s3.head(&bucket, &entry.key)
                    },
                )
                .await;
                (result, read_at)
            };
            let read = tokio::select! {
                _ = stop.cancelled() => Read::Interrupted,
                (result, read_at) = attempt => match result {
                    Ok(Some(read)) => Read::Found(ReadRow { key: entry.key.clone(), read, read_at }),
                    Ok(None) => Read::Gone,
                    Err(e) if stops_the_listing(&e) => Read::Fatal(e),
                    Err(e) => Read::Failed(e),
                },
            };
            entry.reads += 1;
            Done {
                entry,
                read,
                retries,
            }
        })
    }

    /// Writes up to `batch_rows` finished reads with the checkpoint and the
    /// tally they allow, retrying while the database is unavailable; then
    /// counts them and queues the unsettled ones for another read.
    async fn write(&mut self, summary: &mut Summary) -> Result<(), ListingError> {
        let take = self.ready.len().min(self.settings.batch_rows);
        let batch: Vec<Done> = self.ready.drain(..take).collect();
        self.ready_since = (!self.ready.is_empty()).then(Instant::now);
        let rows: Vec<&ReadRow> = batch
            .iter()
            .filter_map(|d| match &d.read {
                Read::Found(row) => Some(row),
                _ => None,
            })
            .collect();
        // A reconcile must not remove what it found, nor what it could not
        // read: only a 404 (or no listing) says an object is gone.
        let present: Vec<&str> = batch
            .iter()
            .filter(|d| matches!(d.read, Read::Found(_) | Read::Failed(_)))
            .map(|d| d.entry.key.as_str())
            .collect();
        let before = summary.tally;
        let advance = |outcomes: &[Outcome]| {
            let settlement = settle(&batch, outcomes);
            let mut tally = before;
            tally += settlement.tally;
            Advance {
                position: frontier(&self.order, &self.done, &settlement.settled),
                tally,
            }
        };
        let outcomes = self.write_with_retries(&rows, &present, &advance).await?;
        let settlement = settle(&batch, &outcomes);
        summary.tally += settlement.tally;
        for done in batch {
            if settlement.settled.contains(&done.entry.index) {
                if let Read::Failed(e) = &done.read {
                    tracing::warn!(bucket = %self.target.bucket, key = %done.entry.key, error = %e, "cannot read an object");
                }
                self.done.insert(done.entry.index);
            } else {
                summary.rereads += 1;
                self.to_read.push_back(done.entry);
            }
        }
        while let Some((index, _)) = self.order.front() {
            if !self.done.remove(index) {
                break;
            }
            self.order.pop_front();
        }
        Ok(())
    }

    async fn write_with_retries(
        &self,
        rows: &[&ReadRow],
        present: &[&str],
        advance: &(dyn Fn(&[Outcome]) -> Advance + Sync),
    ) -> Result<Vec<Outcome>, ListingError> {
        let mut retries = 0;
        let written = with_retries(
            self.settings.retry_timeout,
            "writing read rows",
            SinkError::is_retried,
            &mut retries,
            || self.store.write(self.target, rows, present, advance),
        )
        .await;
        Ok(written?)
    }
}

/// What a written batch settles: the objects done (all but the unsettled
/// ones that get another read), and what became of them.
struct Settlement {
    settled: HashSet<u64>,
    tally: Tally,
}

/// `outcomes` are those of the batch's found objects, in batch order.
fn settle(batch: &[Done], outcomes: &[Outcome]) -> Settlement {
    let mut settlement = Settlement {
        settled: HashSet::with_capacity(batch.len()),
        tally: Tally::default(),
    };
    let mut found = outcomes.iter().copied();
    for done in batch {
        let tally = &mut settlement.tally;
        match &done.read {
            Read::Found(_) => match found.next() {
                Some(Outcome::Unsettled) if done.entry.reads < MAX_READS => continue,
                Some(outcome) => tally.count(outcome),
                None => continue,
            },
            Read::Gone => tally.gone += 1,
            Read::Failed(_) => tally.errors += 1,
            Read::Fatal(_) | Read::Interrupted => continue,
        }
        tally.listed += 1;
        settlement.settled.insert(done.entry.index);
    }
    settlement
}

/// The last key of the contiguous written part of the listing once the
/// indices in `settled` are written too; `None` when it does not move.
fn frontier(
    order: &VecDeque<(u64, String)>,
    done: &HashSet<u64>,
    settled: &HashSet<u64>,
) -> Option<String> {
    order
        .iter()
        .take_while(|(index, _)| done.contains(index) || settled.contains(index))
        .last()
        .map(|(_, key)| key.clone())
}

/// Errors that every other read would hit too: the listing stops instead
/// of failing each object in turn.
fn stops_the_listing(error: &S3Error) -> bool {
    error.is_retriable()
        || matches!(
            error.kind_label(),
            "access_denied" | "no_such_bucket" | "credentials" | "tls" | "config"
        )
}

/// Runs `step` until it succeeds, fails with an error `retriable` refuses,
/// or retriable failures have lasted `timeout`; counts the retries. The one
/// retry loop of a listing, for its S3 requests and its database writes.
async fn with_retries<T, E, F, Fut>(
    timeout: Duration,
    what: &str,
    retriable: fn(&E) -> bool,
    retries: &mut u64,
    mut step: F,
) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::new(FIRST_RETRY_DELAY, RETRY_MAX_DELAY);
    let deadline = Instant::now() + timeout;
    loop {
        match step().await {
            Err(e) if retriable(&e) && Instant::now() < deadline => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "{what} failed, retrying");
                *retries += 1;
                tokio::time::sleep(delay).await;
            }
            other => return other,
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(keys: &[&str]) -> VecDeque<(u64, String)> {
        keys.iter()
            .enumerate()
            .map(|(i, k)| (i as u64, k.to_string()))
            .collect()
    }

    fn set(indices: &[u64]) -> HashSet<u64> {
        indices.iter().copied().collect()
    }

    #[test]
    fn the_checkpoint_covers_only_the_contiguous_written_prefix() {
        let order = order(&["a", "b", "c", "d"]);
        // "c" and "d" finished first: nothing is contiguous yet.
        assert_eq!(frontier(&order, &set(&[]), &set(&[2, 3])), None);
        // Then "a": the checkpoint moves to "a" only, "b" is still out.
        assert_eq!(
            frontier(&order, &set(&[2, 3]), &set(&[0])),
            Some("a".into())
        );
        // Then "b": everything is written.
        assert_eq!(
            frontier(&order, &set(&[0, 2, 3]), &set(&[1])),
            Some("d".into())
        );
    }

    #[test]
    fn a_summary_succeeds_only_complete_and_without_errors() {
        let complete = Summary {
            complete: true,
            ..Summary::default()
        };
        assert!(complete.succeeded());
        let mut failed = complete.clone();
        failed.tally.errors = 1;
        assert!(
            !failed.succeeded(),
            "an error before a resume still fails the listing"
        );
        assert!(!Summary::default().succeeded());
    }
}
