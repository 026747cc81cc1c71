//! Why the engine says no: the words the scripts answer with, which are
//! also the contract's error codes, and what each tells the client.

/// Why the engine said no: each is one contract error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    SaleNotFound,
    SaleNotLive,
    LimitExceeded,
    SoldOut,
    InsufficientStock,
    IdempotencyKeyReused,
    ReservationNotFound,
    ReservationNotHeld,
    HoldExpired,
    SaleConflict,
    AdmissionRequired,
    AdmissionInvalid,
    WaitingRoomNotOpen,
    WaitingRoomNotFound,
    NotInWaitingRoom,
    /// A PATCH of a room that has opened (not a word of the scripts).
    WaitingRoomOpened,
}

/// Every refusal, once: the word the scripts answer with (also the
/// contract's code) and what it tells the client. The HTTP status of each
/// is the API's to say (`http::error`).
const REFUSALS: [(Refusal, &str, &str); 16] = [
    (Refusal::SaleNotFound, "sale_not_found", "no such sale"),
    (
        Refusal::SaleNotLive,
        "sale_not_live",
        "the sale is not live (not started, ended or paused)",
    ),
    (
        Refusal::LimitExceeded,
        "limit_exceeded",
        "this would take the customer past the sale's per-customer limit",
    ),
    (Refusal::SoldOut, "sold_out", "the sale is sold out"),
    (
        Refusal::InsufficientStock,
        "insufficient_stock",
        "fewer units are available than asked for",
    ),
    (
        Refusal::IdempotencyKeyReused,
        "idempotency_key_reused",
        "this Idempotency-Key was used with a different request",
    ),
    (
        Refusal::ReservationNotFound,
        "reservation_not_found",
        "no such reservation",
    ),
    (
        Refusal::ReservationNotHeld,
        "reservation_not_held",
        "the reservation is not held (already released, confirmed or expired)",
    ),
    (
        Refusal::HoldExpired,
        "hold_expired",
        "the hold expired before it was confirmed",
    ),
    (
        Refusal::SaleConflict,
        "sale_conflict",
        "a sale with this id exists with a different definition",
    ),
    (
        Refusal::AdmissionRequired,
        "admission_required",
        "the sale is behind a waiting room: join it, and reserve with the admission token (header Admission-Token) once admitted",
    ),
    (
        Refusal::AdmissionInvalid,
        "admission_invalid",
        "the admission token is not yours, not this sale's, expired or already used",
    ),
    (
        Refusal::WaitingRoomNotOpen,
        "queue_not_open",
        "the waiting room is not open (before its opening, or after the sale)",
    ),
    (
        Refusal::WaitingRoomNotFound,
        "queue_not_found",
        "the sale has no waiting room",
    ),
    (
        Refusal::NotInWaitingRoom,
        "not_in_queue",
        "you have not joined this sale's waiting room",
    ),
    (
        Refusal::WaitingRoomOpened,
        "invalid_request",
        "the waiting room has opened: it keeps its configuration",
    ),
];

impl Refusal {
    fn entry(self) -> (Refusal, &'static str, &'static str) {
        REFUSALS
            .iter()
            .copied()
            .find(|(r, ..)| *r == self)
            .unwrap_or((self, "internal", "internal error"))
    }

    /// The refusal a script's outcome word (or a stored contract code) names.
    pub fn from_word(word: &str) -> Option<Refusal> {
        REFUSALS
            .iter()
            .find(|(_, w, ..)| *w == word)
            .map(|(r, ..)| *r)
    }

    /// The contract's code for it.
    pub fn code(self) -> &'static str {
        self.entry().1
    }

    /// What it tells the client.
    pub fn message(self) -> &'static str {
        self.entry().2
    }
}
