//! The storm's HTTP/1.1 client: one kept-alive connection per buyer task,
//! through hyper's connection-level client (`hyper::client::conn::http1`).
//!
//! Why not `reqwest` for the storm as well: the crowd and the server under
//! test share the machine's cores, and every microsecond the crowd spends is
//! one the server does not get. reqwest's pooled client costs the crowd
//! about twice what a bare connection does per request (`bench/README.md`,
//! "The load generator's HTTP client"). Everything else (the sale, the
//! stock readings, confirms and releases) goes through reqwest, and so does
//! the storm when the URL is not plain `http://`.
//!
//! The connection is driven inside the buyer's own task, only while an
//! exchange is in flight, instead of by a task of its own as hyper's
//! examples do: a spawned driver adds a wake-up of another task (often on
//! the other core) to every request.

use std::io::{Error, ErrorKind};

use futures::future::{self, Either};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, Connection, SendRequest};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Answers larger than this are refused (a reserve's is ~250 bytes).
const MAX_ANSWER: usize = 1 << 20;

/// Where the storm's requests go: a plain `http://host[:port]/path` URL.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port`, to connect to.
    authority: String,
    /// What goes in the `Host` header.
    host: HeaderValue,
    /// The request target, in origin form.
    path: Uri,
}

impl Target {
    /// `None` unless the URL is `http://host[:port]/path` without user info
    /// (the storm does not speak TLS; reqwest then takes the storm).
    pub fn parse(url: &str) -> Option<Target> {
        let uri: Uri = url.parse().ok()?;
        if uri.scheme() != Some(&hyper::http::uri::Scheme::HTTP) {
            return None;
        }
        let authority = uri.authority()?;
        if authority.as_str().contains('@') || authority.host().is_empty() {
            return None;
        }
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        Some(Target {
            authority: format!(
                "{}:{}",
                authority.host(),
                authority.port_u16().unwrap_or(80)
            ),
            host: HeaderValue::from_str(authority.as_str()).ok()?,
            path: path.parse().ok()?,
        })
    }
}

/// `Bearer <token>`, built once per buyer rather than once per request.
pub fn bearer(token: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("Bearer {token}")).ok()
}

type Driver = Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// One buyer's connection, opened on first use and again after any error.
#[derive(Default)]
pub struct Conn {
    open: Option<(SendRequest<Full<Bytes>>, Driver)>,
}

impl Conn {
    /// POSTs `body` as JSON with the bearer; returns the status and the
    /// body. On any error the connection is dropped (the next call opens a
    /// new one).
    pub async fn post(
        &mut self,
        target: &Target,
        bearer: &HeaderValue,
        body: Bytes,
    ) -> std::io::Result<(u16, Bytes)> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(target.path.clone())
            .header(HOST, target.host.clone())
            .header(AUTHORIZATION, bearer.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(Full::new(body))
            .map_err(|e| Error::new(ErrorKind::InvalidInput, e))?;
        let (mut sender, mut driver) = self.ready(target).await?;
        // In a block: the exchange borrows `sender` until it is dropped.
        let (answer, kept) = {
            let exchange = std::pin::pin!(async {
                let res = sender.send_request(request).await.map_err(broken)?;
                let status = res.status().as_u16();
                let body = Limited::new(res.into_body(), MAX_ANSWER)
                    .collect()
                    .await
                    .map_err(|e| Error::new(ErrorKind::InvalidData, e))?
                    .to_bytes();
                Ok::<_, Error>((status, body))
            });
            match future::select(exchange, &mut driver).await {
                Either::Left((answer, _)) => (answer, true),
                // The connection ended (the server closed it, or it failed):
                // the answer may still be whole in hyper's buffers.
                Either::Right((ended, exchange)) => match (exchange.await, ended) {
                    (Err(_), Err(e)) => (Err(broken(e)), false),
                    (answer, _) => (answer, false),
                },
            }
        };
        if kept && answer.is_ok() {
            self.open = Some((sender, driver));
        }
        answer
    }

    /// A connection ready for a request: the kept one unless the server
    /// closed it meanwhile (after a `Connection: close` answer, or idle),
    /// else a new one. Nothing was sent on a kept connection found closed,
    /// so opening another cannot send a reserve twice.
    async fn ready(
        &mut self,
        target: &Target,
    ) -> std::io::Result<(SendRequest<Full<Bytes>>, Driver)> {
        if let Some((mut sender, mut driver)) = self.open.take() {
            if ready(&mut sender, &mut driver).await.is_ok() {
                return Ok((sender, driver));
            }
        }
        let (mut sender, mut driver) = connect(target).await?;
        ready(&mut sender, &mut driver).await?;
        Ok((sender, driver))
    }
}

/// Waits until `sender` may send, driving the connection meanwhile.
async fn ready(sender: &mut SendRequest<Full<Bytes>>, driver: &mut Driver) -> std::io::Result<()> {
    match future::select(std::pin::pin!(sender.ready()), driver).await {
        Either::Left((Ok(()), _)) => Ok(()),
        Either::Left((Err(e), _)) | Either::Right((Err(e), _)) => Err(broken(e)),
        Either::Right((Ok(()), _)) => Err(Error::new(
            ErrorKind::ConnectionAborted,
            "the server closed the connection",
        )),
    }
}

async fn connect(target: &Target) -> std::io::Result<(SendRequest<Full<Bytes>>, Driver)> {
    let stream = TcpStream::connect(&target.authority).await?;
    // Each request is written in one go and waits for its answer: Nagle's
    // delay would only add latency.
    stream.set_nodelay(true)?;
    http1::handshake(TokioIo::new(stream)).await.map_err(broken)
}

fn broken(e: hyper::Error) -> Error {
    let kind = if e.is_incomplete_message() || e.is_closed() || e.is_canceled() {
        ErrorKind::ConnectionAborted
    } else {
        ErrorKind::InvalidData
    };
    Error::new(kind, e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn targets_are_plain_http_only() {
        let t = Target::parse("http://127.0.0.1:8080/v1/sales/a/reservations").unwrap();
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert_eq!(t.host, "127.0.0.1:8080");
        assert_eq!(t.path, "/v1/sales/a/reservations");
        let t = Target::parse("http://gw/x").unwrap();
        assert_eq!(
            (t.authority.as_str(), t.host.to_str().unwrap()),
            ("gw:80", "gw")
        );
        assert!(Target::parse("https://gw/x").is_none());
        assert!(Target::parse("http://u:p@gw/x").is_none());
        assert!(Target::parse("not a url").is_none());
    }

    /// A server that answers every request on one connection with the
    /// given bytes, in pieces; returns the answers to `n` requests.
    async fn answer_with(raw: &'static [u8], n: usize) -> Vec<std::io::Result<(u16, Bytes)>> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut req = vec![0u8; 4096];
                    while s.read(&mut req).await.unwrap_or(0) > 0 {
                        for piece in raw.chunks(7) {
                            if s.write_all(piece).await.is_err() {
                                return;
                            }
                            let _ = s.flush().await;
                            tokio::task::yield_now().await;
                        }
                    }
                });
            }
        });
        let target = Target::parse(&format!("http://{addr}/p")).unwrap();
        let bearer = bearer("t").unwrap();
        let mut conn = Conn::default();
        let mut answers = Vec::new();
        for _ in 0..n {
            answers.push(conn.post(&target, &bearer, Bytes::from_static(b"{}")).await);
        }
        answers
    }

    #[tokio::test]
    async fn reads_answers_by_length_and_by_chunks_on_a_kept_connection() {
        for answer in answer_with(
            b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"id\":\"xy\"}",
            3,
        )
        .await
        {
            let (status, body) = answer.unwrap();
            assert_eq!((status, &body[..]), (201, &b"{\"id\":\"xy\"}"[..]));
        }
        for answer in answer_with(
            b"HTTP/1.1 409 Conflict\r\ntransfer-encoding: chunked\r\n\r\n4\r\n{\"co\r\n8\r\nde\":\"x\"}\r\n0\r\n\r\n",
            2,
        )
        .await
        {
            let (status, body) = answer.unwrap();
            assert_eq!((status, &body[..]), (409, &b"{\"code\":\"x\"}"[..]));
        }
    }

    #[tokio::test]
    async fn a_closed_connection_is_opened_again() {
        // Each answer closes its connection: every request needs a new one.
        for answer in answer_with(
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
            3,
        )
        .await
        {
            let (status, body) = answer.unwrap();
            assert_eq!((status, &body[..]), (200, &b"ok"[..]));
        }
    }
}
