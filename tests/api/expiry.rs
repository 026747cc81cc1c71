//! Holds end confirmed xor expired, judged by one clock (Redis TIME), even when
//! confirms arrive right at the deadline while the reaper runs.

use std::time::Duration;

use crate::common::*;
use futures::future::join_all;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confirm_racing_expiry_ends_confirmed_xor_expired() {
    // A reaper running flat out, to make the race as tight as it gets.
    let app = spawn_app_with(|s| s.worker.reaper_interval_ms = 5).await;
    // Holds of 3 s, not 1: the 200 reserves must all be answered before the
    // first deadline, or a loaded machine (this binary runs the storms beside
    // it) sends every confirm late and the race never happens.
    let sale = app.live_sale(200, 1, 3).await;
    let tokens: Vec<String> = (0..200).map(|i| app.token(&format!("c{i}"))).collect();
    let holds = join_all(tokens.iter().map(|t| app.reserve(&sale, t, 1))).await;
    assert!(holds.iter().all(|a| a.status == 201));

    // Each hold is confirmed by three tasks, at the deadline give or take 40 ms.
    let attempts = join_all(holds.iter().enumerate().flat_map(|(i, h)| {
        let rid = h.body["id"].as_str().unwrap().to_string();
        let expires =
            OffsetDateTime::parse(h.body["expires_at"].as_str().unwrap(), &Rfc3339).unwrap();
        let (app, token) = (&app, &tokens[i]);
        (0..3).map(move |k| {
            let rid = rid.clone();
            async move {
                let offset_ms = (i as i64 * 7 + k * 13) % 81 - 40;
                let at = expires + time::Duration::milliseconds(offset_ms);
                let wait = at - OffsetDateTime::now_utc();
                if wait.is_positive() {
                    tokio::time::sleep(wait.unsigned_abs()).await;
                }
                let answer = app.confirm(&rid, token).await;
                // Both times are Redis TIME: an order never beats its deadline.
                if answer.status == 200 {
                    let at = answer.body["confirmed_at"].as_str().unwrap();
                    let at = OffsetDateTime::parse(at, &Rfc3339).unwrap();
                    assert!(
                        at < expires,
                        "hold {i} confirmed {} after its deadline",
                        at - expires
                    );
                }
                (i, answer)
            }
        })
    }))
    .await;

    let mut confirmed = [false; 200];
    let mut expired = [false; 200];
    for (i, a) in &attempts {
        match a.status {
            200 => confirmed[*i] = true,
            410 => {
                a.assert_problem(410, "hold_expired");
                expired[*i] = true;
            }
            other => panic!("confirm answered {other}: {}", a.body),
        }
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let mut n_confirmed = 0;
    for (i, h) in holds.iter().enumerate() {
        assert!(
            confirmed[i] != expired[i],
            "hold {i}: confirmed {} expired {}",
            confirmed[i],
            expired[i]
        );
        let rid = h.body["id"].as_str().unwrap();
        let now = app
            .get(&format!("/v1/reservations/{rid}"), Some(&tokens[i]))
            .await;
        let want = if confirmed[i] { "confirmed" } else { "expired" };
        assert_eq!(now.body["status"], want, "hold {i}");
        n_confirmed += confirmed[i] as i64;
    }
    let stock = app.stock(&sale).await;
    assert_adds_up(&stock);
    assert_eq!(stock.held, 0);
    assert_eq!(stock.sold, n_confirmed);
    assert_eq!(stock.available, 200 - n_confirmed);
    let (rows, distinct, _) = app.wait_for_orders(&sale, n_confirmed, 10).await;
    assert_eq!(
        (rows, distinct),
        (n_confirmed, n_confirmed),
        "one order per confirmed hold"
    );
    eprintln!(
        "confirm vs expiry: {n_confirmed} confirmed, {} expired",
        200 - n_confirmed
    );
    // Both outcomes must have happened, or the race was not at the deadline.
    assert!(n_confirmed > 0 && n_confirmed < 200);
}

#[tokio::test]
async fn abandoned_holds_return_within_a_second_of_their_deadline() {
    let app = spawn_app().await;
    let sale = app.live_sale(10, 5, 1).await;
    let token = app.token("walks-away");
    let a = app.reserve(&sale, &token, 5).await;
    assert_eq!(a.status, 201);
    let expires = OffsetDateTime::parse(a.body["expires_at"].as_str().unwrap(), &Rfc3339).unwrap();
    assert_eq!(app.stock(&sale).await.available, 5);

    // Poll until the units are back; note when that happened.
    let back_at = loop {
        if app.stock(&sale).await.available == 10 {
            break OffsetDateTime::now_utc();
        }
        assert!(
            OffsetDateTime::now_utc() < expires + time::Duration::seconds(3),
            "the hold was never reaped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(back_at >= expires, "reaped before its deadline");
    assert!(
        back_at - expires < time::Duration::seconds(1),
        "reaped {} after its deadline",
        back_at - expires
    );
    let stock = app.stock(&sale).await;
    assert_adds_up(&stock);
    let r = app
        .get(
            &format!("/v1/reservations/{}", a.body["id"].as_str().unwrap()),
            Some(&token),
        )
        .await;
    assert_eq!(r.body["status"], "expired");
    assert!(app.per_customer(&sale).await.is_empty());
    // The customer's limit counts only live holds and orders: they may buy again.
    assert_eq!(app.reserve(&sale, &token, 5).await.status, 201);
}
