-- Keys added over SSH wait here until their holder proves possession by
-- logging in with them once; they authenticate nothing else, and never
-- block the same key's registration by its real owner.
CREATE TABLE pending_keys (
    id          INTEGER PRIMARY KEY,
    account_id  INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    fingerprint TEXT    NOT NULL,
    algorithm   TEXT    NOT NULL,
    public_key  TEXT    NOT NULL,
    comment     TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    UNIQUE (account_id, fingerprint)
);
