-- A sale's waiting room. `sales.queue` is the room as the sale was posted
-- (part of its definition, compared when the same sale is posted again);
-- `sale_queues` is the room as it stands: its configuration (an admin may
-- change it until it opens), the seed committed when it opened and the
-- member count fixed when it was sealed. Redis shows buyers the seed and
-- their positions only once they are here, so neither a Redis loss, a
-- rebuild nor a failover can change an order anyone was shown.
ALTER TABLE sales ADD COLUMN queue JSONB;

CREATE TABLE sale_queues (
    sale_id     TEXT PRIMARY KEY REFERENCES sales (id),
    config      JSONB NOT NULL,
    seed        TEXT,
    seed_sha256 TEXT,
    opened_at   TIMESTAMPTZ,
    members     BIGINT CHECK (members >= 0),
    sealed_at   TIMESTAMPTZ,
    CHECK ((seed IS NULL) = (seed_sha256 IS NULL)),
    CHECK (members IS NULL OR seed IS NOT NULL)
);
