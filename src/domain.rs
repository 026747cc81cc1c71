//! The nouns of a flash sale as clients see them: a sale's definition and
//! live view, a reservation, an order. Validation of client input lives here,
//! so the engine and the store only ever see well-formed values.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Upper bound for any stock figure and price: far above any real sale, far
/// below what Lua's doubles (2^53) and Postgres BIGINT hold exactly.
pub const MAX_UNITS: i64 = 1_000_000_000;
pub const MAX_PRICE_CENTS: i64 = 1_000_000_000_000;

/// `[a-z0-9_-]{1,64}`: also the hash tag of every Redis key of the sale, so it
/// must never contain braces.
pub fn valid_sale_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// An id checked once, where it enters (an extractor, a token), and passed
/// on as its type: code that takes one never checks it again.
macro_rules! checked_id {
    ($(#[$doc:meta])* $name:ident, $valid:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub struct $name(String);

        impl $name {
            /// The id, if it is one.
            pub fn parse(text: impl Into<String>) -> Option<$name> {
                let text = text.into();
                let valid: fn(&str) -> bool = $valid;
                valid(&text).then_some($name(text))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }
    };
}

checked_id!(
    /// A sale id: `[a-z0-9_-]{1,64}`, also the hash tag of the sale's keys.
    SaleId,
    valid_sale_id
);
checked_id!(
    /// A reservation id: `<sale id>.<32 hex>`, so it names its sale.
    ReservationId,
    |id| sale_of_reservation(id).is_some()
);
checked_id!(
    /// A customer id (a token's subject): 1 to 64 printable ASCII characters.
    CustomerId,
    valid_customer_id
);

impl ReservationId {
    /// The sale the reservation belongs to.
    pub fn sale(&self) -> &str {
        // Checked at parse: the part before the last dot is a sale id.
        self.0.rsplit_once('.').map_or("", |(sale, _)| sale)
    }
}

/// A customer id (JWT `sub`): 1 to 64 printable ASCII characters.
pub fn valid_customer_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_graphic())
}

/// The body of `POST /v1/sales` (and one `[[sale]]` of a sales file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaleInput {
    pub id: Option<String>,
    pub sku: String,
    pub name: String,
    pub price_cents: i64,
    pub currency: String,
    pub stock: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub starts_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub ends_at: OffsetDateTime,
    pub per_customer_limit: u32,
    pub hold_seconds: u32,
}

/// A validated sale as marketing scheduled it. Its JSON form is canonical: the
/// engine compares it byte for byte to tell "same sale again" from a conflict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaleDef {
    pub id: String,
    pub sku: String,
    pub name: String,
    pub price_cents: i64,
    pub currency: String,
    pub stock: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub starts_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub ends_at: OffsetDateTime,
    pub per_customer_limit: u32,
    pub hold_seconds: u32,
}

impl SaleInput {
    /// Checks every field and returns the first problem in words a client can
    /// act on. `new_id` is used when the body has no `id`.
    pub fn validate(self, new_id: impl FnOnce() -> String) -> Result<SaleDef, String> {
        let id = match self.id {
            Some(id) if !valid_sale_id(&id) => {
                return Err("`id` must match [a-z0-9_-]{1,64}".into());
            }
            Some(id) => id,
            None => new_id(),
        };
        let text_ok = |s: &str, max: usize| !s.trim().is_empty() && s.chars().count() <= max;
        if !text_ok(&self.sku, 64) {
            return Err("`sku` must be 1 to 64 characters".into());
        }
        if !text_ok(&self.name, 200) {
            return Err("`name` must be 1 to 200 characters".into());
        }
        if !(0..=MAX_PRICE_CENTS).contains(&self.price_cents) {
            return Err(format!("`price_cents` must be 0 to {MAX_PRICE_CENTS}"));
        }
        if self.currency.len() != 3 || !self.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err("`currency` must be a 3-letter ISO 4217 code such as IDR".into());
        }
        if !(0..=MAX_UNITS).contains(&self.stock) {
            return Err(format!("`stock` must be 0 to {MAX_UNITS}"));
        }
        if self.ends_at <= self.starts_at {
            return Err("`ends_at` must be after `starts_at`".into());
        }
        if self.starts_at.year() < 2000 || self.ends_at.year() > 9999 {
            return Err("`starts_at` and `ends_at` must be between 2000 and 9999".into());
        }
        if !(1..=1_000_000).contains(&self.per_customer_limit) {
            return Err("`per_customer_limit` must be 1 to 1000000".into());
        }
        if !(1..=86_400).contains(&self.hold_seconds) {
            return Err("`hold_seconds` must be 1 to 86400".into());
        }
        Ok(SaleDef {
            id,
            sku: self.sku,
            name: self.name,
            price_cents: self.price_cents,
            currency: self.currency,
            stock: self.stock,
            // Redis keeps milliseconds: finer input would not round-trip.
            starts_at: truncate_ms(self.starts_at),
            ends_at: truncate_ms(self.ends_at),
            per_customer_limit: self.per_customer_limit,
            hold_seconds: self.hold_seconds,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SaleStatus {
    Scheduled,
    Live,
    Paused,
    SoldOut,
    Ended,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stock {
    pub total: i64,
    pub available: i64,
    pub held: i64,
    pub sold: i64,
}

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

/// Where a sale stands in its window: the one rule of when it takes
/// reserves, on the Redis clock. `lua/prelude.lua`'s `is_live` is the same
/// rule inside Redis, where the reserve applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Scheduled,
    Open,
    Paused,
    Ended,
}

impl Window {
    pub fn at(now_ms: i64, starts_ms: i64, ends_ms: i64, paused: bool) -> Window {
        if now_ms >= ends_ms {
            Window::Ended
        } else if now_ms < starts_ms {
            Window::Scheduled
        } else if paused {
            Window::Paused
        } else {
            Window::Open
        }
    }
}

/// A sale with its live figures, as `GET /v1/sales/{id}` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sale {
    pub id: String,
    pub sku: String,
    pub name: String,
    pub price_cents: i64,
    pub currency: String,
    #[serde(with = "time::serde::rfc3339")]
    pub starts_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub ends_at: OffsetDateTime,
    pub per_customer_limit: u32,
    pub hold_seconds: u32,
    pub status: SaleStatus,
    pub stock: Stock,
    /// Redis TIME when the figures were read, with milliseconds.
    pub server_time: String,
}

impl Sale {
    /// `ends_at` comes from the live state: an admin may have moved it.
    pub fn new(
        def: SaleDef,
        stock: Stock,
        ends_at: OffsetDateTime,
        paused: bool,
        now: OffsetDateTime,
    ) -> Sale {
        let status = match Window::at(to_ms(now), to_ms(def.starts_at), to_ms(ends_at), paused) {
            Window::Ended => SaleStatus::Ended,
            Window::Scheduled => SaleStatus::Scheduled,
            Window::Paused => SaleStatus::Paused,
            Window::Open if stock.available == 0 => SaleStatus::SoldOut,
            Window::Open => SaleStatus::Live,
        };
        Sale {
            id: def.id,
            sku: def.sku,
            name: def.name,
            price_cents: def.price_cents,
            currency: def.currency,
            starts_at: def.starts_at,
            ends_at,
            per_customer_limit: def.per_customer_limit,
            hold_seconds: def.hold_seconds,
            status,
            stock,
            server_time: rfc3339_ms(now),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReservationStatus {
    Held,
    Confirmed,
    Released,
    Expired,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reservation {
    pub id: String,
    pub sale_id: String,
    pub customer_id: String,
    pub quantity: u32,
    pub status: ReservationStatus,
    pub expires_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Order {
    pub order_id: String,
    pub reservation_id: String,
    pub sale_id: String,
    pub customer_id: String,
    pub quantity: u32,
    pub price_cents: i64,
    pub currency: String,
    pub confirmed_at: String,
    /// The service whose confirm made the order; absent when the customer
    /// confirmed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_by: Option<String>,
}

/// Reservation ids carry their sale: `<sale_id>.<32 hex>`. The sale id is the
/// hash tag of every key, so a reservation is found in one step with no
/// global index, which also holds on Redis Cluster.
pub fn new_reservation_id(sale_id: &str) -> String {
    format!("{sale_id}.{}", uuid::Uuid::new_v4().simple())
}

/// The sale a reservation id belongs to, if the id is well formed.
pub fn sale_of_reservation(id: &str) -> Option<&str> {
    let (sale, rest) = id.rsplit_once('.')?;
    (valid_sale_id(sale) && rest.len() == 32 && rest.bytes().all(|b| b.is_ascii_hexdigit()))
        .then_some(sale)
}

pub fn from_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

pub fn to_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn truncate_ms(t: OffsetDateTime) -> OffsetDateTime {
    from_ms(to_ms(t))
}

/// RFC 3339 in UTC with exactly three fractional digits.
pub fn rfc3339_ms(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservation_ids_name_their_sale() {
        let id = new_reservation_id("tv-1212");
        assert_eq!(sale_of_reservation(&id), Some("tv-1212"));
        assert_eq!(sale_of_reservation("tv-1212.xyz"), None);
        assert_eq!(
            sale_of_reservation("TV.0123456789abcdef0123456789abcdef"),
            None
        );
        assert_eq!(sale_of_reservation("no-dot"), None);
    }

    #[test]
    fn sale_ids_cannot_break_the_hash_tag() {
        assert!(valid_sale_id("tv-1212_b"));
        assert!(!valid_sale_id("a{b}"));
        assert!(!valid_sale_id(""));
        assert!(!valid_sale_id(&"a".repeat(65)));
    }

    #[test]
    fn times_have_milliseconds() {
        assert_eq!(
            rfc3339_ms(from_ms(1_765_497_600_123)),
            "2025-12-12T00:00:00.123Z"
        );
    }
}
