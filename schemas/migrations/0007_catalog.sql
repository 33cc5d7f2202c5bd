-- The catalog: one denormalised, public row per listed product, kept by the listing service in
-- the same transaction as the product's state; counts per sector and product type kept by
-- statement-level triggers; and the record of every published resource list (DCAT snapshot).

CREATE TABLE catalog_entries (
    product_id      uuid PRIMARY KEY REFERENCES products (id),
    product_code    text NOT NULL,
    revision        integer NOT NULL,
    seller_org_id   uuid NOT NULL,
    seller_name     text NOT NULL,
    name_zh         text NOT NULL,
    name_en         text,
    summary         text NOT NULL,
    tags            text[] NOT NULL,
    sector          text NOT NULL,
    product_type    text NOT NULL,
    delivery        text[] NOT NULL,
    data_level      text NOT NULL,
    price_min_fen   bigint NOT NULL,          -- the cheapest plan (0 when one is free)
    price_max_fen   bigint NOT NULL,
    recognised_from text,                     -- the origin exchange's code; NULL when local
    listed_at       timestamptz NOT NULL,     -- first listed; a new revision keeps it
    updated_at      timestamptz NOT NULL,
    tokens          text[] NOT NULL,          -- search tokens (exchange.catalog.tokens)
    name_tokens     text[] NOT NULL           -- the name's tokens, for relevance
);
-- Keyword: every query token present (tokens @> query). The rest serve the filters with the
-- orders the API offers (newest, price) so a selective filter never scans the table.
CREATE INDEX catalog_tokens ON catalog_entries USING gin (tokens);
CREATE INDEX catalog_newest ON catalog_entries (listed_at DESC, product_id DESC);
CREATE INDEX catalog_sector_newest ON catalog_entries (sector, listed_at DESC, product_id DESC);
CREATE INDEX catalog_type_newest ON catalog_entries (product_type, listed_at DESC, product_id DESC);
CREATE INDEX catalog_sector_type_newest
    ON catalog_entries (sector, product_type, listed_at DESC, product_id DESC);
-- Facet counts under sector / type / price filters come from this index alone (index-only).
CREATE INDEX catalog_facets ON catalog_entries (sector, product_type, price_min_fen);
CREATE INDEX catalog_seller_newest ON catalog_entries (seller_org_id, listed_at DESC, product_id DESC);
CREATE INDEX catalog_price ON catalog_entries (price_min_fen, product_id);
CREATE INDEX catalog_sector_price ON catalog_entries (sector, price_min_fen, product_id);
CREATE INDEX catalog_recognised ON catalog_entries (recognised_from, listed_at DESC, product_id DESC)
    WHERE recognised_from IS NOT NULL;

-- Facet counts of the whole catalog by sector and product type (for queries without a
-- keyword or other filters, which would otherwise count up to every row), and the same per
-- search token (for one-word queries: a common word matches tens of thousands of products).
CREATE TABLE catalog_counts (
    sector       text NOT NULL,
    product_type text NOT NULL,
    n            bigint NOT NULL,
    PRIMARY KEY (sector, product_type)
);
CREATE TABLE catalog_token_counts (
    token        text NOT NULL,
    sector       text NOT NULL,
    product_type text NOT NULL,
    n            bigint NOT NULL,
    PRIMARY KEY (token, sector, product_type)
);

CREATE FUNCTION catalog_count_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        INSERT INTO catalog_counts AS c (sector, product_type, n)
        SELECT sector, product_type, -count(*) FROM old_rows GROUP BY 1, 2
        ON CONFLICT (sector, product_type) DO UPDATE SET n = c.n + excluded.n;
        INSERT INTO catalog_token_counts AS c (token, sector, product_type, n)
        SELECT t, sector, product_type, -count(*) FROM old_rows, unnest(tokens) AS t
        GROUP BY 1, 2, 3
        ON CONFLICT (token, sector, product_type) DO UPDATE SET n = c.n + excluded.n;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO catalog_counts AS c (sector, product_type, n)
        SELECT sector, product_type, count(*) FROM new_rows GROUP BY 1, 2
        ON CONFLICT (sector, product_type) DO UPDATE SET n = c.n + excluded.n;
        INSERT INTO catalog_token_counts AS c (token, sector, product_type, n)
        SELECT t, sector, product_type, count(*) FROM new_rows, unnest(tokens) AS t
        GROUP BY 1, 2, 3
        ON CONFLICT (token, sector, product_type) DO UPDATE SET n = c.n + excluded.n;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER catalog_counts_insert AFTER INSERT ON catalog_entries
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION catalog_count_rows();
CREATE TRIGGER catalog_counts_update AFTER UPDATE ON catalog_entries
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION catalog_count_rows();
CREATE TRIGGER catalog_counts_delete AFTER DELETE ON catalog_entries
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION catalog_count_rows();

-- Every published snapshot of the resource list: what was published, when, signed how.
CREATE TABLE catalog_publications (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    published_at  timestamptz NOT NULL,
    datasets      integer NOT NULL,
    digest        text NOT NULL,              -- sha256 over the canonical JSON-LD
    kid           text NOT NULL,
    jws           text NOT NULL,              -- detached JWS over the digest
    file          text NOT NULL
);
CREATE TRIGGER catalog_publications_append_only BEFORE UPDATE OR DELETE ON catalog_publications
    FOR EACH ROW EXECUTE FUNCTION refuse_change();
