//! Postgres under cancellation: a caller that goes away (an aborted task, a
//! timeout, a client that hung up) never leaves a pooled connection in a
//! state that changes what the next borrower's statements do.

use std::time::Duration;

use crate::common::*;
use secrecy::ExposeSecret;
use sqlx::postgres::PgPoolOptions;

/// sqlx 0.8 counts a transaction only once Postgres has answered its BEGIN;
/// a caller cancelled in between returned the connection to the pool inside
/// a transaction nothing ends, and every later write through it was lost
/// (what the repair model caught: a PATCH answered 200 whose row stayed
/// pending). One connection in the pool, so every write after a cut BEGIN
/// goes through the connection it used; each must be visible from another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_cut_while_it_begins_leaves_no_connection_inside_it() {
    let app = TestApp::builder().without_worker().spawn().await;
    let one = PgPoolOptions::new()
        .max_connections(1)
        .connect(app.settings.database.url.expose_secret())
        .await
        .unwrap();
    sqlx::query("CREATE TABLE cut_probe (n int PRIMARY KEY)")
        .execute(&one)
        .await
        .unwrap();
    let mut cut_during_begin = 0;
    for n in 0..300_i32 {
        // Cuts that sweep the BEGIN's round trip, from before it is sent to
        // after its answer.
        let cut = Duration::from_micros(u64::try_from(n % 30).unwrap() * 15);
        match tokio::time::timeout(cut, flashsale::store::begin(&one)).await {
            Ok(tx) => drop(tx.unwrap()),
            Err(_) => cut_during_begin += 1,
        }
        sqlx::query("INSERT INTO cut_probe VALUES ($1)")
            .bind(n)
            .execute(&one)
            .await
            .unwrap();
        let seen: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM cut_probe WHERE n = $1)")
            .bind(n)
            .fetch_one(&app.db)
            .await
            .unwrap();
        assert!(
            seen,
            "write {n}, after a BEGIN cut at {cut:?}, is not committed: the connection was left inside a transaction"
        );
    }
    assert!(
        cut_during_begin > 0,
        "no BEGIN was cut: the test proved nothing"
    );
}
