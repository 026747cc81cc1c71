//! Identity (issue 17): the store's own keys (PEM files, a JWKS served by a
//! real HTTP server started here), hostile tokens, the `service` role, and
//! extending holds while the reaper runs.
//!
//! Keys are made per test with the `openssl` CLI; nothing private is kept.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use flashsale::config::Settings;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::SecretString;
use serde_json::{json, Value};

const SECRET: &str = "identity-test-secret-of-some-length";

// ---------------------------------------------------------------- keys

/// A key pair made by `openssl genpkey`, in a directory of its own.
struct KeyPair {
    private_pem: Vec<u8>,
    public_pem: PathBuf,
    public_der: Vec<u8>,
    alg: Algorithm,
    kind: &'static str,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("the openssl CLI runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn keypair(kind: &'static str) -> KeyPair {
    let dir = std::env::temp_dir().join(unique("fs-keys-"));
    std::fs::create_dir_all(&dir).unwrap();
    let private = dir.join("private.pem");
    let public = dir.join("public.pem");
    let p = private.to_str().unwrap();
    let (gen, alg): (&[&str], _) = match kind {
        "rsa" => (
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            Algorithm::RS256,
        ),
        "ec" => (
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            Algorithm::ES256,
        ),
        "ed" => (&["-algorithm", "ED25519"], Algorithm::EdDSA),
        _ => unreachable!(),
    };
    let mut args = vec!["genpkey"];
    args.extend_from_slice(gen);
    args.extend_from_slice(&["-out", p]);
    openssl(&args);
    openssl(&[
        "pkey",
        "-in",
        p,
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    let public_der = openssl(&["pkey", "-in", p, "-pubout", "-outform", "DER"]);
    KeyPair {
        private_pem: std::fs::read(&private).unwrap(),
        public_pem: public,
        public_der,
        alg,
        kind,
        _dir: TempDir(dir),
    }
}

impl KeyPair {
    /// The public key as a JWK with `kid`.
    fn jwk(&self, kid: &str) -> Value {
        let der = &self.public_der;
        match self.kind {
            // openssl's default public exponent is 65537 (AQAB).
            "rsa" => {
                let n = B64.encode(rsa_modulus(&self.public_pem));
                json!({"kty": "RSA", "kid": kid, "use": "sig", "n": n, "e": "AQAB"})
            }
            // SPKI of a P-256 key: a fixed header, then 04 || x || y.
            "ec" => {
                let point = &der[der.len() - 64..];
                json!({"kty": "EC", "kid": kid, "crv": "P-256",
                       "x": B64.encode(&point[..32]), "y": B64.encode(&point[32..])})
            }
            // SPKI of an Ed25519 key: a fixed header, then the 32 bytes.
            _ => {
                json!({"kty": "OKP", "kid": kid, "crv": "Ed25519", "x": B64.encode(&der[der.len() - 32..])})
            }
        }
    }

    fn encoding(&self) -> EncodingKey {
        match self.kind {
            "rsa" => EncodingKey::from_rsa_pem(&self.private_pem).unwrap(),
            "ec" => EncodingKey::from_ec_pem(&self.private_pem).unwrap(),
            _ => EncodingKey::from_ed_pem(&self.private_pem).unwrap(),
        }
    }

    /// A token of `claims`, signed with this key, naming `kid`.
    fn sign(&self, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = kid.map(String::from);
        jsonwebtoken::encode(&header, claims, &self.encoding()).unwrap()
    }

    fn token(&self, kid: Option<&str>, sub: &str) -> String {
        self.sign(kid, &claims(sub, 3600))
    }
}

fn rsa_modulus(public_pem: &Path) -> Vec<u8> {
    let out = openssl(&[
        "rsa",
        "-pubin",
        "-in",
        public_pem.to_str().unwrap(),
        "-noout",
        "-modulus",
    ]);
    let text = String::from_utf8(out).unwrap();
    let hex = text.trim().trim_start_matches("Modulus=");
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn now_secs() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn claims(sub: &str, ttl: i64) -> Value {
    json!({"sub": sub, "exp": now_secs() + ttl})
}

// ------------------------------------------------------ the JWKS server

/// A store's JWKS endpoint: serves whatever set it is given, counts the
/// fetches, and can be stopped for good.
struct JwksServer {
    url: String,
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(keys: Vec<Value>) -> JwksServer {
        let keys = Arc::new(Mutex::new(keys));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (k, f) = (keys.clone(), fetches.clone());
        let app = axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let (k, f) = (k.clone(), f.clone());
                async move {
                    f.fetch_add(1, Ordering::SeqCst);
                    let set = json!({ "keys": *k.lock().unwrap() });
                    // No kept-alive connection outlives a stop.
                    ([("connection", "close")], axum::Json(set))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        JwksServer {
            url: format!("http://{addr}/.well-known/jwks.json"),
            keys,
            fetches,
            task,
        }
    }

    fn serve(&self, keys: Vec<Value>) {
        *self.keys.lock().unwrap() = keys;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    fn stop(&self) {
        self.task.abort();
    }
}

/// A gateway that takes the JWKS at `url` (and HS256 with an explicit
/// secret, for the admin's tokens).
async fn app_with_jwks(url: &str, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let url = url.to_string();
    spawn_app_with(move |s| {
        s.auth.jwt_secret = Some(SecretString::from(SECRET));
        s.auth.jwks_url = url;
        s.auth.jwks_min_refresh_seconds = 1;
        s.auth.jwks_max_age_seconds = 3;
        tweak(s);
    })
    .await
}

/// Waits until the gateway answers (its start fetches the JWKS first).
async fn ready(app: &TestApp) {
    for _ in 0..100 {
        if let Ok(r) = app.http.get(app.url("/healthz")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the gateway did not start");
}

/// A reserve of one unit with `token`: its status (201: the token was taken).
async fn reserve_status(app: &TestApp, sale: &str, token: &str) -> Answer {
    app.reserve(sale, token, 1).await
}

// --------------------------------------------------------------- tests

#[tokio::test]
async fn rs256_es256_and_eddsa_tokens_from_a_jwks_are_taken() {
    let (rsa, ec, ed) = (keypair("rsa"), keypair("ec"), keypair("ed"));
    let jwks = JwksServer::start(vec![rsa.jwk("r1"), ec.jwk("e1"), ed.jwk("d1")]).await;
    let app = app_with_jwks(&jwks.url, |_| {}).await;
    ready(&app).await;
    let sale = app.live_sale(100, 5, 600).await;
    for (key, kid) in [(&rsa, "r1"), (&ec, "e1"), (&ed, "d1")] {
        let a = reserve_status(&app, &sale, &key.token(Some(kid), &format!("buyer-{kid}"))).await;
        assert_eq!(a.status, 201, "{kid}: {}", a.body);
        assert_eq!(a.body["customer_id"], format!("buyer-{kid}"));
    }
    // The explicitly set HS256 secret stays beside the public keys.
    assert_eq!(
        reserve_status(&app, &sale, &app.token("hs")).await.status,
        201
    );
    assert_eq!(jwks.fetches(), 1, "one fetch at start, none per token");
}

#[tokio::test]
async fn pem_public_keys_verify_tokens_with_no_kid() {
    let (rsa, ec) = (keypair("rsa"), keypair("ec"));
    let files = vec![
        rsa.public_pem.display().to_string(),
        ec.public_pem.display().to_string(),
    ];
    let app = spawn_app_with(move |s| {
        s.auth.jwt_secret = Some(SecretString::from(SECRET));
        s.auth.jwt_public_keys = files;
    })
    .await;
    let sale = app.live_sale(10, 5, 600).await;
    assert_eq!(
        reserve_status(&app, &sale, &rsa.token(None, "a"))
            .await
            .status,
        201
    );
    assert_eq!(
        reserve_status(&app, &sale, &ec.token(None, "b"))
            .await
            .status,
        201
    );
    let stranger = keypair("rsa");
    reserve_status(&app, &sale, &stranger.token(None, "c"))
        .await
        .assert_problem(401, "unauthorized");
}

#[tokio::test]
async fn a_rotated_key_is_taken_after_one_refresh_and_a_removed_one_refused_after_max_age() {
    let (old, new) = (keypair("rsa"), keypair("ec"));
    let jwks = JwksServer::start(vec![old.jwk("k1")]).await;
    let app = app_with_jwks(&jwks.url, |_| {}).await;
    ready(&app).await;
    let sale = app.live_sale(100, 50, 600).await;
    assert_eq!(
        reserve_status(&app, &sale, &old.token(Some("k1"), "a"))
            .await
            .status,
        201
    );
    assert_eq!(jwks.fetches(), 1);

    // The store publishes its new key beside the old one; a token with the
    // new kid makes one fetch (past the minimum interval) and is taken.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    jwks.serve(vec![old.jwk("k1"), new.jwk("k2")]);
    let a = reserve_status(&app, &sale, &new.token(Some("k2"), "b")).await;
    assert_eq!(a.status, 201, "{}", a.body);
    let after_refresh = jwks.fetches();
    assert_eq!(after_refresh, 2, "one refresh for the new kid");

    // The old key is withdrawn: its tokens still pass from the cache until
    // the next refresh, at most jwks_max_age_seconds later, then never.
    jwks.serve(vec![new.jwk("k2")]);
    let withdrawn = Instant::now();
    let mut refused_after = None;
    while withdrawn.elapsed() < Duration::from_secs(8) {
        let a = reserve_status(&app, &sale, &old.token(Some("k1"), "c")).await;
        if a.status == 401 {
            a.assert_problem(401, "unauthorized");
            refused_after = Some(withdrawn.elapsed());
            break;
        }
        assert_eq!(a.status, 201, "{}", a.body);
        // Release, so the customer's limit never gets in the way.
        let rid = a.body["id"].as_str().unwrap().to_string();
        app.release(&rid, &old.token(Some("k1"), "c")).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = refused_after.expect("the withdrawn key was still taken after 8 s");
    assert!(
        took <= Duration::from_millis(4500),
        "refused only after {took:?}"
    );
    assert_eq!(
        reserve_status(&app, &sale, &new.token(Some("k2"), "d"))
            .await
            .status,
        201
    );
}

#[tokio::test]
async fn a_flood_of_unknown_kids_fetches_at_most_once_per_interval() {
    let known = keypair("ec");
    let jwks = JwksServer::start(vec![known.jwk("k1")]).await;
    let app = app_with_jwks(&jwks.url, |s| {
        s.auth.jwks_min_refresh_seconds = 2;
        s.auth.jwks_max_age_seconds = 600;
    })
    .await;
    ready(&app).await;
    let started = Instant::now();
    let sale = app.live_sale(10, 5, 600).await;
    let app = Arc::new(app);
    let flood_for = Duration::from_millis(4500);
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let (app, sale, key) = (app.clone(), sale.clone(), known.encoding());
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while started.elapsed() < flood_for {
                let mut header = Header::new(Algorithm::ES256);
                header.kid = Some(format!("made-up-{worker}-{n}"));
                let t = jsonwebtoken::encode(&header, &claims("x", 60), &key).unwrap();
                let a = app.reserve(&sale, &t, 1).await;
                a.assert_problem(401, "unauthorized");
                n += 1;
            }
            n
        }));
    }
    let mut sent = 0;
    for t in tasks {
        sent += t.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let fetches = jwks.fetches();
    // The start's fetch, then at most one per 2 s interval of the flood.
    let most = 1 + (elapsed / 2.0).ceil() as usize;
    assert!(sent > 100, "only {sent} tokens sent");
    assert!(
        fetches >= 2 && fetches <= most,
        "{fetches} fetches for {sent} unknown kids in {elapsed:.1} s (at most {most})"
    );
    // A real key still works throughout.
    assert_eq!(
        reserve_status(&app, &sale, &known.token(Some("k1"), "ok"))
            .await
            .status,
        201
    );
}

#[tokio::test]
async fn cached_keys_keep_working_while_the_jwks_server_is_down() {
    let key = keypair("rsa");
    let jwks = JwksServer::start(vec![key.jwk("k1")]).await;
    let app = app_with_jwks(&jwks.url, |_| {}).await;
    ready(&app).await;
    let sale = app.live_sale(100, 50, 600).await;
    assert_eq!(
        reserve_status(&app, &sale, &key.token(Some("k1"), "a"))
            .await
            .status,
        201
    );
    jwks.stop();
    // Past max age (3 s): the refreshes fail, the cached key stays.
    tokio::time::sleep(Duration::from_millis(4000)).await;
    let a = reserve_status(&app, &sale, &key.token(Some("k1"), "b")).await;
    assert_eq!(a.status, 201, "{}", a.body);
    // An unknown kid is refused, not an error of ours.
    reserve_status(&app, &sale, &key.token(Some("k9"), "c"))
        .await
        .assert_problem(401, "unauthorized");
    assert_eq!(
        reserve_status(&app, &sale, &key.token(Some("k1"), "d"))
            .await
            .status,
        201
    );
}

#[tokio::test]
async fn hostile_tokens_are_each_a_401() {
    let (rsa, ec) = (keypair("rsa"), keypair("ec"));
    let jwks = JwksServer::start(vec![rsa.jwk("r1"), ec.jwk("e1")]).await;
    let app = app_with_jwks(&jwks.url, |s| {
        s.auth.issuer = "https://login.shop.example".into();
        s.auth.audience = "flashsale".into();
        s.auth.leeway_seconds = 5;
    })
    .await;
    ready(&app).await;
    let sale = app.live_sale(100, 50, 600).await;
    let good = |sub: &str, exp: i64| json!({"sub": sub, "exp": exp, "iss": "https://login.shop.example", "aud": "flashsale"});
    let now = now_secs();
    // Controls: right issuer and audience, and expired within the leeway.
    for (what, token) in [
        ("good", rsa.sign(Some("r1"), &good("a", now + 60))),
        ("within leeway", rsa.sign(Some("r1"), &good("b", now - 2))),
    ] {
        let a = reserve_status(&app, &sale, &token).await;
        assert_eq!(a.status, 201, "{what}: {}", a.body);
    }

    let b64 = |v: &Value| B64.encode(v.to_string());
    let rsa_public_pem = std::fs::read(&rsa.public_pem).unwrap();
    let hs_with_public_key = |kid: Option<&str>| {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = kid.map(String::from);
        jsonwebtoken::encode(
            &h,
            &good("e", now + 60),
            &EncodingKey::from_secret(&rsa_public_pem),
        )
        .unwrap()
    };
    let mut wrong_iss = good("c", now + 60);
    wrong_iss["iss"] = json!("https://evil.example");
    let mut wrong_aud = good("c", now + 60);
    wrong_aud["aud"] = json!("another-app");
    let mut no_aud = good("c", now + 60);
    no_aud.as_object_mut().unwrap().remove("aud");
    let mut no_exp = good("c", now + 60);
    no_exp.as_object_mut().unwrap().remove("exp");
    let hostile: Vec<(&str, String)> = vec![
        ("wrong iss", rsa.sign(Some("r1"), &wrong_iss)),
        ("wrong aud", rsa.sign(Some("r1"), &wrong_aud)),
        ("no aud", rsa.sign(Some("r1"), &no_aud)),
        ("no exp", rsa.sign(Some("r1"), &no_exp)),
        (
            "expired beyond leeway",
            rsa.sign(Some("r1"), &good("c", now - 60)),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT", "kid": "r1"})),
                b64(&good("c", now + 60))
            ),
        ),
        (
            "alg none, no kid",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none"})),
                b64(&good("c", now + 60))
            ),
        ),
        (
            "HS256 with the RSA public key as secret",
            hs_with_public_key(Some("r1")),
        ),
        (
            "HS256 with the RSA public key, no kid",
            hs_with_public_key(None),
        ),
        (
            "ES256 token naming the RSA key's kid",
            ec.sign(Some("r1"), &good("c", now + 60)),
        ),
        (
            "RS256 token naming the EC key's kid",
            rsa.sign(Some("e1"), &good("c", now + 60)),
        ),
        (
            "sub of 65 characters",
            rsa.sign(Some("r1"), &good(&"s".repeat(65), now + 60)),
        ),
        (
            "sub not a string",
            rsa.sign(
                Some("r1"),
                &json!({"sub": 7, "exp": now + 60,
            "iss": "https://login.shop.example", "aud": "flashsale"}),
            ),
        ),
        ("three dots of nothing", "..".into()),
        ("not base64", "%%%.%%%.%%%".into()),
        (
            "header not JSON",
            format!("{}.{}.sig", B64.encode("nope"), b64(&good("c", now))),
        ),
        ("signature cut off", {
            let t = rsa.sign(Some("r1"), &good("c", now + 60));
            t[..t.len() - 10].to_string()
        }),
    ];
    for (what, token) in &hostile {
        let a = reserve_status(&app, &sale, token).await;
        assert_eq!(
            (a.status, a.code()),
            (401, "unauthorized"),
            "{what}: {}",
            a.body
        );
        a.assert_problem(401, "unauthorized");
    }
    // 100 kB: refused before it is decoded (or by the edge's header cap).
    let huge = format!("{}.{}.x", "e".repeat(50_000), "e".repeat(50_000));
    let a = reserve_status(&app, &sale, &huge).await;
    assert!(matches!(a.status, 401 | 431), "100 kB token: {}", a.status);
    // Nothing above was a fault of ours. The metrics are the process's: the
    // tests that make 500s on purpose run in another binary (tests/metrics).
    assert!(!app.metrics_text().await.contains("status=\"500\""));
}

/// Reserves one unit for `customer` and returns the reservation id.
async fn hold(app: &TestApp, sale: &str, customer: &str) -> String {
    let a = app.reserve(sale, &app.token(customer), 1).await;
    assert_eq!(a.status, 201, "{}", a.body);
    a.body["id"].as_str().unwrap().to_string()
}

async fn extend(app: &TestApp, rid: &str, token: &str, body: Value) -> Answer {
    let res = app
        .http
        .post(app.url(&format!("/v1/reservations/{rid}/extend")))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    Answer::from(res).await
}

fn service(app: &TestApp) -> String {
    app.auth
        .issue("shop-backend", Some("service"), 3600)
        .unwrap()
}

#[tokio::test]
async fn with_customer_confirm_off_only_a_service_confirms_and_the_order_says_so() {
    let app = spawn_app_with(|s| s.auth.customer_confirm = Some(false)).await;
    let sale = app.live_sale(10, 5, 600).await;
    let rid = hold(&app, &sale, "alice").await;
    app.confirm(&rid, &app.token("alice"))
        .await
        .assert_problem(403, "forbidden");
    let shop = service(&app);
    // The service reads and confirms any customer's hold.
    let a = app
        .get(&format!("/v1/reservations/{rid}"), Some(&shop))
        .await;
    assert_eq!((a.status, a.body["status"].as_str()), (200, Some("held")));
    let a = app.confirm(&rid, &shop).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["confirmed_by"], "shop-backend");
    assert_eq!(a.body["customer_id"], "alice");
    // Again: the same order.
    let again = app.confirm(&rid, &shop).await;
    assert_eq!(again.body["order_id"], a.body["order_id"]);
    let view = app
        .get(
            &format!("/v1/reservations/{rid}"),
            Some(&app.token("alice")),
        )
        .await;
    assert_eq!(view.body["order"]["confirmed_by"], "shop-backend");
    // The Postgres row, once the worker flushed it.
    assert_eq!(app.wait_for_orders(&sale, 1, 15).await.0, 1);
    let (by,): (Option<String>,) =
        sqlx::query_as("SELECT confirmed_by FROM orders WHERE reservation_id = $1")
            .bind(&rid)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(by.as_deref(), Some("shop-backend"));
    // A service releases any customer's hold, and never an admin endpoint.
    let other = hold(&app, &sale, "bob").await;
    assert_eq!(app.release(&other, &shop).await.body["status"], "released");
    let res = app
        .http
        .post(app.url("/v1/sales"))
        .bearer_auth(&shop)
        .json(&live_sale(&unique("s-"), 5, 1, 60))
        .send()
        .await
        .unwrap();
    Answer::from(res).await.assert_problem(403, "forbidden");
    let res = app
        .http
        .patch(app.url(&format!("/v1/sales/{sale}")))
        .bearer_auth(&shop)
        .json(&json!({"paused": true}))
        .send()
        .await
        .unwrap();
    Answer::from(res).await.assert_problem(403, "forbidden");
}

#[tokio::test]
async fn a_customers_own_confirm_has_no_confirmed_by() {
    let app = spawn_app().await;
    let sale = app.live_sale(10, 5, 600).await;
    let rid = hold(&app, &sale, "carol").await;
    let a = app.confirm(&rid, &app.token("carol")).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.get("confirmed_by").is_none(), "{}", a.body);
    assert_eq!(app.wait_for_orders(&sale, 1, 15).await.0, 1);
    let (by,): (Option<String>,) =
        sqlx::query_as("SELECT confirmed_by FROM orders WHERE reservation_id = $1")
            .bind(&rid)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(by, None);
}

#[tokio::test]
async fn a_service_extends_a_hold_and_confirms_it_after_the_first_deadline() {
    let app = spawn_app().await;
    let sale = app.live_sale(10, 5, 2).await;
    let rid = hold(&app, &sale, "dave").await;
    let shop = service(&app);
    let first = app
        .get(&format!("/v1/reservations/{rid}"), Some(&shop))
        .await;
    let a = extend(&app, &rid, &shop, json!({"seconds": 2})).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["status"], "held");
    assert!(a.body["expires_at"].as_str() > first.body["expires_at"].as_str());
    // Twice hold_seconds in all: no further.
    extend(&app, &rid, &shop, json!({"seconds": 1}))
        .await
        .assert_problem(422, "invalid_request");
    // Only a service extends.
    extend(&app, &rid, &app.token("dave"), json!({"seconds": 1}))
        .await
        .assert_problem(403, "forbidden");
    for bad in [
        json!({}),
        json!({"seconds": 0}),
        json!({"seconds": -3}),
        json!({"seconds": "10"}),
        json!({"seconds": 1.5}),
        json!({"seconds": 1, "x": 1}),
    ] {
        extend(&app, &rid, &shop, bad.clone())
            .await
            .assert_problem(422, "invalid_request");
    }
    // Past the first deadline (2 s), within the new one (4 s).
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let a = app.confirm(&rid, &shop).await;
    assert_eq!(a.status, 200, "{}", a.body);
    extend(&app, &rid, &shop, json!({"seconds": 1}))
        .await
        .assert_problem(409, "reservation_not_held");
    // A hold past its deadline is gone for good.
    let late = hold(&app, &sale, "erin").await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    extend(&app, &late, &shop, json!({"seconds": 1}))
        .await
        .assert_problem(410, "hold_expired");
    let released = hold(&app, &sale, "fay").await;
    app.release(&released, &app.token("fay")).await;
    extend(&app, &released, &shop, json!({"seconds": 1}))
        .await
        .assert_problem(409, "reservation_not_held");
    extend(
        &app,
        &format!("{sale}.00000000000000000000000000000000"),
        &shop,
        json!({"seconds": 1}),
    )
    .await
    .assert_problem(404, "reservation_not_found");
    assert_adds_up(&app.stock(&sale).await);
}

#[tokio::test]
async fn extends_racing_the_reaper_end_each_hold_confirmed_xor_expired() {
    let app = Arc::new(spawn_app().await);
    let holds = 120;
    let sale = app.live_sale(holds, 1, 1).await;
    let shop = service(&app);
    let mut rids = Vec::new();
    for i in 0..holds {
        let a = app.reserve(&sale, &app.token(&format!("c{i}")), 1).await;
        assert_eq!(a.status, 201, "{}", a.body);
        let expires = time::OffsetDateTime::parse(
            a.body["expires_at"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        rids.push((a.body["id"].as_str().unwrap().to_string(), expires));
    }
    // Each hold is extended at a moment spread around its deadline, racing
    // the reaper (every 100 ms in tests), then confirmed at once.
    let mut tasks = Vec::new();
    for (i, (rid, expires)) in rids.into_iter().enumerate() {
        let (app, shop) = (app.clone(), shop.clone());
        tasks.push(tokio::spawn(async move {
            let offset_ms = (i as i64 % 12) * 50 - 400; // -400 .. +150 ms
            let at = expires + time::Duration::milliseconds(offset_ms);
            let wait = at - time::OffsetDateTime::now_utc();
            if wait.is_positive() {
                tokio::time::sleep(wait.unsigned_abs()).await;
            }
            let e = extend(&app, &rid, &shop, json!({"seconds": 1})).await;
            let c = app.confirm(&rid, &shop).await;
            (rid, e.status, c.status)
        }));
    }
    let (mut confirmed, mut expired) = (Vec::new(), 0);
    for t in tasks {
        let (rid, e, c) = t.await.unwrap();
        match (e, c) {
            (200, 200) => confirmed.push(rid),
            (410, 410) => expired += 1,
            other => panic!("{rid}: extend and confirm answered {other:?}"),
        }
    }
    // Every deadline has passed; the reaper has had its turn.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let stock = app.stock(&sale).await;
    assert_adds_up(&stock);
    assert_eq!(stock.held, 0, "{stock:?}");
    assert_eq!(stock.sold, confirmed.len() as i64, "{stock:?}");
    assert_eq!(stock.available, holds - confirmed.len() as i64);
    for rid in &confirmed {
        let a = app
            .get(&format!("/v1/reservations/{rid}"), Some(&shop))
            .await;
        assert_eq!(a.body["status"], "confirmed", "{}", a.body);
    }
    let (rows, distinct, units) = app.wait_for_orders(&sale, confirmed.len() as i64, 20).await;
    assert_eq!(
        (rows, distinct, units),
        (confirmed.len() as i64, rows, rows)
    );
    eprintln!(
        "{} extended and confirmed, {expired} expired first",
        confirmed.len()
    );
}

#[tokio::test]
async fn token_key_signs_what_the_gateway_takes() {
    let (rsa, ec, ed) = (keypair("rsa"), keypair("ec"), keypair("ed"));
    let files: Vec<String> = [&rsa, &ec, &ed]
        .iter()
        .map(|k| k.public_pem.display().to_string())
        .collect();
    let app = spawn_app_with(move |s| {
        s.auth.jwt_secret = Some(SecretString::from(SECRET));
        s.auth.jwt_public_keys = files;
    })
    .await;
    let sale = app.live_sale(10, 5, 600).await;
    let rid = hold(&app, &sale, "alice").await;
    for key in [&rsa, &ec, &ed] {
        let dir = std::env::temp_dir().join(unique("fs-key-"));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("private.pem");
        std::fs::write(&file, &key.private_pem).unwrap();
        let out = app.run(&[
            "token",
            "--key",
            file.to_str().unwrap(),
            "--kid",
            "k1",
            "--sub",
            "shop",
            "--role",
            "service",
        ]);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!((header.alg, header.kid.as_deref()), (key.alg, Some("k1")));
        // A service token: it reads anyone's hold.
        let a = app
            .get(&format!("/v1/reservations/{rid}"), Some(&token))
            .await;
        assert_eq!(a.status, 200, "{:?}: {}", key.alg, a.body);
    }
    // The contract's form keeps working; an unknown role is refused.
    let out = app.run(&["token", "--sub", "ops", "--role", "admin", "--ttl", "60"]);
    assert!(out.status.success());
    let out = app.run(&["token", "--sub", "x", "--role", "root"]);
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn bad_identity_configuration_exits_2_naming_the_key() {
    let app = spawn_app().await;
    let rsa = keypair("rsa");
    let private = std::env::temp_dir().join(unique("fs-private-"));
    std::fs::write(&private, &rsa.private_pem).unwrap();
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (
            vec![(
                "FLASHSALE__AUTH__JWT_PUBLIC_KEYS",
                "/nonexistent/shop.pem".into(),
            )],
            "auth.jwt_public_keys",
        ),
        (
            vec![(
                "FLASHSALE__AUTH__JWT_PUBLIC_KEYS",
                private.display().to_string(),
            )],
            "auth.jwt_public_keys",
        ),
        (
            vec![
                (
                    "FLASHSALE__AUTH__JWKS_URL",
                    "http://127.0.0.1:9/jwks".into(),
                ),
                (
                    "FLASHSALE__AUTH__JWT_SECRET",
                    flashsale::config::DEV_JWT_SECRET.into(),
                ),
            ],
            "auth.jwt_secret",
        ),
        (
            vec![(
                "FLASHSALE__AUTH__JWKS_URL",
                "ftp://shop.example/jwks".into(),
            )],
            "auth.jwks_url",
        ),
        (
            vec![("FLASHSALE__AUTH__JWKS_MAX_AGE_SECONDS", "0".into())],
            "auth.jwks_max_age_seconds",
        ),
    ];
    for (env, key) in cases {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        app.serve_refuses(&[], &env, key);
    }
    let _ = std::fs::remove_file(&private);
}

/// A customer's own confirm of a fresh hold on `app`, with `token`.
async fn own_confirm(app: &TestApp, token: &str) -> Answer {
    let sale = app.live_sale(10, 5, 600).await;
    let rid = hold(app, &sale, "alice").await;
    app.confirm(&rid, token).await
}

#[tokio::test]
async fn buyers_confirm_their_own_holds_by_default_only_in_the_hs256_demo() {
    // The demo: HS256 and nothing else; a buyer confirms.
    let app = spawn_app().await;
    assert!(app.settings.auth.customer_confirm());
    assert_eq!(own_confirm(&app, &app.token("alice")).await.status, 200);

    // The store's PEM keys: only its backend confirms, unless set.
    let rsa = keypair("rsa");
    let pem = vec![rsa.public_pem.display().to_string()];
    let files = pem.clone();
    let app = spawn_app_with(move |s| {
        s.auth.jwt_secret = Some(SecretString::from(SECRET));
        s.auth.jwt_public_keys = files;
    })
    .await;
    assert!(!app.settings.auth.customer_confirm());
    own_confirm(&app, &rsa.token(None, "alice"))
        .await
        .assert_problem(403, "forbidden");
    assert_eq!(own_confirm(&app, &service(&app)).await.status, 200);
    let files = pem.clone();
    let app = spawn_app_with(move |s| {
        s.auth.jwt_secret = Some(SecretString::from(SECRET));
        s.auth.jwt_public_keys = files;
        s.auth.customer_confirm = Some(true);
    })
    .await;
    assert_eq!(
        own_confirm(&app, &rsa.token(None, "alice")).await.status,
        200,
        "an explicit value wins"
    );

    // The store's JWKS: the same.
    let jwks = JwksServer::start(vec![rsa.jwk("r1")]).await;
    let app = app_with_jwks(&jwks.url, |_| {}).await;
    ready(&app).await;
    assert!(!app.settings.auth.customer_confirm());
    own_confirm(&app, &rsa.token(Some("r1"), "alice"))
        .await
        .assert_problem(403, "forbidden");
    assert_eq!(own_confirm(&app, &service(&app)).await.status, 200);

    // From a configuration file: set explicitly, the value stands; unset,
    // it follows the keys.
    let dir = std::env::temp_dir().join(unique("fs-conf-"));
    std::fs::create_dir_all(&dir).unwrap();
    let keys = format!("[auth]\njwt_public_keys = [{:?}]\n", pem[0]);
    for (extra, expected) in [
        ("", false),
        ("customer_confirm = true\n", true),
        ("customer_confirm = false\n", false),
    ] {
        let file = dir.join("c.toml");
        std::fs::write(&file, format!("{keys}{extra}")).unwrap();
        let s = Settings::load(Some(&file)).unwrap();
        assert_eq!(s.auth.customer_confirm(), expected, "{extra:?}");
    }
    let file = dir.join("plain.toml");
    std::fs::write(&file, "[auth]\ncustomer_confirm = false\n").unwrap();
    assert!(!Settings::load(Some(&file)).unwrap().auth.customer_confirm());
    let _ = std::fs::remove_dir_all(&dir);
}
