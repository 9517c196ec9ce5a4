//! gatehouse: an SSH gateway for GPU cluster projects.
//!
//! How a request travels:
//!
//! ```text
//! TCP accept ─► gateway::handler (russh)          thin: protocol only
//!                  │ auth: store.account_for_login_key(login, fingerprint)
//!                  │ exec / shell line ──► commands::parse(words) ─► Command
//!                  │ direct-tcpip      ──► target::Target::parse(host, port)
//!                  ▼
//!             policy::authorize(role, Action) ─► allow | deny   one table
//!                  ▼
//!             store (sqlx, one transaction) + audit (one event each)
//!                  ▼
//!             output (table | JSON) ─► stdout/stderr, exit status
//!             gateway::forward (pipe bytes, count them) ◄─ sessions registry (kill)
//! ```
//!
//! The SSH layer never decides who may do what and never builds SQL; the
//! command layer never touches russh. Each is tested without the other.
//!
//! Threads: one acceptor hands each connection to a worker thread with its
//! own single-threaded runtime, where it lives until it closes. Changes that
//! must end live sessions (removals, disables, deletions, `session kill`)
//! are appended to a revocation feed in the database, which every replica's
//! [`gateway::sessions::Registry`] follows.
//!
//! | module | concern |
//! |---|---|
//! | [`config`] | the TOML file: defaults, validation, paths |
//! | [`model`] | validated types: `Email`, `Login`, `Name`, `Size`, `HostPort`, `SshPublicKey` |
//! | [`policy`] | the permission table and `authorize` |
//! | [`target`] | forwarding targets: parse and resolve |
//! | [`net`] | outbound connections with a deadline, and why they fail |
//! | [`nodes`] | nodes asking who may log in: the answer, and enrolment |
//! | [`reach`] | what a forward may land on: the operator's rules, checked at each connect |
//! | [`store`] | the database (SQLite or PostgreSQL) |
//! | [`secret_file`] | files holding secrets: private (0600) or refused |
//! | [`audit`] | audit events |
//! | [`commands`] | the SSH command language |
//! | [`operator`] | the operator CLI |
//! | [`output`] | tables, JSON, error classes and exit statuses |
//! | [`metrics`] | Prometheus metrics and `/healthz` |
//! | [`gateway`] | the russh server, shell, forwarding, live sessions |
//! | [`kube`] | the Kubernetes front door: TLS, HTTP, impersonation, per request |

pub mod audit;
pub mod commands;
pub mod config;
pub mod gateway;
pub mod kube;
pub mod metrics;
pub mod model;
pub mod net;
pub mod nodes;
pub mod operator;
pub mod output;
pub mod policy;
pub mod reach;
pub mod secret_file;
pub mod store;
pub mod target;
