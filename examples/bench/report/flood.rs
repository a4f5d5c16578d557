//! The flood section: objmeta's memory while ~1 MiB messages arrive faster than the slowed
//! database takes them. Peak RSS is the figure of this scenario, so it gets its own line.

use std::fmt::Write as _;

use serde_json::Value;

use super::{fmt, fmt_rate, num, text, FLOOD_RSS_TOLERANCE, TARGET_FLOOD_RSS_MIB};

const MIB: f64 = 1024.0 * 1024.0;

/// The flood's peak RSS (VmHWM), MiB.
pub fn peak_rss_mib(flood: &Value) -> Option<f64> {
    num(&flood["run"]["peak_rss_kib"]).map(|k| k / 1024.0)
}

pub fn render(out: &mut String, flood: &Value) {
    if flood.is_null() {
        return;
    }
    let (produce, setup, run) = (&flood["produce"], &flood["setup"], &flood["run"]);
    let _ = writeln!(
        out,
        "\nFlood: {} messages of {} KiB ({} invalid -> dead letters), topic max.message.bytes {} KiB;\n  database slowed by {} ms per written row (trigger); objmeta memory budget: {}",
        text(&produce["messages"]),
        fmt(num(&produce["message_bytes"]).map(|b| b / 1024.0), 0),
        text(&produce["invalid"]),
        fmt(num(&produce["max_message_bytes"]).map(|b| b / 1024.0), 0),
        text(&setup["db_sleep_ms_per_row"]),
        text(&setup["memory_budget"])
    );
    if let Some(error) = run["error"].as_str() {
        let _ = writeln!(out, "  FAILED: {error}");
        return;
    }
    let peak = peak_rss_mib(flood);
    let _ = writeln!(
        out,
        "  >>> PEAK RSS {} MiB   (target: near {TARGET_FLOOD_RSS_MIB:.0} MiB; met up to {:.0} MiB) <<<",
        fmt(peak, 0),
        TARGET_FLOOD_RSS_MIB * FLOOD_RSS_TOLERANCE
    );
    let end_rss = run["end_rss_kib"]
        .as_array()
        .and_then(|a| a.first())
        .and_then(Value::as_f64)
        .map(|k| k / 1024.0);
    let seconds = num(&run["seconds"]);
    let mib_per_s = num(&produce["bytes"])
        .zip(seconds)
        .map(|(b, s)| b / MIB / s);
    let _ = writeln!(
        out,
        "  final RSS {} MiB; {} messages in {} s = {} messages/s ({} MiB/s); objmeta CPU {} s",
        fmt(end_rss, 0),
        text(&run["events"]),
        fmt(seconds, 1),
        fmt_rate(num(&run["events_per_s"])),
        fmt(mib_per_s, 1),
        fmt(num(&run["cpu_seconds"]), 1)
    );
    let _ = writeln!(
        out,
        "  written: {} objects, {} dead letters; published in {} s beforehand",
        text(&flood["rows"]["objects"]),
        text(&flood["rows"]["dead_letters"]),
        fmt(num(&produce["seconds"]), 1)
    );
}
