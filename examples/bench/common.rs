//! Shared by the subcommands: database connections and schemas, objmeta's upsert statement
//! and its column arrays, /proc readings.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::message::ToBytes;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use tokio_postgres::{Client, NoTls};

use objmeta::config::DatabaseConfig;

/// The broker and topic every Kafka-side subcommand works on.
#[derive(clap::Args, Clone)]
pub struct KafkaArgs {
    #[arg(long, env = "KAFKA_BROKERS")]
    pub brokers: String,
    #[arg(long)]
    pub topic: String,
}

/// Creates `topic` with `partitions` partitions and the given topic settings (it must not exist).
pub async fn create_topic(
    brokers: &str,
    topic: &str,
    partitions: i32,
    settings: &[(&str, &str)],
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("creating the admin client")?;
    let new_topic = settings.iter().fold(
        NewTopic::new(topic, partitions, TopicReplication::Fixed(-1)),
        |new_topic, (key, value)| new_topic.set(key, value),
    );
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    for result in admin.create_topics([&new_topic], &options).await? {
        result.map_err(|(name, e)| anyhow::anyhow!("creating topic {name}: {e}"))?;
    }
    Ok(())
}

/// Publishes with at most `in_flight` messages waiting for their delivery report, so that
/// the producer's memory stays bounded; a refused or dropped message fails the run.
pub struct Publisher {
    producer: FutureProducer,
    pending: VecDeque<DeliveryFuture>,
    in_flight: usize,
}

impl Publisher {
    pub fn new(producer: FutureProducer, in_flight: usize) -> Self {
        Publisher {
            producer,
            pending: VecDeque::with_capacity(in_flight + 1),
            in_flight: in_flight.max(1),
        }
    }

    /// Queues `record`, first waiting for the oldest delivery when `in_flight` are pending.
    pub async fn send<K, P>(&mut self, record: FutureRecord<'_, K, P>) -> anyhow::Result<()>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let delivery = self
            .producer
            .send_result(record)
            .map_err(|(e, _)| e)
            .context("queueing a message")?;
        self.pending.push_back(delivery);
        if self.pending.len() >= self.in_flight {
            settle(self.pending.pop_front()).await?;
        }
        Ok(())
    }

    /// Waits for every pending delivery.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        while let Some(delivery) = self.pending.pop_front() {
            settle(Some(delivery)).await?;
        }
        Ok(())
    }
}

/// Waits for one message's delivery report (none to wait for is fine).
async fn settle(delivery: Option<DeliveryFuture>) -> anyhow::Result<()> {
    let Some(delivery) = delivery else {
        return Ok(());
    };
    match delivery.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(e).context("the broker refused a message"),
        Err(_) => bail!("the producer dropped a message before its delivery report"),
    }
}

/// Schema names are built by scripts/bench; anything else is refused before it reaches SQL
/// (identifiers cannot be bound parameters).
pub fn check_identifier(name: &str) -> anyhow::Result<&str> {
    let ok = !name.is_empty()
        && name.len() < 60
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !ok {
        bail!("schema name {name:?} must be 1-59 characters of [a-z0-9_]");
    }
    Ok(name)
}

/// A connection whose search_path is `schema`. It says what objmeta's own connections say
/// (`sink::DERIVES`), so that what it writes to object_metadata is not mirrored into the
/// version tables (sql/0005's trigger is for replicas of the previous schema).
pub async fn connect(url: &str, schema: &str) -> anyhow::Result<Client> {
    let mut config: tokio_postgres::Config = url.parse().context("parsing DATABASE_URL")?;
    config.options(format!(
        "-c search_path={} {}",
        check_identifier(schema)?,
        objmeta::sink::DERIVES
    ));
    config.application_name("objmeta-bench");
    config.connect_timeout(Duration::from_secs(10));
    let (client, connection) = config
        .connect(NoTls)
        .await
        .context("connecting to PostgreSQL")?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("bench: database connection ended: {e}");
        }
    });
    Ok(client)
}

/// Creates `schema` with objmeta's tables and indexes, through objmeta's own migrations.
pub async fn migrate(url: &str, schema: &str) -> anyhow::Result<()> {
    let config = DatabaseConfig {
        database_url: url.to_string(),
        database_schema: objmeta::config::Schema::parse(schema).map_err(anyhow::Error::msg)?,
        database_pool_size: 1,
        database_connect_timeout: Duration::from_secs(10),
        database_statement_timeout: Duration::ZERO,
        database_lock_timeout: Duration::ZERO,
        database_keepalives_idle: Duration::from_secs(10),
        database_keepalives_interval: Duration::from_secs(5),
        database_keepalives_retries: 3,
    };
    objmeta::migrate(&config)
        .await
        .with_context(|| format!("migrating schema {schema}"))?;
    Ok(())
}

pub async fn drop_schema(client: &Client, schema: &str) -> anyhow::Result<()> {
    let sql = format!(
        "DROP SCHEMA IF EXISTS {} CASCADE",
        check_identifier(schema)?
    );
    client.batch_execute(&sql).await?;
    Ok(())
}

#[derive(clap::Args)]
pub struct CleanupArgs {
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    #[arg(long, env = "KAFKA_BROKERS")]
    brokers: String,
    /// Schemas and topics starting with this prefix are removed.
    #[arg(long)]
    prefix: String,
}

/// Drops the run's schemas and deletes its topics; reports what it removed on stderr.
pub async fn cleanup(args: CleanupArgs) -> anyhow::Result<()> {
    let prefix = check_identifier(&args.prefix)?;
    let client = connect(&args.database_url, "public").await?;
    let rows = client
        .query(
            "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, $1)",
            &[&prefix],
        )
        .await?;
    for row in rows {
        let schema: String = row.get(0);
        drop_schema(&client, &schema).await?;
        eprintln!("bench: dropped schema {schema}");
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .create()?;
    let metadata = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))?;
    let topics: Vec<&str> = metadata
        .topics()
        .iter()
        .map(|t| t.name())
        .filter(|name| name.starts_with(prefix))
        .collect();
    if !topics.is_empty() {
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        for result in admin.delete_topics(&topics, &options).await? {
            match result {
                Ok(topic) => eprintln!("bench: deleted topic {topic}"),
                Err((topic, e)) => eprintln!("bench: could not delete topic {topic}: {e}"),
            }
        }
    }
    Ok(())
}

/// Column arrays for objmeta's upsert, exactly as objmeta builds them.
pub use objmeta::sink::UpsertColumns as Columns;

/// CPU time (user + system, children that were waited for included) of a process, seconds.
pub fn cpu_seconds(pid: u32, with_children: bool) -> Option<f64> {
    let [user, system, children_user, children_system] = cpu_times(pid)?;
    let own = user + system;
    Some(match with_children {
        true => own + children_user + children_system,
        false => own,
    })
}

/// CPU time of this process's children that were waited for, seconds.
pub fn waited_children_cpu_seconds() -> Option<f64> {
    let [_, _, user, system] = cpu_times(std::process::id())?;
    Some(user + system)
}

/// utime, stime, cutime and cstime of a process (fields 14-17 of stat(5)), seconds.
fn cpu_times(pid: u32) -> Option<[f64; 4]> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14-17 of stat(5) are 11-14 here (state is 0).
    let tick = |i: usize| Some(fields.get(i)?.parse::<f64>().ok()? / USER_HZ);
    Some([tick(11)?, tick(12)?, tick(13)?, tick(14)?])
}

/// /proc reports CPU times in USER_HZ ticks, which Linux fixes at 100 for user space.
const USER_HZ: f64 = 100.0;

/// A `Vm*` line of /proc/<pid>/status, in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU seconds of a process tree rooted at `root` (live descendants plus reaped children).
pub fn tree_cpu_seconds(root: u32) -> Option<f64> {
    let mut total = cpu_seconds(root, true)?;
    let entries = std::fs::read_dir("/proc").ok()?;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != root && parent_of(pid) == Some(root) {
            total += cpu_seconds(pid, false).unwrap_or(0.0);
        }
    }
    Some(total)
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time of the whole machine so far (all CPUs), from /proc/stat's first line, jiffies.
#[derive(Clone, Copy)]
struct Jiffies {
    /// Everything but idle and I/O wait.
    busy: u64,
    total: u64,
    /// Charged to processes: user, nice and system.
    tasks: u64,
    /// Hardware and soft interrupts (network processing), charged to no process.
    interrupts: u64,
}

fn machine_jiffies() -> Option<Jiffies> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let field = |i: usize| values.get(i).copied();
    let total: u64 = values.iter().take(8).sum();
    Some(Jiffies {
        busy: total - field(3)? - field(4)?,
        total,
        tasks: field(0)? + field(1)? + field(2)?,
        interrupts: field(5)? + field(6)?,
    })
}

/// CPU used so far by PostgreSQL's process tree, by one other service (the Kafka broker, the
/// S3 server) and by the whole machine; two samples give the cores each used in between.
pub struct Load {
    pg: Option<f64>,
    service: Option<f64>,
    machine: Option<Jiffies>,
}

/// What two [`Load`] samples say: cores used by PostgreSQL and the other service, the share
/// of the machine's CPU in use (all CPUs together), and what processes and interrupts took.
pub struct LoadFigures {
    pub pg_cores: Option<f64>,
    pub service_cores: Option<f64>,
    pub machine_busy_percent: Option<f64>,
    /// Cores charged to processes (all of them).
    pub task_cores: Option<f64>,
    /// Cores spent in interrupts, mostly the kernel's network processing.
    pub interrupt_cores: Option<f64>,
}

impl Load {
    /// `pg_pid` is the postmaster (its whole tree is counted); `service_pid` one process.
    pub fn sample(pg_pid: Option<u32>, service_pid: Option<u32>) -> Load {
        Load {
            pg: pg_pid.and_then(tree_cpu_seconds),
            service: service_pid.and_then(|p| cpu_seconds(p, true)),
            machine: machine_jiffies(),
        }
    }

    /// From this sample to `later`, `seconds` apart.
    pub fn until(&self, later: &Load, seconds: f64) -> LoadFigures {
        let cores = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| (b - a) / seconds);
        let machine = self.machine.zip(later.machine);
        let jiffy_cores = |field: fn(&Jiffies) -> u64| {
            machine.map(|(a, b)| (field(&b) - field(&a)) as f64 / USER_HZ / seconds)
        };
        LoadFigures {
            pg_cores: cores(self.pg, later.pg),
            service_cores: cores(self.service, later.service),
            machine_busy_percent: machine.map(|(a, b)| {
                let total = (b.total - a.total).max(1) as f64;
                100.0 * (b.busy - a.busy) as f64 / total
            }),
            task_cores: jiffy_cores(|j| j.tasks),
            interrupt_cores: jiffy_cores(|j| j.interrupts),
        }
    }
}

/// Cores the other processes of the machine used (the broker, the bench itself, anything
/// else that ran): what processes were charged minus the measured process (`own_cores`),
/// PostgreSQL and the service.
pub fn other_cores(load: &LoadFigures, own_cores: f64) -> Option<f64> {
    let measured = own_cores + load.pg_cores.unwrap_or(0.0) + load.service_cores.unwrap_or(0.0);
    load.task_cores.map(|tasks| (tasks - measured).max(0.0))
}

/// Calls `report` every `every` until `work` ends (also while it makes no progress), so that
/// a long step is never silent; returns what `work` returned.
pub async fn reporting<T>(
    work: impl std::future::Future<Output = T>,
    every: Duration,
    mut report: impl FnMut(),
) -> T {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(work);
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = ticks.tick() => report(),
        }
    }
}

/// Percentile of sorted values (nearest rank).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
