-- Retention: a sale that ended and settled keeps its final figures here,
-- and once archived (its Redis keys removed) answers from here alone.
ALTER TABLE sales
    ADD COLUMN final_total BIGINT,
    ADD COLUMN final_sold  BIGINT,
    ADD COLUMN archived_at TIMESTAMPTZ;

CREATE INDEX sales_to_archive ON sales (ends_at) WHERE archived_at IS NULL;

-- A hold's deadline, kept with its order, so a confirmed reservation reads
-- the same after its sale left Redis. NULL for orders flushed before.
ALTER TABLE orders ADD COLUMN expires_at TIMESTAMPTZ;
