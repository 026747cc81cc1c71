//! A sale: its definition as marketing scheduled it and its live view.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::input::{plain_text, present, whole};
use super::time::{rfc3339_ms, to_ms, truncate_ms};
use super::waiting_room::{WaitingRoomDef, WaitingRoomInput};
use super::SaleId;

/// Upper bound for any stock figure and price: far above any real sale, far
/// below what Lua's doubles (2^53) and Postgres BIGINT hold exactly.
pub const MAX_UNITS: i64 = 1_000_000_000;
pub const MAX_PRICE_CENTS: i64 = 1_000_000_000_000;

/// The body of `POST /v1/sales` (and one `[[sale]]` of a sales file). Its
/// patterns and ranges in the API document are the rules of
/// [`SaleInput::validate`].
///
/// `ends_at` must be after `starts_at`, and both between the years 2000 and
/// 2999; a body that breaks this is a 422 `invalid_request`. `sku` and
/// `name` hold no control or invisible format characters.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"id": "tv-1212", "sku": "TV-55-OLED", "name": "55\" OLED TV",
    "price_cents": 499900, "currency": "IDR", "stock": 100,
    "starts_at": "2026-12-12T00:00:00Z", "ends_at": "2026-12-12T02:00:00Z",
    "per_customer_limit": 2, "hold_seconds": 600}))]
pub struct SaleInput {
    /// Generated when absent. Also the sale's hash tag in Redis.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = SaleId)]
    pub id: Option<String>,
    /// Not only white space, no control or format characters (the same for `name`).
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f\\u00ad\\u0600-\\u0605\\u061c\\u06dd\\u070f\\u0890\\u0891\\u08e2\\u180e\\u200b\\u200e\\u200f\\u202a-\\u202e\\u2060-\\u2064\\u2066-\\u206f\\ufeff\\ufff9-\\ufffb\u{110bd}\u{110cd}\u{13430}-\u{1343f}\u{1bca0}-\u{1bca3}\u{1d173}-\u{1d17a}\u{e0001}\u{e0020}-\u{e007f}]*[^\\s\\x00-\\x1f\\x7f-\\x9f\\u00ad\\u0600-\\u0605\\u061c\\u06dd\\u070f\\u0890\\u0891\\u08e2\\u180e\\u200b\\u200e\\u200f\\u202a-\\u202e\\u2060-\\u2064\\u2066-\\u206f\\ufeff\\ufff9-\\ufffb\u{110bd}\u{110cd}\u{13430}-\u{1343f}\u{1bca0}-\u{1bca3}\u{1d173}-\u{1d17a}\u{e0001}\u{e0020}-\u{e007f}][^\\x00-\\x1f\\x7f-\\x9f\\u00ad\\u0600-\\u0605\\u061c\\u06dd\\u070f\\u0890\\u0891\\u08e2\\u180e\\u200b\\u200e\\u200f\\u202a-\\u202e\\u2060-\\u2064\\u2066-\\u206f\\ufeff\\ufff9-\\ufffb\u{110bd}\u{110cd}\u{13430}-\u{1343f}\u{1bca0}-\u{1bca3}\u{1d173}-\u{1d17a}\u{e0001}\u{e0020}-\u{e007f}]*$"
    )]
    pub sku: String,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f\\u00ad\\u0600-\\u0605\\u061c\\u06dd\\u070f\\u0890\\u0891\\u08e2\\u180e\\u200b\\u200e\\u200f\\u202a-\\u202e\\u2060-\\u2064\\u2066-\\u206f\\ufeff\\ufff9-\\ufffb\u{110bd}\u{110cd}\u{13430}-\u{1343f}\u{1bca0}-\u{1bca3}\u{1d173}-\u{1d17a}\u{e0001}\u{e0020}-\u{e007f}]*[^\\s\\x00-\\x1f\\x7f-\\x9f\\u00ad\\u0600-\\u0605\\u061c\\u06dd\\u070f\\u0890\\u0891\\u08e2\\u180e\\u200b\\u200e\\u200f\\u202a-\\u202e\\u2060-\\u2064\\u2066-\\u206f\\ufeff\\ufff9-\\ufffb\u{110bd}\u{110cd}\u{13430}-\u{1343f}\u{1bca0}-\u{1bca3}\u{1d173}-\u{1d17a}\u{e0001}\u{e0020}-\u{e007f}][^\\x00-\\x1f\\x7f-\\x9f\\u00ad\\u0600-\\u0605\\u061c\\u06dd\\u070f\\u0890\\u0891\\u08e2\\u180e\\u200b\\u200e\\u200f\\u202a-\\u202e\\u2060-\\u2064\\u2066-\\u206f\\ufeff\\ufff9-\\ufffb\u{110bd}\u{110cd}\u{13430}-\u{1343f}\u{1bca0}-\u{1bca3}\u{1d173}-\u{1d17a}\u{e0001}\u{e0020}-\u{e007f}]*$"
    )]
    pub name: String,
    /// Minor units of `currency`.
    #[serde(deserialize_with = "whole")]
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    pub price_cents: i64,
    /// ISO 4217.
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: String,
    #[serde(deserialize_with = "whole")]
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub stock: i64,
    /// In the years 2000 to 2999 (the same for `ends_at`).
    #[serde(with = "time::serde::rfc3339")]
    pub starts_at: OffsetDateTime,
    /// After `starts_at`.
    #[serde(with = "time::serde::rfc3339")]
    pub ends_at: OffsetDateTime,
    /// Units one customer may hold and buy in all.
    #[serde(deserialize_with = "whole")]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub per_customer_limit: u32,
    /// How long a hold waits for its confirm.
    #[serde(deserialize_with = "whole")]
    #[schema(minimum = 1, maximum = 86_400)]
    pub hold_seconds: u32,
    /// A waiting room in front of the sale; absent: none.
    #[serde(default, deserialize_with = "present")]
    pub queue: Option<WaitingRoomInput>,
}

/// A validated sale as marketing scheduled it. Its JSON form is canonical: the
/// engine compares it byte for byte to tell "same sale again" from a conflict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaleDef {
    pub id: SaleId,
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
    /// Absent from the JSON when there is none, so the definitions of sales
    /// made before waiting rooms existed compare equal to themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<WaitingRoomDef>,
}

/// Sales happen between these years. The upper bound keeps every time in
/// milliseconds below 10^14, which Lua's cjson (14 significant digits)
/// writes exactly; a later year came back from a script as `1.0e+14`.
pub fn in_years(t: OffsetDateTime) -> bool {
    (2000..=2999).contains(&t.year())
}

pub const BAD_SALE_ID: &str = "`id` must match [a-z0-9_-]{1,64}";

pub const YEARS: &str = "`starts_at` and `ends_at` must be between the years 2000 and 2999";

impl SaleInput {
    /// Checks every field and returns the first problem in words a client can
    /// act on. `new_id` is used when the body has no `id`.
    pub fn validate(self, new_id: impl FnOnce() -> String) -> Result<SaleDef, String> {
        let id = SaleId::try_from(self.id.unwrap_or_else(new_id))
            .map_err(|_| String::from(BAD_SALE_ID))?;
        let text_ok =
            |s: &str, max: usize| !s.trim().is_empty() && s.chars().count() <= max && plain_text(s);
        if !text_ok(&self.sku, 64) {
            return Err(
                "`sku` must be 1 to 64 characters, no control or invisible format characters"
                    .into(),
            );
        }
        if !text_ok(&self.name, 200) {
            return Err(
                "`name` must be 1 to 200 characters, no control or invisible format characters"
                    .into(),
            );
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
        if !in_years(self.starts_at) || !in_years(self.ends_at) {
            return Err(YEARS.into());
        }
        if !(1..=1_000_000).contains(&self.per_customer_limit) {
            return Err("`per_customer_limit` must be 1 to 1000000".into());
        }
        if !(1..=86_400).contains(&self.hold_seconds) {
            return Err("`hold_seconds` must be 1 to 86400".into());
        }
        let queue = self.queue.map(|q| q.validate(self.starts_at)).transpose()?;
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
            queue,
        })
    }
}

/// `sold_out` while nothing is available, even if held units may still
/// come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SaleStatus {
    Scheduled,
    Live,
    Paused,
    SoldOut,
    Ended,
}

/// `available + held + sold == total`, each at least 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Stock {
    pub total: i64,
    pub available: i64,
    pub held: i64,
    pub sold: i64,
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
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// The sale's waiting room, as it stands now; absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<WaitingRoomDef>,
    /// Redis TIME when the figures were read, with milliseconds: the clock
    /// that judges sale windows and hold deadlines.
    #[schema(format = DateTime)]
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
            id: def.id.into(),
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
            queue: def.queue,
            server_time: rfc3339_ms(now),
        }
    }
}
