-- Changes that must end live sessions, read by every gateway replica.
CREATE TABLE revocations (
    id          INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL,
    kind        TEXT    NOT NULL,
    account_id  INTEGER,
    project     TEXT,
    cluster     TEXT,
    node        TEXT,
    fingerprint TEXT,
    session     TEXT
);
