//! The waiting room: a published order anyone can recompute, admission at
//! the room's pace, and the token used up in the reserve itself. Real
//! gateways, workers, Redis and Postgres; the statistics on 10,000 members.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use crate::common::*;
use flashsale::domain::rfc3339_ms;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use statrs::distribution::{Binomial, ChiSquared, ContinuousCDF, DiscreteCDF};
use time::OffsetDateTime;

/// A sale behind a room that opened a second ago and starts in `starts_in`.
fn room_sale(id: &str, stock: i64, starts_in: Duration, room: Value) -> Value {
    let now = OffsetDateTime::now_utc();
    let mut queue = json!({
        "opens_at": rfc3339_ms(now - Duration::from_secs(1)),
        "admit_per_second": 10, "admit_burst": 3, "admission_seconds": 60,
    });
    if let (Some(q), Some(r)) = (queue.as_object_mut(), room.as_object()) {
        q.extend(r.clone());
    }
    json!({
        "id": id, "sku": "TV-55-OLED", "name": "55\" OLED TV", "price_cents": 499900,
        "currency": "IDR", "stock": stock,
        "starts_at": rfc3339_ms(now + starts_in),
        "ends_at": rfc3339_ms(now + Duration::from_secs(3600)),
        "per_customer_limit": 1, "hold_seconds": 600, "queue": queue,
    })
}

async fn join(app: &TestApp, sale: &str, token: &str) -> Answer {
    let res = app
        .http
        .post(app.url(&format!("/v1/sales/{sale}/queue")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    Answer::from(res).await
}

async fn me(app: &TestApp, sale: &str, token: &str) -> Answer {
    app.get(&format!("/v1/sales/{sale}/queue/me"), Some(token))
        .await
}

async fn room(app: &TestApp, sale: &str) -> Value {
    let a = app.get(&format!("/v1/sales/{sale}/queue"), None).await;
    assert_eq!(a.status, 200, "{}", a.body);
    a.body
}

async fn reserve_admitted(
    app: &TestApp,
    sale: &str,
    token: &str,
    admission: Option<&str>,
) -> Answer {
    let mut req = app
        .http
        .post(app.url(&format!("/v1/sales/{sale}/reservations")))
        .bearer_auth(token)
        .json(&json!({"quantity": 1}));
    if let Some(a) = admission {
        req = req.header("Admission-Token", a);
    }
    Answer::from(req.send().await.unwrap()).await
}

/// The room once its seal is kept and published.
async fn published(app: &TestApp, sale: &str, within: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let r = room(app, sale).await;
        if !r["sealed_at"].is_null() {
            return r;
        }
        assert!(tokio::time::Instant::now() < deadline, "never sealed: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ms(text: &Value) -> i64 {
    let t = OffsetDateTime::parse(
        text.as_str().expect("a time"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("RFC 3339");
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// `feistel-sha256-v1` as a buyer writes it from docs/running-a-sale.md,
/// apart from the gateway's code: the test recomputes every position with it.
fn buyer_position(seed: &str, n: u64, ticket: u64) -> u64 {
    if n <= 1 || ticket >= n {
        return ticket;
    }
    let mut h = 1u32;
    while 4u128.pow(h) < u128::from(n) {
        h += 1;
    }
    let mask = (1u64 << h) - 1;
    let mut x = ticket;
    loop {
        let (mut l, mut r) = (x >> h, x & mask);
        for round in 0..8 {
            let d = Sha256::digest(format!("{seed}:{n}:{round}:{r}").as_bytes());
            let f = u64::from_be_bytes(d[..8].try_into().unwrap()) & mask;
            (l, r) = (r, l ^ f);
        }
        x = (l << h) | r;
        if x < n {
            return x;
        }
    }
}

fn hex_sha256(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_are_placed_by_the_published_seed_and_admitted_at_the_pace() {
    let app = spawn_app().await;
    // A second gateway with its own worker on the same Redis and Postgres:
    // two workers admit, and the pace holds for both together.
    let other = TestApp::builder().beside(&app).spawn().await;
    let sale = unique("wr-");
    let a = app
        .create_sale(&room_sale(&sale, 1000, Duration::from_secs(4), json!({})))
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.body["queue"]["admit_per_second"], 10, "{}", a.body);

    // 60 buyers, and one who joins 1,000 times at once.
    let buyers: Vec<String> = (0..60).map(|i| format!("b{i}")).collect();
    let joins = buyers.iter().map(|b| {
        let (app, other, sale, token) = (&app, &other, &sale, app.token(b));
        async move {
            let via = if b.len() % 2 == 0 { app } else { other };
            join(via, sale, &token).await
        }
    });
    let dup = app.token("dup");
    let dups = (0..1000).map(|_| join(&app, &sale, &dup));
    let (answers, dup_answers) = tokio::join!(
        futures::future::join_all(joins),
        futures::future::join_all(dups)
    );
    let mut ticket_of: HashMap<String, u64> = HashMap::new();
    for (b, a) in buyers.iter().zip(&answers) {
        assert_eq!(a.status, 201, "{}", a.body);
        assert_eq!(a.body["status"], "waiting");
        ticket_of.insert(b.clone(), a.body["ticket"].as_u64().unwrap());
    }
    let created = dup_answers.iter().filter(|a| a.status == 201).count();
    assert_eq!(created, 1, "one ticket for one customer");
    let dup_tickets: BTreeSet<u64> = dup_answers
        .iter()
        .map(|a| {
            assert!(a.status == 200 || a.status == 201, "{}", a.body);
            a.body["ticket"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(dup_tickets.len(), 1, "{dup_tickets:?}");
    ticket_of.insert("dup".into(), *dup_tickets.first().unwrap());
    let tickets: BTreeSet<u64> = ticket_of.values().copied().collect();
    assert_eq!(tickets, (0..61).collect(), "tickets unique and gap-free");

    // Before the start: the seed's hash is out, the seed and places are not.
    let before = room(&app, &sale).await;
    assert!(
        before["seed"].is_null() && before["sealed_at"].is_null(),
        "{before}"
    );
    let sha = before["seed_sha256"].as_str().unwrap().to_string();
    assert!(
        sha.len() == 64
            && sha
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    assert_eq!(before["members"], 61);
    assert_eq!(before["permutation"], "feistel-sha256-v1");
    let mine = me(&app, &sale, &app.token("b0")).await;
    assert_eq!(mine.status, 200, "{}", mine.body);
    assert!(mine.body["position"].is_null(), "{}", mine.body);
    reserve_admitted(&app, &sale, &app.token("b0"), None)
        .await
        .assert_problem(409, "sale_not_live");

    // The seal: the seed matches the hash published before anyone joined,
    // and every position is the buyer's own computation.
    let sealed = published(&app, &sale, Duration::from_secs(15)).await;
    let seed = sealed["seed"].as_str().unwrap().to_string();
    assert_eq!(hex_sha256(&seed), sha, "the seed is the one committed to");
    assert_eq!(sealed["members"], 61);
    let mut positions = BTreeSet::new();
    for (b, t) in &ticket_of {
        let place = me(&app, &sale, &app.token(b)).await;
        assert_eq!(place.status, 200, "{}", place.body);
        assert_eq!(place.body["ticket"], *t);
        let p = place.body["position"].as_u64().unwrap();
        assert_eq!(p, buyer_position(&seed, 61, *t), "{b}: {}", place.body);
        positions.insert(p);
    }
    assert_eq!(
        positions,
        (0..61).collect(),
        "positions unique and gap-free"
    );

    // A late joiner queues after the members, in order of arrival.
    let late = join(&app, &sale, &app.token("late")).await;
    assert_eq!((late.status, late.body["ticket"].as_u64()), (201, Some(61)));
    let late_me = me(&app, &sale, &app.token("late")).await;
    assert_eq!(late_me.body["position"], 61, "{}", late_me.body);

    // No reserve without a valid token while the room is active.
    let starts = ms(&a.body["starts_at"]);
    reserve_admitted(&app, &sale, &app.token("b1"), None)
        .await
        .assert_problem(409, "admission_required");
    reserve_admitted(&app, &sale, &app.token("b1"), Some("0.0123abcd"))
        .await
        .assert_problem(409, "admission_invalid");
    reserve_admitted(&app, &sale, &app.token("b1"), Some("not a token"))
        .await
        .assert_problem(409, "admission_invalid");

    // The pace, for both workers together: the cursor never passes
    // burst + rate · seconds since the start, and the line moves.
    let mut last = 0;
    for _ in 0..30 {
        let r = room(&other, &sale).await;
        let admitted = r["admitted"].as_u64().unwrap();
        let elapsed = (ms(&r["server_time"]) - starts).max(0) as u64;
        let bound = 3 + 10 * elapsed / 1000;
        assert!(
            admitted <= bound,
            "{admitted} admitted by {elapsed} ms: {r}"
        );
        assert!(admitted >= last);
        last = admitted;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(last >= 10, "the line did not move: {last}");

    // Admitted in position order: everyone before the cursor (read first)
    // has been admitted, nobody after it (read last) has.
    let cursor_before = room(&app, &sale).await["admitted"].as_u64().unwrap();
    let mut places = HashMap::new();
    for b in ticket_of.keys() {
        places.insert(b.clone(), me(&app, &sale, &app.token(b)).await.body);
    }
    let cursor_after = room(&app, &sale).await["admitted"].as_u64().unwrap();
    let mut tokens = HashMap::new();
    for (b, place) in &places {
        let p = place["position"].as_u64().unwrap();
        let status = place["status"].as_str().unwrap();
        if p < cursor_before {
            assert_eq!(status, "admitted", "{b}: {place}");
        }
        if p >= cursor_after {
            assert_eq!(status, "waiting", "{b}: {place}");
            let ahead = place["ahead"].as_u64().unwrap();
            assert!(
                (p - cursor_after..=p - cursor_before).contains(&ahead),
                "{place}"
            );
        }
        if status == "admitted" {
            tokens.insert(
                b.clone(),
                place["admission"]["token"].as_str().unwrap().to_string(),
            );
        }
    }
    assert!(!tokens.is_empty());

    // Someone else's token is refused, and stays usable for its holder.
    let (holder, token) = tokens
        .iter()
        .next()
        .map(|(b, t)| (b.clone(), t.clone()))
        .unwrap();
    let thief = ticket_of.keys().find(|b| **b != holder).unwrap().clone();
    reserve_admitted(&app, &sale, &app.token(&thief), Some(&token))
        .await
        .assert_problem(409, "admission_invalid");

    // One hold per token under concurrent replays, through both gateways.
    let holder_token = app.token(&holder);
    let replays = (0..30).map(|i| {
        let via = if i % 2 == 0 { &app } else { &other };
        reserve_admitted(via, &sale, &holder_token, Some(&token))
    });
    let replies = futures::future::join_all(replays).await;
    let held = replies.iter().filter(|a| a.status == 201).count();
    assert_eq!(held, 1, "one hold per token");
    for a in replies.iter().filter(|a| a.status != 201) {
        a.assert_problem(409, "admission_invalid");
    }
    let used = me(&app, &sale, &holder_token).await;
    assert_eq!(used.body["status"], "used", "{}", used.body);
    let hold = replies.iter().find(|a| a.status == 201).unwrap();
    assert_eq!(
        used.body["reservation_id"], hold.body["id"],
        "{}",
        used.body
    );
    assert_eq!(app.stock(&sale).await.held, 1);

    // Used up, the holder may queue again, at the back.
    let again = join(&app, &sale, &holder_token).await;
    assert_eq!(again.status, 201, "{}", again.body);
    assert!(
        again.body["ticket"].as_u64().unwrap() >= 62,
        "{}",
        again.body
    );
    other.shutdown().await.unwrap();
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_admission_left_unused_expires_and_its_holder_joins_at_the_back() {
    let app = spawn_app().await;
    let sale = unique("wr-");
    let room_cfg = json!({"admit_per_second": 100, "admit_burst": 5, "admission_seconds": 1});
    let a = app
        .create_sale(&room_sale(&sale, 10, Duration::from_secs(2), room_cfg))
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let token = app.token("slow");
    assert_eq!(join(&app, &sale, &token).await.status, 201);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let admission = loop {
        let place = me(&app, &sale, &token).await.body;
        if place["status"] == "admitted" {
            assert_eq!(place["eta_seconds"], 0);
            break place["admission"]["token"].as_str().unwrap().to_string();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never admitted: {place}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let place = me(&app, &sale, &token).await.body;
    assert_eq!(place["status"], "expired", "{place}");
    assert!(place.get("admission").is_none(), "{place}");
    reserve_admitted(&app, &sale, &token, Some(&admission))
        .await
        .assert_problem(409, "admission_invalid");
    let again = join(&app, &sale, &token).await;
    assert_eq!(again.status, 201, "{}", again.body);
    assert_eq!(again.body["ticket"], 1);
    assert_eq!(again.body["status"], "waiting");
    let stock = app.stock(&sale).await;
    assert_eq!((stock.available, stock.held), (10, 0));
    app.shutdown().await.unwrap();
}

/// Retention: once the sale is archived and Redis has forgotten its room, the
/// room's public view answers from Postgres, the same seed, members and
/// admissions: the order stays verifiable after the sale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archived_sales_room_stays_verifiable() {
    let app = spawn_app_with(|s| s.engine.retention_seconds = 1).await;
    let sale = unique("wa-");
    let mut body = room_sale(&sale, 5, Duration::from_secs(2), json!({}));
    body["ends_at"] = json!(rfc3339_ms(
        OffsetDateTime::now_utc() + Duration::from_secs(4)
    ));
    let a = app.create_sale(&body).await;
    assert_eq!(a.status, 201, "{}", a.body);
    for who in ["a", "b", "c"] {
        assert_eq!(join(&app, &sale, &app.token(who)).await.status, 201);
    }
    published(&app, &sale, Duration::from_secs(20)).await;
    // The burst admits all three at once; the sale then ends unbought.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let live = loop {
        let r = room(&app, &sale).await;
        if r["admitted"] == 3 {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "not admitted: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    app.wait_archived(&sale, Duration::from_secs(30)).await;
    let kept = room(&app, &sale).await;
    for field in [
        "opens_at",
        "sealed_at",
        "seed_sha256",
        "seed",
        "members",
        "admitted",
        "permutation",
        "admit_per_second",
    ] {
        assert_eq!(kept[field], live[field], "{field}: {kept} vs {live}");
    }
    assert_eq!(kept["members"], 3);
    assert_eq!(
        hex_sha256(kept["seed"].as_str().unwrap()),
        kept["seed_sha256"]
    );
    // Redis has forgotten the sale: buyers' places are gone with it.
    me(&app, &sale, &app.token("a"))
        .await
        .assert_problem(404, "sale_not_found");
    app.get("/v1/sales/nope-x/queue", None)
        .await
        .assert_problem(404, "sale_not_found");
    app.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_open_close_and_change_as_the_contract_says() {
    let app = spawn_app().await;
    let now = OffsetDateTime::now_utc();
    // A room that opens in a quarter of an hour: joining is too early, changing it is
    // still allowed (and shows on the sale).
    let later = unique("wr-");
    let mut body = room_sale(&later, 5, Duration::from_secs(1800), json!({}));
    body["queue"]["opens_at"] = json!(rfc3339_ms(now + Duration::from_secs(900)));
    assert_eq!(app.create_sale(&body).await.status, 201);
    assert_eq!(
        app.create_sale(&body).await.status,
        200,
        "the same sale again"
    );
    join(&app, &later, &app.token("c1"))
        .await
        .assert_problem(409, "queue_not_open");
    let public = room(&app, &later).await;
    assert!(public["seed_sha256"].is_null(), "{public}");
    let patch = |q: Value| {
        let app = &app;
        let later = later.clone();
        async move {
            let res = app
                .http
                .patch(app.url(&format!("/v1/sales/{later}")))
                .bearer_auth(app.admin())
                .json(&json!({ "queue": q }))
                .send()
                .await
                .unwrap();
            Answer::from(res).await
        }
    };
    let changed = patch(json!({"opens_at": rfc3339_ms(now - Duration::from_secs(1)),
        "admit_per_second": 7, "admit_burst": 2, "admission_seconds": 30}))
    .await;
    assert_eq!(changed.status, 200, "{}", changed.body);
    assert_eq!(
        changed.body["queue"]["admit_per_second"], 7,
        "{}",
        changed.body
    );
    // Now open (a join opens it at once): it keeps its configuration.
    assert_eq!(join(&app, &later, &app.token("c1")).await.status, 201);
    patch(json!({"opens_at": rfc3339_ms(now), "admit_per_second": 9,
        "admit_burst": 2, "admission_seconds": 30}))
    .await
    .assert_problem(422, "invalid_request");
    assert_eq!(room(&app, &later).await["admit_per_second"], 7);

    // A room must open before the sale starts.
    let mut bad = room_sale(&unique("wr-"), 5, Duration::from_secs(60), json!({}));
    bad["queue"]["opens_at"] = bad["starts_at"].clone();
    app.create_sale(&bad)
        .await
        .assert_problem(422, "invalid_request");

    // A sale without a room: no room to see or join, reserves as before.
    let plain = app.live_sale(5, 1, 600).await;
    let a = app.get(&format!("/v1/sales/{plain}/queue"), None).await;
    a.assert_problem(404, "queue_not_found");
    join(&app, &plain, &app.token("c1"))
        .await
        .assert_problem(404, "queue_not_found");
    me(&app, &plain, &app.token("c1"))
        .await
        .assert_problem(404, "queue_not_found");
    assert_eq!(app.reserve(&plain, &app.token("c1"), 1).await.status, 201);
    // A room's sale, for someone who never joined.
    me(&app, &later, &app.token("stranger"))
        .await
        .assert_problem(404, "not_in_queue");
    // After the sale: the room is closed.
    let ended = unique("wr-");
    let mut past = room_sale(&ended, 5, Duration::from_secs(1), json!({}));
    past["ends_at"] = json!(rfc3339_ms(now + Duration::from_millis(1500)));
    assert_eq!(app.create_sale(&past).await.status, 201);
    tokio::time::sleep(Duration::from_millis(1800)).await;
    join(&app, &ended, &app.token("c1"))
        .await
        .assert_problem(409, "queue_not_open");
    app.shutdown().await.unwrap();
}

/// The statistics of a placement: (chi-square p of the early joiners'
/// position deciles, Spearman's ρ of join order and position, binomial p
/// of the last joiners' share of the first 10 %).
fn fairness(n: u64, bots: u64, position: impl Fn(u64) -> u64) -> (f64, f64, f64) {
    let positions: Vec<u64> = (0..n).map(&position).collect();
    // The first tenth to join, over the ten deciles of position.
    let early = n / 10;
    let mut deciles = [0f64; 10];
    for p in &positions[..early as usize] {
        deciles[(p * 10 / n) as usize] += 1.0;
    }
    let expected = early as f64 / 10.0;
    let chi: f64 = deciles
        .iter()
        .map(|o| (o - expected).powi(2) / expected)
        .sum();
    let p_chi = 1.0 - ChiSquared::new(9.0).unwrap().cdf(chi);
    // Ranks are the tickets and the positions themselves.
    let d2: f64 = positions
        .iter()
        .enumerate()
        .map(|(t, p)| (t as f64 - *p as f64).powi(2))
        .sum();
    let nf = n as f64;
    let rho = 1.0 - 6.0 * d2 / (nf * (nf * nf - 1.0));
    // The last `bots` to join: how many got into the first 10 %.
    let first = n / 10;
    let k = positions[(n - bots) as usize..]
        .iter()
        .filter(|p| **p < first)
        .count() as u64;
    let b = Binomial::new(0.1, bots).unwrap();
    let lower = b.cdf(k);
    let upper = 1.0 - if k == 0 { 0.0 } else { b.cdf(k - 1) };
    let p_bin = (2.0 * lower.min(upper)).min(1.0);
    (p_chi, rho, p_bin)
}

#[track_caller]
fn assert_fair(n: u64, (p_chi, rho, p_bin): (f64, f64, f64), what: &str) {
    let bound = 3.3 / (n as f64).sqrt();
    assert!(p_chi > 0.001, "{what}: early joiners' deciles p = {p_chi}");
    assert!(
        rho.abs() < bound,
        "{what}: Spearman ρ = {rho} (bound {bound})"
    );
    assert!(p_bin > 0.001, "{what}: bots' share p = {p_bin}");
}

/// Fixed seeds, so the run is repeatable: the function itself is fair.
#[test]
fn the_permutation_is_fair_for_fixed_seeds() {
    let n = 10_000;
    for seed in [
        "12.12",
        "flash",
        "0",
        "a-much-longer-seed-with-text",
        "ff00ff",
    ] {
        let stats = fairness(n, 200, |t| buyer_position(seed, n, t));
        assert_fair(n, stats, seed);
        // The gateway's own implementation agrees with the buyer's.
        for t in (0..n).step_by(997) {
            assert_eq!(
                flashsale::domain::permutation::position(seed, n, t),
                buyer_position(seed, n, t)
            );
        }
    }
}

/// 10,000 members joining over the window, the last 200 all at once at the
/// end (bots): the published placement is fair, and every position the
/// gateway tells a buyer is the one they compute.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_members_are_placed_fairly() {
    let n: u64 = 10_000;
    let bots: u64 = 200;
    let app = spawn_app().await;
    let sale = unique("wr-");
    let a = app
        .create_sale(&room_sale(&sale, 100, Duration::from_secs(120), json!({})))
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    let tokens: Vec<String> = (0..n).map(|i| app.token(&format!("m{i}"))).collect();
    // The crowd, 64 at a time, in order; then the bots, all at once.
    use futures::StreamExt;
    let crowd = &tokens[..(n - bots) as usize];
    let tickets: Vec<u64> = futures::stream::iter(crowd.iter())
        .map(|t| {
            let (app, sale) = (&app, &sale);
            async move { join(app, sale, t).await }
        })
        .buffered(64)
        .map(|a| {
            assert_eq!(a.status, 201, "{}", a.body);
            a.body["ticket"].as_u64().unwrap()
        })
        .collect()
        .await;
    let bot_joins = tokens[(n - bots) as usize..]
        .iter()
        .map(|t| join(&app, &sale, t));
    let bot_tickets: Vec<u64> = futures::future::join_all(bot_joins)
        .await
        .iter()
        .map(|a| a.body["ticket"].as_u64().unwrap())
        .collect();
    let all: BTreeSet<u64> = tickets.iter().chain(&bot_tickets).copied().collect();
    assert_eq!(all, (0..n).collect(), "tickets unique and gap-free");
    assert!(
        bot_tickets.iter().all(|t| *t >= n - bots),
        "the bots came last"
    );

    // Start the sale now (the room seals at the start).
    let start = OffsetDateTime::now_utc() + Duration::from_millis(300);
    let mut conn = app.engine.connection();
    let k = app.engine.keys(&sale);
    redis::cmd("HSET")
        .arg(&k.sale)
        .arg("starts_ms")
        .arg((start.unix_timestamp_nanos() / 1_000_000) as i64)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let sealed = published(&app, &sale, Duration::from_secs(15)).await;
    assert_eq!(sealed["members"], n);
    let seed = sealed["seed"].as_str().unwrap();
    assert_eq!(hex_sha256(seed), sealed["seed_sha256"].as_str().unwrap());
    assert_fair(
        n,
        fairness(n, bots, |t| buyer_position(seed, n, t)),
        "published seed",
    );
    let mut seen = BTreeSet::new();
    for t in 0..n {
        assert!(seen.insert(buyer_position(seed, n, t)));
    }
    // What the gateway tells buyers is what they compute (a sample).
    for i in (0..n).step_by(101) {
        let place = me(&app, &sale, &tokens[i as usize]).await.body;
        let t = place["ticket"].as_u64().unwrap();
        assert_eq!(
            place["position"].as_u64(),
            Some(buyer_position(seed, n, t)),
            "{place}"
        );
    }
    app.shutdown().await.unwrap();
}

/// A sales file's `[sale.queue]` table puts the sale behind a room, as the
/// API's `queue` does; and a store page on another origin may send the
/// admission token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sales_files_and_other_origins_reach_the_room() {
    let app =
        spawn_app_with(|s| s.http.cors_allowed_origins = vec!["https://shop.example".into()]).await;
    let dir = std::env::temp_dir().join(unique("rooms-"));
    std::fs::create_dir_all(&dir).unwrap();
    let id = unique("wr-");
    let file = dir.join("sales.toml");
    std::fs::write(
        &file,
        format!(
            "[[sale]]\nid = \"{id}\"\nsku = \"TV\"\nname = \"TV\"\nprice_cents = 1000\n\
             currency = \"IDR\"\nstock = 5\nstarts_at = 2999-01-01T00:00:00Z\n\
             ends_at = 2999-01-02T00:00:00Z\nper_customer_limit = 1\nhold_seconds = 600\n\
             [sale.queue]\nopens_at = 2026-01-01T00:00:00Z\nadmit_per_second = 5\n\
             admit_burst = 1\nadmission_seconds = 60\n"
        ),
    )
    .unwrap();
    let out = app.run(&["sales", "load", file.to_str().unwrap()]);
    assert_exit(&out, 0);
    let sale = app.get(&format!("/v1/sales/{id}"), None).await;
    assert_eq!(sale.body["queue"]["admit_per_second"], 5, "{}", sale.body);
    // The room is open (opens_at passed): joining works, and a second load
    // of the same file changes nothing.
    let joined = join(&app, &id, &app.token("c1")).await;
    assert_eq!(joined.status, 201, "{}", joined.body);
    let again = app.run(&["sales", "load", file.to_str().unwrap()]);
    assert!(again.status.success());
    assert_eq!(room(&app, &id).await["members"], 1);

    let preflight = app
        .http
        .request(
            reqwest::Method::OPTIONS,
            app.url(&format!("/v1/sales/{id}/reservations")),
        )
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,admission-token",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    let allowed = preflight.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(allowed.contains("admission-token"), "{allowed}");
    app.shutdown().await.unwrap();
}

/// Redis loses the room (its keys deleted), then the whole sale (deleted and
/// rebuilt by on-call): the published seed and member count come back from
/// Postgres unchanged, and the sale stays behind the room throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_published_order_survives_redis_losing_the_room_and_the_sale() {
    let app = spawn_app().await;
    let sale = unique("wr-");
    let cfg = json!({"admit_per_second": 1, "admit_burst": 1, "admission_seconds": 600});
    let a = app
        .create_sale(&room_sale(&sale, 10, Duration::from_secs(2), cfg))
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    for b in ["l0", "l1", "l2", "l3"] {
        assert_eq!(join(&app, &sale, &app.token(b)).await.status, 201);
    }
    let sealed = published(&app, &sale, Duration::from_secs(15)).await;
    let k = app.engine.keys(&sale);
    let mut conn = app.engine.connection();
    let same = |r: &Value| {
        assert_eq!(r["seed"], sealed["seed"], "{r}");
        assert_eq!(r["seed_sha256"], sealed["seed_sha256"], "{r}");
        assert_eq!(r["members"], 4, "{r}");
        assert_eq!(r["sealed_at"], sealed["sealed_at"], "{r}");
    };

    // The room's hash alone.
    redis::cmd("DEL")
        .arg(&k.waiting_room)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let restored = restored_room(&app, &sale).await;
    same(&restored);

    // The whole sale, then a rebuild from Postgres.
    redis::cmd("DEL")
        .arg(&k.all()[..])
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let out = app.run(&["reconcile", "--rebuild", "--sale", &sale]);
    assert_exit(&out, 0);
    // At once after the rebuild, before the worker restored the room: a
    // reserve still needs an admission.
    reserve_admitted(&app, &sale, &app.token("l0"), None)
        .await
        .assert_problem(409, "admission_required");
    same(&restored_room(&app, &sale).await);
    // The tickets were lost with Redis: a buyer joins again, after the
    // members, and the line goes on.
    let again = join(&app, &sale, &app.token("l9")).await;
    assert_eq!(again.status, 201, "{}", again.body);
    assert!(
        again.body["ticket"].as_u64().unwrap() >= 4,
        "{}",
        again.body
    );
    app.shutdown().await.unwrap();
}

/// The public room once the worker has put it back.
async fn restored_room(app: &TestApp, sale: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let a = app.get(&format!("/v1/sales/{sale}/queue"), None).await;
        if a.status == 200 && !a.body["sealed_at"].is_null() {
            return a.body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never restored: {}",
            a.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
