//! A reservation (a hold) and the order a confirm makes of it.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{rfc3339_ms, ReservationId};

/// A confirmed order on its way from the outbox to the `orders` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    pub order_id: uuid::Uuid,
    pub reservation_id: String,
    pub sale_id: String,
    pub customer_id: String,
    pub quantity: i32,
    pub price_cents: i64,
    pub currency: String,
    pub payment_ref: String,
    pub confirmed_at: OffsetDateTime,
    /// The hold's deadline (absent from entries written before it was kept).
    pub expires_at: Option<OffsetDateTime>,
    /// The service that confirmed it; `None` when the customer did.
    pub confirmed_by: Option<String>,
}

impl NewOrder {
    /// The confirmed reservation and its order as the API shows them. An
    /// order kept without its hold's deadline (written before it was kept)
    /// shows its confirmation time there.
    pub fn views(&self) -> (Reservation, Order) {
        let quantity = u32::try_from(self.quantity).unwrap_or(0);
        let reservation = Reservation {
            id: self.reservation_id.clone(),
            sale_id: self.sale_id.clone(),
            customer_id: self.customer_id.clone(),
            quantity,
            status: ReservationStatus::Confirmed,
            expires_at: rfc3339_ms(self.expires_at.unwrap_or(self.confirmed_at)),
        };
        let order = Order {
            order_id: self.order_id.to_string(),
            reservation_id: self.reservation_id.clone(),
            sale_id: self.sale_id.clone(),
            customer_id: self.customer_id.clone(),
            quantity,
            price_cents: self.price_cents,
            currency: self.currency.clone(),
            confirmed_at: rfc3339_ms(self.confirmed_at),
            confirmed_by: self.confirmed_by.clone(),
            payment_ref: self.payment_ref.clone(),
        };
        (reservation, order)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReservationStatus {
    Held,
    Confirmed,
    Released,
    Expired,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Reservation {
    /// `<sale id>.<32 hex>`.
    #[schema(value_type = ReservationId)]
    pub id: String,
    pub sale_id: String,
    pub customer_id: String,
    pub quantity: u32,
    pub status: ReservationStatus,
    /// The hold's deadline, by the server's clock.
    #[schema(format = DateTime)]
    pub expires_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Order {
    #[schema(format = "uuid")]
    pub order_id: String,
    pub reservation_id: String,
    pub sale_id: String,
    pub customer_id: String,
    pub quantity: u32,
    pub price_cents: i64,
    pub currency: String,
    #[schema(format = DateTime)]
    pub confirmed_at: String,
    /// The service whose confirm made the order; absent when the customer
    /// confirmed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_by: Option<String>,
    /// The payment the order was confirmed with. Not in the order's own
    /// answer (a buyer's receipt); shown to whoever confirms again with
    /// another reference (409 `already_confirmed`), since only then does it
    /// tell them something: that a second payment was taken.
    #[serde(skip)]
    pub payment_ref: String,
}
