//! `GET /v1/sales/{sale_id}/stream`: the sale's stock as server-sent events.
//! One `stock` event at once, then the latest state on change (at most one
//! per 100 ms: the poller's pace), and a comment every 15 s while idle.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::stream::{self, Stream, StreamExt};
use serde::Serialize;
use tokio_stream::wrappers::WatchStream;

use super::error::ApiError;
use super::extract::PathId;
use super::sales::sale_id;
use super::AppState;
use crate::domain::{Sale, SaleStatus, Stock};

#[derive(Serialize, PartialEq)]
struct StockEvent<'a> {
    id: &'a str,
    status: SaleStatus,
    stock: Stock,
    server_time: &'a str,
}

fn event(sale: &Sale) -> Event {
    let body = StockEvent {
        id: &sale.id,
        status: sale.status,
        stock: sale.stock,
        server_time: &sale.server_time,
    };
    Event::default()
        .event("stock")
        .json_data(&body)
        .unwrap_or_else(|_| Event::default().comment("unserializable"))
}

pub async fn stream(
    State(state): State<AppState>,
    id: PathId,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let id = sale_id(id)?;
    // The first event comes from a fresh read (and a 404 for an unknown sale).
    let first = state.engine.sale(&id).await?;
    let last = (first.status, first.stock);
    let changes = WatchStream::new(state.live.subscribe(&state.engine, &id))
        .filter_map(std::future::ready)
        .scan(last, |last, sale| {
            let now = (sale.status, sale.stock);
            let fresh = now != *last;
            *last = now;
            std::future::ready(Some(fresh.then(|| event(&sale))))
        })
        .filter_map(std::future::ready);
    let events = stream::once(std::future::ready(event(&first)))
        .chain(changes)
        .map(Ok);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
