//! Periodic reconcile inside `objmeta run` (`--reconcile-every`): a task of
//! its own, beside consumption and never in its way, with its own small
//! connection pool. Among replicas, the one that takes the reconcile lock
//! (a PostgreSQL advisory lock) does the work; the others skip their turn.
//! Whether a bucket is due is decided from `reconcile_runs` on the
//! database's clock, so replicas agree and a reconcile run by hand counts.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::SinkError;
use crate::metrics::Metrics;
use crate::s3::S3;
use crate::sink::signed;

use super::store::{LastRun, Store};
use super::{Progress, Settings, Target};

/// Name of the advisory lock (per database schema) only one reconciling
/// replica holds.
const RECONCILE_LOCK: &str = "objmeta periodic reconcile";

/// Longest wait between two looks at whether a reconcile is due; also how
/// fresh the drift metrics are.
const TICK: Duration = Duration::from_secs(30);

/// How often the lock's connection is checked while a reconcile runs.
const LOCK_CHECK: Duration = Duration::from_secs(5);

/// What to reconcile, and how often.
#[derive(Clone, Debug)]
pub struct Schedule {
    pub targets: Vec<Target>,
    pub every: Duration,
    pub settings: Settings,
}

/// Reconciles the scheduled targets whenever they are due, until `shutdown`.
pub async fn run(
    schedule: Schedule,
    s3: S3,
    store: Store,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let pause = schedule.every.min(TICK);
    loop {
        if let Err(e) = tick(&schedule, &s3, &store, &metrics, &shutdown).await {
            tracing::warn!(error = %e, "periodic reconcile");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// One look: export the last runs; if some target is due and this replica
/// gets the lock, reconcile the due targets.
async fn tick(
    schedule: &Schedule,
    s3: &S3,
    store: &Store,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> Result<(), SinkError> {
    if due(schedule, &export(store, schedule, metrics).await?).is_empty() {
        return Ok(());
    }
    let Some(lock) = store.try_lock(RECONCILE_LOCK).await? else {
        metrics
            .reconcile_runs
            .with_label_values(&["elsewhere"])
            .inc();
        return Ok(());
    };
    // Another replica may have finished them between the look and the lock.
    let targets = due(schedule, &store.last_runs(&schedule.targets).await?);
    if targets.is_empty() {
        return Ok(());
    }
    let work = shutdown.child_token();
    let reconcile = super::run(
        s3,
        store,
        &targets,
        &schedule.settings,
        &Progress::Off,
        &work,
    );
    tokio::pin!(reconcile);
    let summaries = tokio::select! {
        summaries = &mut reconcile => summaries,
        () = lost(&lock) => {
            // Stop, writing what was read (each listing keeps its own lock,
            // so another replica cannot run the same one meanwhile).
            tracing::warn!("lost the reconcile lock's connection; stopping this reconcile");
            work.cancel();
            reconcile.await
        }
    };
    drop(lock);
    for summary in &summaries {
        // A reconcile stopped by shutdown or a lost lock resumes next time:
        // not a failure.
        let result = match (summary.succeeded(), &summary.stopped) {
            (true, _) => "ok",
            (false, None) if work.is_cancelled() => continue,
            _ => "failed",
        };
        metrics.reconcile_runs.with_label_values(&[result]).inc();
        let t = &summary.tally;
        tracing::info!(bucket = %summary.bucket, prefix = %summary.prefix, listed = t.listed,
            missing = t.inserted, stale = t.updated, removed = summary.removed,
            errors = t.errors, stopped = ?summary.stopped, "reconcile finished");
    }
    export(store, schedule, metrics).await?;
    Ok(())
}

/// Resolves when the lock's connection stops answering.
async fn lost(lock: &super::store::SessionLock) {
    loop {
        tokio::time::sleep(LOCK_CHECK).await;
        if !lock.held().await {
            return;
        }
    }
}

/// The targets without a finished reconcile younger than `every`.
fn due(schedule: &Schedule, last: &[LastRun]) -> Vec<Target> {
    schedule
        .targets
        .iter()
        .filter(|t| {
            !last
                .iter()
                .any(|r| r.bucket == t.bucket && r.prefix == t.prefix && r.age < schedule.every)
        })
        .cloned()
        .collect()
}

/// Sets the drift metrics from the last runs; returns them.
async fn export(
    store: &Store,
    schedule: &Schedule,
    metrics: &Metrics,
) -> Result<Vec<LastRun>, SinkError> {
    let last = store.last_runs(&schedule.targets).await?;
    for run in &last {
        let labels = [run.bucket.as_str(), run.prefix.as_str()];
        for (kind, value) in [
            ("missing", run.drift.missing),
            ("stale", run.drift.stale),
            ("removed", run.drift.removed),
        ] {
            metrics
                .reconcile_drift
                .with_label_values(&[labels[0], labels[1], kind])
                .set(signed(value));
        }
        metrics
            .reconcile_listed
            .with_label_values(&labels)
            .set(signed(run.drift.listed));
        metrics
            .reconcile_errors
            .with_label_values(&labels)
            .set(signed(run.drift.errors));
        metrics
            .reconcile_finished
            .with_label_values(&labels)
            .set(run.finished_at.unix_timestamp_nanos() as f64 / 1e9);
        metrics
            .reconcile_duration
            .with_label_values(&labels)
            .set(run.seconds);
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listing::store::Drift;
    use crate::listing::Kind;

    fn target(bucket: &str) -> Target {
        Target {
            bucket: bucket.into(),
            prefix: String::new(),
            kind: Kind::Reconcile,
        }
    }

    fn last(bucket: &str, age: u64) -> LastRun {
        LastRun {
            bucket: bucket.into(),
            prefix: String::new(),
            drift: Drift::default(),
            finished_at: time::OffsetDateTime::UNIX_EPOCH,
            seconds: 1.0,
            age: Duration::from_secs(age),
        }
    }

    #[test]
    fn a_target_is_due_without_a_run_younger_than_the_period() {
        let schedule = Schedule {
            targets: vec![target("a"), target("b"), target("c")],
            every: Duration::from_secs(60),
            settings: Settings {
                concurrency: 1,
                batch_rows: 1,
                restart: false,
                retry_timeout: Duration::from_secs(1),
            },
        };
        let due: Vec<String> = due(&schedule, &[last("a", 10), last("b", 61)])
            .into_iter()
            .map(|t| t.bucket)
            .collect();
        assert_eq!(due, ["b", "c"]);
    }
}
