//! How a batch is cut into statements, and what a failed statement leads to.
//!
//! A batch is written as one statement when it can be. When a statement may
//! have failed because it is too big (see `error`'s classification rule), its
//! rows are cut in halves, and the cuts are kept in a [`Plan`] that lives as
//! long as the batch's write: the next attempt, after a lost connection or a
//! backoff, starts from what the earlier ones learned instead of sending the
//! statement that failed again. The rows of a batch are distinct objects, so
//! the parts can be written in any order.

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;

use crate::error::{Disposition, SinkError, SINGLE_ROW_ATTEMPTS};
use crate::event::{Action, Change};

/// Most bytes of column values one statement carries. PostgreSQL refuses a
/// protocol message over 1 GiB (and drops the connection, with no error
/// code to tell why); staying far below keeps every Bind message legal.
pub const MAX_STATEMENT_BYTES: usize = 256 << 20;

/// Fixed columns of a row (numbers, timestamps, flags, array overhead).
const ROW_OVERHEAD_BYTES: usize = 64;

/// The cuts of one batch's rows into statements, and how often single rows
/// failed on their own.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Boundaries of the statements: always holds 0 and the row count.
    cuts: BTreeSet<usize>,
    /// Row index -> attempts that failed with that row alone.
    strikes: HashMap<usize, u32>,
}

/// `range` split in its two halves (the first one shorter when odd).
pub fn halves(range: &Range<usize>) -> (Range<usize>, Range<usize>) {
    let middle = range.start + range.len() / 2;
    (range.start..middle, middle..range.end)
}

/// What to do after a statement over some rows failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Write the rows again in two halves.
    Halve,
    /// Dead-letter the single row with the error as its reason.
    Refuse,
    /// Abandon the attempt with this error (the writer retries or stops).
    Fail,
}

impl Plan {
    /// One statement per run of rows under [`MAX_STATEMENT_BYTES`].
    pub fn new(changes: &[Change]) -> Plan {
        Plan::with_budget(changes, MAX_STATEMENT_BYTES)
    }

    /// One statement per run of rows under `budget` bytes (at most
    /// [`MAX_STATEMENT_BYTES`]). The pipeline passes a share of the memory
    /// budget: a connection keeps its largest encoded statement's buffer,
    /// so large statements would hold memory outside the budget.
    pub fn with_budget(changes: &[Change], budget: usize) -> Plan {
        let budget = budget.min(MAX_STATEMENT_BYTES);
        let mut cuts = BTreeSet::from([0, changes.len()]);
        let mut bytes = 0;
        for (index, change) in changes.iter().enumerate() {
            let row = row_bytes(change);
            if bytes > 0 && bytes + row > budget {
                cuts.insert(index);
                bytes = 0;
            }
            bytes += row;
        }
        Plan {
            cuts,
            strikes: HashMap::new(),
        }
    }

    /// Whether the batch is still written as one statement.
    pub fn is_whole(&self) -> bool {
        self.cuts.len() <= 2
    }

    /// The statements' row ranges, in order.
    pub fn ranges(&self) -> Vec<Range<usize>> {
        let cuts: Vec<usize> = self.cuts.iter().copied().collect();
        cuts.windows(2).map(|w| w[0]..w[1]).collect()
    }

    /// Cuts `range` in two, for this attempt and the later ones.
    pub fn cut(&mut self, range: &Range<usize>) -> (Range<usize>, Range<usize>) {
        let (first, second) = halves(range);
        self.cuts.extend([first.start, second.start, second.end]);
        (first, second)
    }

    /// What follows the failure of a statement over `range` with `error`;
    /// counts the failure of a single row on its own.
    pub fn after_failure(&mut self, range: &Range<usize>, error: &SinkError) -> Step {
        let strikes = if range.len() == 1 && error.disposition() == Disposition::Split {
            let strikes = self.strikes.entry(range.start).or_default();
            *strikes += 1;
            *strikes
        } else {
            0
        };
        step(
            error.disposition(),
            range.len(),
            error.content_caused(),
            strikes,
        )
    }
}

/// The rule of `error`'s module documentation, as a table.
fn step(disposition: Disposition, rows: usize, content_caused: bool, strikes: u32) -> Step {
    match disposition {
        Disposition::Rejected if rows > 1 => Step::Halve,
        Disposition::Rejected => Step::Refuse,
        Disposition::Split if rows > 1 => Step::Halve,
        Disposition::Split if content_caused && strikes >= SINGLE_ROW_ATTEMPTS => Step::Refuse,
        Disposition::Split | Disposition::Retriable | Disposition::Fatal => Step::Fail,
    }
}

/// About how many bytes a change adds to the upsert's parameters.
fn row_bytes(change: &Change) -> usize {
    let strings = change.object.bucket.len() + change.object.key.len() + change.event_name.len();
    let state = match &change.action {
        Action::Upsert(state) => {
            let optional = |s: &Option<String>| s.as_ref().map_or(0, String::len);
            optional(&state.version_id)
                + optional(&state.etag)
                + optional(&state.content_type)
                + state.user_metadata.as_json().len()
                + state.system_metadata.as_json().len()
        }
        Action::Remove { version_id, .. } => version_id.as_ref().map_or(0, String::len),
    };
    ROW_OVERHEAD_BYTES + strings + state
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_splits_size_failures_and_dead_letters_only_content_after_attempts() {
        use Disposition::*;
        assert_eq!(step(Split, 2, false, 0), Step::Halve);
        assert_eq!(step(Rejected, 2, false, 0), Step::Halve);
        assert_eq!(step(Rejected, 1, false, 0), Step::Refuse);
        // A statement timeout on one row: retried forever, never dead-lettered.
        assert_eq!(step(Split, 1, false, 100), Step::Fail);
        // Out of memory on one row: retried, then dead-lettered.
        assert_eq!(step(Split, 1, true, SINGLE_ROW_ATTEMPTS - 1), Step::Fail);
        assert_eq!(step(Split, 1, true, SINGLE_ROW_ATTEMPTS), Step::Refuse);
        // Other sessions and the server's state never split or dead-letter.
        assert_eq!(step(Retriable, 1000, false, 0), Step::Fail);
        assert_eq!(step(Retriable, 1, true, 100), Step::Fail);
        assert_eq!(step(Fatal, 10, false, 0), Step::Fail);
    }

    #[test]
    fn cuts_are_kept_and_refine_the_ranges() {
        let mut plan = Plan {
            cuts: BTreeSet::from([0, 10]),
            strikes: HashMap::new(),
        };
        assert!(plan.is_whole());
        assert_eq!(plan.cut(&(0..10)), (0..5, 5..10));
        assert_eq!(plan.cut(&(5..10)), (5..7, 7..10));
        assert!(!plan.is_whole());
        assert_eq!(plan.ranges(), vec![0..5, 5..7, 7..10]);
    }

    #[test]
    fn statements_stay_under_the_byte_budget() {
        let message = crate::produce::workload(&crate::produce::WorkloadSpec {
            count: 50,
            buckets: 1,
            objects: 50,
            copy_percent: 0,
            delete_percent: 0,
            seed: 7,
        })
        .next()
        .unwrap()
        .payload;
        let change = crate::event::parse(Some(&message))
            .unwrap()
            .changes
            .remove(0);
        let changes = vec![change; 10];
        let row = row_bytes(&changes[0]);
        assert_eq!(Plan::new(&changes).ranges(), vec![0..10]);
        let plan = Plan::with_budget(&changes, row * 3);
        assert_eq!(plan.ranges(), vec![0..3, 3..6, 6..9, 9..10]);
        // A row over the budget still gets a statement of its own.
        let plan = Plan::with_budget(&changes, row / 2);
        assert_eq!(plan.ranges().len(), 10);
    }
}
