//! A sale's waiting room as marketing configures it.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::input::whole;
use super::sale::in_years;
use super::time::truncate_ms;

/// A sale's waiting room as marketing asks for it (in `POST /v1/sales`,
/// `PATCH` before the room opens, and sales files).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
// The API document keeps the name it was published with.
#[schema(as = QueueInput)]
#[schema(example = json!({"opens_at": "2026-12-11T23:30:00Z", "admit_per_second": 50,
    "admit_burst": 100, "admission_seconds": 120}))]
pub struct WaitingRoomInput {
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
// The API document keeps the name it was published with.
#[schema(as = QueueDef)]
pub struct WaitingRoomDef {
    #[serde(with = "time::serde::rfc3339")]
    pub opens_at: OffsetDateTime,
    pub admit_per_second: u32,
    pub admit_burst: u32,
    pub admission_seconds: u32,
}

impl WaitingRoomInput {
    /// Checks the room against the sale's start.
    pub fn validate(self, starts_at: OffsetDateTime) -> Result<WaitingRoomDef, String> {
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
        Ok(WaitingRoomDef {
            opens_at,
            admit_per_second: self.admit_per_second,
            admit_burst: self.admit_burst,
            admission_seconds: self.admission_seconds,
        })
    }
}
