//! How results reach a person or a script: aligned tables, one JSON document
//! with `--json`, and the error classes that become exit statuses 1, 2 and 3.

use serde::Serialize;

use crate::model::Invalid;
use crate::store::StoreError;

/// Why a command did not succeed, as interface.md §4 sorts it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdError {
    /// Exit 1: not found, conflict, capacity, backend error.
    #[error("{0}")]
    Failed(String),
    /// Exit 2: bad syntax or an argument that fails validation.
    #[error("{0}")]
    Usage(String),
    /// Exit 3: role too low, not a member, or no such project.
    #[error("{0}")]
    Denied(String),
}

impl CmdError {
    pub fn exit_code(&self) -> u32 {
        match self {
            CmdError::Failed(_) => 1,
            CmdError::Usage(_) => 2,
            CmdError::Denied(_) => 3,
        }
    }

    /// The outcome word shared by the audit log, the log and the metrics.
    pub fn outcome(&self) -> crate::audit::Outcome {
        match self {
            CmdError::Failed(_) => crate::audit::Outcome::Failed,
            CmdError::Usage(_) => crate::audit::Outcome::Usage,
            CmdError::Denied(_) => crate::audit::Outcome::Denied,
        }
    }

    /// The one line written to stderr.
    pub fn line(&self) -> String {
        match self {
            CmdError::Denied(m) => format!("permission denied: {m}"),
            CmdError::Failed(m) | CmdError::Usage(m) => format!("error: {m}"),
        }
    }
}

impl From<Invalid> for CmdError {
    fn from(e: Invalid) -> Self {
        CmdError::Usage(e.0)
    }
}

impl From<StoreError> for CmdError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Db(e) => {
                tracing::error!(error = %e, "database error");
                CmdError::Failed("the gateway's database is unavailable; try again shortly".into())
            }
            other => CmdError::Failed(other.to_string()),
        }
    }
}

/// A table of text, printed with columns aligned, like `kubectl get`.
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&'static str]) -> Self {
        Table {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.header.iter().map(|h| h.to_string()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let last = row.len().saturating_sub(1);
            for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
                if i == last {
                    out.push_str(cell);
                } else {
                    out.push_str(&format!("{cell:<w$}   "));
                }
            }
            out.push('\n');
        }
        out
    }
}

/// `-` for an empty optional cell.
pub fn or_dash(v: Option<&str>) -> String {
    match v {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => "-".to_string(),
    }
}

/// Pretty JSON with a trailing newline; serialising our own types cannot fail.
pub fn json<T: Serialize + ?Sized>(v: &T) -> String {
    let mut s =
        serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let mut t = Table::new(&["NAME", "NODES"]);
        t.row(vec!["train-a".into(), "3".into()]);
        t.row(vec!["b".into(), "12".into()]);
        assert_eq!(t.render(), "NAME      NODES\ntrain-a   3\nb         12\n");
    }

    #[test]
    fn error_lines_and_codes() {
        assert_eq!(CmdError::Denied("x".into()).line(), "permission denied: x");
        assert_eq!(CmdError::Usage("x".into()).exit_code(), 2);
        assert_eq!(CmdError::Failed("x".into()).line(), "error: x");
    }
}
