//! Every Redis key the service touches is built here.
//!
//! A sale's keys share one hash tag, `{sale_id}` today, so each script's keys
//! live in one Redis Cluster slot. When a hot sale is split into buckets the
//! tag becomes `{sale_id:bucket}`: only [`SaleKeys::new`]'s caller changes
//! (and the scripts that name a `sale.sold_out` event, which read the sale
//! id from the tag: `sold_out` in `lua/prelude.lua`).

/// The keys of one sale (or, later, one bucket of a sale).
#[derive(Debug, Clone)]
pub struct SaleKeys {
    /// Hash: definition, counters (total, available, held, sold), window, flags.
    pub sale: String,
    /// Hash: reservation id -> record (cjson).
    pub reservations: String,
    /// Hash: customer id -> units held + confirmed.
    pub customers: String,
    /// Sorted set: reservation id scored by its deadline (ms); the reaper's index.
    pub due: String,
    /// Stream: confirmed orders waiting for the worker to flush them to Postgres.
    pub outbox: String,
    /// Stream: the events for the store (expiries, releases, sell-outs), kept
    /// apart from the orders' outbox, whose readers of an earlier version
    /// dead-letter anything that is not an order. Flushed with the outbox.
    pub events: String,
    /// Stream: outbox entries Postgres rejected for good, with the reason.
    pub dead_letters: String,
    /// Set: ids of admin adjustments already applied (makes PATCH idempotent).
    pub adjustments: String,
    /// Set: the names of the sale's idempotency keys, so that retention
    /// removes them without scanning the keyspace.
    pub idempotency_index: String,
    /// Set: ids of adjustments a repair settled as never applied; applying
    /// one of them later is refused, so a repair's verdict stands.
    pub voided: String,
    /// Counter: written before each wait for replicas (`conn::Replication`),
    /// so the wait covers every earlier write to the sale's primary.
    pub fence: String,
    /// Hash: the waiting room (configuration, seed, counters; prelude.lua).
    pub waiting_room: String,
    /// Hash: ticket -> record (cjson).
    pub tickets: String,
    /// Hash: customer id -> their latest ticket.
    pub queuers: String,
    tag_prefix: String,
}

impl SaleKeys {
    pub fn new(prefix: &str, tag: &str) -> SaleKeys {
        let tag_prefix = format!("{prefix}:{{{tag}}}:");
        let key = |name: &str| format!("{tag_prefix}{name}");
        SaleKeys {
            sale: key("sale"),
            reservations: key("res"),
            customers: key("cust"),
            due: key("due"),
            outbox: key("outbox"),
            events: key("events"),
            dead_letters: key("dead"),
            adjustments: key("adj"),
            voided: key("adjx"),
            idempotency_index: key("idem"),
            fence: key("fence"),
            waiting_room: key("room"),
            tickets: key("tickets"),
            queuers: key("queuers"),
            tag_prefix,
        }
    }

    /// Remembers one customer's Idempotency-Key for a while (own key so it can
    /// expire on its own). The customer id's length comes first so that no
    /// two (customer, key) pairs can spell the same Redis key.
    pub fn idempotency(&self, customer: &str, key: &str) -> String {
        format!(
            "{}idem:{}:{customer}:{key}",
            self.tag_prefix,
            customer.len()
        )
    }

    /// Every key of the sale except the idempotency keys (which expire, and
    /// which the index names).
    pub fn all(&self) -> [&str; 14] {
        [
            &self.sale,
            &self.reservations,
            &self.customers,
            &self.due,
            &self.outbox,
            &self.events,
            &self.dead_letters,
            &self.adjustments,
            &self.voided,
            &self.idempotency_index,
            &self.fence,
            &self.waiting_room,
            &self.tickets,
            &self.queuers,
        ]
    }
}

/// The registry of sale ids: how listings find every sale without scanning
/// the keyspace. Outside any sale's tag; no script touches it.
pub fn registry(prefix: &str) -> String {
    format!("{prefix}:sales")
}

/// The sales the worker's loops visit (reaper, flush, backlog): those not
/// yet retired. A sale leaves once it ended with no hold left and an empty
/// outbox, so the loops' cost follows the live sales, not every sale ever
/// run. Outside any sale's tag; no script touches it.
pub fn active(prefix: &str) -> String {
    format!("{prefix}:active")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_hash_tag_and_prefix() {
        let k = SaleKeys::new("fs", "tv-1212");
        for key in k.all() {
            assert!(key.starts_with("fs:{tv-1212}:"), "{key}");
        }
        assert!(k.idempotency("c1", "abc").starts_with("fs:{tv-1212}:"));
        assert_ne!(k.idempotency("a:b", "c"), k.idempotency("a", "b:c"));
        assert_eq!(registry("fs"), "fs:sales");
    }
}
