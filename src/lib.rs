//! objmeta: keeps a PostgreSQL table of every S3 object's current metadata,
//! fed by the bucket notifications of MinIO, RustFS, Ceph RGW, versitygw or
//! AWS on Kafka.
//!
//! Data flows one way: `kafka` (consume) → `event` (parse) → `batch`
//! (reduce) → `enrich` (read the objects of events that fall short) → `sink`
//! (write) → `kafka` (commit), driven by `pipeline`.

pub mod batch;
pub mod budget;
pub mod config;
pub mod dead_letter;
pub mod enrich;
pub mod error;
pub mod event;
pub mod http;
pub mod kafka;
pub mod listing;
pub mod metrics;
pub mod migrate;
pub mod offsets;
pub mod pipeline;
pub mod poller;
pub mod produce;
pub mod purge;
pub mod redact;
pub mod retry;
pub mod s3;
pub mod sink;
pub mod split;
pub mod tls;
pub mod writer;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{DatabaseConfig, ListingConfig, RunConfig, Schema};
use crate::enrich::Enricher;
use crate::error::{Disposition, Error, SinkError};
use crate::http::Health;
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, Settings};
use crate::retry::Backoff;
use crate::sink::Sink;

/// What liveness allows a write attempt beyond its longest legitimate round
/// trip (`DatabaseConfig::longest_round_trip`, or one S3 request) before it
/// counts as hung.
const ATTEMPT_SLACK: Duration = Duration::from_secs(10);

/// How often readiness re-checks the database between writes.
const READINESS_INTERVAL: Duration = Duration::from_secs(5);

/// Runs the consumer until `shutdown` is cancelled (returns `Ok` after a
/// clean drain) or a fatal error occurs.
pub async fn run(config: RunConfig, shutdown: CancellationToken) -> Result<(), Error> {
    config.validate()?;
    let metrics = Metrics::new().map_err(|e| Error::Config(format!("metrics: {e}")))?;
    let health = Arc::new(Health::new(
        config.health_stall_timeout,
        config.database.longest_round_trip() + ATTEMPT_SLACK,
    ));
    let migrations = sink::connect_for_migrations(&config.database)?;
    let pool = sink::connect(&config.database)?;
    let services = shutdown.child_token();
    let http = http::serve(
        config.http_addr,
        metrics.clone(),
        health.clone(),
        services.clone(),
    )
    .await?;
    let result = async {
        let migrated = migrate_until_done(
            &migrations,
            &config.database.database_schema,
            &health,
            &shutdown,
        )
        .await?;
        drop(migrations);
        if !migrated {
            return Ok(());
        }
        let sink = Sink::new(pool, config.kafka.topic.clone());
        tokio::spawn(sink::watch_readiness(
            sink.clone(),
            health.clone(),
            READINESS_INTERVAL,
            services.clone(),
        ));
        let reconciler = start_reconciler(&config, &metrics, &services)?;
        start_purger(&config, &metrics, &services)?;
        let prefetch_kib = budget::Budget::prefetch_kib(config.memory_budget);
        let (consumer, rebalances) =
            kafka::subscribe(&config.kafka, prefetch_kib, metrics.clone())?;
        tracing::info!(topic = %config.kafka.topic, group = %config.kafka.group_id, "consuming");
        let settings = Settings {
            topic: config.kafka.topic.clone(),
            batch_max_rows: config.batch_max_rows,
            batch_max_age: config.batch_max_age,
            retry_max_backoff: config.retry_max_backoff,
            shutdown_timeout: config.shutdown_timeout,
            write_lanes: config.write_concurrency,
            memory_budget: config.memory_budget,
            decoding: config.decoding(),
            history: config.history.keeps(),
        };
        let enricher = enricher(&config, &metrics)?;
        let consumed = Pipeline::new(
            consumer, rebalances, sink, metrics, health, settings, enricher,
        )?
        .run(shutdown.clone())
        .await;
        if let Some(reconciler) = reconciler {
            // Stopped by `services`: it writes what it read, then returns.
            services.cancel();
            let _ = tokio::time::timeout(RECONCILER_STOP, reconciler).await;
        }
        consumed
    }
    .await;
    services.cancel();
    let _ = http.await;
    result
}

/// Runs `objmeta backfill` or `objmeta reconcile` over every bucket of
/// `config`, one after the other; returns what each listing did (a listing
/// that failed says why in its summary). Applies the migrations first, so
/// that a backfill can fill a database objmeta never ran on.
pub async fn read_buckets(
    kind: listing::Kind,
    config: &ListingConfig,
    shutdown: CancellationToken,
) -> Result<Vec<listing::Summary>, Error> {
    config.validate()?;
    let s3 = s3_client(&config.s3)?;
    migrate(&config.database).await?;
    let store =
        listing::store::Store::new(sink::connect(&config.database)?, config.history.keeps());
    let targets = listing::Target::each(&config.buckets, &config.prefix, kind);
    let settings = listing::Settings {
        concurrency: config.concurrency,
        batch_rows: config.batch_rows,
        restart: config.restart,
        retry_timeout: config.s3_retry_timeout,
    };
    Ok(listing::run(
        &s3,
        &store,
        &targets,
        &settings,
        &config.progress,
        &shutdown,
    )
    .await)
}

/// The S3 client of the commands that read buckets; its settings' errors
/// are configuration errors like any other.
fn s3_client(config: &s3::S3Config) -> Result<s3::S3, Error> {
    s3::S3::new(config).map_err(|e| match e {
        s3::S3Error::Config(message) => Error::Config(message),
        other => Error::Config(other.to_string()),
    })
}

/// The reader of hinted objects, when events may need one and the S3 endpoint is set
/// (`RunConfig::validate` refuses a configuration that always reads without one).
fn enricher(config: &RunConfig, metrics: &Metrics) -> Result<Option<Arc<Enricher>>, Error> {
    if !config.decoding().may_read() || !config.s3.is_set() {
        return Ok(None);
    }
    let s3 = s3_client(&config.s3)?;
    tracing::info!(
        enrich = ?config.enrich,
        concurrency = config.enrich_concurrency,
        "HeadObject enrichment on"
    );
    Ok(Some(Arc::new(Enricher::new(
        s3,
        config.enrich_concurrency,
        metrics.clone(),
        // A round's longest wait is one HeadObject (or the database clock).
        config
            .s3
            .s3_request_timeout
            .max(config.database.longest_round_trip())
            + ATTEMPT_SLACK,
    ))))
}

/// How long shutdown waits for a periodic reconcile to write what it read.
const RECONCILER_STOP: Duration = Duration::from_secs(10);

/// Starts the periodic reconcile when configured, on a pool of its own (two
/// connections: one for its writes, one held for its lock).
fn start_reconciler(
    config: &RunConfig,
    metrics: &Metrics,
    services: &CancellationToken,
) -> Result<Option<tokio::task::JoinHandle<()>>, Error> {
    let Some(every) = config.reconcile_every else {
        return Ok(None);
    };
    let s3 = s3_client(&config.s3)?;
    let database = DatabaseConfig {
        database_pool_size: 2,
        ..config.database.clone()
    };
    let store = listing::store::Store::new(sink::connect(&database)?, config.history.keeps());
    let schedule = listing::schedule::Schedule {
        targets: listing::Target::each(
            &config.reconcile_buckets,
            &config.reconcile_prefix,
            listing::Kind::Reconcile,
        ),
        every,
        settings: listing::Settings {
            concurrency: config.reconcile_concurrency,
            batch_rows: 500,
            restart: false,
            retry_timeout: Duration::from_secs(60),
        },
    };
    tracing::info!(buckets = ?config.reconcile_buckets, every = ?every, "periodic reconcile on");
    Ok(Some(tokio::spawn(listing::schedule::run(
        schedule,
        s3,
        store,
        metrics.clone(),
        services.clone(),
    ))))
}

/// Starts the retention purge (which also refreshes the table-row gauges) on a pool of its
/// own: one connection, holding the purge lock while it purges.
fn start_purger(
    config: &RunConfig,
    metrics: &Metrics,
    services: &CancellationToken,
) -> Result<(), Error> {
    let database = DatabaseConfig {
        database_pool_size: 1,
        ..config.database.clone()
    };
    let retention = purge::Retention {
        tombstones: config.retention.tombstone_retention,
        history: config.retention.history_retention,
    };
    tokio::spawn(purge::run(
        sink::connect(&database)?,
        retention,
        config.retention.purge_every,
        metrics.clone(),
        services.clone(),
    ));
    Ok(())
}

/// Applies the migrations and returns how many were applied.
pub async fn migrate(config: &DatabaseConfig) -> Result<usize, Error> {
    let pool = sink::connect_for_migrations(config)?;
    Ok(migrate::apply(&pool, &config.database_schema).await?)
}

/// Start-up migrations, retried while the database is unreachable so that
/// objmeta can start before PostgreSQL. Returns `false` when shut down first.
/// The process stays live meanwhile (not ready): a liveness probe must not
/// restart a replica that waits for its database or runs a long migration.
async fn migrate_until_done(
    pool: &deadpool_postgres::Pool,
    schema: &Schema,
    health: &Health,
    shutdown: &CancellationToken,
) -> Result<bool, SinkError> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        match health.alive_while(migrate::apply(pool, schema)).await {
            Ok(_) => return Ok(true),
            Err(e) if e.disposition() == Disposition::Retriable => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "database not reachable for migrations");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(false),
                    _ = health.alive_while(tokio::time::sleep(delay)) => {}
                }
            }
            Err(e) => return Err(e),
        }
    }
}
