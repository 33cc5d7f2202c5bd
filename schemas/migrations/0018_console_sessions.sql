-- The staff console's server-side sessions (room: exchange.console). A staff member signs in
-- once with their named API token; the browser then holds only a random session id whose
-- SHA-256 is stored here. A session ends on sign-out, after an idle timeout, after its absolute
-- lifetime, or at once when its token is revoked or expires (checked on every request). Rows
-- are kept (ended) so an auditor can see who used the console when.
CREATE TABLE console_sessions (
    id_hash      bytea PRIMARY KEY,
    token_id     uuid NOT NULL REFERENCES api_tokens (id),
    org_id       uuid NOT NULL REFERENCES organisations (id),
    csrf_hash    bytea NOT NULL,
    created_at   timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    ended_at     timestamptz,
    end_reason   text CHECK (end_reason IN ('signed_out', 'idle', 'lifetime', 'token')),
    CHECK ((ended_at IS NULL) = (end_reason IS NULL))
);
CREATE INDEX console_sessions_token ON console_sessions (token_id) WHERE ended_at IS NULL;
