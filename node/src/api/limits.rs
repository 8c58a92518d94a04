//! Request rates per client: a token bucket per client and class of endpoint, so one runaway
//! script or application cannot take a node's API from everyone else (answered 429, counted).

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Deserialize;

/// Which budget a request draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Changes, rollouts, history, status, backups: what operators and pipelines call.
    Admin,
    /// Flag evaluation (OFREP), config and flag reads, watches and health pushes: what
    /// applications call, often per request they serve.
    Applications,
}

impl Class {
    pub fn label(self) -> &'static str {
        match self {
            Class::Admin => "admin",
            Class::Applications => "applications",
        }
    }
}

/// `[limits]` in the node config, as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Admin requests per second per client (1 to 1000000); default 20.
    pub admin_per_s: Option<u32>,
    /// How many admin requests a client may make at once after a quiet spell; default 100.
    pub admin_burst: Option<u32>,
    /// Application requests per second per client (1 to 1000000); default 10000.
    pub applications_per_s: Option<u32>,
    /// Default 20000.
    pub applications_burst: Option<u32>,
    /// API connections open at once (1 to 1000000); default 4096.
    pub api_connections: Option<u32>,
}

/// The checked budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub admin: (NonZeroU32, NonZeroU32),
    pub applications: (NonZeroU32, NonZeroU32),
    pub api_connections: NonZeroU32,
}

impl Limits {
    pub fn from_section(section: &LimitsSection) -> Result<Limits, String> {
        let value = |name: &str, given: Option<u32>, default: u32| -> Result<NonZeroU32, String> {
            let value = given.unwrap_or(default);
            NonZeroU32::new(value)
                .filter(|v| v.get() <= 1_000_000)
                .ok_or_else(|| format!("{name}: expected 1 to 1000000, got {value}"))
        };
        Ok(Limits {
            admin: (value("admin_per_s", section.admin_per_s, 20)?, value("admin_burst", section.admin_burst, 100)?),
            applications: (
                value("applications_per_s", section.applications_per_s, 10_000)?,
                value("applications_burst", section.applications_burst, 20_000)?,
            ),
            api_connections: value("api_connections", section.api_connections, 4096)?,
        })
    }
}

/// The buckets of every client, by class.
pub struct RateLimits {
    limits: Limits,
    admin: DefaultKeyedRateLimiter<String>,
    applications: DefaultKeyedRateLimiter<String>,
    checks: AtomicU64,
}

/// Clients forgotten (their buckets full again) every this many checks, so the map of
/// clients stays as small as the set of recent ones.
const FORGET_EVERY: u64 = 4096;

impl RateLimits {
    pub fn new(limits: Limits) -> RateLimits {
        let keyed =
            |(rate, burst): (NonZeroU32, NonZeroU32)| RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst));
        RateLimits {
            limits,
            admin: keyed(limits.admin),
            applications: keyed(limits.applications),
            checks: AtomicU64::new(0),
        }
    }

    /// Takes one request from `client`'s bucket of `class`, or says how long until one is there.
    // The wait is measured on governor's own clock, the one its buckets fill by (not
    // `crate::clock`'s, so paused time does not reach the request rates).
    #[allow(clippy::disallowed_methods)]
    pub fn take(&self, class: Class, client: &str) -> Result<(), Duration> {
        let limiter = match class {
            Class::Admin => &self.admin,
            Class::Applications => &self.applications,
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % FORGET_EVERY == FORGET_EVERY - 1 {
            limiter.retain_recent();
        }
        limiter
            .check_key(&client.to_owned())
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// The rate of `class`, for messages.
    pub fn rate(&self, class: Class) -> u32 {
        match class {
            Class::Admin => self.limits.admin.0.get(),
            Class::Applications => self.limits.applications.0.get(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_past_its_burst_waits_and_others_do_not() {
        let section = LimitsSection { admin_per_s: Some(1), admin_burst: Some(2), ..Default::default() };
        let limits = RateLimits::new(Limits::from_section(&section).unwrap());
        assert!(limits.take(Class::Admin, "a").is_ok());
        assert!(limits.take(Class::Admin, "a").is_ok());
        let wait = limits.take(Class::Admin, "a").unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
        assert!(limits.take(Class::Admin, "b").is_ok(), "each client has its own bucket");
        assert!(limits.take(Class::Applications, "a").is_ok(), "and each class");
        let refused = Limits::from_section(&LimitsSection { admin_per_s: Some(0), ..Default::default() });
        assert_eq!(refused.unwrap_err(), "admin_per_s: expected 1 to 1000000, got 0");
    }
}

/// The API's TCP listener, bounded: at most `limit` connections open at once. One more gets a
/// 503 that says so and is closed (counted), so a client learns why instead of hanging, and
/// the node keeps its file descriptors for the connections it serves.
pub struct LimitedListener {
    listener: tokio::net::TcpListener,
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    limit: usize,
    node: String,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl LimitedListener {
    pub fn new(
        listener: tokio::net::TcpListener,
        limit: usize,
        node: String,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> LimitedListener {
        let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(limit));
        LimitedListener { listener, permits, limit, node, metrics }
    }
}

/// A connection the API serves, holding its place under the limit until it closes.
pub struct LimitedStream {
    stream: tokio::net::TcpStream,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl axum::serve::Listener for LimitedListener {
    type Io = LimitedStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (LimitedStream, std::net::SocketAddr) {
        loop {
            let (stream, addr) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, or a connection reset before it was taken:
                    // wait a moment, as axum's own listener does, and go on.
                    tracing::debug!(%error, "accepting an API connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match self.permits.clone().try_acquire_owned() {
                Ok(permit) => return (LimitedStream { stream, _permit: permit }, addr),
                Err(_) => {
                    self.metrics.api_connections_refused.inc();
                    let message = format!(
                        "{{\"error\": \"node {} has {} API connections open, its limit ([limits] api_connections); retry later\"}}",
                        self.node, self.limit
                    );
                    tokio::spawn(refuse(stream, message));
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }
}

/// Answers 503 on a connection over the limit and closes it. The request's head is read
/// first (up to 8 KiB, for up to 1 s), so the client is not still writing when the
/// connection closes and reads the answer instead of a reset.
async fn refuse(mut stream: tokio::net::TcpStream, message: String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while head.len() < 8192 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => head.extend_from_slice(&buffer[..read]),
            }
        }
    })
    .await;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{message}",
        message.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(response.as_bytes())).await;
    let _ = stream.shutdown().await;
}

impl tokio::io::AsyncRead for LimitedStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for LimitedStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The address of a TCP client of the API, by which anonymous clients are rate-limited.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub std::net::SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, LimitedListener>> for ClientAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, LimitedListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}
