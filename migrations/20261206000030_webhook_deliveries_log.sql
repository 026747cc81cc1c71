-- The deliveries log of one endpoint (`GET /v1/webhooks/{id}/deliveries`),
-- newest first, paged by (created_at, event_id): read without sorting every
-- delivery the endpoint ever had.
CREATE INDEX webhook_deliveries_log
    ON webhook_deliveries (endpoint_id, created_at DESC, event_id DESC);
