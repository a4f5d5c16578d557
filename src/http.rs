//! The HTTP endpoints: `/metrics` (Prometheus text), `/healthz` (the main
//! loop is alive) and `/readyz` (the database answers and the consumer is in
//! its group).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
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
    stall_timeout: Duration,
}

impl Health {
    pub fn new(stall_timeout: Duration) -> Self {
        Health {
            started: Instant::now(),
            last_progress_ms: AtomicU64::new(0),
            database_ready: AtomicBool::new(false),
            in_group: AtomicBool::new(false),
            stall_timeout,
        }
    }

    /// The loop moved: a batch was written, or there was nothing to write.
    pub fn progressed(&self) {
        let now = self.started.elapsed().as_millis();
        self.last_progress_ms
            .store(u64::try_from(now).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub fn set_database_ready(&self, ready: bool) {
        self.database_ready.store(ready, Ordering::Relaxed);
    }

    pub fn set_in_group(&self, joined: bool) {
        self.in_group.store(joined, Ordering::Relaxed);
    }

    pub fn is_live(&self) -> bool {
        self.is_live_at(self.started.elapsed())
    }

    /// Liveness as of `now`, measured from start-up.
    fn is_live_at(&self, now: Duration) -> bool {
        let last = Duration::from_millis(self.last_progress_ms.load(Ordering::Relaxed));
        now.saturating_sub(last) <= self.stall_timeout
    }

    pub fn is_ready(&self) -> bool {
        self.database_ready.load(Ordering::Relaxed) && self.in_group.load(Ordering::Relaxed)
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
        "/readyz" if health.is_ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: database unreachable or not in the consumer group\n",
        ),
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
        let health = Health::new(Duration::from_secs(60));
        assert!(!health.is_ready());
        health.set_database_ready(true);
        assert!(!health.is_ready());
        health.set_in_group(true);
        assert!(health.is_ready());
        health.set_database_ready(false);
        assert!(!health.is_ready());
    }

    #[test]
    fn liveness_fails_after_the_stall_timeout() {
        let health = Health::new(Duration::from_secs(60));
        health.progressed();
        assert!(health.is_live());
        let progress = Duration::from_millis(health.last_progress_ms.load(Ordering::Relaxed));
        assert!(health.is_live_at(progress + Duration::from_secs(60)));
        assert!(!health.is_live_at(progress + Duration::from_secs(61)));
    }
}
