//! Live sale snapshots for the stock stream: one poller per sale per
//! gateway, however many browsers watch it.
//!
//! The poller reads the sale (one script call) every 100 ms while anyone is
//! subscribed and publishes it into a `watch` channel only when status or
//! stock changed. A watch keeps just the latest value: a slow client skips
//! to the newest state and never holds anyone back; when the last subscriber
//! leaves, the poller stops.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::{Engine, EngineError, Refusal};
use crate::domain::Sale;

pub const EVERY: Duration = Duration::from_millis(100);

type Channel = watch::Sender<Option<Arc<Sale>>>;

#[derive(Clone, Default)]
pub struct Live {
    // std Mutex: held to look up or insert a channel, never across an await.
    sales: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Live {
    /// A receiver of the sale's latest snapshot (`None` until the first
    /// poll). Starts the sale's poller if nobody watched it yet.
    pub fn subscribe(&self, engine: &Engine, sale_id: &str) -> watch::Receiver<Option<Arc<Sale>>> {
        let Ok(mut sales) = self.sales.lock() else {
            // A poisoned map: give a channel that never changes.
            return watch::channel(None).1;
        };
        if let Some(tx) = sales.get(sale_id) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(None);
        sales.insert(sale_id.to_string(), tx.clone());
        tokio::spawn(poll(self.clone(), engine.clone(), sale_id.to_string(), tx));
        rx
    }
}

async fn poll(live: Live, engine: Engine, sale_id: String, tx: Channel) {
    let mut every = tokio::time::interval(EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        // Unsubscribed by everyone: stop, and let the next subscriber start
        // a fresh poller (checked under the lock so none can slip in).
        if tx.receiver_count() == 0 {
            if let Ok(mut sales) = live.sales.lock() {
                if tx.receiver_count() == 0 {
                    sales.remove(&sale_id);
                    return;
                }
            }
        }
        match engine.sale(&sale_id).await {
            Ok(sale) => {
                tx.send_if_modified(|current| {
                    let changed = current
                        .as_ref()
                        .is_none_or(|c| c.status != sale.status || c.stock != sale.stock);
                    if changed {
                        *current = Some(Arc::new(sale));
                    }
                    changed
                });
            }
            // Gone (Redis lost it): nothing to stream until it is back.
            Err(EngineError::Refused(Refusal::SaleNotFound)) => {}
            // Redis down: keep the last state; the stream's comments keep
            // the connections open until it is back.
            Err(_) => {}
        }
    }
}
