//! The database's ceiling: the workload's rows upserted straight into objmeta's table (created
//! by objmeta's migrations, indexes included) from one connection, one transaction per batch,
//! in several statement shapes. Rows are generated and parsed outside the timed sections; the
//! timed part is building the parameters, the statement(s) and the commit.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};
use tokio_postgres::Client;

use objmeta::batch::Origin;
use objmeta::event::Change;
use objmeta::produce::{workload, Workload, WorkloadSpec};
use objmeta::sink::Rows;

use crate::common::{self, Columns};
use objmeta::sink::UPSERT_SQL;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Prefix of the schemas this creates (each shape gets a fresh one, dropped afterwards).
    #[arg(long)]
    schema_prefix: String,
    /// Rows per shape while comparing shapes.
    #[arg(long, default_value_t = 200_000)]
    explore_rows: u64,
    /// Rows for the best shape's final measurement (use the catch-up size); 0 skips it.
    #[arg(long, default_value_t = 1_000_000)]
    full_rows: u64,
    #[arg(long, default_value_t = 2)]
    buckets: u32,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Compare only these shapes (names as printed), comma-separated.
    #[arg(long, value_delimiter = ',')]
    shapes: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Statement {
    /// objmeta's statement: unnest arrays, the ordering rules, RETURNING counted in a CTE.
    Objmeta,
    /// A plain newest-sequencer upsert: no ordering functions, no RETURNING.
    Plain,
}

#[derive(Clone, Copy, Debug)]
struct Shape {
    statement: Statement,
    batch: usize,
}

impl Shape {
    fn name(&self) -> String {
        let statement = match self.statement {
            Statement::Objmeta => "objmeta-unnest",
            Statement::Plain => "plain-unnest",
        };
        format!("{statement}-{}", self.batch)
    }
}

const SHAPES: [Shape; 5] = [
    Shape {
        statement: Statement::Objmeta,
        batch: 5000,
    },
    Shape {
        statement: Statement::Objmeta,
        batch: 1000,
    },
    Shape {
        statement: Statement::Objmeta,
        batch: 20000,
    },
    Shape {
        statement: Statement::Plain,
        batch: 5000,
    },
    Shape {
        statement: Statement::Plain,
        batch: 20000,
    },
];

const PLAIN_UPSERT_SQL: &str = r#"
INSERT INTO object_metadata AS t (
    bucket, key, version_id, size, etag, content_type, user_metadata,
    system_metadata, event_name, event_time, sequencer, deleted_at, updated_at)
SELECT u.bucket, u.key, u.version_id, u.size, u.etag, u.content_type, u.user_metadata::jsonb,
       u.system_metadata::jsonb, u.event_name, u.event_time, u.sequencer, u.deleted_at, now()
FROM unnest(
    $1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::text[],
    $7::text[], $8::text[], $9::text[], $10::timestamptz[], $11::int8[],
    $12::timestamptz[]) AS u(bucket, key, version_id, size, etag, content_type, user_metadata,
                             system_metadata, event_name, event_time, sequencer, deleted_at)
ON CONFLICT (bucket, key) DO UPDATE SET
    version_id = excluded.version_id, size = excluded.size, etag = excluded.etag,
    content_type = excluded.content_type, user_metadata = excluded.user_metadata,
    system_metadata = excluded.system_metadata, event_name = excluded.event_name,
    event_time = excluded.event_time, sequencer = excluded.sequencer,
    deleted_at = excluded.deleted_at, updated_at = excluded.updated_at
WHERE excluded.sequencer > t.sequencer
   OR (excluded.sequencer = t.sequencer
       AND (excluded.deleted_at IS NOT NULL OR t.deleted_at IS NULL))
"#;

pub async fn run(args: Args) -> anyhow::Result<Value> {
    let shapes: Vec<Shape> = SHAPES
        .into_iter()
        .filter(|s| args.shapes.is_empty() || args.shapes.contains(&s.name()))
        .collect();
    let mut results = Vec::new();
    for shape in &shapes {
        let result = measure(&args, *shape, args.explore_rows).await?;
        eprintln!("bench: ceiling {result}");
        results.push(result);
    }
    let rate = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    let best = results
        .iter()
        .zip(&shapes)
        .max_by(|a, b| rate(a.0, "insert_rows_per_s").total_cmp(&rate(b.0, "insert_rows_per_s")))
        .map(|(_, shape)| *shape)
        .context("no statement shape selected")?;
    let full = match args.full_rows {
        0 => Value::Null,
        rows => {
            let result = measure(&args, best, rows).await?;
            eprintln!("bench: ceiling (full size) {result}");
            result
        }
    };
    Ok(json!({"phase": "ceiling", "shapes": results, "best": best.name(), "full": full}))
}

/// Fresh inserts of `rows` distinct objects, then the same objects updated (newer sequencer).
async fn measure(args: &Args, shape: Shape, rows: u64) -> anyhow::Result<Value> {
    let schema = format!("{}_{}", args.schema_prefix, shape.name().replace('-', "_"));
    common::migrate(&args.database_url, &schema).await?;
    let mut client = common::connect(&args.database_url, &schema).await?;
    let spec = WorkloadSpec {
        count: rows,
        buckets: args.buckets,
        objects: rows,
        copy_percent: 0,
        delete_percent: 0,
        seed: args.seed,
    };
    client.batch_execute("CHECKPOINT").await?;
    let insert = pass(&mut client, shape, workload(&spec), 0).await?;
    client.batch_execute("CHECKPOINT").await?;
    let update = pass(&mut client, shape, workload(&spec), 1).await?;
    common::drop_schema(&client, &schema).await?;
    let per_s = |d: Duration| rows as f64 / d.as_secs_f64();
    Ok(json!({
        "shape": shape.name(),
        "rows": rows,
        "insert_seconds": insert.as_secs_f64(),
        "update_seconds": update.as_secs_f64(),
        "insert_rows_per_s": per_s(insert),
        "update_rows_per_s": per_s(update),
    }))
}

/// Writes the whole workload in batches; returns the time spent writing (not generating).
async fn pass(
    client: &mut Client,
    shape: Shape,
    mut messages: Workload,
    sequencer_bump: i64,
) -> anyhow::Result<Duration> {
    let prepared = Prepared {
        plain: client.prepare(PLAIN_UPSERT_SQL).await?,
        objmeta: client.prepare(UPSERT_SQL).await?,
    };
    let mut spent = Duration::ZERO;
    let mut batch: Vec<Change> = Vec::with_capacity(shape.batch);
    loop {
        batch.clear();
        for message in messages.by_ref().take(shape.batch) {
            let parsed = objmeta::event::parse(Some(&message.payload))
                .map_err(|e| anyhow::anyhow!("generated message does not parse: {e}"))?;
            batch.extend(parsed.changes.into_iter().map(|mut change| {
                change.sequencer += sequencer_bump;
                change
            }));
        }
        if batch.is_empty() {
            return Ok(spent);
        }
        let started = Instant::now();
        write(client, shape.statement, &prepared, &batch).await?;
        spent += started.elapsed();
    }
}

/// The statements of both shapes: the plain upsert, and objmeta's (the versions, then the rows
/// derived from them).
struct Prepared {
    plain: tokio_postgres::Statement,
    objmeta: tokio_postgres::Statement,
}

async fn write(
    client: &mut Client,
    statement: Statement,
    prepared: &Prepared,
    changes: &[Change],
) -> anyhow::Result<()> {
    // Every change of the workload is an object's only one in its batch, at
    // its own position; none deletes a single version.
    let origins: Vec<Origin> = (0..changes.len())
        .map(|i| Origin {
            partition: 0,
            offset: i as i64,
        })
        .collect();
    let deletes = vec![None; changes.len()];
    let rows = Rows {
        changes,
        origins: &origins,
        deletes: &deletes,
    };
    let tx = client.transaction().await?;
    match statement {
        Statement::Objmeta => {
            let columns = Columns::new(rows);
            tx.query_one(&prepared.objmeta, &columns.params()).await?;
        }
        Statement::Plain => {
            let columns = Columns::new(rows);
            tx.execute(&prepared.plain, &columns.params()[..12]).await?;
        }
    }
    tx.commit().await?;
    Ok(())
}
