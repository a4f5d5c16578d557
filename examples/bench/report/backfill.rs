//! The backfill section (issue 10): `objmeta backfill`'s objects/s next to a bare concurrent
//! HeadObject loop of the same client and concurrency on the same bucket, and its peak RSS.
//! "others" is the CPU the machine's other processes took meanwhile (the broker, anything
//! else running): on 2 cores, a run with others well above ~0.1 cores was disturbed. "irq"
//! is interrupt time, charged to no process: mostly the kernel's TCP work.

use std::fmt::Write as _;

use serde_json::Value;

use super::{fmt, fmt_rate, num, text};

/// The backfill should reach this share of the bare HeadObject loop's rate.
pub const TARGET_SHARE_OF_HEADS: f64 = 0.80;
/// objmeta backfill's peak RSS should stay under this.
pub const TARGET_RSS_MIB: f64 = 64.0;

fn heads(backfill: &Value) -> impl Iterator<Item = &Value> {
    backfill["heads"].as_array().into_iter().flatten()
}

/// The reference rate: the best of the HEAD loops (run before and after the backfill, or the
/// enrichment), so that the ratio is not flattered by a slow reference run.
pub fn heads_rate(section: &Value) -> Option<f64> {
    heads(section)
        .filter_map(|h| num(&h["objects_per_s"]))
        .reduce(f64::max)
}

/// The backfill's rate over the bare HeadObject loop's.
pub fn share_of_heads(backfill: &Value) -> Option<f64> {
    num(&backfill["run"]["objects_per_s"])
        .zip(heads_rate(backfill))
        .map(|(b, h)| b / h)
}

/// The same against the best loop with its listing counted (information: the backfill lists
/// while it reads, the loop lists first).
fn share_of_list_and_heads(backfill: &Value) -> Option<f64> {
    let best = heads(backfill)
        .filter_map(|h| num(&h["list_and_heads_per_s"]))
        .reduce(f64::max);
    num(&backfill["run"]["objects_per_s"])
        .zip(best)
        .map(|(b, h)| b / h)
}

/// objmeta backfill's peak RSS (VmHWM), MiB.
pub fn peak_rss_mib(backfill: &Value) -> Option<f64> {
    num(&backfill["run"]["peak_rss_kib"]).map(|k| k / 1024.0)
}

/// How many objects the bucket held (the verdict lines name it).
pub fn objects(backfill: &Value) -> String {
    text(&backfill["fill"]["objects"])
}

/// The column heads and a row per HEAD loop of a section (`section["heads"]`): the backfill's,
/// or the enrichment's.
pub fn render_heads(out: &mut String, section: &Value) {
    let _ = writeln!(
        out,
        "  {:<44} {:>9} {:>8} {:>10} {:>9} {:>9} {:>6} {:>7} {:>5}",
        "run",
        "objects/s",
        "seconds",
        "listing s",
        "CPU s/10k",
        "S3 cores",
        "busy%",
        "others",
        "irq"
    );
    for h in heads(section) {
        let _ = writeln!(
            out,
            "  {:<44} {:>9} {:>8} {:>10} {:>9} {:>9} {:>6} {:>7} {:>5}",
            format!("bare HeadObject loop ({})", text(&h["label"])),
            fmt_rate(num(&h["objects_per_s"])),
            fmt(num(&h["seconds"]), 1),
            fmt(num(&h["list_seconds"]), 1),
            fmt(num(&h["cpu_seconds_per_10k"]), 3),
            fmt(num(&h["server_cores"]), 2),
            fmt(num(&h["machine_busy_percent"]), 0),
            fmt(num(&h["other_cores"]), 2),
            fmt(num(&h["interrupt_cores"]), 2)
        );
    }
}

pub fn render(out: &mut String, backfill: &Value) {
    if backfill.is_null() {
        return;
    }
    let fill = &backfill["fill"];
    let _ = writeln!(
        out,
        "\nBackfill: bucket of {} objects (1 user metadata entry each), put at {} objects/s; concurrency {}\n  S3 server: {}",
        text(&fill["objects"]),
        fmt_rate(num(&fill["objects_per_s"])),
        text(&fill["concurrency"]),
        text(&fill["server"])
    );
    render_heads(out, backfill);
    let run = &backfill["run"];
    if let Some(error) = run["error"].as_str() {
        let _ = writeln!(out, "  objmeta backfill FAILED: {error}");
        return;
    }
    let _ = writeln!(
        out,
        "  {:<44} {:>9} {:>8} {:>10} {:>9} {:>9} {:>6} {:>7} {:>5}   PG {} cores",
        "objmeta backfill (wall time, start to exit)",
        fmt_rate(num(&run["objects_per_s"])),
        fmt(num(&run["seconds"]), 1),
        "-",
        fmt(num(&run["cpu_seconds_per_10k"]), 3),
        fmt(num(&run["server_cores"]), 2),
        fmt(num(&run["machine_busy_percent"]), 0),
        fmt(num(&run["other_cores"]), 2),
        fmt(num(&run["interrupt_cores"]), 2),
        fmt(num(&run["pg_cores"]), 2)
    );
    let summary = &run["summary"];
    let _ = writeln!(
        out,
        "    objmeta's summary: {} s from listing start to end; inserted {}, errors {}, retries {}, rereads {}",
        fmt(num(&summary["seconds"]), 1),
        text(&summary["inserted"]),
        text(&summary["errors"]),
        text(&summary["retries"]),
        text(&summary["rereads"])
    );
    let _ = writeln!(
        out,
        "  >>> backfill / bare HEAD loop {} %  (target >= {:.0} %);  PEAK RSS {} MiB  (target < {TARGET_RSS_MIB:.0} MiB) <<<",
        fmt(share_of_heads(backfill).map(|r| r * 100.0), 1),
        TARGET_SHARE_OF_HEADS * 100.0,
        fmt(peak_rss_mib(backfill), 0)
    );
    let _ = writeln!(
        out,
        "  (the loop's rate leaves its listing out; counting it, backfill / (list + HEAD loop) is {} %)",
        fmt(share_of_list_and_heads(backfill).map(|r| r * 100.0), 1)
    );
}
