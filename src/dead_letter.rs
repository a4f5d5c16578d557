//! Storing dead letters, inside the batch's transaction, so that none is
//! lost: not a second refused record of the same message (each record has
//! its own key, see `sql/0003_dead_letter_records.sql`), and not one the
//! database refuses in turn.
//!
//! A refused dead letter is isolated like a refused object row: the
//! statement runs under a savepoint and the letters are bisected until the
//! refused one stands alone. That one is stored again with its reason
//! escaped to ASCII (text the database encoding cannot hold is the likely
//! cause), then, if still refused, as a minimal row saying why, without key
//! and payload. Only when even that is refused does the batch fail, with a
//! fatal error: the table itself refuses rows and a person must look.

use deadpool_postgres::GenericClient;

use crate::batch::DeadLetter;
use crate::error::{Disposition, SinkError};
use crate::sink::database_reason;
use crate::split::halves;

/// Where this version writes dead letters; users read them through the
/// parent table `dead_letters`. Returns nothing: the affected-row count is
/// what was inserted (a redelivered dead letter is already there).
const DEAD_LETTER_SQL: &str = r#"
INSERT INTO dead_letter_records (topic, partition, "offset", record, message_key, payload, reason)
SELECT * FROM unnest($1::text[], $2::int4[], $3::int8[], $4::int4[], $5::bytea[], $6::bytea[], $7::text[])
ON CONFLICT (topic, partition, "offset", record) DO NOTHING
"#;

/// Dead-letter rows actually inserted, per reason code (the `reason` label
/// of `objmeta_dead_letters_total`), in first-seen order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeadLetterCounts(Vec<(&'static str, u64)>);

impl DeadLetterCounts {
    pub fn add(&mut self, code: &'static str, rows: u64) {
        match self.0.iter_mut().find(|(known, _)| *known == code) {
            Some((_, count)) => *count += rows,
            None => self.0.push((code, rows)),
        }
    }

    #[cfg(test)]
    pub fn total(&self) -> u64 {
        self.0.iter().map(|(_, rows)| rows).sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.0.iter().copied()
    }
}

impl std::ops::AddAssign for DeadLetterCounts {
    fn add_assign(&mut self, other: Self) {
        for (code, rows) in other.0 {
            self.add(code, rows);
        }
    }
}

/// Inserts the dead letters, one statement per reason code, and counts the
/// rows inserted. A letter the database refuses is isolated (see the module
/// documentation); `client` must be in a transaction (savepoints).
pub async fn insert_dead_letters<'a>(
    client: &impl GenericClient,
    topic: &str,
    dead_letters: impl IntoIterator<Item = &'a DeadLetter>,
) -> Result<DeadLetterCounts, SinkError> {
    let mut by_code: Vec<(&'static str, Vec<&DeadLetter>)> = Vec::new();
    for letter in dead_letters {
        match by_code.iter_mut().find(|(code, _)| *code == letter.code) {
            Some((_, letters)) => letters.push(letter),
            None => by_code.push((letter.code, vec![letter])),
        }
    }
    let mut counts = DeadLetterCounts::default();
    for (code, letters) in by_code {
        counts.add(code, insert_isolating(client, topic, &letters).await?);
    }
    Ok(counts)
}

/// Bisects `letters` under savepoints until each refused one stands alone,
/// then stores that one stripped down. Returns the rows inserted.
async fn insert_isolating(
    client: &impl GenericClient,
    topic: &str,
    letters: &[&DeadLetter],
) -> Result<u64, SinkError> {
    let mut inserted = 0;
    let mut ranges = Vec::new();
    ranges.push(0..letters.len());
    while let Some(range) = ranges.pop() {
        match insert_under_savepoint(client, topic, &letters[range.clone()]).await {
            Ok(rows) => inserted += rows,
            Err(e) if e.disposition() == Disposition::Rejected => {
                if range.len() == 1 {
                    inserted += insert_stripped(client, topic, letters[range.start], &e).await?;
                } else {
                    let (first, second) = halves(&range);
                    ranges.push(second);
                    ranges.push(first);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(inserted)
}

/// Stores a refused dead letter in the first form the database takes.
async fn insert_stripped(
    client: &impl GenericClient,
    topic: &str,
    letter: &DeadLetter,
    refusal: &SinkError,
) -> Result<u64, SinkError> {
    let mut refusal = database_reason(refusal);
    let fallbacks = [
        ("reason escaped", escaped(letter, &refusal)),
        ("minimal", minimal(letter, &refusal)),
    ];
    for (form, fallback) in fallbacks {
        match insert_under_savepoint(client, topic, &[&fallback]).await {
            Ok(rows) => {
                tracing::warn!(
                    partition = letter.origin.partition,
                    offset = letter.origin.offset,
                    record = letter.record,
                    form,
                    error = %refusal,
                    "dead letter refused by the database, stored stripped down"
                );
                return Ok(rows);
            }
            Err(e) if e.disposition() == Disposition::Rejected => refusal = database_reason(&e),
            Err(e) => return Err(e),
        }
    }
    Err(SinkError::DeadLetterRefused {
        partition: letter.origin.partition,
        offset: letter.origin.offset,
        record: letter.record,
        reason: refusal,
    })
}

/// One insert statement in its own savepoint, so that a refusal leaves the
/// batch's transaction usable. Plain SQL savepoints: they nest inside the
/// transaction whichever client type runs them.
async fn insert_under_savepoint(
    client: &impl GenericClient,
    topic: &str,
    letters: &[&DeadLetter],
) -> Result<u64, SinkError> {
    client
        .batch_execute("SAVEPOINT dead_letters")
        .await
        .map_err(SinkError::postgres("savepoint"))?;
    match insert(client, topic, letters).await {
        Ok(rows) => {
            client
                .batch_execute("RELEASE SAVEPOINT dead_letters")
                .await
                .map_err(SinkError::postgres("release savepoint"))?;
            Ok(rows)
        }
        Err(e) => {
            client
                .batch_execute("ROLLBACK TO SAVEPOINT dead_letters; RELEASE SAVEPOINT dead_letters")
                .await
                .map_err(SinkError::postgres("rollback to savepoint"))?;
            Err(e)
        }
    }
}

async fn insert(
    client: &impl GenericClient,
    topic: &str,
    letters: &[&DeadLetter],
) -> Result<u64, SinkError> {
    let n = letters.len();
    let (mut partitions, mut offsets, mut records) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut keys, mut payloads, mut reasons) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for letter in letters {
        partitions.push(letter.origin.partition);
        offsets.push(letter.origin.offset);
        // No message holds 2^31 records; saturating keeps this total.
        records.push(i32::try_from(letter.record).unwrap_or(i32::MAX));
        keys.push(letter.message_key.as_deref());
        payloads.push(letter.payload.as_deref());
        // text cannot hold U+0000; the raw bytes are kept in `payload`.
        reasons.push(letter.reason.replace('\0', "\\u0000"));
    }
    let topics = vec![topic; n];
    let statement = client
        .prepare_cached(DEAD_LETTER_SQL)
        .await
        .map_err(SinkError::postgres("prepare dead letters"))?;
    client
        .execute(
            &statement,
            &[
                &topics,
                &partitions,
                &offsets,
                &records,
                &keys,
                &payloads,
                &reasons,
            ],
        )
        .await
        .map_err(SinkError::postgres("insert dead letters"))
}

/// The letter with its reason made ASCII (`\u{…}` escapes) and the refusal
/// appended; key and payload unchanged.
fn escaped(letter: &DeadLetter, refusal: &str) -> DeadLetter {
    DeadLetter {
        reason: format!(
            "{} [stored with the reason escaped: the database refused it: {}]",
            ascii(&letter.reason),
            ascii(refusal)
        ),
        ..letter.clone()
    }
}

/// The last resort: which record, and why it is not stored, in ASCII.
fn minimal(letter: &DeadLetter, refusal: &str) -> DeadLetter {
    DeadLetter {
        message_key: None,
        payload: None,
        reason: format!(
            "dead letter refused by the database, stored without message key, payload and \
             original reason: {}",
            ascii(refusal)
        ),
        ..letter.clone()
    }
}

/// `text` with every non-ASCII or control character as a `\u{…}` escape.
fn ascii(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() && !c.is_ascii_control() {
            out.push(c);
        } else {
            out.extend(c.escape_unicode());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Origin;

    fn letter() -> DeadLetter {
        DeadLetter {
            origin: Origin {
                partition: 3,
                offset: 41,
            },
            record: 2,
            code: "bad_sequencer",
            message_key: Some(b"b/k".to_vec()),
            payload: Some(b"{\"Records\":[]}".to_vec()),
            reason: "record 2: \"12\u{e9}4\u{0}\" is not a sequencer".into(),
        }
    }

    #[test]
    fn the_escaped_form_keeps_the_bytes_and_names_the_refusal() {
        let original = letter();
        let stored = escaped(&original, "character with byte sequence \u{e9} (22P05)");
        assert!(stored.reason.is_ascii(), "{}", stored.reason);
        assert!(
            stored.reason.contains(r#""12\u{e9}4\u{0}""#),
            "{}",
            stored.reason
        );
        assert!(stored.reason.contains("22P05"), "{}", stored.reason);
        assert_eq!(
            (stored.origin, stored.record, stored.code),
            (original.origin, 2, "bad_sequencer")
        );
        assert_eq!(
            (stored.message_key, stored.payload),
            (original.message_key, original.payload)
        );
    }

    #[test]
    fn the_minimal_form_keeps_the_key_of_the_row_and_says_why() {
        let stored = minimal(&letter(), "violates check constraint \"x\" (23514)");
        assert_eq!((stored.origin, stored.record), (letter().origin, 2));
        assert_eq!((stored.message_key, stored.payload), (None, None));
        assert!(stored.reason.is_ascii());
        assert!(
            stored.reason.contains("refused") && stored.reason.contains("23514"),
            "{}",
            stored.reason
        );
        assert!(!stored.reason.contains("sequencer"), "{}", stored.reason);
    }

    #[test]
    fn counts_add_up_per_reason_code() {
        let mut counts = DeadLetterCounts::default();
        counts.add("invalid_json", 2);
        counts.add("database_rejected", 1);
        let mut more = DeadLetterCounts::default();
        more.add("invalid_json", 3);
        more.add("empty", 0);
        counts += more;
        assert_eq!(
            counts.iter().collect::<Vec<_>>(),
            vec![("invalid_json", 5), ("database_rejected", 1), ("empty", 0)]
        );
        assert_eq!(counts.total(), 6);
    }
}
