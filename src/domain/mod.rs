//! The nouns of a flash sale as clients see them: a sale's definition and
//! live view, a reservation, an order. Validation of client input lives here,
//! so the engine and the store only ever see well-formed values.

pub mod event;
mod ids;
mod input;
pub mod permutation;
mod reservation;
mod sale;
pub mod time;
mod waiting_room;
pub mod webhook;

pub use self::time::{from_ms, rfc3339_ms, to_ms, truncate_ms};
pub use ids::{
    new_reservation_id, sale_of_reservation, valid_customer_id, valid_sale_id, CustomerId,
    ReservationId, SaleId,
};
pub use input::{plain_text, present, present_rfc3339, present_whole, whole};
pub use reservation::{NewOrder, Order, Reservation, ReservationStatus};
pub use sale::{
    in_years, Sale, SaleDef, SaleInput, SaleStatus, Stock, Window, BAD_SALE_ID, MAX_PRICE_CENTS,
    MAX_UNITS, YEARS,
};
pub use waiting_room::{WaitingRoomDef, WaitingRoomInput};
