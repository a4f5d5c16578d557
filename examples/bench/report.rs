//! Turns the JSON lines the other subcommands printed into one results file and the table,
//! with the ratios and the targets of issue 5 (and of issue 10 for the backfill).

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use serde_json::{json, Value};

mod backfill;
mod enrich;
mod flood;

#[derive(clap::Args)]
pub struct Args {
    /// JSON lines collected by scripts/bench (one object per phase; `phase` names it).
    #[arg(long)]
    input: PathBuf,
    /// Results file to write (all figures, the ratios and the target verdicts).
    #[arg(long)]
    output: PathBuf,
}

const TARGET_CEILING_SHARE: f64 = 0.70;
const TARGET_NAIVE_FACTOR: f64 = 20.0;
const TARGET_CPU_PER_10K: f64 = 0.25;
const TARGET_RSS_MIB: f64 = 64.0;
const TARGET_P99_MS_AT_2K: f64 = 250.0;
const TARGET_SCALE_OUT: f64 = 1.6;
/// A replay changes nothing, so it should run at least this much faster than the fresh catch-up.
const TARGET_REPLAY_FACTOR: f64 = 2.0;
/// Keeping the history (the default) may cost at most this share of the rate without it.
const TARGET_HISTORY_RATE_SHARE: f64 = 0.70;
/// The flood's peak RSS should be "near 64 MiB": counted as met up to a quarter above it.
pub const TARGET_FLOOD_RSS_MIB: f64 = 64.0;
pub const FLOOD_RSS_TOLERANCE: f64 = 1.25;
/// Above this share of the machine's CPU in use, PostgreSQL has no headroom to give.
const SATURATED_PERCENT: f64 = 90.0;

pub fn run(args: Args) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.input)
        .with_context(|| format!("reading {}", args.input.display()))?;
    let mut results = json!({"meta": {}, "ceiling": null, "naive": null, "catchup": [], "steady": [], "flood": null, "backfill": null, "enrich": null});
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let value: Value =
            serde_json::from_str(line).with_context(|| format!("bad line {line}"))?;
        match value["phase"].as_str().unwrap_or("") {
            "meta" => results["meta"] = value,
            "ceiling" => results["ceiling"] = value,
            "naive" => push(&mut results["naive"], value),
            "catchup" => push(&mut results["catchup"], value),
            "steady" => push(&mut results["steady"], value),
            "produce" => push(&mut results["produce"], value),
            "table_stats" => attach_table_stats(&mut results, value),
            "flood" => merge(&mut results["flood"], "run", value),
            "flood_produce" => merge(&mut results["flood"], "produce", value),
            "flood_setup" => merge(&mut results["flood"], "setup", value),
            "flood_rows" => merge(&mut results["flood"], "rows", value),
            "backfill_fill" => merge(&mut results["backfill"], "fill", value),
            "backfill_heads" => push(&mut results["backfill"]["heads"], value),
            "backfill" => merge(&mut results["backfill"], "run", value),
            "enrich_setup" => {
                let concurrency = value["concurrency"].clone();
                merge(&mut results["enrich"], "concurrency", concurrency);
            }
            "enrich_fill" => merge(&mut results["enrich"], "fill", value),
            "enrich_produce" => merge(&mut results["enrich"], "produce", value),
            "enrich_heads" => push(&mut results["enrich"]["heads"], value),
            "enrich" => merge(&mut results["enrich"], "run", value),
            "enrich_rows" => merge(&mut results["enrich"], "rows", value),
            "enrich_metrics" => merge(&mut results["enrich"], "metrics", value),
            other => eprintln!("bench report: ignoring phase {other:?}"),
        }
    }
    let (table, verdicts) = render(&results);
    results["verdicts"] = verdicts;
    std::fs::write(&args.output, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("writing {}", args.output.display()))?;
    print!("{table}");
    println!("raw figures: {}", args.output.display());
    Ok(())
}

fn push(array: &mut Value, value: Value) {
    if !array.is_array() {
        *array = json!([]);
    }
    if let Some(items) = array.as_array_mut() {
        items.push(value);
    }
}

/// Sets `object[field]`, making `object` an object first if it is not one yet.
fn merge(object: &mut Value, field: &str, value: Value) {
    if !object.is_object() {
        *object = json!({});
    }
    object[field] = value;
}

/// pg_stat_user_tables deltas go with the catch-up run of the same label.
fn attach_table_stats(results: &mut Value, stats: Value) {
    let run = results["catchup"]
        .as_array_mut()
        .and_then(|runs| runs.iter_mut().rev().find(|c| c["label"] == stats["label"]));
    match run {
        Some(run) => run["table"] = stats,
        None => eprintln!("bench report: table stats without a catch-up run: {stats}"),
    }
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// A rate with thousands separators: 41,250.
fn fmt_rate(v: Option<f64>) -> String {
    v.map_or("-".into(), |r| {
        let digits = (r.round() as i64).to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    })
}

/// A JSON value as plain text (strings without quotes), so that width and alignment apply.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn fmt(v: Option<f64>, decimals: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.decimals$}"))
}

/// The naive consumer's rate: the one that commits every message, or the best other one.
fn naive_rate(results: &Value, per_message: bool) -> Option<f64> {
    results["naive"]
        .as_array()?
        .iter()
        .filter(|n| (n["commit_every"] == 1) == per_message)
        .filter_map(|n| num(&n["rows_per_s"]))
        .reduce(f64::max)
}

fn catchup<'a>(results: &'a Value, label: &str) -> Option<&'a Value> {
    results["catchup"]
        .as_array()?
        .iter()
        .find(|c| c["label"] == label)
}

fn render(results: &Value) -> (String, Value) {
    let mut out = String::new();
    let meta = &results["meta"];
    let _ = writeln!(
        out,
        "\nobjmeta benchmark {} (git {}, {} events, {} partitions{})",
        meta["started"].as_str().unwrap_or("?"),
        meta["git"].as_str().unwrap_or("?"),
        text(&meta["events"]),
        text(&meta["partitions"]),
        if meta["quick"] == true {
            ", --quick"
        } else {
            ""
        }
    );
    let ceiling_rate = render_ceiling(&mut out, &results["ceiling"]);
    let _ = writeln!(
        out,
        "\nNaive consumer (one single-row upsert per message, autocommit)"
    );
    for naive in results["naive"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  {:<44} {:>9} rows/s  ({} messages in {} s)",
            format!(
                "Kafka sync commit every {} message(s)",
                text(&naive["commit_every"])
            ),
            fmt_rate(num(&naive["rows_per_s"])),
            text(&naive["messages"]),
            fmt(num(&naive["seconds"]), 1)
        );
    }
    let naive_rate = naive_rate(results, true);
    render_catchup(&mut out, results);
    render_steady(&mut out, results);
    flood::render(&mut out, &results["flood"]);
    backfill::render(&mut out, &results["backfill"]);
    enrich::render(&mut out, &results["enrich"], catchup(results, "distinct"));
    let verdicts = render_verdicts(&mut out, results, ceiling_rate, naive_rate);
    (out, verdicts)
}

fn render_ceiling(out: &mut String, ceiling: &Value) -> Option<f64> {
    let _ = writeln!(
        out,
        "\nCeiling: rows upserted straight into objmeta's table (indexes included), one connection\n  {:<24} {:>9} {:>12} {:>12}",
        "shape", "rows", "fresh rows/s", "update rows/s"
    );
    for shape in ceiling["shapes"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  {:<24} {:>9} {:>12} {:>12}",
            shape["shape"].as_str().unwrap_or("?"),
            text(&shape["rows"]),
            fmt_rate(num(&shape["insert_rows_per_s"])),
            fmt_rate(num(&shape["update_rows_per_s"]))
        );
    }
    let full = &ceiling["full"];
    let _ = writeln!(
        out,
        "  {:<24} {:>9} {:>12} {:>12}   <- best shape ({}), at catch-up size",
        "best, full size",
        text(&full["rows"]),
        fmt_rate(num(&full["insert_rows_per_s"])),
        fmt_rate(num(&full["update_rows_per_s"])),
        ceiling["best"].as_str().unwrap_or("?")
    );
    num(&full["insert_rows_per_s"])
}

fn render_catchup(out: &mut String, results: &Value) {
    let _ = writeln!(
        out,
        "\nobjmeta catch-up (topic pre-filled, fresh group and schema; time from start to all offsets committed)\n  {:<30} {:>8} {:>7} {:>9} {:>10} {:>9} {:>9} {:>9} {:>8} {:>8} {:>6}",
        "run", "events", "seconds", "events/s", "(active)", "CPU s/10k", "peak RSS", "end RSS", "PG cores", "Kafka c.", "busy%"
    );
    for run in results["catchup"].as_array().into_iter().flatten() {
        if let Some(error) = run["error"].as_str() {
            let name = format!(
                "{} ({} replica(s))",
                text(&run["label"]),
                text(&run["replicas"])
            );
            let _ = writeln!(out, "  {name:<30} FAILED: {error}");
            continue;
        }
        let end_rss: Vec<String> = run["end_rss_kib"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_f64)
            .map(|k| format!("{:.0}", k / 1024.0))
            .collect();
        let _ = writeln!(
            out,
            "  {:<30} {:>8} {:>7} {:>9} {:>10} {:>9} {:>8}M {:>8}M {:>8} {:>8} {:>6}",
            format!(
                "{} ({} replica(s))",
                run["label"].as_str().unwrap_or("?"),
                text(&run["replicas"])
            ),
            text(&run["events"]),
            fmt(num(&run["seconds"]), 1),
            fmt_rate(num(&run["events_per_s"])),
            fmt_rate(num(&run["events_per_s_after_first_commit"])),
            fmt(num(&run["cpu_seconds_per_10k"]), 3),
            fmt(num(&run["peak_rss_kib"]).map(|k| k / 1024.0), 0),
            end_rss.join("+"),
            fmt(num(&run["pg_cores"]), 2),
            fmt(num(&run["kafka_cores"]), 2),
            fmt(num(&run["machine_busy_percent"]), 0)
        );
    }
    if let Some(ratio) = replay_over_fresh(results) {
        let _ = writeln!(
            out,
            "  replay / fresh catch-up (distinct): {ratio:.2} x   (target >= {TARGET_REPLAY_FACTOR:.0} x)"
        );
    }
    render_table_stats(out, results);
}

/// Catch-up `with`'s rate over `without`'s: the same topic, one replica each.
fn rate_over(results: &Value, with: &str, without: &str) -> Option<f64> {
    let rate = |label| catchup(results, label).and_then(|c| num(&c["events_per_s"]));
    rate(with).zip(rate(without)).map(|(w, o)| w / o)
}

/// The replay's rate over the fresh catch-up's, both into the same table from the same topic.
fn replay_over_fresh(results: &Value) -> Option<f64> {
    rate_over(results, "replay", "distinct")
}

fn render_table_stats(out: &mut String, results: &Value) {
    let runs: Vec<&Value> = results["catchup"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["table"].is_object())
        .collect();
    if runs.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "  object_metadata rows written (pg_stat_user_tables deltas over each run):"
    );
    for run in runs {
        let table = &run["table"];
        let _ = writeln!(
            out,
            "    {:<28} {:>9} inserted {:>9} updated {:>9} HOT",
            text(&run["label"]),
            text(&table["inserted"]),
            text(&table["updated"]),
            text(&table["hot_updated"])
        );
    }
}

fn render_steady(out: &mut String, results: &Value) {
    let _ = writeln!(
        out,
        "\nobjmeta steady rate (default settings; publish -> row visible, probe polls every 10 ms)\n  {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}   SQL updated_at-event_time p50/p99/max ms (txn start)",
        "events/s", "samples", "missing", "p50 ms", "p99 ms", "max ms"
    );
    for run in results["steady"].as_array().into_iter().flatten() {
        let sql = &run["sql_txn_start"];
        let _ = writeln!(
            out,
            "  {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}   {}/{}/{}",
            text(&run["rate"]),
            text(&run["samples"]),
            text(&run["missing"]),
            fmt(num(&run["p50_ms"]), 1),
            fmt(num(&run["p99_ms"]), 1),
            fmt(num(&run["max_ms"]), 1),
            fmt(num(&sql["p50_ms"]), 1),
            fmt(num(&sql["p99_ms"]), 1),
            fmt(num(&sql["max_ms"]), 1)
        );
    }
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "MET",
        Some(false) => "NOT MET",
        None => "n/a",
    }
}

fn render_verdicts(
    out: &mut String,
    results: &Value,
    ceiling_rate: Option<f64>,
    naive_rate: Option<f64>,
) -> Value {
    let distinct = catchup(results, "distinct");
    let objmeta_rate = distinct.and_then(|d| num(&d["events_per_s"]));
    let of_ceiling = objmeta_rate.zip(ceiling_rate).map(|(o, c)| o / c);
    let of_naive = objmeta_rate.zip(naive_rate).map(|(o, n)| o / n);
    let of_batched_naive = objmeta_rate
        .zip(self::naive_rate(results, false))
        .map(|(o, n)| o / n);
    let single: Vec<&Value> = results["catchup"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["replicas"] == 1)
        .collect();
    let worst_cpu = single
        .iter()
        .filter_map(|c| num(&c["cpu_seconds_per_10k"]))
        .reduce(f64::max);
    let worst_rss = single
        .iter()
        .filter_map(|c| num(&c["peak_rss_kib"]).map(|k| k / 1024.0))
        .reduce(f64::max);
    let p99_2k = results["steady"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["rate"] == 2000)
        .and_then(|s| num(&s["p99_ms"]));
    let two = catchup(results, "scale-out");
    let scale = two
        .and_then(|t| num(&t["events_per_s"]))
        .zip(objmeta_rate)
        .map(|(t, o)| t / o);
    let busy = two.and_then(|t| num(&t["machine_busy_percent"]));
    let pg_cores = two.and_then(|t| num(&t["pg_cores"]));
    let saturated = busy.map(|b| b >= SATURATED_PERCENT);
    let replay = replay_over_fresh(results);
    let replay_updated = catchup(results, "replay").and_then(|c| num(&c["table"]["updated"]));
    let flood_rss = flood::peak_rss_mib(&results["flood"]);
    let backfill_share = backfill::share_of_heads(&results["backfill"]);
    let backfill_rss = backfill::peak_rss_mib(&results["backfill"]);
    let enrich_share = enrich::share_of_heads(&results["enrich"]);
    let history = rate_over(results, "distinct", "distinct-no-history");
    let versioned_history = rate_over(results, "versioned", "versioned-no-history");
    let versioned_of_ceiling = catchup(results, "versioned")
        .and_then(|v| num(&v["events_per_s"]))
        .zip(ceiling_rate)
        .map(|(v, c)| v / c);
    let _ = writeln!(
        out,
        "\nRatios and targets (issue 5; backfill: issue 10; enrichment; history: issue 12)"
    );
    let mut line = |name: &str, figure: String, target: String, met: Option<bool>| {
        let _ = writeln!(
            out,
            "  {:<46} {:>12}   target {:<14} {}",
            name,
            figure,
            target,
            verdict(met)
        );
        json!({"name": name, "figure": figure, "target": target, "met": met})
    };
    let verdicts = vec![
        line(
            "catch-up (distinct) / ceiling (fresh inserts)",
            fmt(of_ceiling.map(|r| r * 100.0), 1) + " %",
            format!(">= {:.0} %", TARGET_CEILING_SHARE * 100.0),
            of_ceiling.map(|r| r >= TARGET_CEILING_SHARE),
        ),
        line(
            "catch-up (distinct) / naive consumer",
            fmt(of_naive, 1) + " x",
            format!(">= {TARGET_NAIVE_FACTOR:.0} x"),
            of_naive.map(|r| r >= TARGET_NAIVE_FACTOR),
        ),
        line(
            "  (vs the naive loop committing every 1000)",
            fmt(of_batched_naive, 1) + " x",
            "(information)".into(),
            None,
        ),
        line(
            "CPU per 10k events (worst 1-replica run)",
            fmt(worst_cpu, 3) + " s",
            format!("<= {TARGET_CPU_PER_10K} s"),
            worst_cpu.map(|c| c <= TARGET_CPU_PER_10K),
        ),
        line(
            "peak RSS (worst 1-replica run)",
            fmt(worst_rss, 0) + " MiB",
            format!("<= {TARGET_RSS_MIB:.0} MiB"),
            worst_rss.map(|r| r <= TARGET_RSS_MIB),
        ),
        line(
            "p99 event-to-row delay at 2k events/s",
            fmt(p99_2k, 1) + " ms",
            format!("<= {TARGET_P99_MS_AT_2K:.0} ms"),
            p99_2k.map(|p| p <= TARGET_P99_MS_AT_2K),
        ),
        line(
            "2 replicas / 1 replica (catch-up)",
            fmt(scale, 2) + " x",
            format!(">= {TARGET_SCALE_OUT} x"),
            scale.map(|s| s >= TARGET_SCALE_OUT),
        ),
        line(
            "replay / fresh catch-up (same topic and table)",
            fmt(replay, 2) + " x",
            format!(">= {TARGET_REPLAY_FACTOR:.0} x"),
            replay.map(|r| r >= TARGET_REPLAY_FACTOR),
        ),
        line(
            "  rows updated by the replay",
            fmt(replay_updated, 0),
            "0".into(),
            replay_updated.map(|u| u == 0.0),
        ),
        line(
            "flood peak RSS (1 MiB messages, slow database)",
            fmt(flood_rss, 0) + " MiB",
            format!("near {TARGET_FLOOD_RSS_MIB:.0} MiB"),
            flood_rss.map(|r| r <= TARGET_FLOOD_RSS_MIB * FLOOD_RSS_TOLERANCE),
        ),
        line(
            "backfill / bare HeadObject loop (same client)",
            fmt(backfill_share.map(|r| r * 100.0), 1) + " %",
            format!(">= {:.0} %", backfill::TARGET_SHARE_OF_HEADS * 100.0),
            backfill_share.map(|r| r >= backfill::TARGET_SHARE_OF_HEADS),
        ),
        line(
            &format!(
                "backfill peak RSS ({} objects)",
                backfill::objects(&results["backfill"])
            ),
            fmt(backfill_rss, 0) + " MiB",
            format!("< {:.0} MiB", backfill::TARGET_RSS_MIB),
            backfill_rss.map(|r| r < backfill::TARGET_RSS_MIB),
        ),
        line(
            "enrichment catch-up / bare HeadObject loop",
            fmt(enrich_share.map(|r| r * 100.0), 1) + " %",
            format!(">= {:.0} %", enrich::TARGET_SHARE_OF_HEADS * 100.0),
            enrich_share.map(|r| r >= enrich::TARGET_SHARE_OF_HEADS),
        ),
        line(
            "catch-up with history / without (distinct)",
            fmt(history.map(|r| r * 100.0), 1) + " %",
            format!(">= {:.0} %", TARGET_HISTORY_RATE_SHARE * 100.0),
            history.map(|r| r >= TARGET_HISTORY_RATE_SHARE),
        ),
        line(
            "  the same, versioned bucket (mix)",
            fmt(versioned_history.map(|r| r * 100.0), 1) + " %",
            format!(">= {:.0} %", TARGET_HISTORY_RATE_SHARE * 100.0),
            versioned_history.map(|r| r >= TARGET_HISTORY_RATE_SHARE),
        ),
        line(
            "  versioned catch-up / ceiling (fresh inserts)",
            fmt(versioned_of_ceiling.map(|r| r * 100.0), 1) + " %",
            "(information)".into(),
            None,
        ),
    ];
    let _ = writeln!(
        out,
        "  headroom during the 2-replica run: machine {} % busy, PostgreSQL {} cores{}",
        fmt(busy, 0),
        fmt(pg_cores, 2),
        match saturated {
            Some(true) => " -> no headroom: the 2 cores are saturated, scale-out cannot show here",
            Some(false) => " -> CPU headroom left",
            None => "",
        }
    );
    json!({
        "objmeta_over_ceiling": of_ceiling,
        "objmeta_over_naive": of_naive,
        "objmeta_over_naive_batched_commits": of_batched_naive,
        "two_over_one_replica": scale,
        "replay_over_fresh": replay,
        "replay_rows_updated": replay_updated,
        "flood_peak_rss_mib": flood_rss,
        "backfill_over_heads": backfill_share,
        "backfill_peak_rss_mib": backfill_rss,
        "enrich_over_heads": enrich_share,
        "history_over_no_history": history,
        "versioned_history_over_no_history": versioned_history,
        "versioned_over_ceiling": versioned_of_ceiling,
        "machine_saturated_in_scale_out": saturated,
        "targets": verdicts,
    })
}
