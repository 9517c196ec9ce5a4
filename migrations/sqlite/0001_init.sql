-- gatehouse schema, SQLite flavour. Keep in step with migrations/postgres.
CREATE TABLE accounts (
    id          INTEGER PRIMARY KEY,
    email       TEXT    NOT NULL,
    email_norm  TEXT    NOT NULL UNIQUE,
    login       TEXT    NOT NULL UNIQUE,
    disabled    INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL
);

CREATE TABLE ssh_keys (
    id          INTEGER PRIMARY KEY,
    account_id  INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    fingerprint TEXT    NOT NULL UNIQUE,
    algorithm   TEXT    NOT NULL,
    public_key  TEXT    NOT NULL,
    comment     TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX ssh_keys_account ON ssh_keys(account_id);

CREATE TABLE projects (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);

CREATE TABLE memberships (
    project_id  INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    account_id  INTEGER NOT NULL REFERENCES accounts(id) ON DELETE CASCADE,
    role        TEXT    NOT NULL CHECK (role IN ('admin', 'member')),
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (project_id, account_id)
);
CREATE INDEX memberships_account ON memberships(account_id);

CREATE TABLE clusters (
    id          INTEGER PRIMARY KEY,
    project_id  INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    name        TEXT    NOT NULL,
    gpu_type    TEXT,
    description TEXT    NOT NULL DEFAULT '',
    kube_api    TEXT,
    dashboard   TEXT,
    node_user   TEXT    NOT NULL DEFAULT 'ubuntu',
    kube_ca     TEXT,
    created_at  INTEGER NOT NULL,
    UNIQUE (project_id, name)
);

CREATE TABLE nodes (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE,
    host        TEXT    NOT NULL,
    port        INTEGER NOT NULL,
    gpu_type    TEXT,
    gpus        INTEGER NOT NULL DEFAULT 0,
    cluster_id  INTEGER REFERENCES clusters(id) ON DELETE SET NULL,
    created_at  INTEGER NOT NULL,
    UNIQUE (host, port)
);
CREATE INDEX nodes_cluster ON nodes(cluster_id);

CREATE TABLE volumes (
    id          INTEGER PRIMARY KEY,
    project_id  INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    name        TEXT    NOT NULL,
    size_gib    INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    UNIQUE (project_id, name)
);

CREATE TABLE audit_events (
    id          INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL,
    actor       TEXT    NOT NULL,
    source      TEXT    NOT NULL,
    project     TEXT,
    action      TEXT    NOT NULL,
    target      TEXT    NOT NULL,
    outcome     TEXT    NOT NULL,
    detail      TEXT    NOT NULL
);
CREATE INDEX audit_events_project ON audit_events(project, id);
