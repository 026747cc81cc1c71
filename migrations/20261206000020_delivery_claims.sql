-- What the delivery workers' claim reads for each endpoint, without walking
-- a backlog of every pending delivery: the due ones in order, and the ones
-- leased now (the per-endpoint bound on deliveries in flight counts them).
CREATE INDEX webhook_deliveries_endpoint_due
    ON webhook_deliveries (endpoint_id, next_attempt_at)
    WHERE status = 'pending';

CREATE INDEX webhook_deliveries_endpoint_leased
    ON webhook_deliveries (endpoint_id, leased_until)
    WHERE status = 'pending' AND leased_until IS NOT NULL;
