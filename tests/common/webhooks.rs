//! A store's receiver for the webhook tests (issue 28): an HTTP server on
//! loopback that records every request and answers as its script says, and
//! the check of each request with the PyPI `standardwebhooks` package (an
//! implementation that is not ours). `tests/api` and `tests/faults` share it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use flashsale::config::Settings;
use flashsale::domain::webhook::Secret;
use serde_json::{json, Value};

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Seen {
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub content_type: String,
    pub body: Vec<u8>,
}

/// What the receiver answers.
#[derive(Debug, Clone, Copy)]
pub enum Reply {
    Status(u16),
    /// Never answers.
    Hang,
    /// Answers after a while.
    Slow(Duration, u16),
}

/// Decides the answer from the request and how many times its id came.
pub type Script = Arc<dyn Fn(&Seen, usize) -> Reply + Send + Sync>;

#[derive(Clone)]
struct Shared {
    seen: Arc<Mutex<Vec<Seen>>>,
    script: Script,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
}

/// An HTTP server on loopback, as a store's receiver.
pub struct Receiver {
    pub addr: SocketAddr,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start(script: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Receiver::on(listener, Arc::new(script))
    }

    pub fn on(listener: tokio::net::TcpListener, script: Script) -> Receiver {
        let addr = listener.local_addr().unwrap();
        let shared = Shared {
            seen: Arc::default(),
            script,
            in_flight: Arc::default(),
            max_in_flight: Arc::default(),
        };
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, shared, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let seen = Seen {
        id: h("webhook-id"),
        timestamp: h("webhook-timestamp"),
        signature: h("webhook-signature"),
        content_type: h("content-type"),
        body: body.to_vec(),
    };
    let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    s.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let times = {
        let mut all = s.seen.lock().unwrap();
        all.push(seen.clone());
        all.iter().filter(|x| x.id == seen.id).count()
    };
    let reply = (s.script)(&seen, times);
    let status = match reply {
        Reply::Status(code) => code,
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            500
        }
        Reply::Slow(wait, code) => {
            tokio::time::sleep(wait).await;
            code
        }
    };
    s.in_flight.fetch_sub(1, Ordering::SeqCst);
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// The settings the tests deliver with: to loopback over http, quickly.
pub fn local(s: &mut Settings) {
    s.webhooks.allow_http = true;
    s.webhooks.allow_private_networks = true;
    s.webhooks.timeout_ms = 2000;
    s.webhooks.retry_schedule_seconds = vec![1, 1];
}

/// The Python of the venv with `standardwebhooks` (PyPI), made on first
/// use under target/ as scripts/schemathesis.sh makes its own. None: pip
/// could not install it (offline); the caller skips the check, loudly.
fn standardwebhooks_python() -> Option<PathBuf> {
    static PYTHON: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/webhooks-venv");
            let python = venv.join("bin/python");
            let has = |p: &PathBuf| {
                std::process::Command::new(p)
                    .args(["-c", "import standardwebhooks"])
                    .status()
                    .is_ok_and(|s| s.success())
            };
            if has(&python) {
                return Some(python);
            }
            let made = std::process::Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .is_ok_and(|s| s.success())
                && std::process::Command::new(venv.join("bin/pip"))
                    .args([
                        "install",
                        "--quiet",
                        "--disable-pip-version-check",
                        "standardwebhooks",
                    ])
                    .status()
                    .is_ok_and(|s| s.success());
            (made && has(&python)).then_some(python)
        })
        .clone()
}

/// Verifies each request with `standardwebhooks.Webhook(secret).verify`
/// for each of `secrets` (every one must accept it), and the same request
/// with one byte of the body changed (every one must refuse it). Panics on
/// any difference.
pub fn verify_with_standardwebhooks(seen: &[Seen], secrets: &[&Secret]) {
    let Some(python) = standardwebhooks_python() else {
        eprintln!("SKIPPED: pip cannot install standardwebhooks; the signatures are unchecked");
        return;
    };
    let cases: Vec<Value> = seen
        .iter()
        .map(|s| {
            json!({
                "id": s.id,
                "timestamp": s.timestamp,
                "signature": s.signature,
                "body": String::from_utf8_lossy(&s.body),
            })
        })
        .collect();
    let input = json!({
        "secrets": secrets.iter().map(|s| s.reveal()).collect::<Vec<_>>(),
        "cases": cases,
    });
    let script = r#"
import json, sys
from standardwebhooks import Webhook
data = json.load(sys.stdin)
bad = []
for secret in data["secrets"]:
    hook = Webhook(secret)
    for c in data["cases"]:
        headers = {"webhook-id": c["id"], "webhook-timestamp": c["timestamp"],
                   "webhook-signature": c["signature"]}
        try:
            hook.verify(c["body"], headers)
        except Exception as e:
            bad.append("refused %s: %s" % (c["id"], e))
        body = bytearray(c["body"].encode())
        body[len(body) // 2] ^= 1
        try:
            hook.verify(bytes(body).decode(), headers)
            bad.append("accepted a changed body of %s" % c["id"])
        except Exception:
            pass
print(json.dumps({"checked": len(data["cases"]) * len(data["secrets"]), "bad": bad}))
"#;
    use std::io::Write;
    let mut child = std::process::Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the verifier failed");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["bad"], json!([]), "{report}");
    assert_eq!(
        report["checked"].as_u64(),
        Some((seen.len() * secrets.len()) as u64)
    );
}
