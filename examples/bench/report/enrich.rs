//! The enrichment section: `objmeta run --enrich auto` catching up a topic of versitygw
//! events (hints, each object read with HeadObject before it is written) next to the bare
//! concurrent HeadObject loop of the same client and concurrency on the same bucket, and the
//! MinIO path's catch-up (events carry the state, no reads) when the run measured it.

use std::fmt::Write as _;

use serde_json::Value;

use super::backfill::{heads_rate, render_heads};
use super::{fmt, fmt_rate, num, text};

/// Enrichment should reach this share of the bare HeadObject loop's rate.
pub const TARGET_SHARE_OF_HEADS: f64 = 0.80;

/// The enrichment's catch-up rate (start to all offsets committed) over the best HEAD loop.
pub fn share_of_heads(enrich: &Value) -> Option<f64> {
    num(&enrich["run"]["events_per_s"])
        .zip(heads_rate(enrich))
        .map(|(e, h)| e / h)
}

/// The same from objmeta's first commit on (start-up, group join and the first batch's
/// reads left out).
fn active_share_of_heads(enrich: &Value) -> Option<f64> {
    num(&enrich["run"]["events_per_s_after_first_commit"])
        .zip(heads_rate(enrich))
        .map(|(e, h)| e / h)
}

/// HEADs in flight on average while objmeta ran: the HEAD time its metrics summed over the
/// whole catch-up, start-up included, so a lower bound (the loop keeps 32 in flight).
fn heads_in_flight(enrich: &Value) -> Option<f64> {
    num(&enrich["metrics"]["head_seconds_sum"])
        .zip(num(&enrich["run"]["seconds"]))
        .map(|(busy, seconds)| busy / seconds)
}

fn per(sum: &Value, count: &Value) -> Option<f64> {
    num(sum)
        .zip(num(count))
        .filter(|(_, c)| *c > 0.0)
        .map(|(s, c)| s / c)
}

/// One row of the catch-up table: a run's figures, then `note`.
fn catch_up_row(out: &mut String, label: &str, run: &Value, note: &str) {
    let _ = writeln!(
        out,
        "  {:<44} {:>9} {:>8} {:>10} {:>9} {:>7}M {:>8} {:>8} {:>6}{note}",
        label,
        fmt_rate(num(&run["events_per_s"])),
        fmt(num(&run["seconds"]), 1),
        fmt_rate(num(&run["events_per_s_after_first_commit"])),
        fmt(num(&run["cpu_seconds_per_10k"]), 3),
        fmt(num(&run["peak_rss_kib"]).map(|k| k / 1024.0), 0),
        fmt(num(&run["pg_cores"]), 2),
        fmt(num(&run["kafka_cores"]), 2),
        fmt(num(&run["machine_busy_percent"]), 0)
    );
}

pub fn render(out: &mut String, enrich: &Value, minio_catchup: Option<&Value>) {
    if enrich.is_null() {
        return;
    }
    let fill = &enrich["fill"];
    let _ = writeln!(
        out,
        "\nEnrichment: bucket of {} objects (1 user metadata entry each), put at {} objects/s; one versitygw event per object ({} partitions); concurrency {}\n  S3 server: {}",
        text(&fill["objects"]),
        fmt_rate(num(&fill["objects_per_s"])),
        text(&enrich["produce"]["partitions"]),
        text(&enrich["concurrency"]),
        text(&fill["server"])
    );
    render_heads(out, enrich);
    let run = &enrich["run"];
    if let Some(error) = run["error"].as_str() {
        let _ = writeln!(out, "  objmeta run --enrich auto FAILED: {error}");
        return;
    }
    let _ = writeln!(
        out,
        "  {:<44} {:>9} {:>8} {:>10} {:>9} {:>8} {:>8} {:>8} {:>6}",
        "catch-up",
        "events/s",
        "seconds",
        "(active)",
        "CPU s/10k",
        "peak RSS",
        "PG cores",
        "Kafka c.",
        "busy%"
    );
    catch_up_row(out, "objmeta run --enrich auto (versitygw events)", run, "");
    if let Some(minio) = minio_catchup.filter(|m| m["error"].is_null()) {
        let note = format!("   ({} events, no reads)", text(&minio["events"]));
        catch_up_row(
            out,
            "objmeta run, MinIO events (catch-up distinct)",
            minio,
            &note,
        );
    }
    let rows = &enrich["rows"];
    let metrics = &enrich["metrics"];
    let _ = writeln!(
        out,
        "    rows: {} of {}, {} written from a HeadObject (objmeta:Enrich), {} with the object's user metadata",
        text(&rows["rows"]),
        text(&fill["objects"]),
        text(&rows["enriched"]),
        text(&rows["with_metadata"])
    );
    let _ = writeln!(
        out,
        "    objmeta's metrics: {} HEADs found, {} ms per HEAD, {} HEADs in flight on average (start-up included); {} batches of {} rows, {} ms each (reads and write)",
        fmt(num(&metrics["heads_found"]), 0),
        fmt(
            per(&metrics["head_seconds_sum"], &metrics["head_count"]).map(|s| s * 1000.0),
            1
        ),
        fmt(heads_in_flight(enrich), 1),
        fmt(num(&metrics["flush_count"]), 0),
        fmt(per(&metrics["batch_rows_sum"], &metrics["batch_rows_count"]), 0),
        fmt(
            per(&metrics["flush_seconds_sum"], &metrics["flush_count"]).map(|s| s * 1000.0),
            0
        )
    );
    let _ = writeln!(
        out,
        "  >>> enrichment / bare HEAD loop {} %  (target >= {:.0} %; {} % from the first commit on) <<<",
        fmt(share_of_heads(enrich).map(|r| r * 100.0), 1),
        TARGET_SHARE_OF_HEADS * 100.0,
        fmt(active_share_of_heads(enrich).map(|r| r * 100.0), 1)
    );
    if minio_catchup.is_none() {
        let _ = writeln!(
            out,
            "  (the MinIO path's catch-up for comparison: BENCH_PHASES=\"catchup enrich\", BENCH_EVENTS to taste)"
        );
    }
}
