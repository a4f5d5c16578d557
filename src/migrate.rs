//! Schema migrations: the numbered files of `sql/`, embedded in the binary
//! and applied in order under an advisory lock, so that several replicas
//! starting at once apply each migration exactly once.

use deadpool_postgres::Pool;

use crate::config::Schema;
use crate::error::SinkError;

/// A migration: its file name (the version is its numeric prefix) and SQL.
struct Migration {
    version: i32,
    name: &'static str,
    sql: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "0001_object_metadata.sql",
        sql: include_str!("../sql/0001_object_metadata.sql"),
    },
    Migration {
        version: 2,
        name: "0002_order_by_position.sql",
        sql: include_str!("../sql/0002_order_by_position.sql"),
    },
    Migration {
        version: 3,
        name: "0003_dead_letter_records.sql",
        sql: include_str!("../sql/0003_dead_letter_records.sql"),
    },
    Migration {
        version: 4,
        name: "0004_reads_of_the_bucket.sql",
        sql: include_str!("../sql/0004_reads_of_the_bucket.sql"),
    },
    Migration {
        version: 5,
        name: "0005_object_versions.sql",
        sql: include_str!("../sql/0005_object_versions.sql"),
    },
];

/// Arbitrary but fixed key of the advisory lock that serialises migrations.
const MIGRATION_LOCK_KEY: i64 = 0x6f626a6d657461; // "objmeta"

/// Applies every migration the schema does not have yet; returns how many.
///
/// The pool's connections must have `schema` as their `search_path` (see
/// `sink::connect`): the migrations name their tables unqualified.
pub async fn apply(pool: &Pool, schema: &Schema) -> Result<usize, SinkError> {
    let mut client = pool
        .get()
        .await
        .map_err(SinkError::pool("connecting for migrations"))?;
    let tx = client
        .transaction()
        .await
        .map_err(SinkError::postgres("begin migrations"))?;
    // Transaction-scoped: released by the commit, or by the server if this
    // process dies half-way.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .map_err(SinkError::postgres("taking the migration lock"))?;
    // DDL cannot take the name as a bound parameter; a `Schema` is a
    // checked plain identifier, which needs no quoting.
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS objmeta_migrations (
             version    integer PRIMARY KEY,
             name       text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .await
    .map_err(SinkError::postgres("creating the migrations table"))?;
    let mut applied = 0;
    for migration in MIGRATIONS {
        let done = tx
            .query_opt(
                "SELECT 1 FROM objmeta_migrations WHERE version = $1",
                &[&migration.version],
            )
            .await
            .map_err(SinkError::postgres("reading applied migrations"))?
            .is_some();
        if done {
            continue;
        }
        tx.batch_execute(migration.sql)
            .await
            .map_err(|source| SinkError::Migration {
                name: migration.name,
                source,
            })?;
        tx.execute(
            "INSERT INTO objmeta_migrations (version, name) VALUES ($1, $2)",
            &[&migration.version, &migration.name],
        )
        .await
        .map_err(SinkError::postgres("recording a migration"))?;
        tracing::info!(
            migration = migration.name,
            schema = schema.as_str(),
            "applied migration"
        );
        applied += 1;
    }
    tx.commit()
        .await
        .map_err(SinkError::postgres("commit migrations"))?;
    Ok(applied)
}
