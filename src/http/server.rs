//! The accept loop: what stands between a hostile crowd of connections and
//! the router.
//!
//! `axum::serve` holds every connection as long as the peer likes, and under
//! `EMFILE` logs an accept error per attempt while everybody else's
//! connections time out. This loop instead:
//!
//! - gives every HTTP/1 connection a header timeout (hyper's
//!   `header_read_timeout`, driven by a tokio timer): from the accept, or
//!   from the end of the previous response on a kept-alive connection, to the
//!   end of the next request's headers. Half-open and idle connections end.
//!   A request body must have arrived within the same time after its
//!   headers (`Deadline`): nor can it be dribbled in a byte at a time.
//! - caps open connections per gateway and per client address (a trusted
//!   proxy's own address is not capped per address); a connection over a
//!   cap is closed at once, counted, and logged at most once a second.
//! - backs off briefly on accept errors (`EMFILE` and friends), so they never
//!   become a busy loop; they are logged at most once a second too.
//! - drops a connection whose peer has taken none of our bytes for
//!   `http.send_timeout_ms` (a client that stopped reading, such as an
//!   abandoned event stream).
//! - on shutdown stops accepting, lets in-flight requests finish, and closes
//!   kept-alive connections (graceful shutdown, bounded by [`DRAIN`]).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How long shutdown waits for connections to finish their requests.
pub const DRAIN: Duration = Duration::from_secs(10);

/// How long the loop pauses after an accept error that is about resources
/// (no file descriptors, no buffers): long enough not to spin, short enough
/// that capacity coming back is used at once.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// File descriptors kept free for everything that is not a client
/// connection: Redis and Postgres sockets, the listener, logs, the worker.
pub const RESERVED_FDS: u64 = 128;

/// What the loop needs from the settings.
#[derive(Debug, Clone)]
pub struct Edge {
    pub header_timeout: Duration,
    pub send_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Peers not capped per address (many buyers arrive through them).
    pub uncapped: Vec<IpAddr>,
}

/// Open connections, in all and per client address.
pub struct Gate {
    max_total: usize,
    max_per_ip: usize,
    uncapped: Vec<IpAddr>,
    open: AtomicUsize,
    // std Mutex: one short lookup per accept and per close, never held
    // across an await. Entries are removed at zero, so the map is bounded
    // by the open connections.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Which cap turned a connection away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    Total,
    PerIp,
}

impl Cap {
    pub fn word(self) -> &'static str {
        match self {
            Cap::Total => "total",
            Cap::PerIp => "per_ip",
        }
    }
}

/// A place under the caps; given back when dropped.
pub struct Ticket {
    gate: Arc<Gate>,
    ip: Option<IpAddr>,
}

impl Gate {
    pub fn new(edge: &Edge) -> Arc<Gate> {
        Arc::new(Gate {
            max_total: edge.max_connections,
            max_per_ip: edge.max_connections_per_ip,
            uncapped: edge.uncapped.clone(),
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
        })
    }

    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, Cap> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Cap::Total);
        }
        let mut ticket = Ticket {
            gate: self.clone(),
            ip: None,
        };
        if self.uncapped.contains(&ip) {
            return Ok(ticket);
        }
        let Ok(mut per_ip) = self.per_ip.lock() else {
            // Poisoned (a panic elsewhere): keep serving under the total cap.
            return Ok(ticket);
        };
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            drop(per_ip);
            // Dropping the ticket gives the total place back.
            return Err(Cap::PerIp);
        }
        *n += 1;
        ticket.ip = Some(ip);
        Ok(ticket)
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            if let Ok(mut per_ip) = self.gate.per_ip.lock() {
                if let Some(n) = per_ip.get_mut(&ip) {
                    *n -= 1;
                    if *n == 0 {
                        per_ip.remove(&ip);
                    }
                }
            }
        }
        self.gate.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Raises the soft open-file limit to the hard one and returns the soft
/// limit now in force (`None` where it cannot be read).
pub fn raise_open_file_limit() -> Option<u64> {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        // rlim_t is u64 on Linux.
        #[allow(clippy::unnecessary_cast)]
        Some(lim.rlim_cur as u64)
    }
}

/// The connection cap that fits under the open-file limit: the configured
/// one, lowered (with a warning) when the process could not open that many.
pub fn fit_connections(configured: usize, open_files: Option<u64>, reserved: u64) -> usize {
    let Some(limit) = open_files else {
        return configured;
    };
    let room = limit.saturating_sub(reserved).max(1);
    if (configured as u64) > room {
        tracing::warn!(
            configured,
            open_file_limit = limit,
            using = room,
            "http.max_connections is above what the open-file limit allows; lowered"
        );
        room as usize
    } else {
        configured
    }
}

/// Logs at most once per second; counts what it kept quiet.
struct Throttle {
    last: Mutex<Option<Instant>>,
    quiet: AtomicU64,
}

impl Throttle {
    fn new() -> Throttle {
        Throttle {
            last: Mutex::new(None),
            quiet: AtomicU64::new(0),
        }
    }

    /// `Some(n)`: log now, `n` events were kept quiet since the last line.
    fn ready(&self) -> Option<u64> {
        let now = Instant::now();
        let mut last = self.last.lock().ok()?;
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            self.quiet.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.quiet.swap(0, Ordering::Relaxed))
    }
}

/// Errors of `accept` that mean "out of resources for now": retrying at
/// once would only spin.
fn out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Serves `router` on `listener` until `stop` is cancelled, then drains.
pub async fn run(
    listener: TcpListener,
    router: Router,
    edge: Edge,
    stop: CancellationToken,
) -> io::Result<()> {
    let gate = Gate::new(&edge);
    // Read in hyper 1.12 / hyper-util 0.1.21 (and tested in tests/api/edge.rs):
    // - `http1_only` matters: without it the auto builder first waits for
    //   bytes to tell HTTP/1 from HTTP/2 (`ReadVersion`), and a connection
    //   that sends nothing never reaches hyper's timer at all.
    // - the timer starts when hyper begins reading a request head
    //   (`Conn::poll_read_head`): at once on a new connection, and again
    //   after each response, since an idle kept-alive connection re-arms the
    //   read (`State::idle` sets `notify_read` when a header timeout is set).
    //   Past it, hyper ends the connection with a header-timeout error.
    // - it needs a `Timer` (hyper has none of its own): `TokioTimer`.
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(edge.header_timeout)
        // hyper buffers up to this much of a response a slow client has not
        // taken yet (default ~400 KiB): per connection, times thousands of
        // connections. 64 KiB still takes the largest list page in one go.
        .max_buf_size(64 * 1024);
    let builder = Arc::new(builder);
    let refused_log = Arc::new(Throttle::new());
    let accept_log = Throttle::new();
    // Every connection task holds a receiver; shutdown waits until none is left.
    let (done_tx, done_rx) = tokio::sync::watch::channel(());
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                crate::metrics::accept_error();
                if let Some(quiet) = accept_log.ready() {
                    tracing::warn!(error = %e, suppressed = quiet, "accept error");
                }
                if out_of_resources(&e) {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                }
                continue;
            }
        };
        let ticket = match gate.admit(peer.ip()) {
            Ok(t) => t,
            Err(cap) => {
                crate::metrics::connection_refused(cap.word());
                if let Some(quiet) = refused_log.ready() {
                    // No address in the log: it is personal data.
                    tracing::warn!(
                        cap = cap.word(),
                        open = gate.open(),
                        suppressed = quiet,
                        "connection over a cap: closed"
                    );
                }
                // Closed at once: nothing read, nothing answered.
                drop(stream);
                continue;
            }
        };
        crate::metrics::connections_open(gate.open());
        tokio::spawn(connection(
            stream,
            peer,
            ticket,
            router.clone(),
            builder.clone(),
            edge.header_timeout,
            edge.send_timeout,
            stop.clone(),
            done_rx.clone(),
            gate.clone(),
        ));
    }
    drop(listener);
    drop(done_rx);
    tracing::info!(open = gate.open(), "draining connections");
    if tokio::time::timeout(DRAIN, done_tx.closed()).await.is_err() {
        tracing::warn!(
            open = gate.open(),
            "connections still open after the drain period; closing them"
        );
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    ticket: Ticket,
    router: Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    builder_header_timeout: Duration,
    send_timeout: Duration,
    stop: CancellationToken,
    done: tokio::sync::watch::Receiver<()>,
    gate: Arc<Gate>,
) {
    let _ = stream.set_nodelay(true);
    let mut progress = Progress::new(stream.as_raw_fd());
    let header_timeout = builder_header_timeout;
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        // The body, if the handler reads one, must have arrived by the
        // same time after the headers: the header timeout alone would let
        // a client hold the connection by sending its body a byte at a
        // time.
        let mut req = req.map(|b| axum::body::Body::new(Deadline::new(b, header_timeout)));
        // What `into_make_service_with_connect_info` did: the limits and
        // the per-address views read the peer from here.
        req.extensions_mut().insert(ConnectInfo(peer));
        let mut router = router.clone();
        async move {
            use tower::Service;
            router.call(req).await
        }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut check = tokio::time::interval(
        (send_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(1)),
    );
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut draining = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            _ = stop.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = check.tick() => {
                if progress.stalled_for(Instant::now()) > send_timeout {
                    crate::metrics::connection_dropped("send_stalled");
                    tracing::debug!("peer took no bytes for the send timeout: closed");
                    break;
                }
            }
        }
    }
    drop(ticket);
    crate::metrics::connections_open(gate.open());
    drop(done);
}

/// A request body that fails once its deadline passed (however it was
/// dribbled in until then); the body extractor turns that into a 422. The
/// timer is armed only when the body is not all there at once, so the hot
/// path (small bodies, GETs) registers none.
struct Deadline<B> {
    body: B,
    at: tokio::time::Instant,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> Deadline<B> {
    fn new(body: B, within: Duration) -> Deadline<B> {
        Deadline {
            body,
            at: tokio::time::Instant::now() + within,
            sleep: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within the header timeout")]
struct BodyTooSlow;

impl<B> hyper::body::Body for Deadline<B>
where
    B: hyper::body::Body + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = B::Data;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, axum::BoxError>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let at = self.at;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTooSlow)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Whether the peer is taking our bytes, from the kernel's own account
/// (`TCP_INFO`): bytes sent and acknowledged, bytes still queued. A peer that
/// stopped reading lets its receive window close; from then on nothing more
/// is acknowledged while our bytes wait in the queue. Checked from the
/// connection's own task, while it owns the socket, so the descriptor is the
/// connection's.
struct Progress {
    fd: RawFd,
    acked: u64,
    since: Instant,
}

impl Progress {
    fn new(fd: RawFd) -> Progress {
        Progress {
            fd,
            acked: 0,
            since: Instant::now(),
        }
    }

    /// How long bytes have waited with none acknowledged (zero while
    /// nothing waits or bytes move).
    fn stalled_for(&mut self, now: Instant) -> Duration {
        let Some((acked, waiting)) = tcp_progress(self.fd) else {
            return Duration::ZERO;
        };
        if !waiting || acked != self.acked {
            self.acked = acked;
            self.since = now;
            return Duration::ZERO;
        }
        now.duration_since(self.since)
    }
}

/// (bytes acknowledged so far, whether any bytes wait to be sent or acked).
fn tcp_progress(fd: RawFd) -> Option<(u64, bool)> {
    // SAFETY: getsockopt writes at most `len` bytes into `info`, a plain C
    // struct for which all zeroes is a valid value; a stale fd just fails.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let r = libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        if r != 0 {
            return None;
        }
        Some((
            info.tcpi_bytes_acked,
            info.tcpi_unacked > 0 || info.tcpi_notsent_bytes > 0,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(total: usize, per_ip: usize) -> Edge {
        Edge {
            header_timeout: Duration::from_secs(5),
            send_timeout: Duration::from_secs(5),
            max_connections: total,
            max_connections_per_ip: per_ip,
            uncapped: vec!["10.0.0.1".parse().unwrap()],
        }
    }

    #[test]
    fn caps_per_address_and_in_all_and_places_come_back() {
        let gate = Gate::new(&edge(4, 2));
        let a: IpAddr = "10.0.0.2".parse().unwrap();
        let b: IpAddr = "10.0.0.3".parse().unwrap();
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let a1 = gate.admit(a).unwrap();
        let _a2 = gate.admit(a).unwrap();
        assert_eq!(gate.admit(a).err(), Some(Cap::PerIp));
        assert_eq!(gate.open(), 2, "a refused connection holds no place");
        let _b1 = gate.admit(b).unwrap();
        let _p1 = gate.admit(proxy).unwrap();
        assert_eq!(gate.admit(proxy).err(), Some(Cap::Total));
        drop(a1);
        assert!(gate.admit(a).is_ok(), "a closed connection frees its place");
        assert_eq!(gate.per_ip.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_proxy_is_not_capped_per_address() {
        let gate = Gate::new(&edge(100, 1));
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let held: Vec<_> = (0..50).map(|_| gate.admit(proxy).unwrap()).collect();
        assert_eq!(held.len(), 50);
        assert!(gate.per_ip.lock().unwrap().is_empty());
    }

    #[test]
    fn the_cap_fits_under_the_open_file_limit() {
        assert_eq!(fit_connections(10_000, Some(1024), 128), 896);
        assert_eq!(fit_connections(500, Some(1024), 128), 500);
        assert_eq!(fit_connections(500, None, 128), 500);
    }

    #[test]
    fn throttled_logs_say_what_they_kept_quiet() {
        let t = Throttle::new();
        assert_eq!(t.ready(), Some(0));
        for _ in 0..5 {
            assert_eq!(t.ready(), None);
        }
        *t.last.lock().unwrap() = Some(Instant::now() - Duration::from_secs(2));
        assert_eq!(t.ready(), Some(5));
    }
}
