-- A node's identity towards the gateway (gatehouse node enroll): the public
-- half of the key its sshd's AuthorizedKeysCommand logs in with. One per
-- node; enrolling again replaces it, so the old one stops working at once.
CREATE TABLE node_credentials (
    node_id     INTEGER NOT NULL PRIMARY KEY REFERENCES nodes(id) ON DELETE CASCADE,
    fingerprint TEXT    NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    last_asked  INTEGER
);
