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

use super::bearer::PublicReader;
use super::doc::{Problem, PROBLEM};
use super::error::ApiError;
use super::AppState;
use crate::domain::{Sale, SaleId, SaleStatus, Stock};

/// One server-sent event, as the document describes it.
#[derive(utoipa::ToSchema)]
#[schema(as = StockEventFrame)]
#[allow(dead_code)] // `Event` writes it; this only describes it.
struct Frame {
    #[schema(pattern = "^stock$")]
    event: String,
    /// A `StockEvent`, as JSON.
    #[schema(content_media_type = "application/json")]
    data: String,
}

/// The data of a `stock` event.
#[derive(Serialize, PartialEq, utoipa::ToSchema)]
pub(super) struct StockEvent<'a> {
    id: &'a str,
    status: SaleStatus,
    stock: Stock,
    #[schema(format = DateTime)]
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

/// A sale's stock as server-sent events.
///
/// One `stock` event at once, then the latest state whenever it changes (at
/// most one per 100 ms), and a comment at least every 15 s while idle.
#[utoipa::path(get, path = "/v1/sales/{sale_id}/stream", operation_id = "streamSale",
    tag = "sales",
    params(super::sales::SalePath),
    responses(
        (status = 200, description = "Server-sent events", content_type = "text/event-stream", body = Frame),
        (status = 404, description = "`sale_not_found`", body = Problem, content_type = PROBLEM),
        (status = 503, description = "`unavailable`: every stream place is taken, or Redis is down", body = Problem, content_type = PROBLEM,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ))]
/// Streams are long-lived: each holds a place of `http.max_streams` (and its
/// connection a place under the connection caps) until it ends. A client that
/// stops reading is closed by the server's send timeout (`crate::http::server`);
/// at shutdown every stream ends, so the drain does not wait for them.
pub async fn stream(
    State(state): State<AppState>,
    PublicReader(ip): PublicReader,
    id: SaleId,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let place = state.streams.clone().try_acquire_owned().map_err(|_| {
        crate::metrics::stream_refused();
        ApiError::Overloaded
    })?;
    let open = Open::new(place, &state);
    // The first event comes from the shared view (and a 404 for an unknown
    // sale).
    let first = state.live.sale(&state.engine, &id, Some(ip)).await?;
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
    let stop = state.stop.clone();
    let events = stream::once(std::future::ready(event(&first)))
        .chain(changes)
        .take_until(async move { stop.cancelled().await })
        .map(move |e| {
            // The place is given back when the stream is dropped.
            let _held = &open;
            Ok(e)
        });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// An open stream's place; keeps the gauge of open streams right.
struct Open {
    _place: tokio::sync::OwnedSemaphorePermit,
    streams: std::sync::Arc<tokio::sync::Semaphore>,
    max: usize,
}

impl Open {
    fn new(place: tokio::sync::OwnedSemaphorePermit, state: &AppState) -> Open {
        let max = state.settings.http.max_streams;
        crate::metrics::streams_open(max - state.streams.available_permits());
        Open {
            _place: place,
            streams: state.streams.clone(),
            max,
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        // The permit is released after this body: count it as gone already.
        let open = self.max - self.streams.available_permits();
        crate::metrics::streams_open(open.saturating_sub(1));
    }
}
