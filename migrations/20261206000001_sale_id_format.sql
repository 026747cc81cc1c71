-- A sale id is `[a-z0-9_-]{1,64}` (src/domain/ids.rs), the hash tag of every
-- Redis key of its sale. The gateway writes only ids it parsed, and reads
-- them back as typed ids; a row edited by hand into another shape would stop
-- every list read that meets it, so the database refuses it instead. Every
-- table that names a sale references this one. In the "C" collation the
-- ranges are ASCII whatever the database's locale.
ALTER TABLE sales
    ADD CONSTRAINT sales_id_format CHECK ((id COLLATE "C") ~ '^[a-z0-9_-]{1,64}$');
