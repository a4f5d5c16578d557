//! Error types at each boundary, and the one place that decides whether a
//! database failure is worth retrying.
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
    #[error("http server on {addr}: {source}")]
    Http {
        addr: String,
        source: std::io::Error,
    },
}

/// How a failed database operation should be handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// The database may come back (connection lost, server restarting,
    /// serialization failure): retry the same work later.
    Retriable,
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
            | SinkError::Migration { .. }
            | SinkError::DeadLetterRefused { .. } => Disposition::Fatal,
        }
    }

    /// A short, fixed label for the `kind` of a database error metric.
    pub fn kind_label(&self) -> &'static str {
        match self {
            SinkError::Pool { .. } => "pool",
            SinkError::Postgres { source, .. } if source.code().is_none() => "connection",
            SinkError::Postgres { .. } => match self.disposition() {
                Disposition::Retriable => "transient",
                Disposition::Rejected => "rejected",
                Disposition::Fatal => "fatal",
            },
            SinkError::Url(_)
            | SinkError::Migration { .. }
            | SinkError::DeadLetterRefused { .. } => "fatal",
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

fn classify_sqlstate(code: &SqlState) -> Disposition {
    let class = &code.code()[..2];
    match class {
        // connection exception, transaction rollback (serialization failure,
        // deadlock), insufficient resources, operator intervention (admin or
        // crash shutdown, cannot connect now), system error (I/O).
        "08" | "40" | "53" | "57" | "58" => Disposition::Retriable,
        // lock not available
        "55" if *code == SqlState::LOCK_NOT_AVAILABLE => Disposition::Retriable,
        // data exception, integrity violation, program limit exceeded (e.g.
        // an index row too large): the rows themselves are the problem.
        "22" | "23" | "54" => Disposition::Rejected,
        _ => Disposition::Fatal,
    }
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
        ] {
            assert_eq!(classify_sqlstate(&code), Disposition::Retriable, "{code:?}");
        }
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
