-- What marketing scheduled: the base for rebuilding Redis after a loss.
CREATE TABLE sales (
    id                 TEXT PRIMARY KEY,
    sku                TEXT NOT NULL,
    name               TEXT NOT NULL,
    price_cents        BIGINT NOT NULL CHECK (price_cents >= 0),
    currency           TEXT NOT NULL,
    stock              BIGINT NOT NULL CHECK (stock >= 0),
    starts_at          TIMESTAMPTZ NOT NULL,
    ends_at            TIMESTAMPTZ NOT NULL CHECK (ends_at > starts_at),
    per_customer_limit INTEGER NOT NULL CHECK (per_customer_limit > 0),
    hold_seconds       INTEGER NOT NULL CHECK (hold_seconds > 0),
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Set once Redis holds the sale. A row without it was written by a
    -- gateway that stopped before loading it; the worker loads it.
    loaded_at          TIMESTAMPTZ
);

CREATE INDEX sales_not_loaded ON sales (created_at) WHERE loaded_at IS NULL;

-- Every confirmed reservation becomes exactly one row (the worker's job).
CREATE TABLE orders (
    order_id       UUID PRIMARY KEY,
    reservation_id TEXT NOT NULL UNIQUE,
    sale_id        TEXT NOT NULL REFERENCES sales (id),
    customer_id    TEXT NOT NULL,
    quantity       INTEGER NOT NULL CHECK (quantity > 0),
    price_cents    BIGINT NOT NULL,
    currency       TEXT NOT NULL,
    payment_ref    TEXT NOT NULL DEFAULT '',
    confirmed_at   TIMESTAMPTZ NOT NULL,
    flushed_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX orders_sale ON orders (sale_id);

-- Admin changes to a sale: written before Redis is touched (pending), then
-- marked applied with the figures before and after, or rejected.
CREATE TABLE sale_adjustments (
    id          UUID PRIMARY KEY,
    sale_id     TEXT NOT NULL REFERENCES sales (id),
    actor       TEXT NOT NULL,
    at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    stock_delta BIGINT NOT NULL DEFAULT 0,
    ends_at     TIMESTAMPTZ,
    paused      BOOLEAN,
    state       TEXT NOT NULL CHECK (state IN ('pending', 'applied', 'rejected')),
    before      JSONB,
    after       JSONB
);

CREATE INDEX sale_adjustments_sale ON sale_adjustments (sale_id, at);
