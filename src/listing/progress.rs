//! Progress of a listing for the person waiting on it: a live bar on a
//! terminal, a plain line every [`LINE_INTERVAL`] otherwise (logs, CI), so
//! that a long backfill is never silent for a minute.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{Summary, Target};

/// How often the plain progress line is printed.
const LINE_INTERVAL: Duration = Duration::from_secs(10);

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Progress {
    /// A bar on a terminal, plain lines otherwise.
    Auto,
    Bar,
    Lines,
    Off,
}

impl Progress {
    pub(super) fn start(&self, target: &Target, resumed: bool) -> Bar {
        let name = format!(
            "{} {}/{}{}",
            target.kind.label(),
            target.bucket,
            target.prefix,
            if resumed { " (resumed)" } else { "" }
        );
        let bar = match self {
            Progress::Auto if std::io::stderr().is_terminal() => Some(live_bar(&name)),
            Progress::Bar => Some(live_bar(&name)),
            _ => None,
        };
        Bar {
            name,
            bar,
            lines: matches!(self, Progress::Auto | Progress::Lines),
            started: Instant::now(),
            last_line: Mutex::new(Instant::now()),
        }
    }
}

fn live_bar(name: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    // The template is a constant that is known to parse.
    if let Ok(style) = ProgressStyle::with_template("{spinner} {prefix} [{elapsed_precise}] {msg}")
    {
        bar.set_style(style);
    }
    bar.set_prefix(name.to_string());
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

/// The progress display of one listing.
pub(super) struct Bar {
    name: String,
    bar: Option<ProgressBar>,
    lines: bool,
    started: Instant,
    last_line: Mutex<Instant>,
}

impl Bar {
    pub(super) fn update(&self, summary: &Summary) {
        if let Some(bar) = &self.bar {
            bar.set_message(self.message(summary));
            return;
        }
        if !self.lines {
            return;
        }
        let mut last = self.last_line.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() >= LINE_INTERVAL {
            *last = Instant::now();
            eprintln!("{}: {}", self.name, self.message(summary));
        }
    }

    pub(super) fn finish(&self, summary: &Summary) {
        match &self.bar {
            Some(bar) => bar.finish_with_message(self.message(summary)),
            None if self.lines => eprintln!("{}: {}", self.name, self.message(summary)),
            None => {}
        }
    }

    fn message(&self, s: &Summary) -> String {
        let t = &s.tally;
        let seconds = self.started.elapsed().as_secs_f64().max(0.001);
        format!(
            "written {} ({:.0}/s), inserted {}, updated {}, errors {}, retries {}, elapsed {:.0}s",
            t.listed,
            t.listed as f64 / seconds,
            t.inserted,
            t.updated,
            t.errors,
            s.retries,
            seconds
        )
    }
}
