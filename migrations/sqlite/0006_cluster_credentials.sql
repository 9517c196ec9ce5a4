-- A cluster's own credential towards its Kubernetes API server (`cluster
-- credential set`): a bearer token, or a PEM client certificate and key.
-- Write-only: no command reads `secret` back; only the gateway's
-- Kubernetes front door uses it, and impersonates each user with it.
CREATE TABLE cluster_credentials (
    cluster_id  INTEGER NOT NULL PRIMARY KEY REFERENCES clusters(id) ON DELETE CASCADE,
    kind        TEXT    NOT NULL,
    secret      TEXT    NOT NULL,
    set_at      INTEGER NOT NULL,
    set_by      TEXT    NOT NULL
);
