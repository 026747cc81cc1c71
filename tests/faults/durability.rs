//! One Redis with `appendonly yes` and `appendfsync always`, as docs/operations.md
//! recommends for a standalone deployment: SIGKILLed mid-storm and started
//! again on its own dir and port, it loses no order answered 200. Redis
//! fsyncs the AOF before it sends the replies of the writes it carries, so
//! whatever a buyer was told (a hold, an order) survives the kill; a write
//! cut off before its reply reached nobody, and its buyer got a 503.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::redis_server::PrivateRedis;
use crate::common::TestApp;
use crate::crowd::{assert_no_order_lost, create_sales, served_again, storm, Seen};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sigkilled_redis_with_appendfsync_always_loses_no_order() {
    let mut redis = PrivateRedis::start_with(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--save",
        "",
    ]);
    // This test is about one server's own disk, whatever the suite runs on.
    let app = TestApp::builder().on(&redis).spawn().await;
    let sales = create_sales(&app, "d", 4).await;
    let apps = Arc::new(vec![app]);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let seed = (uuid::Uuid::new_v4().as_u128() % 10_000) as u64;
    eprintln!("seed {seed}");
    let storm = tokio::spawn(storm(
        apps.clone(),
        sales.clone(),
        150,
        Instant::now() + Duration::from_secs(10),
        seen.clone(),
        seed,
    ));
    tokio::time::sleep(Duration::from_millis(1500 + seed % 3000)).await;
    // block_in_place: stop and restart wait on the process, and the
    // gateway serves on this runtime's other threads meanwhile.
    tokio::task::block_in_place(|| redis.stop()); // SIGKILL
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::block_in_place(|| redis.restart());
    let back = served_again(&apps[0], "d0", killed, Duration::from_secs(30)).await;
    eprintln!(
        "appendfsync always: d0 served again {} ms after the kill",
        back.as_millis()
    );
    storm.await.unwrap();

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    // No 404: a hold answered 201 was on disk before its answer left Redis.
    let confirmed = assert_no_order_lost(&apps[0], &sales, &seen, &[200, 201, 409, 429, 503]).await;
    assert!(confirmed > 100, "the storm confirmed only {confirmed}");
    assert!(
        seen.statuses.get(&503).copied().unwrap_or(0) > 0,
        "the kill reached no buyer: {:?}",
        seen.statuses
    );
}
