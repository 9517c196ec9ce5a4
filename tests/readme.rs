//! The README's two top commands, as written: the first runs the gateway
//! (here with a config on a free port), the second is this test suite
//! itself (CI runs it as written, through `.ci/run`).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

/// The first command of the README's first `sh` block, comment removed.
fn readme_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let block = readme
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a ```sh block in the README");
    block
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn the_readme_starts_with_serve_and_test() {
    let cmds = readme_commands();
    assert_eq!(cmds, ["cargo run -- serve", "cargo test"], "{cmds:?}");
}

#[test]
fn the_readmes_first_command_runs_the_gateway() {
    let first = readme_commands().remove(0);
    let words = shell_words::split(&first).expect("words");
    assert_eq!(words[0], "cargo");
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let config = dir.path().join("gatehouse.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nhost_key = \"host_ed25519\"\n[database]\nurl = \"sqlite://gatehouse.db\"\n[kube]\nca_key = \"kube_ca.key\"\nca_cert = \"kube_ca.crt\"\n"
        ),
    )
    .unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let mut child = Command::new(cargo)
        .args(&words[1..])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("GATEHOUSE_CONFIG", &config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("cargo run");
    // cargo may rebuild nothing or a little; the bound is generous. The
    // port opens a moment before the gateway says it listens: wait for both.
    let listening = common::wait_port(port, Duration::from_secs(300));
    let said = || {
        std::fs::read_to_string(dir.path().join("log"))
            .unwrap_or_default()
            .contains("gatehouse listening")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while listening && !said() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
    assert!(listening, "`{first}` did not listen on {port}:\n{log}");
    assert!(log.contains("gatehouse listening"), "{log}");
}
