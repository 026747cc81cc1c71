-- PATCH with an Idempotency-Key: the key and a fingerprint of the change
-- live on the adjustment they made, so a retry finds it and answers as the
-- first call did (`response` once applied, `outcome` once refused). A key
-- belongs to one admin on one sale.
ALTER TABLE sale_adjustments
    ADD COLUMN idempotency_key TEXT,
    ADD COLUMN fingerprint     TEXT,
    ADD COLUMN outcome         TEXT,
    ADD COLUMN response        JSONB;

CREATE UNIQUE INDEX sale_adjustments_key
    ON sale_adjustments (sale_id, actor, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Pending rows are what reconcile settles; keep finding them cheap.
CREATE INDEX sale_adjustments_pending
    ON sale_adjustments (sale_id, at)
    WHERE state = 'pending';

-- Why the loader could not load a sale (it goes on with the others).
ALTER TABLE sales ADD COLUMN load_error TEXT;
