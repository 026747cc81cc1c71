-- The positions a room admitted, kept when its sale is archived: Redis
-- forgets the room then, and its public view answers from here (with the
-- seed and the member count, so the order stays verifiable after the sale).
ALTER TABLE sale_queues ADD COLUMN admitted BIGINT CHECK (admitted >= 0);
