-- The service (the store's backend) whose confirm made the order, from its
-- token's subject; NULL when the buyer confirmed their own hold. Nullable
-- so the orders written before services existed stay as they are.
ALTER TABLE orders ADD COLUMN confirmed_by TEXT;
