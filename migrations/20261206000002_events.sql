-- Events for the store: every confirm, expiry, release and sell-out, as the
-- flush writes them from Redis (the same transaction as the orders).
--
-- The columns Debezium's outbox event router reads by default (id,
-- aggregatetype, aggregateid, type, payload), so a store on Kafka streams
-- this table unchanged. `id` is fixed by the Lua script that made the change
-- (`<reservation id>.<type>`, `<sale>.sold_out.<n>`): a flush replayed after
-- a crash between commit and acknowledgement writes no second row.
CREATE TABLE events (
    id            TEXT PRIMARY KEY,
    aggregatetype TEXT NOT NULL,          -- 'reservation' | 'sale'
    aggregateid   TEXT NOT NULL,          -- the reservation's or the sale's id
    type          TEXT NOT NULL,          -- 'reservation.confirmed', ...
    payload       JSONB NOT NULL,         -- the delivery body: {type, timestamp, data}
    sale_id       TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX events_created_at ON events (created_at);

-- The store's receivers. `secret` is the raw key (24+ bytes) or, when
-- `webhooks.secret_key` is set, its sealed form (`secret_sealed`).
CREATE TABLE webhook_endpoints (
    id                   UUID PRIMARY KEY,
    url                  TEXT NOT NULL,
    -- NULL: every type, including types added later.
    events               TEXT[],
    secret               BYTEA NOT NULL,
    secret_sealed        BOOLEAN NOT NULL,
    -- The secret before the last rotation; it signs too until `previous_until`.
    previous_secret      BYTEA,
    previous_sealed      BOOLEAN,
    previous_until       TIMESTAMPTZ,
    enabled              BOOLEAN NOT NULL DEFAULT true,
    disabled_reason      TEXT,
    -- Deleted endpoints stay (their deliveries log), never deliver again.
    deleted_at           TIMESTAMPTZ,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One per (endpoint, event): created when the event reaches Postgres, for
-- the endpoints subscribed then; claimed by any worker with
-- FOR UPDATE SKIP LOCKED and a lease (`leased_until`), so a killed worker's
-- claims come back.
CREATE TABLE webhook_deliveries (
    endpoint_id      UUID NOT NULL REFERENCES webhook_endpoints (id),
    event_id         TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    status           TEXT NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    leased_until     TIMESTAMPTZ,
    last_status_code INTEGER,
    last_error       TEXT,
    delivered_at     TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (endpoint_id, event_id)
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
