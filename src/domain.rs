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
    ($(#[$doc:meta])* $name:ident, $valid:expr, $pattern:literal) => {
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

        /// In the API document: a string of the same rule.
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .pattern(Some($pattern))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

checked_id!(
    /// A sale id: `[a-z0-9_-]{1,64}`, also the hash tag of the sale's keys.
    SaleId,
    valid_sale_id,
    "^[a-z0-9_-]{1,64}$"
);
checked_id!(
    /// A reservation id: `<sale id>.<32 hex>`, so it names its sale.
    ReservationId,
    |id| sale_of_reservation(id).is_some(),
    "^[a-z0-9_-]{1,64}\\.[0-9a-fA-F]{32}$"
);
checked_id!(
    /// A customer id (a token's subject): 1 to 64 printable ASCII characters.
    CustomerId,
    valid_customer_id,
    "^[!-~]{1,64}$"
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
    pub queue: Option<QueueInput>,
}

/// A sale's waiting room as marketing asks for it (in `POST /v1/sales`,
/// `PATCH` before the room opens, and sales files).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"opens_at": "2026-12-11T23:30:00Z", "admit_per_second": 50,
    "admit_burst": 100, "admission_seconds": 120}))]
pub struct QueueInput {
    /// Before the sale's `starts_at`; buyers may join from here on.
    #[serde(with = "time::serde::rfc3339")]
    pub opens_at: OffsetDateTime,
    /// Buyers admitted per second once the sale starts.
    #[serde(deserialize_with = "whole")]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub admit_per_second: u32,
    /// Buyers admitted at once when the sale starts.
    #[serde(deserialize_with = "whole")]
    #[schema(minimum = 0, maximum = 1_000_000)]
    pub admit_burst: u32,
    /// How long an admission may wait for its reserve.
    #[serde(deserialize_with = "whole")]
    #[schema(minimum = 1, maximum = 86_400)]
    pub admission_seconds: u32,
}

/// A validated waiting room. Canonical JSON, like [`SaleDef`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QueueDef {
    #[serde(with = "time::serde::rfc3339")]
    pub opens_at: OffsetDateTime,
    pub admit_per_second: u32,
    pub admit_burst: u32,
    pub admission_seconds: u32,
}

impl QueueInput {
    /// Checks the room against the sale's start.
    pub fn validate(self, starts_at: OffsetDateTime) -> Result<QueueDef, String> {
        if !in_years(self.opens_at) {
            return Err("`queue.opens_at` must be between the years 2000 and 2999".into());
        }
        let opens_at = truncate_ms(self.opens_at);
        if opens_at >= truncate_ms(starts_at) {
            return Err("`queue.opens_at` must be before `starts_at`".into());
        }
        if !(1..=1_000_000).contains(&self.admit_per_second) {
            return Err("`queue.admit_per_second` must be 1 to 1000000".into());
        }
        if self.admit_burst > 1_000_000 {
            return Err("`queue.admit_burst` must be 0 to 1000000".into());
        }
        if !(1..=86_400).contains(&self.admission_seconds) {
            return Err("`queue.admission_seconds` must be 1 to 86400".into());
        }
        Ok(QueueDef {
            opens_at,
            admit_per_second: self.admit_per_second,
            admit_burst: self.admit_burst,
            admission_seconds: self.admission_seconds,
        })
    }
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
    /// Absent from the JSON when there is none, so the definitions of sales
    /// made before waiting rooms existed compare equal to themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueDef>,
}

/// Sales happen between these years. The upper bound keeps every time in
/// milliseconds below 10^14, which Lua's cjson (14 significant digits)
/// writes exactly; a later year came back from a script as `1.0e+14`.
pub fn in_years(t: OffsetDateTime) -> bool {
    (2000..=2999).contains(&t.year())
}

pub const YEARS: &str = "`starts_at` and `ends_at` must be between the years 2000 and 2999";

/// Text a person typed, with no control characters (Postgres refuses NUL in
/// TEXT, and no name, SKU or payment reference needs the others) and no
/// invisible format characters (Unicode category Cf: bidirectional controls
/// such as U+202E reorder what a reader sees, zero-width ones make two
/// different strings look alike). Zero-width non-joiner and joiner stay:
/// Persian and other scripts, and emoji sequences, need them. The API
/// document's patterns for these fields spell out the same classes (from
/// unicode-properties' table), so generated clients and fuzzers agree.
pub fn plain_text(s: &str) -> bool {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
    !s.chars().any(|c| {
        c.is_control()
            || (c.general_category() == GeneralCategory::Format
                && c != '\u{200C}'
                && c != '\u{200D}')
    })
}

/// An optional field that, when given, holds a value: `null` is refused
/// rather than read as "absent", so a body means what its keys say.
pub fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// A whole number, also when written `40.0`: JSON (and the API document's
/// `integer`) make no difference between the two, so neither may we.
pub fn whole<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64> + TryFrom<u64>,
{
    struct Whole<T>(std::marker::PhantomData<T>);
    impl<T: TryFrom<i64> + TryFrom<u64>> serde::de::Visitor<'_> for Whole<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a whole number in range")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<T, E> {
            T::try_from(v).map_err(|_| E::custom(format!("{v} is out of range")))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<T, E> {
            T::try_from(v).map_err(|_| E::custom(format!("{v} is out of range")))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<T, E> {
            // 2^63: every whole f64 below it converts to i64 exactly.
            if v.fract() == 0.0 && v.abs() < 9.223_372_036_854_776e18 {
                self.visit_i64(v as i64)
            } else {
                Err(E::custom(format!("{v} is not a whole number in range")))
            }
        }
    }
    d.deserialize_any(Whole(std::marker::PhantomData))
}

/// [`present`] for a [`whole`] number.
pub fn present_whole<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i64> + TryFrom<u64>,
{
    whole(d).map(Some)
}

/// [`present`] for an RFC 3339 time.
pub fn present_rfc3339<'de, D>(d: D) -> Result<Option<OffsetDateTime>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    time::serde::rfc3339::deserialize(d).map(Some)
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
    pub queue: Option<QueueDef>,
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
            queue: def.queue,
            server_time: rfc3339_ms(now),
        }
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

pub fn truncate_ms(t: OffsetDateTime) -> OffsetDateTime {
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
    fn plain_text_refuses_format_characters_but_joiners() {
        for bad in [
            "a\u{202E}b",
            "\u{200B}",
            "x\u{2060}",
            "\u{FEFF}tv",
            "\u{00AD}",
            "nul\0",
        ] {
            assert!(!plain_text(bad), "{bad:?}");
        }
        for good in ["می\u{200C}خواهم", "👩\u{200D}💻", "55\" OLED TV", "Ünïcödé"] {
            assert!(plain_text(good), "{good:?}");
        }
    }

    #[test]
    fn times_have_milliseconds() {
        assert_eq!(
            rfc3339_ms(from_ms(1_765_497_600_123)),
            "2025-12-12T00:00:00.123Z"
        );
    }
}
