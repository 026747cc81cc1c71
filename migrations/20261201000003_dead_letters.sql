-- Orders Postgres refused for good, copied from a sale's dead-letter stream
-- before the sale's Redis keys are removed (retention): a human still finds
-- them, with the reason and every field of the entry.
CREATE TABLE dead_letters (
    sale_id   TEXT NOT NULL REFERENCES sales (id),
    entry_id  TEXT NOT NULL,
    fields    JSONB NOT NULL,
    copied_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (sale_id, entry_id)
);
