//! The flash-sale storm: thousands of simultaneous buyers over HTTP get exactly
//! the stock of a sale, never one unit more, and the counters add up at every
//! moment we look.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::common::*;
use futures::future::join_all;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn storm_of_2000_requests_gets_exactly_the_stock() {
    let app = spawn_app().await;
    let sale = app.live_sale(100, 2, 600).await;
    let tokens: Vec<String> = (0..500).map(|i| app.token(&format!("buyer-{i}"))).collect();

    // Sample the counters while the storm runs: they must add up every time.
    let running = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (running, engine, sale) = (running.clone(), app.engine.clone(), sale.clone());
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while running.load(Ordering::Relaxed) {
                samples.push(read_stock(&engine, &sale).await);
                tokio::task::yield_now().await;
            }
            samples
        })
    };

    let started = Instant::now();
    let answers = join_all((0..2000).map(|i| {
        let token = &tokens[i % 500];
        let quantity = 1 + (i % 2) as u32;
        let (app, sale) = (&app, &sale);
        async move { (i % 500, quantity, app.reserve(sale, token, quantity).await) }
    }))
    .await;
    let elapsed = started.elapsed();
    running.store(false, Ordering::Relaxed);
    let samples = sampler.await.unwrap();

    let mut codes: HashMap<String, usize> = HashMap::new();
    let mut units_per_customer: HashMap<usize, u32> = HashMap::new();
    let mut units = 0u32;
    for (customer, quantity, a) in &answers {
        *codes
            .entry(format!("{} {}", a.status, a.code()))
            .or_default() += 1;
        match a.status {
            201 => {
                assert_eq!(a.body["quantity"], *quantity);
                units += quantity;
                *units_per_customer.entry(*customer).or_default() += quantity;
            }
            409 => assert!(
                ["sold_out", "insufficient_stock", "limit_exceeded"].contains(&a.code()),
                "{}",
                a.body
            ),
            other => panic!("unexpected {other}: {}", a.body),
        }
    }
    eprintln!(
        "storm: 2000 requests in {:.2} s ({:.0} req/s), {} samples during it; {codes:?}",
        elapsed.as_secs_f64(),
        2000.0 / elapsed.as_secs_f64(),
        samples.len()
    );

    assert_eq!(units, 100, "exactly the stock is held");
    assert!(units_per_customer.values().all(|&u| u <= 2));
    assert!(
        samples.len() > 5,
        "the sampler ran during the storm ({} samples)",
        samples.len()
    );
    for sample in samples {
        assert_eq!(sample.total, 100);
        assert_adds_up(&sample);
    }
    let stock = app.stock(&sale).await;
    assert_eq!((stock.available, stock.held, stock.sold), (0, 100, 0));
    assert_adds_up(&stock);
    let engine_view = app.per_customer(&sale).await;
    assert!(engine_view.values().all(|&u| u <= 2), "{engine_view:?}");
    assert_eq!(engine_view.values().sum::<i64>(), 100);

    let a = app.get(&format!("/v1/sales/{sale}"), None).await;
    assert_eq!(a.body["status"], "sold_out");
}

/// Confirms and releases racing each other and new reserves: every unit is
/// accounted for, and sold equals what was confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn confirm_release_and_reserve_race_and_still_add_up() {
    let app = spawn_app().await;
    let sale = app.live_sale(50, 1, 600).await;
    let tokens: Vec<String> = (0..400).map(|i| app.token(&format!("c{i}"))).collect();
    let first = join_all(tokens.iter().map(|t| app.reserve(&sale, t, 1))).await;
    let winners: Vec<(usize, String)> = first
        .iter()
        .enumerate()
        .filter(|(_, a)| a.status == 201)
        .map(|(i, a)| (i, a.body["id"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(winners.len(), 50);

    // Half confirm, half release, while everyone else tries again.
    let (app_ref, sale_ref, tokens_ref) = (&app, &sale, &tokens);
    let settle = join_all(winners.iter().map(|(i, rid)| async move {
        if i % 2 == 0 {
            (true, app_ref.confirm(rid, &tokens_ref[*i]).await)
        } else {
            (false, app_ref.release(rid, &tokens_ref[*i]).await)
        }
    }));
    let retry = join_all(tokens.iter().map(|t| app_ref.reserve(sale_ref, t, 1)));
    let (settled, retried) = tokio::join!(settle, retry);

    let confirmed = settled
        .iter()
        .filter(|(c, a)| *c && a.status == 200)
        .count() as i64;
    assert!(settled.iter().all(|(_, a)| a.status == 200));
    let reheld = retried.iter().filter(|a| a.status == 201).count() as i64;
    for a in &retried {
        assert!(matches!(a.status, 201 | 409), "{}", a.body);
    }
    let stock = app.stock(&sale).await;
    assert_adds_up(&stock);
    assert_eq!(stock.sold, confirmed);
    assert_eq!(stock.held, reheld);
    assert!(stock.sold + stock.held <= 50);
    let (rows, distinct, units) = app.wait_for_orders(&sale, confirmed, 10).await;
    assert_eq!((rows, distinct, units), (confirmed, confirmed, confirmed));
    let per = app.per_customer(&sale).await;
    assert!(per.values().all(|&u| u <= 1), "{per:?}");
}
