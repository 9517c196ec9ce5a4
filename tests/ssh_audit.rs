//! The gateway's algorithms as an auditor and as clients see them:
//! `ssh-audit` (the public SSH server auditor) finds nothing but the
//! post-quantum notes on the classical key exchanges kept for older
//! clients, and RSA keys authenticate with SHA-2 signatures only, as
//! OpenSSH has required since 8.8 (see `src/gateway/algorithms.rs`).

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{Gateway, Key};
use serde_json::Value;

/// ssh-audit's warning on a key exchange that has no post-quantum part
/// (`WARN_NOT_PQ_SAFE` in its algorithm database).
const NOT_PQ: &str = "does not provide protection against post-quantum attacks";

/// The classical exchanges kept for clients without ML-KEM (OpenSSH before
/// 9.9): the only algorithms allowed a warning, and only [`NOT_PQ`].
const CLASSICAL_KEX: &[&str] = &["curve25519-sha256", "curve25519-sha256@libssh.org"];

/// ssh-audit's note for any server offering chacha20-poly1305 with strict
/// key exchange: the server is fixed against Terrapin, but an unpatched
/// client is not. It is given to a hardened OpenSSH too.
const TERRAPIN_NOTE: &str =
    "Be aware that, while this target properly supports the strict key exchange method";

/// ssh-audit's DHEat note (`DHEat.DHEAT_WARNING`): more than 20 connections
/// a second from one address got an SSH banner.
const THROTTLING_NOTE: &str = "Potentially insufficient connection throttling detected";

fn names(report: &Value, kind: &str) -> Vec<String> {
    report[kind]
        .as_array()
        .unwrap_or_else(|| panic!("no {kind:?} list in the report: {report}"))
        .iter()
        .map(|e| e["algorithm"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn ssh_audit_finds_only_post_quantum_notes() {
    if !common::have("ssh-audit") {
        return;
    }
    // The shipped limits (an empty [limits] keeps every default; the test
    // harness otherwise relaxes the per-source ones).
    let mut gw = Gateway::new("[limits]\n");
    gw.start();
    // -j: JSON; -n: no colours. ssh-audit exits 2 when any warning is
    // reported, the post-quantum ones included, so the report is judged
    // rather than the exit code.
    let out = common::run_with_timeout(
        Command::new("ssh-audit").args(["-j", "-n", "-p", &gw.port.to_string(), "127.0.0.1"]),
        None,
        Duration::from_secs(120),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "ssh-audit printed no JSON ({e}), exit {:?}:\n{stdout}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let shown = serde_json::to_string_pretty(&report).unwrap_or_default();
    assert_ne!(
        out.status.code(),
        Some(3),
        "ssh-audit reports a failure:\n{shown}"
    );

    // What is offered (src/gateway/algorithms.rs).
    assert_eq!(
        names(&report, "kex"),
        [
            "mlkem768x25519-sha256",
            "curve25519-sha256",
            "curve25519-sha256@libssh.org",
            "ext-info-s",
            "kex-strict-s-v00@openssh.com",
        ],
        "{shown}"
    );
    assert_eq!(names(&report, "key"), ["ssh-ed25519"], "{shown}");
    assert_eq!(
        names(&report, "mac"),
        [
            "hmac-sha2-512-etm@openssh.com",
            "hmac-sha2-256-etm@openssh.com"
        ],
        "{shown}"
    );
    assert_eq!(
        report["compression"],
        serde_json::json!(["none", "zlib@openssh.com"]),
        "{shown}"
    );

    // No failure anywhere; a warning only on a classical exchange, and
    // only that it is not post-quantum.
    for kind in ["kex", "key", "enc", "mac"] {
        for entry in report[kind].as_array().into_iter().flatten() {
            let name = entry["algorithm"].as_str().unwrap_or_default();
            let notes = &entry["notes"];
            assert!(
                notes.get("fail").is_none(),
                "ssh-audit fails {kind} {name}: {notes}\n{shown}"
            );
            let Some(warn) = notes.get("warn") else {
                continue;
            };
            assert!(
                kind == "kex"
                    && CLASSICAL_KEX.contains(&name)
                    && *warn == serde_json::json!([NOT_PQ]),
                "ssh-audit warns about {kind} {name}: {warn}\n{shown}"
            );
        }
    }
    // Recommendations are only made for software ssh-audit knows; were
    // there any, none may be a warning or critical.
    let recs = &report["recommendations"];
    assert!(
        recs.get("critical").is_none() && recs.get("warning").is_none(),
        "ssh-audit recommends changes: {recs}\n{shown}"
    );

    let mut throttled = true;
    for note in report["additional_notes"].as_array().into_iter().flatten() {
        let note = note.as_str().unwrap_or_default();
        if note.starts_with(TERRAPIN_NOTE) {
            // It lists the algorithms concerned: no CBC cipher, no MAC.
            assert!(
                note.contains("with this target: chacha20-poly1305@openssh.com."),
                "the Terrapin note names more than chacha20-poly1305: {note}"
            );
        } else if note.starts_with(THROTTLING_NOTE) {
            throttled = false;
        } else {
            panic!("unexpected ssh-audit note: {note}\n{shown}");
        }
    }
    // ssh-audit's DHEat rate test (run because curve25519 is offered): 3
    // sockets at a time for 1.5 s, each closed as soon as its first 8 bytes
    // arrive; more than 20 "SSH-" banners a second from one address is a
    // warning. Only a per-address limit on the *rate* of new
    // unauthenticated connections passes it (of the kind of OpenSSH 9.8's
    // PerSourcePenalties `noauth`); a limit on concurrent ones
    // (MaxStartups, PerSourceMaxStartups) does not, since ssh-audit never
    // holds more than 3 open. The gateway's limits.per_source_noauth_burst
    // and _rate are of that kind, and on by default.
    assert!(
        throttled,
        "ssh-audit finds no connection throttling:\n{shown}"
    );
}

#[test]
fn rsa_keys_must_sign_with_sha2() {
    if !common::have("ssh") || !common::have("ssh-keygen") {
        return;
    }
    let mut gw = Gateway::new("");
    gw.account("alice@example.com");
    let rsa = Key::with_type(gw.dir.path(), "rsa", &["-t", "rsa", "-b", "3072"]);
    gw.cli(&[
        "key",
        "add",
        "alice@example.com",
        "--file",
        rsa.public.to_str().unwrap(),
    ])
    .ok();
    gw.start();

    // The OpenSSH client picks rsa-sha2-512 from server-sig-algs, which
    // lists modern algorithms only.
    let mut ssh = Command::new("ssh");
    // The first LogLevel given wins over the quiet one of ssh_opts.
    ssh.args(["-o", "LogLevel=DEBUG1"])
        .args(common::ssh_opts())
        .arg("-i")
        .arg(&rsa.private)
        .args(["-p", &gw.port.to_string(), "alice@127.0.0.1", "whoami"]);
    let out = common::run_with_timeout(&mut ssh, None, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "RSA login failed: {stderr}");
    let sig_algs = stderr
        .split("server-sig-algs=<")
        .nth(1)
        .and_then(|s| s.split('>').next())
        .unwrap_or_else(|| panic!("no server-sig-algs in the client's log: {stderr}"));
    assert_eq!(
        sig_algs,
        "ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,rsa-sha2-512,rsa-sha2-256"
    );

    // A client that signs with ssh-rsa (SHA-1) anyway is refused; the same
    // key signing with SHA-2 is let in.
    let key = Arc::new(russh::keys::load_secret_key(&rsa.private, None).expect("RSA private key"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    use russh::keys::HashAlg;
    for (hash, accepted) in [
        (None, false),
        (Some(HashAlg::Sha256), true),
        (Some(HashAlg::Sha512), true),
    ] {
        let got = runtime.block_on(common::scripted_login(gw.port, "alice", key.clone(), hash));
        assert_eq!(got, accepted, "RSA signature with {hash:?}");
    }
    let log = gw.log_text();
    assert!(
        log.contains("signature algorithm not accepted"),
        "the refusal says why: {log}"
    );
}
