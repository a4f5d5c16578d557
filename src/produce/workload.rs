//! The generated workload: a deterministic mix of puts, copies with new
//! metadata and deletes over a fixed set of objects, rendered exactly as
//! MinIO's Kafka target sends it.

use std::borrow::Cow;
use std::collections::BTreeMap;

use time::OffsetDateTime;

use super::ProduceError;
use crate::event::{
    query_escape, Bucket, Envelope, Identity, Object, Record, Source, UserMetadata, S3,
};

/// Sizes and seed of a generated workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadSpec {
    pub count: u64,
    pub buckets: u32,
    pub objects: u64,
    pub copy_percent: u8,
    pub delete_percent: u8,
    pub seed: u64,
}

impl WorkloadSpec {
    pub fn validate(&self) -> Result<(), ProduceError> {
        if u16::from(self.copy_percent) + u16::from(self.delete_percent) > 100 {
            return Err(ProduceError::Percentages {
                copy: self.copy_percent,
                delete: self.delete_percent,
            });
        }
        Ok(())
    }
}

/// One Kafka message as MinIO would send it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducedMessage {
    /// `<bucket>/<raw object name>`.
    pub key: String,
    pub payload: Vec<u8>,
}

/// Deterministic workload, shared with tests to build an oracle: the same spec and seed give
/// the same messages (the clock is fixed, the PRNG is our own so no crate upgrade changes it).
/// `run` publishes this workload with wall-clock times (`Workload::with_wall_clock`).
///
/// Objects `0..objects` are first put in order; after that each event picks a random object
/// and is a Copy (new metadata), a Delete or a Put by the spec's percentages, except that an
/// absent (deleted) object is always put. Every event moves the clock forward, so sequencers
/// strictly increase, per object and overall. Zero buckets count as one; zero objects give no
/// events.
pub fn workload(spec: &WorkloadSpec) -> Workload {
    Workload::new(spec)
}

/// The original guide's example: a Put of `test-bucket/test-file_apiid.txt` with metadata
/// `api`, `id=1843`, then an `s3:ObjectCreated:Copy` onto itself with `id=1844`.
pub fn guide_scenario() -> Vec<ProducedMessage> {
    Workload::guide().collect()
}

/// An iterator of messages. Encoding cannot fail for these types; should it anyway, the
/// iteration stops and `finish` reports why, rather than panicking mid-run.
pub struct Workload {
    plan: Plan,
    failure: Option<ProduceError>,
}

enum Plan {
    Generated(Generator),
    Fixed(std::vec::IntoIter<Planned>),
}

impl Workload {
    pub fn new(spec: &WorkloadSpec) -> Self {
        Workload {
            plan: Plan::Generated(Generator::new(spec.clone())),
            failure: None,
        }
    }

    pub fn guide() -> Self {
        Workload {
            plan: Plan::Fixed(guide_plan().into_iter()),
            failure: None,
        }
    }

    /// Takes event times and sequencers from the system clock instead of the fixed one, as a
    /// live MinIO would (so lag and freshness metrics mean something, and a rerun is newer).
    /// Objects, operations and metadata stay those of the deterministic workload.
    pub fn with_wall_clock(mut self) -> Self {
        match &mut self.plan {
            Plan::Generated(generator) => {
                generator.wall_clock = true;
                generator.clock_ns = 0;
            }
            Plan::Fixed(events) => {
                let events = events.as_mut_slice();
                let last = events.last().map_or(0, |event| event.time_ns);
                let shift = wall_clock_ns().saturating_sub(last);
                for event in events {
                    event.time_ns = event.time_ns.saturating_add(shift);
                }
            }
        }
        self
    }

    /// Makes the bucket versioned: every Put and Copy creates a new version (its `versionId`),
    /// and a Delete creates a delete marker (`s3:ObjectRemoved:DeleteMarkerCreated`), as
    /// MinIO reports them. Objects, operations and metadata stay the same.
    pub fn versioned(mut self) -> Self {
        if let Plan::Generated(generator) = &mut self.plan {
            generator.versioned = true;
        }
        self
    }

    /// The error that ended the iteration early, if any.
    pub fn finish(self) -> Result<(), ProduceError> {
        self.failure.map_or(Ok(()), Err)
    }

    pub(super) fn len_hint(&self) -> u64 {
        match &self.plan {
            Plan::Generated(generator) => generator.spec.count,
            Plan::Fixed(events) => events.len() as u64,
        }
    }
}

impl Iterator for Workload {
    type Item = ProducedMessage;

    fn next(&mut self) -> Option<ProducedMessage> {
        if self.failure.is_some() {
            return None;
        }
        let planned = match &mut self.plan {
            Plan::Generated(generator) => generator.next_event()?,
            Plan::Fixed(events) => events.next()?,
        };
        render(&planned)
            .map_err(|error| self.failure = Some(error))
            .ok()
    }
}

/// One event, before it is rendered into MinIO's JSON.
struct Planned {
    bucket: String,
    /// The raw object name.
    name: String,
    op: Op,
    /// Modification time (for a delete: event time) in Unix ns; the sequencer is its `%X`.
    time_ns: i64,
    size: i64,
    etag: String,
    content_type: &'static str,
    /// As MinIO stores it: canonical `X-Amz-Meta-*` plus `content-type`.
    metadata: Vec<(&'static str, String)>,
    /// Which MinIO node emitted the event (origin endpoint, `x-amz-id-2`).
    node: u64,
    /// The version it creates (a delete marker's for a Delete) in a versioned bucket.
    version_id: Option<String>,
}

impl Planned {
    fn event_name(&self) -> &'static str {
        match (self.op, self.version_id.is_some()) {
            (Op::Delete, true) => "s3:ObjectRemoved:DeleteMarkerCreated",
            (op, _) => op.event_name(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Put,
    Copy,
    Delete,
}

impl Op {
    fn event_name(self) -> &'static str {
        match self {
            Op::Put => "s3:ObjectCreated:Put",
            Op::Copy => "s3:ObjectCreated:Copy",
            Op::Delete => "s3:ObjectRemoved:Delete",
        }
    }
}

/// 2026-01-01T00:00:00Z: the workload's fixed clock starts here.
const START_NS: i64 = 1_767_225_600_000_000_000;
const NODES: u64 = 4;
const OWNERS: [&str; 4] = [
    "alice@example.com",
    "bob@example.com",
    "svc-thumbnailer",
    "team-ingest",
];
const ACCESS_KEY: &str = "objmeta-loadgen";
const USER_AGENT: &str = "MinIO (linux; amd64) minio-go/v7.0.95 mc/RELEASE.2025-08-13T08-35-41Z";
const DEPLOYMENT_ID: &str = "5d2a6c1e-8f3b-4e47-9a0d-61c7b2e9f4a8";

#[derive(Clone, Copy, Default)]
struct Slot {
    exists: bool,
    size: i64,
    etag: u128,
}

struct Generator {
    spec: WorkloadSpec,
    rng: SplitMix64,
    next: u64,
    clock_ns: i64,
    wall_clock: bool,
    versioned: bool,
    objects: Vec<Slot>,
}

impl Generator {
    fn new(spec: WorkloadSpec) -> Self {
        let capacity = spec.count.min(spec.objects).min(1 << 20);
        Generator {
            rng: SplitMix64(spec.seed),
            next: 0,
            clock_ns: START_NS,
            wall_clock: false,
            versioned: false,
            objects: Vec::with_capacity(usize::try_from(capacity).unwrap_or(0)),
            spec,
        }
    }

    fn next_event(&mut self) -> Option<Planned> {
        if self.next >= self.spec.count || self.spec.objects == 0 {
            return None;
        }
        let event = self.next;
        self.next += 1;
        let object = if event < self.spec.objects {
            self.objects.push(Slot::default());
            event
        } else {
            self.rng.below(self.spec.objects)
        };
        let op = self.choose_op(object)?;
        // Drawn in both modes, so that the wall clock does not change the random sequence.
        let step = 1_000_000 + self.rng.below(1_000_000) as i64;
        self.clock_ns = match self.wall_clock {
            true => wall_clock_ns().max(self.clock_ns.saturating_add(1)),
            false => self.clock_ns.saturating_add(step),
        };
        let slot = self.apply(object, op)?;
        Some(self.plan(event, object, op, slot))
    }

    fn slot(&mut self, object: u64) -> Option<&mut Slot> {
        self.objects.get_mut(usize::try_from(object).ok()?)
    }

    fn choose_op(&mut self, object: u64) -> Option<Op> {
        if !self.slot(object)?.exists {
            return Some(Op::Put);
        }
        let roll = self.rng.below(100);
        let delete = u64::from(self.spec.delete_percent);
        let copy = delete + u64::from(self.spec.copy_percent);
        Some(match roll {
            r if r < delete => Op::Delete,
            r if r < copy => Op::Copy,
            _ => Op::Put,
        })
    }

    /// The object's state after `op`: a Put writes new content, a Copy keeps it.
    fn apply(&mut self, object: u64, op: Op) -> Option<Slot> {
        let content = match op {
            Op::Put => Some((
                1024 + self.rng.below(8 << 20) as i64,
                u128::from(self.rng.next_u64()) << 64 | u128::from(self.rng.next_u64()),
            )),
            Op::Copy | Op::Delete => None,
        };
        let slot = self.slot(object)?;
        slot.exists = op != Op::Delete;
        if let Some((size, etag)) = content {
            slot.size = size;
            slot.etag = etag;
        }
        Some(*slot)
    }

    fn plan(&mut self, event: u64, object: u64, op: Op, slot: Slot) -> Planned {
        let buckets = u64::from(self.spec.buckets.max(1));
        let (name, content_type) = object_name(object);
        let metadata = match op {
            Op::Delete => Vec::new(),
            Op::Put | Op::Copy => self.metadata(event, object, &name, content_type),
        };
        Planned {
            bucket: format!("loadgen-{}", object % buckets),
            name,
            op,
            time_ns: self.clock_ns,
            size: slot.size,
            etag: format!("{:032x}", slot.etag),
            content_type,
            metadata,
            node: self.rng.below(NODES),
            // Not drawn from the PRNG: versioning must not change the random sequence.
            version_id: self
                .versioned
                .then(|| format!("{object:08x}-0000-4000-8000-{event:012x}")),
        }
    }

    /// About 350 bytes of metadata, like an application tagging its uploads.
    fn metadata(
        &mut self,
        event: u64,
        object: u64,
        name: &str,
        content_type: &'static str,
    ) -> Vec<(&'static str, String)> {
        let owner = OWNERS[self.rng.below(OWNERS.len() as u64) as usize];
        let checksum: String = (0..4)
            .map(|_| format!("{:016x}", self.rng.next_u64()))
            .collect();
        vec![
            (
                "X-Amz-Meta-Api",
                format!("https://api.example.com/v1/assets/{object}"),
            ),
            ("X-Amz-Meta-Checksum-Sha256", checksum),
            ("X-Amz-Meta-Id", (1000 + event).to_string()),
            ("X-Amz-Meta-Owner", owner.to_string()),
            ("X-Amz-Meta-Project", "objmeta-loadtest".to_string()),
            ("X-Amz-Meta-Source", format!("upload-service/{name}")),
            ("content-type", content_type.to_string()),
        ]
    }
}

/// Mostly plain names; every 20th family of names exercises query-escaping: spaces, `+`,
/// `%`, non-ASCII.
fn object_name(object: u64) -> (String, &'static str) {
    match object % 20 {
        5 => (
            format!("reports/Q{} 2026/summary {object:06}.pdf", object % 4 + 1),
            "application/pdf",
        ),
        10 => (
            format!("builds/c++/lib+{object:06}.tar.gz"),
            "application/gzip",
        ),
        12 => (format!("docs/日本語/メモ {object:06}.txt"), "text/plain"),
        15 => (format!("stats/100% sample {object:06}.csv"), "text/csv"),
        19 => (format!("médias/été/photo-{object:06}.jpg"), "image/jpeg"),
        _ => (format!("photos/2026/img-{object:06}.jpg"), "image/jpeg"),
    }
}

fn guide_plan() -> Vec<Planned> {
    // 2026-01-15T10:00:00Z, plus sub-second parts as a real clock would have.
    let put_ns = 1_768_471_200_123_456_789;
    let metadata = |id: &str| {
        vec![
            ("X-Amz-Meta-Api", "https://api.example.com/v1".to_string()),
            ("X-Amz-Meta-Id", id.to_string()),
            ("content-type", "text/plain".to_string()),
        ]
    };
    let event = |op, time_ns, id| Planned {
        bucket: "test-bucket".to_string(),
        name: "test-file_apiid.txt".to_string(),
        op,
        time_ns,
        size: 27,
        etag: "9b2cf535f27731c974343645a3985328".to_string(),
        content_type: "text/plain",
        metadata: metadata(id),
        node: 0,
        version_id: None,
    };
    vec![
        event(Op::Put, put_ns, "1843"),
        event(Op::Copy, put_ns + 2_531_000_000, "1844"),
    ]
}

/// Renders one event as MinIO's Kafka target would: envelope, one record, escaped key.
fn render(event: &Planned) -> Result<ProducedMessage, ProduceError> {
    let key = format!("{}/{}", event.bucket, event.name);
    let client_ip = format!("10.0.2.{}", 20 + event.node);
    let endpoint = format!("http://10.0.1.{}:9000", 11 + event.node);
    let request_id = format!("{:X}", event.time_ns - 2_000_000);
    let node_id = node_id(event.node);
    let owner = || Identity {
        principal_id: ACCESS_KEY.into(),
    };
    let record = Record {
        event_version: "2.0".into(),
        event_source: "minio:s3".into(),
        aws_region: "".into(),
        event_time: event_time(event.time_ns)?.into(),
        event_name: event.event_name().into(),
        user_identity: owner(),
        request_parameters: string_map([
            ("principalId", ACCESS_KEY),
            ("region", ""),
            ("sourceIPAddress", &client_ip),
        ]),
        response_elements: string_map([
            ("x-amz-id-2", &node_id),
            ("x-amz-request-id", &request_id),
            ("x-minio-deployment-id", DEPLOYMENT_ID),
            ("x-minio-origin-endpoint", &endpoint),
        ]),
        s3: S3 {
            schema_version: "1.0".into(),
            configuration_id: "Config".into(),
            bucket: Bucket {
                name: event.bucket.as_str().into(),
                owner_identity: owner(),
                arn: format!("arn:aws:s3:::{}", event.bucket).into(),
            },
            object: wire_object(event),
        },
        source: Source {
            host: client_ip.as_str().into(),
            port: "".into(),
            user_agent: USER_AGENT.into(),
        },
    };
    let envelope = Envelope {
        event_name: event.event_name().into(),
        key: key.as_str().into(),
        records: vec![record],
    };
    let payload = serde_json::to_vec(&envelope).map_err(|e| ProduceError::Encode(e.to_string()))?;
    Ok(ProducedMessage { key, payload })
}

/// `s3.object`: a remove event carries no size, eTag, content type or metadata.
fn wire_object(event: &Planned) -> Object<'_> {
    let mut object = Object {
        key: query_escape(&event.name).into(),
        sequencer: format!("{:X}", event.time_ns).into(),
        version_id: event.version_id.as_deref().unwrap_or_default().into(),
        ..Object::default()
    };
    if event.op != Op::Delete {
        object.size = Some(event.size);
        object.e_tag = event.etag.as_str().into();
        object.content_type = event.content_type.into();
        object.user_metadata = event
            .metadata
            .iter()
            .map(|(key, value)| (*key, value.as_str()))
            .collect::<UserMetadata<'_>>();
    }
    object
}

fn string_map<'a, const N: usize>(
    pairs: [(&'a str, &'a str); N],
) -> BTreeMap<Cow<'a, str>, Cow<'a, str>> {
    pairs
        .into_iter()
        .map(|(key, value)| (Cow::Borrowed(key), Cow::Borrowed(value)))
        .collect()
}

/// MinIO's `eventTime` layout, `2006-01-02T15:04:05.000Z` (milliseconds, UTC).
pub fn event_time(unix_ns: i64) -> Result<String, ProduceError> {
    let time = OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ns))
        .map_err(|e| ProduceError::Encode(format!("event time {unix_ns} ns: {e}")))?;
    Ok(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        time.year(),
        u8::from(time.month()),
        time.day(),
        time.hour(),
        time.minute(),
        time.second(),
        time.millisecond()
    ))
}

pub(super) fn wall_clock_ns() -> i64 {
    i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

/// A stable 64-hex-digit node identity, as MinIO puts in `x-amz-id-2`.
fn node_id(node: u64) -> String {
    let mut rng = SplitMix64(0x6d69_6e69_6f00 + node);
    (0..4).map(|_| format!("{:016x}", rng.next_u64())).collect()
}

/// SplitMix64: tiny, fast, and fixed forever, which the workload's reproducibility needs
/// (rand's generators may change their output between versions).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`), by multiply-shift.
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}
