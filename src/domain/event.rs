//! An event for the store, as the flush writes it to the Postgres `events`
//! table and a delivery posts it: its id (fixed by the script that made the
//! change), its aggregate, and the delivery body `{type, timestamp, data}`.

use serde_json::{json, Value};
use time::OffsetDateTime;

use super::{rfc3339_ms, NewOrder, Order, Reservation, Stock};

pub const CONFIRMED: &str = "reservation.confirmed";
pub const EXPIRED: &str = "reservation.expired";
pub const RELEASED: &str = "reservation.released";
pub const SOLD_OUT: &str = "sale.sold_out";

/// One event, ready for the `events` table.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `<reservation id>.<type>` or `<sale id>.sale.sold_out.<n>`.
    pub id: String,
    /// One of `webhook::EVENT_TYPES`.
    pub kind: String,
    /// `reservation` or `sale` (Debezium's outbox router routes on it).
    pub aggregatetype: &'static str,
    /// The reservation's or the sale's id.
    pub aggregateid: String,
    pub sale_id: String,
    /// The delivery body.
    pub payload: Value,
}

impl Event {
    /// A reservation's event: `data` is the sale, the sale's version after
    /// the change (`None`: written by a version that did not record it) and
    /// the reservation as `GET /v1/reservations/{id}` shows it, with the
    /// order (as the confirm answers it) for a confirm.
    pub fn reservation(
        id: String,
        kind: &str,
        at: OffsetDateTime,
        version: Option<i64>,
        reservation: &Reservation,
        order: Option<&Order>,
    ) -> Event {
        let mut data = json!({
            "sale_id": reservation.sale_id,
            "version": version,
            "reservation": reservation,
        });
        if let (Some(order), Value::Object(map)) = (order, &mut data) {
            map.insert("order".into(), json!(order));
        }
        Event {
            id,
            kind: kind.to_string(),
            aggregatetype: "reservation",
            aggregateid: reservation.id.clone(),
            sale_id: reservation.sale_id.clone(),
            payload: body(kind, at, data),
        }
    }

    /// The `reservation.confirmed` an order entry stands for (the order is
    /// the record of the confirm, written in the same step).
    pub fn confirmed(order: &NewOrder, version: Option<i64>) -> Event {
        let (reservation, view) = order.views();
        Event::reservation(
            format!("{}.{CONFIRMED}", order.reservation_id),
            CONFIRMED,
            order.confirmed_at,
            version,
            &reservation,
            Some(&view),
        )
    }

    /// A sell-out: `available` went from above 0 to 0.
    pub fn sold_out(
        id: String,
        at: OffsetDateTime,
        sale_id: &str,
        version: Option<i64>,
        stock: Stock,
    ) -> Event {
        let data = json!({"sale_id": sale_id, "version": version, "sale": stock});
        Event {
            id,
            kind: SOLD_OUT.to_string(),
            aggregatetype: "sale",
            aggregateid: sale_id.to_string(),
            sale_id: sale_id.to_string(),
            payload: body(SOLD_OUT, at, data),
        }
    }
}

fn body(kind: &str, at: OffsetDateTime, data: Value) -> Value {
    json!({"type": kind, "timestamp": rfc3339_ms(at), "data": data})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::from_ms;

    #[test]
    fn a_confirmed_event_shows_the_order_without_its_payment() {
        let order = NewOrder {
            order_id: uuid::Uuid::nil(),
            reservation_id: "tv.0123".into(),
            sale_id: "tv".into(),
            customer_id: "alice".into(),
            quantity: 2,
            price_cents: 100,
            currency: "IDR".into(),
            payment_ref: "secret-ref".into(),
            confirmed_at: from_ms(1_765_497_600_123),
            expires_at: Some(from_ms(1_765_497_660_000)),
            confirmed_by: None,
        };
        let e = Event::confirmed(&order, None);
        assert_eq!(e.id, "tv.0123.reservation.confirmed");
        assert_eq!(e.aggregatetype, "reservation");
        assert_eq!(e.payload["type"], CONFIRMED);
        assert_eq!(e.payload["timestamp"], "2025-12-12T00:00:00.123Z");
        assert_eq!(e.payload["data"]["version"], Value::Null);
        assert_eq!(e.payload["data"]["reservation"]["status"], "confirmed");
        assert_eq!(e.payload["data"]["order"]["quantity"], 2);
        assert!(!e.payload.to_string().contains("secret-ref"));
    }
}
