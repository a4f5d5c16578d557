//! Every metric objmeta exports, registered on one explicit registry.
//!
//! Names follow Prometheus conventions: `objmeta_` prefix, `_total` for
//! counters, base units (`_seconds`). Labels take a few fixed values (event
//! family, outcome, reason code, partition), never an object key.

use prometheus::{
    exponential_buckets, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

#[cfg(target_os = "linux")]
use prometheus::process_collector::ProcessCollector;

/// `result` values of `objmeta_rows_written_total`.
pub const ROW_RESULTS: [&str; 4] = ["upserted", "tombstoned", "stale", "rejected"];
/// `reason` codes of `objmeta_dead_letters_total`: `event::ParseError::label`
/// values plus `database_rejected` and `unreadable_object` (enrichment). A code
/// missing here still works; its series just starts at its first dead letter.
pub const DEAD_LETTER_REASONS: [&str; 13] = [
    "empty",
    "invalid_json",
    "not_s3_event",
    "no_records",
    "bad_field",
    "missing_field",
    "bad_key",
    "bad_sequencer",
    "bad_event_time",
    "nul_character",
    "bad_metadata",
    "database_rejected",
    "unreadable_object",
];
/// `result` values of `objmeta_offset_commits_total`.
pub const COMMIT_RESULTS: [&str; 2] = ["ok", "error"];
/// `kind` values of `objmeta_database_errors_total` (`SinkError::kind_label`).
pub const DATABASE_ERROR_KINDS: [&str; 7] = [
    "connection",
    "pool",
    "transient",
    "too_large",
    "rejected",
    "fatal",
    "abandoned",
];
/// `kind` values of `objmeta_rebalances_total`.
pub const REBALANCE_KINDS: [&str; 3] = ["assign", "revoke", "lost"];
/// `result` values of `objmeta_reconcile_runs_total`.
pub const RECONCILE_RESULTS: [&str; 3] = ["ok", "failed", "elsewhere"];
/// `result` values of `objmeta_purge_runs_total`.
pub const PURGE_RESULTS: [&str; 3] = ["done", "skipped", "failed"];
/// `table` values of `objmeta_purged_rows_total` and `objmeta_table_rows`.
pub const TABLES: [&str; 3] = ["object_metadata", "object_versions", "object_history"];
/// `result` values of `objmeta_enrich_heads_total`: `found`, `gone` (404), or an
/// `S3Error::kind_label`; the errors listed here start at zero.
pub const ENRICH_RESULTS: [&str; 6] = [
    "found",
    "gone",
    "access_denied",
    "throttled",
    "timeout",
    "connection",
];

/// Handles to all metrics; cheap to clone (each handle is an `Arc`).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Records consumed, by event family and what became of them.
    pub events: IntCounterVec,
    /// Object rows written, by result (upserted, tombstoned, stale, rejected).
    pub rows: IntCounterVec,
    /// Dead-letter rows inserted (counted after the insert, so a redelivered
    /// message's existing row is not counted twice), by reason code.
    pub dead_letters: IntCounterVec,
    /// Rows per written batch (objects plus dead letters).
    pub batch_rows: Histogram,
    /// Time to write one batch, retries included.
    pub flush_seconds: Histogram,
    /// Offset commits, by result.
    pub commits: IntCounterVec,
    /// Database errors, by kind.
    pub db_errors: IntCounterVec,
    /// Batch writes retried after a retriable database error.
    pub db_retries: IntCounter,
    /// Kafka client errors reported while consuming.
    pub kafka_errors: IntCounter,
    /// Rebalance events, by kind (assign, revoke, lost).
    pub rebalances: IntCounterVec,
    pub assigned_partitions: IntGauge,
    /// Partitions of the subscribed topic, as this member's client last saw
    /// them (librdkafka statistics; 0 until the member first owns one of its
    /// partitions, as only fetched topics are listed). Alerts compare the
    /// group's assigned partitions with it: a crashed replica that left
    /// service discovery shows up nowhere else.
    pub topic_partitions: IntGauge,
    /// 1 while consumption is paused (a write is behind, or the database is down).
    pub paused: IntGauge,
    /// Per partition, the offset committed last by this member.
    pub committed_offset: IntGaugeVec,
    /// Bytes of the memory budget held by consumed, unwritten messages.
    pub buffered_bytes: IntGauge,
    /// Per assigned partition, messages between the committed offset and the
    /// end of the partition (from librdkafka statistics).
    pub consumer_lag: IntGaugeVec,
    /// Event time of the newest event written, in Unix seconds; freshness
    /// is `time() - objmeta_last_event_timestamp_seconds`.
    pub last_event_timestamp: Gauge,
    /// Delay from an event's time (at MinIO) to the commit of its row.
    pub event_delay: Histogram,
    /// Periodic reconciles this member was due to run, by result (`ok`,
    /// `failed`, `elsewhere`: another replica held the reconcile lock).
    pub reconcile_runs: IntCounterVec,
    /// The drift the last finished reconcile of a bucket found (from
    /// `reconcile_runs`, whoever ran it), by kind: missing, stale, removed.
    pub reconcile_drift: IntGaugeVec,
    /// Objects the last finished reconcile of a bucket listed.
    pub reconcile_listed: IntGaugeVec,
    /// Objects the last finished reconcile of a bucket could not read.
    pub reconcile_errors: IntGaugeVec,
    /// When the last reconcile of a bucket finished, Unix seconds.
    pub reconcile_finished: GaugeVec,
    /// How long the last reconcile of a bucket took.
    pub reconcile_duration: GaugeVec,
    /// Event records consumed, by the store that sent them and their family.
    pub source_events: IntCounterVec,
    /// HeadObject requests of enrichment, by result.
    pub enrich_heads: IntCounterVec,
    /// Latency of one enrichment HeadObject, errors included.
    pub enrich_head_seconds: Histogram,
    /// Purge rounds, by result (skipped: another replica held the lock).
    pub purge_runs: IntCounterVec,
    /// Rows purged past their retention, by table.
    pub purged_rows: IntCounterVec,
    /// Rows per table, the planner's estimate.
    pub table_rows: GaugeVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let metrics = Metrics {
            events: counter_vec(
                "objmeta_events_consumed_total",
                "Event records consumed, by event family and outcome",
                &["family", "outcome"],
            )?,
            rows: counter_vec(
                "objmeta_rows_written_total",
                "Object rows by write result: upserted, tombstoned, stale (an equal or newer state was stored), rejected (refused by the database, dead-lettered)",
                &["result"],
            )?,
            dead_letters: counter_vec(
                "objmeta_dead_letters_total",
                "Rows inserted into the dead_letters table (a message, or one record the database refused), by reason code",
                &["reason"],
            )?,
            batch_rows: Histogram::with_opts(
                HistogramOpts::new(
                    "objmeta_batch_rows",
                    "Rows (objects plus dead letters) per written batch",
                )
                .buckets(exponential_buckets(1.0, 4.0, 9)?),
            )?,
            flush_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "objmeta_flush_duration_seconds",
                    "Time to write one batch to PostgreSQL, retries included",
                )
                .buckets(exponential_buckets(0.001, 2.0, 15)?),
            )?,
            commits: counter_vec(
                "objmeta_offset_commits_total",
                "Kafka offset commits, by result",
                &["result"],
            )?,
            db_errors: counter_vec(
                "objmeta_database_errors_total",
                "Database errors, by kind",
                &["kind"],
            )?,
            db_retries: IntCounter::new(
                "objmeta_database_retries_total",
                "Batch writes retried after a retriable database error",
            )?,
            kafka_errors: IntCounter::new(
                "objmeta_kafka_errors_total",
                "Errors reported by the Kafka client while consuming",
            )?,
            rebalances: counter_vec(
                "objmeta_rebalances_total",
                "Consumer group rebalance events, by kind",
                &["kind"],
            )?,
            assigned_partitions: IntGauge::new(
                "objmeta_assigned_partitions",
                "Partitions currently assigned to this member",
            )?,
            topic_partitions: IntGauge::new(
                "objmeta_topic_partitions",
                "Partitions of the subscribed topic, as this member last saw them (librdkafka statistics)",
            )?,
            paused: IntGauge::new(
                "objmeta_consumer_paused",
                "1 while consumption is paused because writes are behind or failing",
            )?,
            committed_offset: IntGaugeVec::new(
                Opts::new(
                    "objmeta_committed_offset",
                    "Last offset committed by this member, per partition",
                ),
                &["partition"],
            )?,
            buffered_bytes: IntGauge::new(
                "objmeta_buffered_bytes",
                "Bytes of the memory budget held by messages consumed but not yet written",
            )?,
            consumer_lag: IntGaugeVec::new(
                Opts::new(
                    "objmeta_consumer_lag",
                    "Messages not yet committed, per assigned partition (librdkafka statistics)",
                ),
                &["partition"],
            )?,
            last_event_timestamp: Gauge::new(
                "objmeta_last_event_timestamp_seconds",
                "Event time of the newest event written, Unix seconds",
            )?,
            event_delay: Histogram::with_opts(
                HistogramOpts::new(
                    "objmeta_event_delay_seconds",
                    "Delay from an event's time at MinIO to the commit of its row",
                )
                .buckets(exponential_buckets(0.005, 2.0, 18)?),
            )?,
            source_events: counter_vec(
                "objmeta_source_events_total",
                "Event records consumed, by source (the store that sent them; unknown: not recognised, in a family that changes no rows) and family",
                &["source", "family"],
            )?,
            enrich_heads: counter_vec(
                "objmeta_enrich_heads_total",
                "HeadObject requests of enrichment (reading an object's state where its event falls short), by result: found, gone (404) or the error kind",
                &["result"],
            )?,
            enrich_head_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "objmeta_enrich_head_duration_seconds",
                    "Time of one enrichment HeadObject request, errors included",
                )
                .buckets(exponential_buckets(0.0005, 2.0, 16)?),
            )?,
            purge_runs: counter_vec(
                "objmeta_purge_runs_total",
                "Rounds of the retention purge and table counts, by result (skipped: another replica held the purge lock)",
                &["result"],
            )?,
            purged_rows: counter_vec(
                "objmeta_purged_rows_total",
                "Rows deleted past their retention (--tombstone-retention, --history-retention), by table",
                &["table"],
            )?,
            table_rows: GaugeVec::new(
                Opts::new(
                    "objmeta_table_rows",
                    "Rows of objmeta's tables, the planner's estimate (refreshed by autovacuum's analyze), by table",
                ),
                &["table"],
            )?,
            reconcile_runs: counter_vec(
                "objmeta_reconcile_runs_total",
                "Periodic reconciles this member was due to run, by result (elsewhere: another replica held the lock)",
                &["result"],
            )?,
            reconcile_drift: IntGaugeVec::new(
                Opts::new(
                    "objmeta_reconcile_drift_objects",
                    "Drift the last finished reconcile of a bucket and prefix found, by kind (missing, stale, removed)",
                ),
                &["bucket", "prefix", "kind"],
            )?,
            reconcile_listed: IntGaugeVec::new(
                Opts::new(
                    "objmeta_reconcile_listed_objects",
                    "Objects the last finished reconcile of a bucket and prefix listed",
                ),
                &["bucket", "prefix"],
            )?,
            reconcile_errors: IntGaugeVec::new(
                Opts::new(
                    "objmeta_reconcile_errors",
                    "Objects the last finished reconcile of a bucket and prefix could not read",
                ),
                &["bucket", "prefix"],
            )?,
            reconcile_finished: GaugeVec::new(
                Opts::new(
                    "objmeta_reconcile_last_finished_timestamp_seconds",
                    "When the last reconcile of a bucket and prefix finished, Unix seconds",
                ),
                &["bucket", "prefix"],
            )?,
            reconcile_duration: GaugeVec::new(
                Opts::new(
                    "objmeta_reconcile_last_duration_seconds",
                    "How long the last finished reconcile of a bucket and prefix took",
                ),
                &["bucket", "prefix"],
            )?,
            registry,
        };
        metrics.register_all()?;
        metrics.initialise_known_labels();
        Ok(metrics)
    }

    /// Creates every series whose label values are known in advance, at 0.
    /// A series that appears only with its first increment hides that
    /// increment from `rate()`/`increase()` (there is no earlier sample), so
    /// the first dead letter or database error would never fire an alert,
    /// and dashboards would show "no data" instead of a flat zero.
    fn initialise_known_labels(&self) {
        for result in ROW_RESULTS {
            self.rows.with_label_values(&[result]);
        }
        for reason in DEAD_LETTER_REASONS {
            self.dead_letters.with_label_values(&[reason]);
        }
        for result in COMMIT_RESULTS {
            self.commits.with_label_values(&[result]);
        }
        for kind in DATABASE_ERROR_KINDS {
            self.db_errors.with_label_values(&[kind]);
        }
        for kind in REBALANCE_KINDS {
            self.rebalances.with_label_values(&[kind]);
        }
        for result in ENRICH_RESULTS {
            self.enrich_heads.with_label_values(&[result]);
        }
        for result in RECONCILE_RESULTS {
            self.reconcile_runs.with_label_values(&[result]);
        }
        for result in PURGE_RESULTS {
            self.purge_runs.with_label_values(&[result]);
        }
        for table in TABLES {
            self.purged_rows.with_label_values(&[table]);
        }
    }

    fn register_all(&self) -> Result<(), prometheus::Error> {
        let build_info = IntGaugeVec::new(
            Opts::new("objmeta_build_info", "Build information, value 1"),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(build_info),
            Box::new(self.events.clone()),
            Box::new(self.rows.clone()),
            Box::new(self.dead_letters.clone()),
            Box::new(self.batch_rows.clone()),
            Box::new(self.flush_seconds.clone()),
            Box::new(self.commits.clone()),
            Box::new(self.db_errors.clone()),
            Box::new(self.db_retries.clone()),
            Box::new(self.kafka_errors.clone()),
            Box::new(self.rebalances.clone()),
            Box::new(self.assigned_partitions.clone()),
            Box::new(self.topic_partitions.clone()),
            Box::new(self.paused.clone()),
            Box::new(self.committed_offset.clone()),
            Box::new(self.buffered_bytes.clone()),
            Box::new(self.consumer_lag.clone()),
            Box::new(self.last_event_timestamp.clone()),
            Box::new(self.event_delay.clone()),
            Box::new(self.reconcile_runs.clone()),
            Box::new(self.reconcile_drift.clone()),
            Box::new(self.reconcile_listed.clone()),
            Box::new(self.reconcile_errors.clone()),
            Box::new(self.reconcile_finished.clone()),
            Box::new(self.reconcile_duration.clone()),
            Box::new(self.source_events.clone()),
            Box::new(self.enrich_heads.clone()),
            Box::new(self.enrich_head_seconds.clone()),
            Box::new(self.purge_runs.clone()),
            Box::new(self.purged_rows.clone()),
            Box::new(self.table_rows.clone()),
        ];
        for collector in collectors {
            self.registry.register(collector)?;
        }
        // CPU, resident memory, open fds and start time under the standard
        // process_* names, which every Prometheus user's dashboards and
        // restart alerts already know. The collector reads /proc: Linux only.
        #[cfg(target_os = "linux")]
        self.registry
            .register(Box::new(ProcessCollector::for_self()))?;
        Ok(())
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut buffer = Vec::new();
        // Encoding into a Vec cannot fail for the text format's I/O, and a
        // metric family that fails to encode is skipped rather than failing
        // the whole scrape.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        buffer
    }
}

fn counter_vec(
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    IntCounterVec::new(Opts::new(name, help), labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_metrics_in_text_format() {
        let metrics = Metrics::new().unwrap();
        metrics
            .events
            .with_label_values(&["created", "written"])
            .inc_by(3);
        metrics.flush_seconds.observe(0.01);
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(
            text.contains(r#"objmeta_events_consumed_total{family="created",outcome="written"} 3"#)
        );
        assert!(text.contains("objmeta_flush_duration_seconds_bucket"));
        assert!(text.contains("objmeta_build_info{version="));
    }

    #[test]
    fn known_label_values_start_at_zero() {
        let text = String::from_utf8(Metrics::new().unwrap().render()).unwrap();
        for series in [
            r#"objmeta_rows_written_total{result="stale"} 0"#,
            r#"objmeta_dead_letters_total{reason="invalid_json"} 0"#,
            r#"objmeta_dead_letters_total{reason="database_rejected"} 0"#,
            r#"objmeta_offset_commits_total{result="error"} 0"#,
            r#"objmeta_database_errors_total{kind="connection"} 0"#,
            r#"objmeta_database_errors_total{kind="too_large"} 0"#,
            r#"objmeta_database_errors_total{kind="abandoned"} 0"#,
            r#"objmeta_rebalances_total{kind="lost"} 0"#,
            r#"objmeta_enrich_heads_total{result="access_denied"} 0"#,
        ] {
            assert!(text.contains(series), "missing {series}");
        }
    }
}
