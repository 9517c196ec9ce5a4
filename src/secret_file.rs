//! Files that hold secrets (the host key, the kube CA key, the SQLite
//! database): refused when group or others can read them, as sshd refuses
//! such a host key, and created with mode 0600.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result, bail};

/// Refuses `path` when group or others can read it; a missing file passes.
/// `what` names it in the error ("host key"), which says how to fix it.
pub fn refuse_shared(path: &Path, what: &str) -> Result<()> {
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "{what} {} is readable by group or others (mode {mode:03o}): run `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
    }
    Ok(())
}

/// The text of the secret file `path`, or `None` when there is none yet.
/// Errors: readable by group or others ([`refuse_shared`]), or unreadable.
pub fn read_private(path: &Path, what: &str) -> Result<Option<String>> {
    match std::fs::metadata(path) {
        Ok(_) => {
            refuse_shared(path, what)?;
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {what} {}", path.display()))?;
            Ok(Some(text))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {what} {}", path.display())),
    }
}

/// Creates `path` (and its folder) with mode 0600 and writes `contents`;
/// never replaces an existing file.
pub fn create_private(path: &Path, what: &str, contents: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {what} {}", path.display()))?;
    std::io::Write::write_all(&mut f, contents)
        .with_context(|| format!("cannot write {what} {}", path.display()))
}
