//! The HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (the main
//! loop is alive) and `/readyz` (the database answers, the consumer is in
//! its group, and enrichment can read the objects it must read).
//!
//! Liveness is "the loop is turning and every write attempt ends within a
//! bound". A member waiting out a database outage retries: each attempt
//! fails, reports its end, and backs off, so it stays alive (and not ready),
//! and a restart, which cannot cure the database, is not asked for. A member
//! whose attempt is stuck longer than the longest legitimate round trip
//! (hung on a socket that neither the server's timeouts nor TCP keepalives
//! broke) is not alive: a restart does cure that.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::metrics::Metrics;

/// Liveness and readiness facts, written by the pipeline, read by probes.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Milliseconds since `started` at the last sign of progress.
    last_progress_ms: AtomicU64,
    database_ready: AtomicBool,
    in_group: AtomicBool,
    /// False while enrichment's HeadObject requests fail (e.g. 403: a missing permission).
    s3_readable: AtomicBool,
    stall_timeout: Duration,
    /// Longest time a write attempt may go without finishing a round trip.
    attempt_limit: Duration,
    /// Running attempts: id -> (milliseconds since `started` at their start or last finished
    /// round trip, their limit).
    attempts: Mutex<HashMap<u64, (u64, Duration)>>,
    next_attempt: AtomicU64,
}

impl Health {
    /// `attempt_limit`: see [`Health::is_live`].
    pub fn new(stall_timeout: Duration, attempt_limit: Duration) -> Self {
        Health {
            started: Instant::now(),
            last_progress_ms: AtomicU64::new(0),
            database_ready: AtomicBool::new(false),
            in_group: AtomicBool::new(false),
            s3_readable: AtomicBool::new(true),
            stall_timeout,
            attempt_limit,
            attempts: Mutex::new(HashMap::new()),
            next_attempt: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The loop moved: a batch was written, a write attempt ended (even in
    /// failure), or there was nothing to write.
    pub fn progressed(&self) {
        self.last_progress_ms
            .store(self.now_ms(), Ordering::Relaxed);
    }

    /// A write attempt starts; it counts as running until the returned guard
    /// is dropped (which also reports progress).
    pub fn attempt(self: &Arc<Self>) -> Attempt {
        self.attempt_within(self.attempt_limit)
    }

    /// An attempt whose round trips are of another kind, each allowed `limit` (an
    /// enrichment round waits on HeadObject requests, not on the database).
    pub fn attempt_within(self: &Arc<Self>, limit: Duration) -> Attempt {
        let id = self.next_attempt.fetch_add(1, Ordering::Relaxed);
        self.lock_attempts().insert(id, (self.now_ms(), limit));
        Attempt {
            health: Some(self.clone()),
            id,
        }
    }

    /// A poisoned lock only means another thread panicked while holding it;
    /// the map of plain numbers is still usable.
    fn lock_attempts(&self) -> MutexGuard<'_, HashMap<u64, (u64, Duration)>> {
        self.attempts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `work` and counts as progress while it runs: for start-up work
    /// that may rightly take minutes (a migration rewriting a big table, or
    /// waiting for another replica's). Restarting the process would only
    /// roll that work back and start it over; a dead database peer is found
    /// by the connection's keepalives instead.
    pub async fn alive_while<F: std::future::Future>(&self, work: F) -> F::Output {
        let mut work = std::pin::pin!(work);
        let mut beat =
            tokio::time::interval((self.stall_timeout / 4).max(Duration::from_millis(10)));
        loop {
            tokio::select! {
                done = &mut work => {
                    self.progressed();
                    return done;
                }
                _ = beat.tick() => self.progressed(),
            }
        }
    }

    pub fn set_database_ready(&self, ready: bool) {
        self.database_ready.store(ready, Ordering::Relaxed);
    }

    pub fn set_s3_readable(&self, readable: bool) {
        self.s3_readable.store(readable, Ordering::Relaxed);
    }

    pub fn set_in_group(&self, joined: bool) {
        self.in_group.store(joined, Ordering::Relaxed);
    }

    pub fn is_live(&self) -> bool {
        self.is_live_at(self.started.elapsed())
    }

    /// Liveness as of `now`, measured from start-up: no attempt has gone
    /// without a finished round trip for longer than its limit, and either an
    /// attempt is running (within its limit) or the loop progressed within
    /// the stall timeout.
    fn is_live_at(&self, now: Duration) -> bool {
        let attempts = self.lock_attempts();
        if attempts.is_empty() {
            let last = Duration::from_millis(self.last_progress_ms.load(Ordering::Relaxed));
            return now.saturating_sub(last) <= self.stall_timeout;
        }
        attempts
            .values()
            .all(|&(at, limit)| now.saturating_sub(Duration::from_millis(at)) <= limit)
    }

    pub fn is_ready(&self) -> bool {
        self.not_ready_because().is_none()
    }

    /// Why the member is not ready, the first failing condition; `None` when it is ready.
    pub fn not_ready_because(&self) -> Option<&'static str> {
        if !self.database_ready.load(Ordering::Relaxed) {
            Some("not ready: database unreachable\n")
        } else if !self.in_group.load(Ordering::Relaxed) {
            Some("not ready: not in the consumer group\n")
        } else if !self.s3_readable.load(Ordering::Relaxed) {
            Some("not ready: HeadObject of changed objects fails (see the log)\n")
        } else {
            None
        }
    }
}

/// A running write attempt, registered with [`Health`].
#[derive(Debug)]
pub struct Attempt {
    /// `None`: an attempt nobody watches.
    health: Option<Arc<Health>>,
    id: u64,
}

impl Attempt {
    /// An attempt outside the pipeline (a one-shot write by a tool or a
    /// test), which no liveness depends on.
    pub fn detached() -> Attempt {
        Attempt {
            health: None,
            id: 0,
        }
    }

    /// A round trip of the attempt finished: it is not hung.
    pub fn touch(&self) {
        let Some(health) = &self.health else {
            return;
        };
        let now = health.now_ms();
        if let Some((at, _)) = health.lock_attempts().get_mut(&self.id) {
            *at = now;
        }
    }
}

impl Drop for Attempt {
    /// The attempt ended (succeeded, failed, or was abandoned): the writer
    /// is turning.
    fn drop(&mut self) {
        if let Some(health) = &self.health {
            health.lock_attempts().remove(&self.id);
            health.progressed();
        }
    }
}

/// Binds the listener now (so a bad address fails start-up) and serves it
/// until `shutdown` is cancelled.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Http {
            addr: addr.to_string(),
            source,
        })?;
    tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "serving /metrics, /healthz, /readyz");
    Ok(tokio::spawn(accept_loop(
        listener, metrics, health, shutdown,
    )))
}

async fn accept_loop(
    listener: TcpListener,
    metrics: Metrics,
    health: Arc<Health>,
    shutdown: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting an http connection");
                    continue;
                }
            },
        };
        let (metrics, health) = (metrics.clone(), health.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = respond(&request, &metrics, &health);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
        });
    }
}

fn respond(
    request: &Request<Incoming>,
    metrics: &Metrics,
    health: &Health,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match request.uri().path() {
        "/metrics" => Response::builder()
            .header("content-type", "text/plain; version=0.0.4")
            .body(Full::new(Bytes::from(metrics.render())))
            .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "")),
        "/healthz" if health.is_live() => text(StatusCode::OK, "ok\n"),
        "/healthz" => text(StatusCode::SERVICE_UNAVAILABLE, "main loop stalled\n"),
        "/readyz" => match health.not_ready_because() {
            None => text(StatusCode::OK, "ready\n"),
            Some(reason) => text(StatusCode::SERVICE_UNAVAILABLE, reason),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_database_and_group() {
        let health = Health::new(Duration::from_secs(60), Duration::from_secs(40));
        assert!(!health.is_ready());
        health.set_database_ready(true);
        assert!(!health.is_ready());
        health.set_in_group(true);
        assert!(health.is_ready());
        health.set_s3_readable(false);
        assert!(!health.is_ready());
        assert!(health.not_ready_because().unwrap().contains("HeadObject"));
        health.set_s3_readable(true);
        assert!(health.is_ready());
        health.set_database_ready(false);
        assert!(!health.is_ready());
    }

    #[test]
    fn liveness_fails_after_the_stall_timeout() {
        let health = Health::new(Duration::from_secs(60), Duration::from_secs(40));
        health.progressed();
        assert!(health.is_live());
        let progress = Duration::from_millis(health.last_progress_ms.load(Ordering::Relaxed));
        assert!(health.is_live_at(progress + Duration::from_secs(60)));
        assert!(!health.is_live_at(progress + Duration::from_secs(61)));
    }

    fn at(health: &Health, key: &str) -> Duration {
        let ms = match key {
            "progress" => health.last_progress_ms.load(Ordering::Relaxed),
            // The newest attempt's clock.
            _ => health
                .lock_attempts()
                .values()
                .map(|(at, _)| *at)
                .max()
                .unwrap(),
        };
        Duration::from_millis(ms)
    }

    #[test]
    fn failing_attempts_that_end_keep_the_member_alive_past_the_stall_timeout() {
        let health = Arc::new(Health::new(
            Duration::from_secs(60),
            Duration::from_secs(40),
        ));
        let mut now = Duration::ZERO;
        // Ten minutes of attempts that fail after 5 s and back off 10 s.
        for _ in 0..40 {
            let attempt = health.attempt();
            let started = at(&health, "attempt");
            assert!(health.is_live_at(started + Duration::from_secs(5)));
            drop(attempt);
            let ended = at(&health, "progress");
            assert!(health.is_live_at(ended + Duration::from_secs(10)));
            now = now.max(ended);
        }
        assert!(health.is_live_at(now + Duration::from_secs(60)));
        assert!(health.lock_attempts().is_empty());
    }

    #[test]
    fn an_attempt_hung_past_the_limit_is_not_alive_even_while_others_progress() {
        let health = Arc::new(Health::new(
            Duration::from_secs(60),
            Duration::from_secs(40),
        ));
        let hung = health.attempt();
        let started = at(&health, "attempt");
        assert!(health.is_live_at(started + Duration::from_secs(40)));
        // Another lane keeps writing: progress is fresh, the hang still counts.
        health.progressed();
        assert!(!health.is_live_at(started + Duration::from_secs(41)));
        // A finished round trip restarts the attempt's clock.
        hung.touch();
        let touched = at(&health, "attempt");
        assert!(health.is_live_at(touched + Duration::from_secs(40)));
        assert!(!health.is_live_at(touched + Duration::from_secs(41)));
        drop(hung);
        let ended = at(&health, "progress");
        assert!(health.is_live_at(ended + Duration::from_secs(59)));
    }

    #[test]
    fn an_attempt_of_another_kind_has_its_own_limit() {
        let health = Arc::new(Health::new(Duration::from_secs(5), Duration::from_secs(13)));
        let heads = health.attempt_within(Duration::from_secs(40));
        let started = at(&health, "attempt");
        assert!(health.is_live_at(started + Duration::from_secs(40)));
        assert!(!health.is_live_at(started + Duration::from_secs(41)));
        // A write beside it still gets only the database's limit.
        let write = health.attempt();
        let begun = at(&health, "attempt");
        assert!(!health.is_live_at(begun + Duration::from_secs(14)));
        drop((heads, write));
    }

    #[test]
    fn a_long_attempt_within_its_limit_outlives_the_stall_timeout() {
        let health = Arc::new(Health::new(Duration::from_secs(5), Duration::from_secs(13)));
        let attempt = health.attempt();
        let started = at(&health, "attempt");
        assert!(health.is_live_at(started + Duration::from_secs(13)));
        assert!(!health.is_live_at(started + Duration::from_secs(14)));
        drop(attempt);
        let ended = at(&health, "progress");
        assert!(health.is_live_at(ended + Duration::from_secs(5)));
        assert!(!health.is_live_at(ended + Duration::from_secs(6)));
    }
}
