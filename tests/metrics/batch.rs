//! Group commit through a gateway (issue 18): its reserve batch-size
//! histogram shows batches of more than one. The engine's own count of the
//! same is `tests/api`'s `batch::batches_form_under_concurrency`.

use futures::future::join_all;

use crate::common::*;

/// The n-th bucket count and the total count of `flashsale_batch_size` for
/// `op`, from the metrics text.
fn histogram(text: &str, op: &str) -> (f64, f64) {
    let value = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        value(&format!(
            "flashsale_batch_size_bucket{{op=\"{op}\",le=\"1\"}}"
        )),
        value(&format!("flashsale_batch_size_count{{op=\"{op}\"}}")),
    )
}

/// Through the gateway: the histogram shows batches of more than one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_form_under_concurrency_through_a_gateway() {
    let app = spawn_app().await;
    let sale = app.live_sale(100_000, 1000, 600).await;
    let tokens: Vec<String> = (0..200).map(|i| app.token(&format!("buyer-{i}"))).collect();
    let before = histogram(&app.metrics_text().await, "reserve");
    let answers = join_all((0..1000).map(|i| app.reserve(&sale, &tokens[i % 200], 1))).await;
    assert!(answers.iter().all(|a| a.status == 201));
    let text = app.metrics_text().await;
    assert!(
        text.contains("# HELP flashsale_batch_size "),
        "no HELP for flashsale_batch_size"
    );
    let after = histogram(&text, "reserve");
    let (ones, calls) = (after.0 - before.0, after.1 - before.1);
    assert!(
        calls > 0.0 && calls < 1000.0 && ones < calls,
        "no reserve batch of more than one: {calls} calls, {ones} of one"
    );
}
