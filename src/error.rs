//! Error types at each boundary, and the one place that decides how a
//! database failure is handled: retried as it is, written in smaller parts,
//! dead-lettered, or fatal.
//!
//! The rule, by what caused the failure:
//! - **the server's state or another session** (connection lost, server
//!   restarting, serialization failure, deadlock, `lock_timeout` while another
//!   session holds a lock, disk full, too many connections): [`Disposition::Retriable`].
//!   The same batch is retried with backoff for as long as it takes; it is
//!   never split and nothing is dead-lettered, because the rows are fine.
//! - **maybe the batch's size** (`statement_timeout`, out of memory, a protocol
//!   message the server refuses): [`Disposition::Split`]. The batch is written
//!   again in halves. A single row that still fails is retried with backoff;
//!   after [`SINGLE_ROW_ATTEMPTS`] failures it is dead-lettered only when the
//!   error is one the row's content causes ([`SinkError::content_caused`]:
//!   out of memory, protocol limits). A `statement_timeout` on one row is not:
//!   one row is cheap, so a slow or stalled server is the likelier cause, and
//!   that row is retried like a connection loss, never dead-lettered.
//! - **a value the database refuses** (data exception, integrity violation,
//!   program limit such as an index row too large): [`Disposition::Rejected`],
//!   deterministic, so the row is isolated and dead-lettered at once.
//! - **configuration or schema**: [`Disposition::Fatal`].
//!
//! Per-message problems (a payload that is not a MinIO event) live in
//! `event::ParseError` and end as dead-letter rows; the types here are about
//! whole batches and the service itself.

use deadpool_postgres::PoolError;
use tokio_postgres::error::SqlState;

/// Why `run()` or `migrate()` stopped. Every variant is fatal: retriable
/// conditions are handled (retried) below this level and never surface here.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("database: {0}")]
    Database(#[from] SinkError),
    /// Shutdown gave up on writes still running at `SHUTDOWN_TIMEOUT`: their
    /// offsets were not committed, so a restart reads those messages again.
    #[error("shutdown timeout: abandoned unwritten batches of {messages} messages (their offsets are not committed)")]
    Abandoned { messages: u64 },
    #[error("http server on {addr}: {source}")]
    Http {
        addr: String,
        source: std::io::Error,
    },
}

/// How a failed database operation should be handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// The database may come back, or another session lets go (connection
    /// lost, server restarting, serialization failure, a lock held
    /// elsewhere): retry the same work later, unchanged.
    Retriable,
    /// The work may be too big for one statement (statement timeout, out of
    /// memory, a protocol message over the server's limit): retry it in
    /// smaller parts; see the module documentation for single rows.
    Split,
    /// The database refused the data itself (a value it cannot store, a
    /// limit exceeded): retrying the same rows fails forever, so isolate the
    /// offending row and dead-letter it.
    Rejected,
    /// Configuration or schema problem (bad password, missing table, no
    /// permission): retrying cannot help, a human must fix it.
    Fatal,
}

/// A failure of the PostgreSQL writer.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{context}: {}", describe_postgres(.source))]
    Postgres {
        context: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{context}: connection pool: {message}")]
    Pool {
        context: &'static str,
        message: String,
        disposition: Disposition,
    },
    #[error("invalid DATABASE_URL: {0}")]
    Url(String),
    /// The database answered in a way this version does not understand (a
    /// schema changed by a newer objmeta, or by hand).
    #[error("unexpected schema: {0}")]
    Schema(String),
    /// Work that another process is doing already (a listing of the same
    /// bucket and prefix).
    #[error("{0}")]
    Busy(String),
    /// Shutdown abandoned the write while it ran (nothing of it committed).
    #[error("write abandoned at shutdown")]
    Abandoned,
    #[error("migration {name}: {source}")]
    Migration {
        name: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    /// Even a dead letter stripped of its key and payload was refused: the
    /// table itself refuses rows (a constraint or trigger added to it).
    #[error("dead letter of partition {partition} offset {offset} record {record} refused even stripped down: {reason}")]
    DeadLetterRefused {
        partition: i32,
        offset: i64,
        record: u32,
        reason: String,
    },
}

impl SinkError {
    /// Wraps a driver error with what was being done when it happened.
    pub fn postgres(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Self {
        move |source| SinkError::Postgres { context, source }
    }

    /// Wraps a pool error; a pool error carries its backend error's class.
    pub fn pool(context: &'static str) -> impl FnOnce(PoolError) -> Self {
        move |error| {
            let disposition = match &error {
                PoolError::Backend(e) => classify_postgres(e),
                PoolError::Timeout(_) => Disposition::Retriable,
                PoolError::PostCreateHook(_) => Disposition::Retriable,
                PoolError::Closed | PoolError::NoRuntimeSpecified => Disposition::Fatal,
            };
            let message = match &error {
                PoolError::Backend(e) => describe_postgres(e),
                other => other.to_string(),
            };
            SinkError::Pool {
                context,
                message,
                disposition,
            }
        }
    }

    pub fn disposition(&self) -> Disposition {
        match self {
            SinkError::Postgres { source, .. } => classify_postgres(source),
            SinkError::Pool { disposition, .. } => *disposition,
            SinkError::Url(_)
            | SinkError::Schema(_)
            | SinkError::Busy(_)
            | SinkError::Migration { .. }
            | SinkError::DeadLetterRefused { .. }
            | SinkError::Abandoned => Disposition::Fatal,
        }
    }

    /// Whether the writer retries the same batch (possibly in parts).
    pub fn is_retried(&self) -> bool {
        matches!(
            self.disposition(),
            Disposition::Retriable | Disposition::Split
        )
    }

    /// For a [`Disposition::Split`] error of a single row: whether the row's
    /// content causes it, so that the row is dead-lettered once it failed
    /// [`SINGLE_ROW_ATTEMPTS`] times, instead of being retried forever.
    pub fn content_caused(&self) -> bool {
        match self {
            SinkError::Postgres { source, .. } => {
                source.code().is_some_and(sqlstate_content_caused)
            }
            _ => false,
        }
    }

    /// A short, fixed label for the `kind` of a database error metric.
    pub fn kind_label(&self) -> &'static str {
        match self {
            SinkError::Pool { .. } => "pool",
            SinkError::Postgres { source, .. } if source.code().is_none() => "connection",
            SinkError::Postgres { .. } => match self.disposition() {
                Disposition::Retriable => "transient",
                Disposition::Split => "too_large",
                Disposition::Rejected => "rejected",
                Disposition::Fatal => "fatal",
            },
            SinkError::Url(_)
            | SinkError::Schema(_)
            | SinkError::Busy(_)
            | SinkError::Migration { .. }
            | SinkError::DeadLetterRefused { .. } => "fatal",
            SinkError::Abandoned => "abandoned",
        }
    }
}

/// The driver's own `Display` says only "db error" for server errors: spell
/// out the server's message and SQLSTATE, or the underlying I/O cause.
pub fn describe_postgres(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    match std::error::Error::source(error) {
        Some(cause) => format!("{error}: {cause}"),
        None => error.to_string(),
    }
}

/// Classifies a driver error by its SQLSTATE class.
///
/// No SQLSTATE means the failure happened below SQL (socket closed, server
/// gone, I/O error): the database may come back, so it is retriable.
pub fn classify_postgres(error: &tokio_postgres::Error) -> Disposition {
    match error.code() {
        None => Disposition::Retriable,
        Some(code) => classify_sqlstate(code),
    }
}

/// How many times a single row that fails with a content-caused
/// [`Disposition::Split`] error is tried before it is dead-lettered.
pub const SINGLE_ROW_ATTEMPTS: u32 = 3;

fn classify_sqlstate(code: &SqlState) -> Disposition {
    let class = &code.code()[..2];
    match class {
        // statement_timeout (or a cancel request), out of memory, a protocol
        // message the server refused (e.g. a Bind over its size limit): the
        // statement may be too big. Checked before their classes below.
        _ if *code == SqlState::QUERY_CANCELED => Disposition::Split,
        _ if sqlstate_content_caused(code) => Disposition::Split,
        // connection exception, transaction rollback (serialization failure,
        // deadlock), insufficient resources (disk full, too many
        // connections), operator intervention (admin or crash shutdown,
        // cannot connect now), system error (I/O).
        "08" | "40" | "53" | "57" | "58" => Disposition::Retriable,
        // lock not available: lock_timeout, always another session's lock.
        "55" if *code == SqlState::LOCK_NOT_AVAILABLE => Disposition::Retriable,
        // data exception, integrity violation, program limit exceeded (e.g.
        // an index row too large): the rows themselves are the problem.
        "22" | "23" | "54" => Disposition::Rejected,
        _ => Disposition::Fatal,
    }
}

/// Errors a single row's content can cause on every attempt.
fn sqlstate_content_caused(code: &SqlState) -> bool {
    *code == SqlState::OUT_OF_MEMORY || *code == SqlState::PROTOCOL_VIOLATION
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_and_rollback_classes_are_retriable() {
        for code in [
            SqlState::CONNECTION_FAILURE,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::LOCK_NOT_AVAILABLE,
            SqlState::DISK_FULL,
            SqlState::CRASH_SHUTDOWN,
            SqlState::IO_ERROR,
        ] {
            assert_eq!(classify_sqlstate(&code), Disposition::Retriable, "{code:?}");
            assert!(!sqlstate_content_caused(&code), "{code:?}");
        }
    }

    #[test]
    fn timeouts_and_memory_split_the_batch_but_only_memory_and_protocol_dead_letter() {
        for code in [
            SqlState::QUERY_CANCELED,
            SqlState::OUT_OF_MEMORY,
            SqlState::PROTOCOL_VIOLATION,
        ] {
            assert_eq!(classify_sqlstate(&code), Disposition::Split, "{code:?}");
        }
        // A statement timeout on one row: retried, never dead-lettered.
        assert!(!sqlstate_content_caused(&SqlState::QUERY_CANCELED));
        assert!(sqlstate_content_caused(&SqlState::OUT_OF_MEMORY));
        assert!(sqlstate_content_caused(&SqlState::PROTOCOL_VIOLATION));
        // A lock timeout is always another session: never split.
        assert_eq!(
            classify_sqlstate(&SqlState::LOCK_NOT_AVAILABLE),
            Disposition::Retriable
        );
    }

    #[test]
    fn connection_loss_and_pool_timeouts_are_retried_and_never_content_caused() {
        let lost = SinkError::Pool {
            context: "getting a connection",
            message: "timed out".into(),
            disposition: Disposition::Retriable,
        };
        assert!(lost.is_retried());
        assert!(!lost.content_caused());
        assert!(!SinkError::Abandoned.is_retried());
    }

    #[test]
    fn bad_values_are_rejected_rows() {
        for code in [
            SqlState::UNTRANSLATABLE_CHARACTER,
            SqlState::CHARACTER_NOT_IN_REPERTOIRE,
            SqlState::PROGRAM_LIMIT_EXCEEDED,
            SqlState::NOT_NULL_VIOLATION,
            SqlState::INVALID_TEXT_REPRESENTATION,
        ] {
            assert_eq!(classify_sqlstate(&code), Disposition::Rejected, "{code:?}");
        }
    }

    #[test]
    fn schema_and_auth_problems_are_fatal() {
        for code in [
            SqlState::UNDEFINED_TABLE,
            SqlState::INSUFFICIENT_PRIVILEGE,
            SqlState::INVALID_PASSWORD,
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            SqlState::OBJECT_IN_USE,
        ] {
            assert_eq!(classify_sqlstate(&code), Disposition::Fatal, "{code:?}");
        }
    }
}
