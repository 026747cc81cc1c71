//! A crowd of buyers reserving and confirming through several gateways until
//! a deadline, while a test kills, restarts or moves the Redis under them;
//! then the checks of invariants 1, 2, 4 and 7 for every sale they bought
//! from. the cluster and durability tests share it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{live_sale, read_stock, TestApp};

/// Sales `{prefix}0`..: the first one, the busiest, big enough to stay live
/// through a storm (a sold-out sale is refused from the gateway's memory,
/// and then neither a kill nor a moved slot would reach its buyers); the
/// others small (150 units, 3 a customer), so they sell out and the storm
/// also meets refusals.
pub async fn create_sales(app: &TestApp, prefix: &str, n: usize) -> Arc<Vec<String>> {
    let sales: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    for (i, sale) in sales.iter().enumerate() {
        let (stock, limit) = if i == 0 { (50_000, 1_000) } else { (150, 3) };
        let a = app.create_sale(&live_sale(sale, stock, limit, 60)).await;
        assert_eq!(a.status, 201, "{}", a.body);
    }
    Arc::new(sales)
}

#[derive(Default)]
pub struct Seen {
    pub statuses: HashMap<u16, usize>,
    /// Reservation ids answered 200 on confirm, by sale.
    pub confirmed: HashMap<String, HashSet<String>>,
    /// Reservation ids answered 200 on release, by sale.
    pub released: HashMap<String, HashSet<String>>,
    /// 503s without `Retry-After`: the contract sets it on every one.
    pub bare_503s: usize,
}

/// `customers` buyers, spread round-robin over `apps`, each reserving one
/// unit and confirming it at once (one hold in eight released instead),
/// until `until`. Half of all reserves go to
/// `sales[0]`, the busiest sale; the rest spread over all of them, in an
/// order the seed fixes.
pub async fn storm(
    apps: Arc<Vec<TestApp>>,
    sales: Arc<Vec<String>>,
    customers: usize,
    until: Instant,
    seen: Arc<Mutex<Seen>>,
    seed: u64,
) {
    let mut tasks = Vec::new();
    for c in 0..customers {
        let (apps, sales, seen) = (apps.clone(), sales.clone(), seen.clone());
        tasks.push(tokio::spawn(async move {
            let app = &apps[c % apps.len()];
            let token = app.token(&format!("buyer-{c}"));
            let mut n = seed.wrapping_add(c as u64);
            while Instant::now() < until {
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let sale = if n >> 63 == 0 {
                    &sales[0]
                } else {
                    &sales[(n >> 33) as usize % sales.len()]
                };
                let held = app.reserve(sale, &token, 1).await;
                let mut statuses = vec![(held.status, held.retry_after.is_some())];
                if held.status == 201 {
                    let rid = held.body["id"].as_str().unwrap_or_default().to_string();
                    let release = (n >> 40).is_multiple_of(8);
                    let done = if release {
                        app.release(&rid, &token).await
                    } else {
                        app.confirm(&rid, &token).await
                    };
                    statuses.push((done.status, done.retry_after.is_some()));
                    if done.status == 200 {
                        let mut seen = seen.lock().unwrap();
                        let ended = if release {
                            &mut seen.released
                        } else {
                            &mut seen.confirmed
                        };
                        ended.entry(sale.clone()).or_default().insert(rid);
                    }
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let mut s = seen.lock().unwrap();
                for (st, retry_after) in statuses {
                    *s.statuses.entry(st).or_default() += 1;
                    s.bare_503s += usize::from(st == 503 && !retry_after);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// How long after `since` a reserve on `sale` is served again (201 or a
/// 409 refusal: the engine answered), trying every 50 ms with a fresh buyer
/// (a buyer's own limit must not end the probe early); panics past `bound`.
pub async fn served_again(app: &TestApp, sale: &str, since: Instant, bound: Duration) -> Duration {
    let mut n = 0;
    loop {
        n += 1;
        let token = app.token(&format!("probe-{n}"));
        let a = app.reserve(sale, &token, 1).await;
        if a.status != 503 {
            assert!(matches!(a.status, 201 | 409), "{}", a.body);
            return since.elapsed();
        }
        assert!(
            since.elapsed() < bound,
            "{sale} not served within {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The event of each hold of `sale` that ended, once every one of `awaited`
/// has one in Postgres (or 30 s passed); panics on a hold with two.
async fn hold_endings<'a>(
    app: &TestApp,
    sale: &str,
    awaited: impl Iterator<Item = &'a String> + Clone,
) -> HashMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events: Vec<(String, String)> = sqlx::query_as(
            "SELECT aggregateid, type FROM events
             WHERE sale_id = $1 AND aggregatetype = 'reservation'",
        )
        .bind(sale)
        .fetch_all(&app.db)
        .await
        .unwrap();
        let mut ended = HashMap::new();
        for (rid, kind) in events {
            if let Some(before) = ended.insert(rid.clone(), kind.clone()) {
                panic!("{sale}: {rid} ended twice: {before} and {kind}");
            }
        }
        if awaited.clone().all(|rid| ended.contains_key(rid)) || Instant::now() > deadline {
            return ended;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every status answered is in `allowed`; for every sale, once the worker
/// has flushed: each reservation answered 200 is exactly one Postgres row,
/// the counters add up, Redis `sold` covers Postgres's units (so no unit
/// Postgres sold is sold again), and no customer is above the sale's limit.
/// Returns the confirms answered 200.
pub async fn assert_no_order_lost(
    app: &TestApp,
    sales: &[String],
    seen: &Seen,
    allowed: &[u16],
) -> usize {
    for status in seen.statuses.keys() {
        assert!(
            allowed.contains(status),
            "answered {status}: {:?}",
            seen.statuses
        );
    }
    assert_eq!(seen.bare_503s, 0, "503s without Retry-After");
    let (mut total_confirmed, mut total_released) = (0, 0);
    for sale in sales {
        let confirmed = seen.confirmed.get(sale).cloned().unwrap_or_default();
        total_confirmed += confirmed.len();
        let (rows, distinct, units) = app.wait_for_orders(sale, confirmed.len() as i64, 30).await;
        let ids: Vec<(String,)> =
            sqlx::query_as("SELECT reservation_id FROM orders WHERE sale_id = $1")
                .bind(sale)
                .fetch_all(&app.db)
                .await
                .unwrap();
        let in_pg: HashSet<String> = ids.into_iter().map(|(r,)| r).collect();
        for rid in &confirmed {
            assert!(
                in_pg.contains(rid),
                "{sale}: {rid} answered 200 but is not in Postgres"
            );
        }
        assert_eq!(rows, distinct, "{sale}: an order written twice");
        // Invariant 8: each answered confirm and release has its event (the
        // confirm's written with the order, the release's flushed beside
        // it), and no hold has two endings.
        let released = seen.released.get(sale).cloned().unwrap_or_default();
        total_released += released.len();
        let answered: Vec<(&String, &str)> = confirmed
            .iter()
            .map(|rid| (rid, "reservation.confirmed"))
            .chain(released.iter().map(|rid| (rid, "reservation.released")))
            .collect();
        let ended = hold_endings(app, sale, answered.iter().map(|(rid, _)| *rid)).await;
        for (rid, kind) in answered {
            assert_eq!(
                ended.get(rid.as_str()).map(String::as_str),
                Some(kind),
                "{sale}: {rid} was answered 200 but has no {kind}"
            );
        }
        let stock = read_stock(&app.engine, sale).await;
        assert_eq!(
            stock.available + stock.held + stock.sold,
            stock.total,
            "{sale}: {stock:?}"
        );
        assert!(stock.available >= 0 && stock.held >= 0, "{sale}: {stock:?}");
        assert!(
            stock.sold >= units,
            "{sale}: Redis sold {} < Postgres {units}: it would sell them again",
            stock.sold
        );
        let limit = app.get(&format!("/v1/sales/{sale}"), None).await.body["per_customer_limit"]
            .as_i64()
            .expect("the sale's limit");
        for (customer, n) in app.per_customer(sale).await {
            assert!(n <= limit, "{sale}: {customer} holds {n}");
        }
    }
    eprintln!(
        "statuses {:?}, {total_confirmed} confirms and {total_released} releases answered 200",
        seen.statuses
    );
    assert!(
        total_released > 0,
        "no release was answered: their events went unchecked"
    );
    total_confirmed
}
