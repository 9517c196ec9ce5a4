//! Produces the patched russh source in `OUT_DIR/russh/src`: the released
//! crate's `src/` (which cargo fetched as this crate's build-dependency)
//! with every `*.diff` of this folder applied in name order.
//!
//! Errors stop the build with one line that says what to do.

use std::fs;
use std::path::{Path, PathBuf};

const VERSION: &str = "0.65.1";

fn main() {
    if let Err(e) = run() {
        eprintln!("error: building the patched russh: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let here = PathBuf::from(env("CARGO_MANIFEST_DIR")?);
    let out = PathBuf::from(env("OUT_DIR")?).join("russh");
    let released = released_source()?;
    println!("cargo:rerun-if-changed={}", here.display());
    println!("cargo:rerun-if-env-changed=RUSSH_RELEASED_SOURCE");

    if out.exists() {
        fs::remove_dir_all(&out).map_err(|e| format!("cannot clear {}: {e}", out.display()))?;
    }
    copy_tree(&released.join("src"), &out.join("src"))?;

    let mut diffs: Vec<PathBuf> = fs::read_dir(&here)
        .map_err(|e| format!("cannot list {}: {e}", here.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "diff"))
        .collect();
    diffs.sort();
    for diff in &diffs {
        apply(diff, &out)?;
    }

    // Inner attributes and inner doc comments are only allowed at the top
    // of the crate root, which is our own `src/lib.rs`; it restates what it
    // needs of them.
    let lib = out.join("src/lib.rs");
    let text = strip_inner_attributes(&read(&lib)?);
    let text: String = text
        .split_inclusive('\n')
        .map(|l| match l.strip_prefix("//!") {
            Some(rest) => format!("//{rest}"),
            None => l.to_string(),
        })
        .collect();
    write(&lib, &text)?;
    Ok(())
}

fn env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} is not set (run this through cargo)"))
}

/// The unpacked russh-VERSION in cargo's registry folder, or
/// `RUSSH_RELEASED_SOURCE` if set (a vendored or offline checkout).
fn released_source() -> Result<PathBuf, String> {
    if let Ok(dir) = std::env::var("RUSSH_RELEASED_SOURCE") {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| Path::new(&h).join(".cargo")))
        .map_err(|_| "neither CARGO_HOME nor HOME is set".to_string())?;
    let registries = home.join("registry/src");
    let entries = fs::read_dir(&registries).map_err(|e| {
        format!(
            "cannot list {}: {e}; set RUSSH_RELEASED_SOURCE to an unpacked russh-{VERSION}",
            registries.display()
        )
    })?;
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.path().join(format!("russh-{VERSION}")))
        .find(|p| p.join("src/lib.rs").is_file())
        .ok_or_else(|| {
            format!(
                "russh-{VERSION} is not unpacked under {}; set RUSSH_RELEASED_SOURCE to an unpacked russh-{VERSION}",
                registries.display()
            )
        })
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    fs::create_dir_all(to).map_err(|e| format!("cannot create {}: {e}", to.display()))?;
    for entry in fs::read_dir(from).map_err(|e| format!("cannot list {}: {e}", from.display()))? {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", from.display()))?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if src.is_dir() {
            copy_tree(&src, &dst)?;
        } else {
            fs::copy(&src, &dst).map_err(|e| format!("cannot copy {}: {e}", src.display()))?;
        }
    }
    Ok(())
}

fn read(path: &Path) -> Result<String, String> {
    fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Applies a multi-file unified diff (`--- a/PATH` / `+++ b/PATH` per
/// file, as `git diff` writes it) to the tree at `root`.
fn apply(diff: &Path, root: &Path) -> Result<(), String> {
    let text = read(diff)?;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let starts: Vec<usize> = (0..lines.len())
        .filter(|&i| {
            lines[i].starts_with("--- a/")
                && lines.get(i + 1).is_some_and(|l| l.starts_with("+++ b/"))
        })
        .collect();
    if starts.is_empty() {
        return Err(format!("{} has no file in it", diff.display()));
    }
    for (n, &start) in starts.iter().enumerate() {
        let end = starts.get(n + 1).copied().unwrap_or(lines.len());
        // Keep the file's headers and hunks; drop `git diff`'s own lines
        // (`diff --git`, `index`), which no hunk line can start with.
        let chunk: String = lines[start..end]
            .iter()
            .filter(|l| l.starts_with([' ', '+', '-', '@', '\\', '\n']))
            .copied()
            .collect();
        let path = lines[start]["--- a/".len()..].trim_end();
        let target = root.join(path);
        let patch = diffy::Patch::from_str(&chunk)
            .map_err(|e| format!("{}: cannot read the diff of {path}: {e}", diff.display()))?;
        let patched = diffy::apply(&read(&target)?, &patch).map_err(|e| {
            format!(
                "{}: does not apply to russh {VERSION}'s {path}: {e}",
                diff.display()
            )
        })?;
        write(&target, &patched)?;
    }
    Ok(())
}

/// Removes the `#![...]` attributes at the top of a crate root.
fn strip_inner_attributes(text: &str) -> String {
    let mut rest = text;
    loop {
        let trimmed = rest.trim_start();
        if !trimmed.starts_with("#![") {
            return trimmed.to_string();
        }
        let mut depth = 0usize;
        let mut end = None;
        for (i, c) in trimmed.char_indices() {
            match c {
                '[' => depth += 1,
                ']' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = Some(i + 1);
                        break;
                    }
                }
                _ => {}
            }
        }
        match end {
            Some(e) => rest = &trimmed[e..],
            None => return trimmed.to_string(),
        }
    }
}
