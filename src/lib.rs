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

pub mod audit;
pub mod commands;
pub mod config;
pub mod gateway;
pub mod metrics;
pub mod model;
pub mod operator;
pub mod output;
pub mod policy;
pub mod store;
pub mod target;
