//! The Kubernetes front door (issue #13) with the real `kubectl` through the
//! real OpenSSH client (`ssh -D` and `ssh -L`), against a fake API server
//! that speaks real TLS, checks the gateway's credential and records every
//! request's headers (tests/fixtures/fake_kube_api.py).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Gateway, Key, Run};

/// The gateway's own credential towards the fake API server.
const TOKEN: &str = "gw-secret-4f1c9a7e2b8d6035";

struct World {
    gw: Gateway,
    alice: Key,
    bob: Key,
    api: Child,
    /// The gateway's metrics port.
    mport: u16,
    /// Every command's output, to search for the credential at the end.
    seen: std::cell::RefCell<String>,
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.api.kill();
        let _ = self.api.wait();
    }
}

fn dir(w: &World) -> &Path {
    w.gw.dir.path()
}

fn sh(dir: &Path, script: &str) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// train (alice admin, bob member) has cluster c1 on a node at 127.0.0.1,
/// whose API is the fake on 127.0.0.1; kube_api and kube_ca are set, the
/// credential is not.
fn world() -> Option<World> {
    for tool in ["ssh", "kubectl", "python3", "openssl"] {
        if !common::have(tool) {
            return None;
        }
    }
    let mport = common::free_port();
    let mut gw = Gateway::new(&format!("[metrics]\nlisten = \"127.0.0.1:{mport}\"\n"));
    let (alice, bob) = common::train_on_one_node(&mut gw);
    let d = gw.dir.path().to_path_buf();
    // The API server's CA and certificate, and a client CA for the
    // certificate credential.
    sh(
        &d,
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=test-ca 2>/dev/null \
         && openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout api.key -out api.csr -subj /CN=kube-api 2>/dev/null \
         && printf 'subjectAltName=IP:127.0.0.1\\n' > san.ext \
         && openssl x509 -req -in api.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out api.crt -days 2 -extfile san.ext 2>/dev/null \
         && openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout client.key -out client.csr -subj /CN=gatehouse 2>/dev/null \
         && printf 'extendedKeyUsage=clientAuth\\n' > client.ext \
         && openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out client.crt -days 2 -extfile client.ext 2>/dev/null",
    );
    std::fs::write(d.join("token"), TOKEN).unwrap();
    let api_port = common::free_port();
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/fake_kube_api.py"
    );
    let api = Command::new("python3")
        .arg(fixture)
        .args(["--port", &api_port.to_string()])
        .arg("--cert")
        .arg(d.join("api.crt"))
        .arg("--key")
        .arg(d.join("api.key"))
        .arg("--token-file")
        .arg(d.join("token"))
        .arg("--client-ca")
        .arg(d.join("ca.crt"))
        .arg("--record")
        .arg(d.join("record.jsonl"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let w = World {
        gw,
        alice,
        bob,
        api,
        mport,
        seen: Default::default(),
    };
    assert!(common::wait_port(api_port, Duration::from_secs(10)));
    use base64::Engine;
    let ca =
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(d.join("ca.crt")).unwrap());
    w.ssh(
        "alice",
        &[
            "cluster",
            "config",
            "c1",
            &format!("kube_api=127.0.0.1:{api_port}"),
            &format!("kube_ca={ca}"),
        ],
    )
    .ok();
    Some(w)
}

impl World {
    fn key(&self, login: &str) -> &Key {
        if login == "alice" {
            &self.alice
        } else {
            &self.bob
        }
    }

    fn note(&self, r: &Run) {
        let mut seen = self.seen.borrow_mut();
        seen.push_str(&r.stdout);
        seen.push_str(&r.stderr);
    }

    fn ssh(&self, login: &str, args: &[&str]) -> Run {
        let r = self.gw.ssh(login, self.key(login), args);
        self.note(&r);
        r
    }

    fn ssh_stdin(&self, login: &str, args: &[&str], stdin: &[u8]) -> Run {
        let r = self.gw.ssh_stdin(login, self.key(login), args, Some(stdin));
        self.note(&r);
        r
    }

    /// `ssh -N ARGS` for `login`, once its local port answers.
    fn tunnel(&self, login: &str, args: &[&str], port: u16) -> Tunnel {
        let mut c = self.gw.ssh_cmd(login, self.key(login));
        c.arg("-N").args(args);
        let child = c
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        assert!(
            common::wait_port(port, Duration::from_secs(10)),
            "tunnel {args:?}"
        );
        Tunnel(child)
    }

    /// bob's kubeconfig for `ssh -D`, his running `ssh -D`, and its port.
    fn bob_through_socks(&self) -> (PathBuf, Tunnel, u16) {
        let socks = common::free_port();
        let kc = self.kubeconfig("bob", &["--socks-port", &socks.to_string()]);
        let tunnel = self.tunnel("bob", &["-D", &socks.to_string()], socks);
        (kc, tunnel, socks)
    }

    /// `login`'s kubeconfig (from `kubeconfig c1 EXTRA`) in a file of its own.
    fn kubeconfig(&self, login: &str, extra: &[&str]) -> PathBuf {
        let mut args = vec!["kubeconfig", "c1"];
        args.extend_from_slice(extra);
        let r = self.ssh(login, &args);
        r.ok();
        let path = dir(self).join(format!("kubeconfig-{login}-{}", extra.join("-")));
        std::fs::write(&path, &r.stdout).unwrap();
        path
    }

    fn kubectl_cmd(&self, kubeconfig: &Path, args: &[&str]) -> Command {
        let home = dir(self).join("home");
        std::fs::create_dir_all(&home).unwrap();
        let mut k = Command::new("kubectl");
        k.env("HOME", &home)
            .env_remove("KUBECONFIG")
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--request-timeout", "20s"])
            .args(args);
        k
    }

    fn kubectl(&self, kubeconfig: &Path, args: &[&str]) -> Run {
        let r = common::run(&mut self.kubectl_cmd(kubeconfig, args));
        self.note(&r);
        r
    }

    fn kubectl_stdin(&self, kubeconfig: &Path, args: &[&str], stdin: &[u8]) -> Run {
        let mut k = self.kubectl_cmd(kubeconfig, args);
        let r = Run::from(common::run_with_timeout(
            &mut k,
            Some(stdin),
            Duration::from_secs(60),
        ));
        self.note(&r);
        r
    }

    /// What the API server received, in order.
    fn record(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir(self).join("record.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        let r = self.gw.cli(&["audit", "--limit", "1000", "--json"]);
        self.note(&r);
        r.ok().json().as_array().cloned().unwrap_or_default()
    }

    fn set_token(&self) {
        let r = self.ssh_stdin(
            "alice",
            &["cluster", "credential", "set", "c1"],
            format!("{TOKEN}\n").as_bytes(),
        );
        r.ok();
        assert!(r.stdout.contains("credential set (token)"), "{r:?}");
    }
}

struct Tunnel(Child);

impl Drop for Tunnel {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn header<'a>(req: &'a serde_json::Value, name: &str) -> Vec<&'a str> {
    req["headers"][name]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default()
}

fn user(req: &serde_json::Value) -> Option<&str> {
    header(req, "impersonate-user").first().copied()
}

/// Requests the API server got for `path` as `email`.
fn requests_as<'a>(
    record: &'a [serde_json::Value],
    email: &str,
    path: &str,
) -> Vec<&'a serde_json::Value> {
    record
        .iter()
        .filter(|r| user(r) == Some(email) && r["path"].as_str() == Some(path))
        .collect()
}

const PODS: &str = "/api/v1/namespaces/train/pods";

#[test]
fn kubectl_as_yourself_through_socks_and_a_local_forward() {
    let Some(w) = world() else { return };

    // Without the cluster's credential, kubectl is told what fixes it.
    let socks = common::free_port();
    let alice_kc = w.kubeconfig("alice", &["--socks-port", &socks.to_string()]);
    let kc_text = std::fs::read_to_string(&alice_kc).unwrap();
    assert!(kc_text.contains("https://kube.c1.train:443"), "{kc_text}");
    assert!(
        kc_text.contains(&format!("socks5://127.0.0.1:{socks}")),
        "{kc_text}"
    );
    // Its comment names the tunnel to keep running, on the gateway's port.
    assert!(
        kc_text.contains(&format!("ssh -p {} -N -D {socks} alice@GATEWAY", w.gw.port)),
        "{kc_text}"
    );
    let _alice_tunnel = w.tunnel("alice", &["-D", &socks.to_string()], socks);
    let r = w.kubectl(&alice_kc, &["get", "pods"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("cluster credential set c1"), "{r:?}");
    assert!(
        w.record().is_empty(),
        "nothing reaches the API server without the credential"
    );

    // A member may not set it; the admin does, and it is never shown again.
    let denied = w.ssh_stdin(
        "bob",
        &["cluster", "credential", "set", "c1"],
        TOKEN.as_bytes(),
    );
    denied.fails(3, "permission denied");
    // Refused at once, while the pipe is still open: nothing is read
    // before the permission check.
    let mut waiting =
        w.gw.ssh_cmd("bob", &w.bob)
            .args(["cluster", "credential", "set", "c1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
    let ended = common::wait_exit(&mut waiting, Duration::from_secs(15));
    let _ = waiting.kill();
    let _ = waiting.wait();
    assert_eq!(
        ended.and_then(|st| st.code()),
        Some(3),
        "a member waited on an open stdin"
    );
    // Refused before what was piped is looked at, even when it is not
    // text, and the attempt is audited.
    w.ssh_stdin(
        "bob",
        &["cluster", "credential", "set", "c1"],
        &[0xff, 0xfe, 0x00, 0x9c],
    )
    .fails(3, "permission denied");
    assert!(
        w.audit().iter().any(|e| e["actor"] == "bob"
            && e["action"] == "cluster credential set"
            && e["outcome"] == "denied"),
        "the member's attempt is audited"
    );
    // At a terminal, where no end of input ever comes, the admin is told
    // to pipe it instead of waiting.
    let mut typed = w.gw.ssh_cmd("alice", &w.alice);
    typed.args(["-tt", "--", "cluster", "credential", "set", "c1"]);
    let r = Run::from(common::run_with_timeout(
        &mut typed,
        Some(b""),
        Duration::from_secs(30),
    ));
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stdout
            .contains("read from a pipe, not typed at a terminal"),
        "{r:?}"
    );
    w.set_token();
    let show = w.ssh("bob", &["cluster", "show", "c1"]);
    show.ok();
    assert!(show.stdout.contains("credential   set since"), "{show:?}");
    let cfg = w.ssh("bob", &["cluster", "config", "c1", "--json"]);
    assert_eq!(cfg.ok().json()["credential"]["set"], true);

    // alice through `ssh -D`, forging another identity: the API server
    // sees only the gateway's credential and alice as the admin she is.
    let r = w.kubectl(
        &alice_kc,
        &[
            "--token",
            "forged-token",
            "--as",
            "root",
            "--as-group",
            "system:masters",
            "get",
            "pods",
        ],
    );
    r.ok();
    assert!(r.stdout.contains("trainer-0"), "{r:?}");
    let record = w.record();
    let alice_list = requests_as(&record, "alice@example.com", PODS);
    assert!(!alice_list.is_empty(), "{record:?}");
    for req in &alice_list {
        assert_eq!(req["auth"], "token", "{req}");
        assert_eq!(
            header(req, "impersonate-group"),
            ["gatehouse:train:admin", "gatehouse:authenticated"],
            "{req}"
        );
        assert_eq!(
            header(req, "impersonate-extra-gatehouse-session").len(),
            1,
            "{req}"
        );
        // The cluster's audit log sees where the user really is.
        assert_eq!(header(req, "x-forwarded-for"), ["127.0.0.1"], "{req}");
    }
    for req in &record {
        let text = req.to_string();
        assert!(!text.contains("forged-token"), "{text}");
        assert!(!text.contains(PLACEHOLDER), "{text}");
        assert!(!text.contains("system:masters"), "{text}");
        assert_ne!(user(req), Some("root"), "{text}");
    }

    // bob through `ssh -L` with the kubeconfig's local mode: a member.
    let local = common::free_port();
    let bob_kc = w.kubeconfig("bob", &["--local-port", &local.to_string()]);
    let kc_text = std::fs::read_to_string(&bob_kc).unwrap();
    assert!(
        kc_text.contains(&format!("https://127.0.0.1:{local}")),
        "{kc_text}"
    );
    assert!(kc_text.contains("tls-server-name"), "{kc_text}");
    let _bob_tunnel = w.tunnel("bob", &["-L", &format!("{local}:kube.c1.train:443")], local);
    w.kubectl(&bob_kc, &["get", "pods"]).ok();
    let record = w.record();
    let bob_list = requests_as(&record, "bob@example.com", PODS);
    assert!(!bob_list.is_empty(), "{record:?}");
    for req in &bob_list {
        assert_eq!(
            header(req, "impersonate-group"),
            ["gatehouse:train:member", "gatehouse:authenticated"]
        );
    }

    // exec streams both ways over the v5 WebSocket; logs -f streams.
    let r = w.kubectl(&bob_kc, &["exec", "trainer-0", "--", "echo", "hi"]);
    r.ok();
    assert!(r.stdout.contains("ran: echo hi"), "{r:?}");
    let r = w.kubectl_stdin(
        &bob_kc,
        &["exec", "-i", "trainer-0", "--", "cat"],
        b"hello through the gateway\n",
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("hello through the gateway"), "{r:?}");
    let mut logs = w
        .kubectl_cmd(&bob_kc, &["logs", "-f", "trainer-0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = first_lines(&mut logs, 3, Duration::from_secs(15));
    let _ = logs.kill();
    let _ = logs.wait();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines.iter().all(|l| l.starts_with("log line")), "{lines:?}");

    // apply sends a body through the front door; cp reads a tar over exec.
    let pod = dir(&w).join("job.yaml");
    std::fs::write(
        &pod,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: job-7\nspec:\n  containers:\n  - name: main\n    image: busybox\n",
    )
    .unwrap();
    let r = w.kubectl(
        &bob_kc,
        &["apply", "--validate=false", "-f", pod.to_str().unwrap()],
    );
    r.ok();
    assert!(r.stdout.contains("pod/job-7 created"), "{r:?}");
    let record = w.record();
    let created = record
        .iter()
        .find(|q| q["method"] == "POST" && q["path"] == PODS)
        .expect("the create reached the API server");
    assert_eq!(user(created), Some("bob@example.com"));
    assert!(
        created["body"].as_str().unwrap_or("").contains("job-7"),
        "{created}"
    );
    let copied = dir(&w).join("copied.txt");
    let r = w.kubectl(
        &bob_kc,
        &["cp", "trainer-0:/data/out.txt", copied.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        std::fs::read_to_string(&copied).unwrap_or_default(),
        "copied through gatehouse\n"
    );

    // A promotion changes the group on the next request.
    w.ssh("alice", &["member", "role", "bob@example.com", "admin"])
        .ok();
    let before = w.record().len();
    w.kubectl(&bob_kc, &["get", "pods"]).ok();
    let record = w.record();
    let after: Vec<_> = record[before..]
        .iter()
        .filter(|r| user(r) == Some("bob@example.com"))
        .collect();
    assert!(!after.is_empty());
    for req in after {
        assert_eq!(header(req, "impersonate-group")[0], "gatehouse:train:admin");
    }

    // The same works with a client certificate as the credential.
    let pem = format!(
        "{}{}",
        std::fs::read_to_string(dir(&w).join("client.crt")).unwrap(),
        std::fs::read_to_string(dir(&w).join("client.key")).unwrap()
    );
    let r = w.ssh_stdin(
        "alice",
        &["cluster", "credential", "set", "c1"],
        pem.as_bytes(),
    );
    r.ok();
    assert!(r.stdout.contains("credential set (certificate)"), "{r:?}");
    let before = w.record().len();
    w.kubectl(&alice_kc, &["get", "pods"]).ok();
    let record = w.record();
    let with_cert: Vec<_> = record[before..].iter().collect();
    assert!(!with_cert.is_empty());
    for req in with_cert {
        assert_eq!(req["auth"], "cert:gatehouse", "{req}");
        assert!(header(req, "authorization").is_empty(), "{req}");
    }
    // A certificate the API server does not accept is named as the cause.
    sh(
        dir(&w),
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
         -subj /CN=stranger -days 1 -keyout stranger.key -out stranger.crt 2>/dev/null",
    );
    let stranger = format!(
        "{}{}",
        std::fs::read_to_string(dir(&w).join("stranger.crt")).unwrap(),
        std::fs::read_to_string(dir(&w).join("stranger.key")).unwrap()
    );
    w.ssh_stdin(
        "alice",
        &["cluster", "credential", "set", "c1"],
        stranger.as_bytes(),
    )
    .ok();
    let r = w.kubectl(&alice_kc, &["get", "pods"]);
    assert!(
        r.stderr
            .contains("refused the cluster's client certificate"),
        "{r:?}"
    );
    w.ssh_stdin(
        "alice",
        &["cluster", "credential", "set", "c1"],
        pem.as_bytes(),
    )
    .ok();

    // Every request is audited with its verb, path and status; exec with
    // its pod and duration.
    let audit = w.audit();
    assert!(
        audit.iter().any(|e| e["action"] == "kube"
            && e["actor"] == "bob"
            && e["project"] == "train"
            && e["args"]
                .as_str()
                .unwrap_or("")
                .starts_with("list /api/v1/namespaces/train/pods")
            && e["detail"].as_str().unwrap_or("").contains("status 200")),
        "{audit:?}"
    );
    assert!(
        audit.iter().any(|e| e["action"] == "kube exec"
            && e["target"].as_str().unwrap_or("").ends_with("/trainer-0")
            && e["detail"].as_str().unwrap_or("").contains("closed after")),
        "{audit:?}"
    );
    assert!(
        audit.iter().any(|e| e["action"] == "kube"
            && e["outcome"] == "failed"
            && e["detail"].as_str().unwrap_or("").contains("status 503")),
        "{audit:?}"
    );

    // kubectl offers HTTP/2 and gets it; upgrades (exec, cp) go over HTTP/1.1.
    for proto in ["over HTTP/2", "over HTTP/1.1"] {
        assert!(
            audit
                .iter()
                .any(|e| e["action"] == "forward"
                    && e["detail"].as_str().unwrap_or("").contains(proto)),
            "no front door {proto}: {audit:?}"
        );
    }
    let (_, metrics) = common::http_get(w.mport, "/metrics");
    assert!(
        common::metric(
            &metrics,
            "gatehouse_kube_requests_total{verb=\"list\",outcome=\"ok\"}"
        ) >= 2.0,
        "{metrics}"
    );
    assert!(
        common::metric(
            &metrics,
            "gatehouse_kube_requests_total{verb=\"get\",outcome=\"failed\"}"
        ) >= 1.0,
        "{metrics}"
    );

    // Pointing kube_ca (or kube_api) elsewhere clears the credential: it
    // was given for this API server, and must not follow an admin's change.
    use base64::Engine;
    let other = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(dir(&w).join("client.crt")).unwrap());
    let r = w.ssh(
        "alice",
        &["cluster", "config", "c1", &format!("kube_ca={other}")],
    );
    r.ok();
    assert!(r.stdout.contains("credential was cleared"), "{r:?}");
    let show = w.ssh("alice", &["cluster", "config", "c1", "--json"]);
    assert_eq!(show.ok().json()["credential"]["set"], false);
    let ca = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(dir(&w).join("ca.crt")).unwrap());
    w.ssh(
        "alice",
        &["cluster", "config", "c1", &format!("kube_ca={ca}")],
    )
    .ok();
    // A credential given as an argument is refused and never recorded.
    let typed = "typed-secret-0d6e3f1a9b7c5d3e1f2a4b6c8d";
    w.ssh("alice", &["cluster", "credential", "set", "c1", typed])
        .fails(2, "on stdin");
    // Nor when pasted as a command, or where a cluster name goes.
    w.ssh("alice", &[typed]).fails(2, "error: ");
    w.ssh("alice", &["cluster", "credential", "set", typed])
        .fails(1, "no cluster");
    // A short one where the cluster, the project or an option goes: a
    // failed credential line keeps only its own words.
    for args in [
        &["cluster", "credential", "set", "--token=shorttok9", "c1"][..],
        &["cluster", "credential", "set", "shorttok9"],
        &["cluster", "credential", "set", "c1", "-p", "shorttok9"],
        &["cluster", "credential", "set", "ShortTok9"],
        &["cluster", "credentials", "set", "c1", "shorttok9"],
        &["cluster", "cr\u{435}dential", "set", "c1", "shorttok9"],
    ] {
        let r = w.ssh("alice", args);
        assert_ne!(r.code, 0, "{r:?}");
    }
    // Nor pasted as a shell line of its own, after the command that wants
    // it on stdin.
    let r = w.ssh_stdin("alice", &[], b"cluster credential set c1\nShortTok9\n");
    assert_ne!(r.code, 0, "{r:?}");
    w.set_token();

    // kube_ca changed by another admin while the credential is being piped:
    // it was meant for the old API server, and nothing is set. (Should the
    // change land before the command's first look, it sets the credential
    // for the new server; then it is tried again with a longer wait.)
    let set_while_changed = |wait: Duration| -> Run {
        use std::io::Write;
        let mut piping = w.gw.ssh_cmd("alice", &w.alice);
        piping
            .args(["--", "cluster", "credential", "set", "c1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = piping.spawn().unwrap();
        std::thread::sleep(wait);
        w.ssh(
            "alice",
            &["cluster", "config", "c1", &format!("kube_ca={other}")],
        )
        .ok();
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(format!("{TOKEN}\n").as_bytes());
        drop(stdin);
        let ended = common::wait_exit(&mut child, Duration::from_secs(30));
        if ended.is_none() {
            let _ = child.kill();
        }
        let r = Run::from(child.wait_with_output().unwrap());
        w.note(&r);
        w.ssh(
            "alice",
            &["cluster", "config", "c1", &format!("kube_ca={ca}")],
        )
        .ok();
        r
    };
    let mut raced = set_while_changed(Duration::from_secs(2));
    for wait in [5, 10] {
        if raced.code != 0 {
            break;
        }
        raced = set_while_changed(Duration::from_secs(wait));
    }
    raced.fails(
        1,
        "changed while the credential was being read; nothing was set",
    );
    let cfg = w.ssh("alice", &["cluster", "config", "c1", "--json"]);
    assert_eq!(cfg.ok().json()["credential"]["set"], false);
    w.set_token();

    // Clearing it: requests fail again, naming the fix.
    w.ssh("alice", &["cluster", "credential", "clear", "c1"])
        .ok();
    let r = w.kubectl(&alice_kc, &["get", "pods"]);
    assert!(r.stderr.contains("cluster credential set c1"), "{r:?}");

    // The credential never appears in any output, listing or log.
    for args in [
        &["cluster", "show", "c1", "--json"][..],
        &["cluster", "list", "--json"],
        &["cluster", "config", "c1"],
        &["audit", "--json", "--limit", "1000"],
    ] {
        w.ssh("alice", args).ok();
    }
    let everything = format!("{}{}", w.seen.borrow(), w.gw.log_text());
    assert!(!everything.contains(TOKEN), "the token leaked");
    let audit = w.audit();
    let recorded = format!("{audit:?}{}", w.gw.log_text()).to_ascii_lowercase();
    assert!(
        !recorded.contains("typed-secret") && !recorded.contains("shorttok9"),
        "a credential typed as an argument was recorded"
    );
    let key_line = pem
        .lines()
        .skip_while(|l| !l.contains("PRIVATE KEY"))
        .nth(1)
        .unwrap()
        .to_string();
    assert!(!everything.contains(&key_line), "the client key leaked");
}

/// The token the kubeconfig carries for kubectl's sake; never forwarded.
const PLACEHOLDER: &str = "gatehouse-placeholder-not-a-credential";

/// Reads up to `n` lines of the child's stdout within `timeout`.
fn first_lines(child: &mut Child, n: usize, timeout: Duration) -> Vec<String> {
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Reads to the end even when nobody listens any more: a closed pipe
        // would kill the child with SIGPIPE, which looks like a cut stream.
        for line in BufReader::new(out).lines() {
            match line {
                Ok(l) => {
                    let _ = tx.send(l);
                }
                Err(_) => break,
            }
        }
    });
    let deadline = Instant::now() + timeout;
    let mut lines = Vec::new();
    while lines.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => lines.push(l),
            Err(_) => break,
        }
    }
    lines
}

/// Every way of losing access (the credential reset, a promotion, a
/// demotion, account disable, key removal, member remove) cuts bob's
/// running `kubectl get -w` within 3 s; after member remove his next
/// request never reaches the API server.
#[test]
fn member_remove_cuts_a_running_watch_and_refuses_the_next_request() {
    let Some(w) = world() else { return };
    w.set_token();
    let (kc, mut tunnel, socks) = w.bob_through_socks();
    // A running watch, once it streams events and the API server has it.
    let (out, errors) = (dir(&w).join("watch.out"), dir(&w).join("watch.err"));
    let start_watch = |since: usize| -> Child {
        // Files, not pipes: a pipe nobody reads would stall kubectl, and one
        // closed would kill it, either of which looks like a cut stream.
        let watch = w
            .kubectl_cmd(&kc, &["get", "pods", "-w"])
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&errors).unwrap())
            .spawn()
            .unwrap();
        let streaming = || {
            std::fs::read_to_string(&out)
                .unwrap_or_default()
                .lines()
                .count()
                >= 3
                && w.record()[since..].iter().any(|r| {
                    user(r) == Some("bob@example.com")
                        && r["query"].as_str().unwrap_or("").contains("watch")
                })
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !streaming() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(streaming(), "the watch streams, as bob");
        watch
    };
    // Each way of losing access cuts the running watch within 3 s: what
    // was done, and the group bob's watch ran with until then.
    let cut_by = |what: &str, act: &dyn Fn(), group: &str| {
        let since = w.record().len();
        let mut watch = start_watch(since);
        let last = w.record()[since..]
            .iter()
            .rev()
            .find(|r| user(r) == Some("bob@example.com"))
            .cloned()
            .unwrap();
        assert_eq!(header(&last, "impersonate-group")[0], group, "{what}");
        let at = Instant::now();
        act();
        let ended = common::wait_exit(&mut watch, Duration::from_secs(10));
        let took = at.elapsed();
        let _ = watch.kill();
        let _ = watch.wait();
        assert!(
            ended.is_some() && took <= Duration::from_secs(3),
            "{what}: the watch was cut after {took:?}"
        );
    };
    // Setting the credential again cuts the watch (it ran with the old
    // one), and kubectl is told.
    cut_by(
        "the credential set again",
        &|| w.set_token(),
        "gatehouse:train:member",
    );
    // kubectl prints the watch's last event, a Status, as a table row.
    let said = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(
        said.contains("gatehouse: access revoked"),
        "kubectl said: {said}"
    );
    // A promotion cuts the watch: it was authorized with the member group.
    cut_by(
        "a promotion",
        &|| {
            w.ssh("alice", &["member", "role", "bob@example.com", "admin"])
                .ok();
        },
        "gatehouse:train:member",
    );
    cut_by(
        "a demotion",
        &|| {
            w.ssh("alice", &["member", "role", "bob@example.com", "member"])
                .ok();
        },
        "gatehouse:train:admin",
    );
    let bob_pub = w.bob.public.to_str().unwrap().to_string();
    cut_by(
        "account disable",
        &|| {
            w.gw.cli(&["account", "disable", "bob@example.com"]).ok();
        },
        "gatehouse:train:member",
    );
    // A disabled account's SSH connections end: a new tunnel once enabled.
    drop(tunnel);
    w.gw.cli(&["account", "enable", "bob@example.com"]).ok();
    tunnel = w.tunnel("bob", &["-D", &socks.to_string()], socks);
    cut_by(
        "key remove",
        &|| {
            w.gw.cli(&["key", "remove", "bob@example.com", &w.bob.fingerprint()])
                .ok();
        },
        "gatehouse:train:member",
    );
    drop(tunnel);
    w.gw.cli(&["key", "add", "bob@example.com", "--file", &bob_pub])
        .ok();
    let _tunnel = w.tunnel("bob", &["-D", &socks.to_string()], socks);

    cut_by(
        "member remove",
        &|| {
            w.ssh("alice", &["member", "remove", "bob@example.com", "--yes"])
                .ok();
        },
        "gatehouse:train:member",
    );
    let count = w.record().len();
    // The next request is refused before it reaches the API server.
    let r = w.kubectl(&kc, &["get", "pods"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert_eq!(
        w.record().len(),
        count,
        "a request of bob's reached the API server"
    );
    let everything = format!("{}{}", w.seen.borrow(), w.gw.log_text());
    assert!(!everything.contains(TOKEN), "the token leaked");
}

/// Sends `msg` through a local port and reads it back, within 10 s.
fn echoed(port: u16, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(msg)?;
    let mut got = vec![0; msg.len()];
    s.read_exact(&mut got)?;
    Ok(got)
}

/// `kubectl port-forward` streams through the front door over both of its
/// transports, SPDY/3.1 inside a WebSocket (kubectl 1.31+) and the plain
/// SPDY/3.1 upgrade (older kubectl), as the member it is; `member remove`
/// cuts an open forward within a second and refuses the next one.
#[test]
fn kubectl_port_forward_over_websocket_and_spdy() {
    let Some(w) = world() else { return };
    w.set_token();
    let (kc, _tunnel, _) = w.bob_through_socks();
    let forward = |websockets: bool, local: u16, name: &str| -> Child {
        w.kubectl_cmd(
            &kc,
            &["port-forward", "pod/trainer-0", &format!("{local}:8080")],
        )
        .env(
            "KUBECTL_PORT_FORWARD_WEBSOCKETS",
            if websockets { "true" } else { "false" },
        )
        .stdout(std::fs::File::create(dir(&w).join(format!("{name}.out"))).unwrap())
        .stderr(std::fs::File::create(dir(&w).join(format!("{name}.err"))).unwrap())
        .spawn()
        .unwrap()
    };
    let said = |name: &str| {
        ["out", "err"]
            .map(|ext| {
                std::fs::read_to_string(dir(&w).join(format!("{name}.{ext}"))).unwrap_or_default()
            })
            .join("")
    };
    for (websockets, name, upgrade) in
        [(true, "pf-ws", "websocket"), (false, "pf-spdy", "SPDY/3.1")]
    {
        let local = common::free_port();
        let mut pf = forward(websockets, local, name);
        assert!(
            common::wait_port(local, Duration::from_secs(20)),
            "kubectl port-forward did not listen: {}",
            said(name)
        );
        // Two connections one after the other: two pairs of SPDY streams.
        for i in 0..2 {
            let msg = format!("through the front door {name} {i}\n");
            match echoed(local, msg.as_bytes()) {
                Ok(got) => assert_eq!(got, msg.as_bytes()),
                Err(e) => panic!("{name} connection {i}: {e}; kubectl said: {}", said(name)),
            }
        }
        let _ = pf.kill();
        let _ = pf.wait();
        let record = w.record();
        let forwards: Vec<_> = record
            .iter()
            .filter(|q| {
                q["path"]
                    .as_str()
                    .unwrap_or("")
                    .ends_with("/trainer-0/portforward")
            })
            .collect();
        let last = forwards.last().unwrap_or_else(|| panic!("{record:?}"));
        assert_eq!(header(last, "upgrade"), [upgrade], "{last}");
        assert_eq!(user(last), Some("bob@example.com"));
        assert_eq!(
            header(last, "impersonate-group"),
            ["gatehouse:train:member", "gatehouse:authenticated"]
        );
        assert_eq!(last["auth"], "token", "{last}");
    }
    // Each forward is an audit event with its pod and duration.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let audit = w.audit();
        let events = audit
            .iter()
            .filter(|e| {
                e["action"] == "kube portforward"
                    && e["actor"] == "bob"
                    && e["target"].as_str().unwrap_or("").ends_with("/trainer-0")
                    && e["detail"].as_str().unwrap_or("").contains("closed after")
            })
            .count();
        if events >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no kube portforward events: {audit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // An open forward with a connection in it is cut when bob is removed.
    let local = common::free_port();
    let mut pf = forward(true, local, "pf-cut");
    assert!(
        common::wait_port(local, Duration::from_secs(20)),
        "{}",
        said("pf-cut")
    );
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", local)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(b"open\n").unwrap();
    let mut got = [0u8; 5];
    conn.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"open\n");
    let count = w.record().len();
    let removed = Instant::now();
    w.ssh("alice", &["member", "remove", "bob@example.com", "--yes"])
        .ok();
    let mut rest = Vec::new();
    let read = conn.read_to_end(&mut rest);
    let took = removed.elapsed();
    assert!(
        took <= Duration::from_secs(3),
        "the forwarded connection was cut after {took:?} ({read:?})"
    );
    let ended = common::wait_exit(&mut pf, Duration::from_secs(10));
    let _ = pf.kill();
    let _ = pf.wait();
    assert!(
        ended.is_some(),
        "kubectl port-forward still running: {}",
        said("pf-cut")
    );
    // A new forward is refused before it reaches the API server: the
    // gateway no longer opens the channel, and kubectl gives up.
    let mut pf = forward(true, common::free_port(), "pf-after");
    let ended = common::wait_exit(&mut pf, Duration::from_secs(20));
    let _ = pf.kill();
    let _ = pf.wait();
    assert!(
        ended.is_some_and(|st| !st.success()),
        "bob's port-forward after his removal: {}",
        said("pf-after")
    );
    assert!(
        w.record()[count..]
            .iter()
            .all(|q| user(q) != Some("bob@example.com")),
        "a request of bob's reached the API server"
    );
    let everything = format!("{}{}", w.seen.borrow(), w.gw.log_text());
    assert!(!everything.contains(TOKEN), "the token leaked");
}

/// A request the API server got but never answered in time is audited all
/// the same: when kubectl gives up on it, and when access is revoked while
/// the API server has it (it may have taken effect).
#[test]
fn a_request_cut_before_its_answer_is_audited() {
    let Some(w) = world() else { return };
    w.set_token();
    let (kc, _tunnel, _) = w.bob_through_socks();
    let cut_events = |why: &str| {
        w.audit()
            .into_iter()
            .filter(|e| {
                e["action"] == "kube"
                    && e["actor"] == "bob"
                    && e["args"]
                        .as_str()
                        .unwrap_or("")
                        .starts_with("delete /api/v1/namespaces/train/pods/slow")
                    && e["outcome"] == "failed"
                    && e["detail"].as_str().unwrap_or("").contains(why)
            })
            .count()
    };
    let wait_for = |why: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while cut_events(why) == 0 {
            assert!(
                Instant::now() < deadline,
                "no audit event for a request cut ({why}): {:?}",
                w.audit()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let r = w.kubectl(&kc, &["--request-timeout", "2s", "delete", "pod", "slow"]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        w.record()
            .iter()
            .any(|q| q["method"] == "DELETE" && user(q) == Some("bob@example.com")),
        "the API server had the request"
    );
    wait_for("the client went away before the API server answered");

    let arrived = w.record().len();
    let mut delete = w
        .kubectl_cmd(&kc, &["delete", "pod", "slow"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.record().len() == arrived && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        w.record().len() > arrived,
        "the second delete never arrived"
    );
    w.ssh("alice", &["member", "remove", "bob@example.com", "--yes"])
        .ok();
    let ended = common::wait_exit(&mut delete, Duration::from_secs(10));
    let _ = delete.kill();
    let _ = delete.wait();
    assert!(
        ended.is_some(),
        "kubectl delete still waiting after member remove"
    );
    wait_for("access revoked before the API server answered");
}

/// Sends `request` as is over TLS through the local forward `local` to the
/// front door; prints the answer's status line, then, when `echo` is not
/// empty, sends it and prints what comes back (an upgraded stream's echo).
fn raw_https(w: &World, local: u16, request: &[u8], echo: &str) -> Run {
    let client = r#"
import socket, ssl, sys
port, ca, echo = int(sys.argv[1]), sys.argv[2], sys.argv[3].encode()
ctx = ssl.create_default_context(cafile=ca)
ctx.set_alpn_protocols(["http/1.1"])
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="kube.c1.train")
s.sendall(sys.stdin.buffer.read())
head = b""
while b"\r\n\r\n" not in head:
    chunk = s.recv(4096)
    if not chunk:
        break
    head += chunk
print(head.split(b"\r\n")[0].decode())
if echo:
    got = head.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in head else b""
    s.sendall(echo)
    while len(got) < len(echo):
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
    print(got.decode())
"#;
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(client)
        .arg(local.to_string())
        .arg(w.gw.path("data/kube_ca.crt"))
        .arg(echo);
    Run::from(common::run_with_timeout(
        &mut cmd,
        Some(request),
        Duration::from_secs(30),
    ))
}

/// An upgrade kubectl's older transports use (`Upgrade: SPDY/3.1`, for exec
/// and port-forward) is relayed as raw bytes both ways once the API server
/// switches; the fake echoes them.
#[test]
fn an_spdy_upgrade_is_relayed_both_ways() {
    let Some(w) = world() else { return };
    w.set_token();
    let local = common::free_port();
    let _tunnel = w.tunnel("bob", &["-L", &format!("{local}:kube.c1.train:443")], local);
    let r = raw_https(
        &w,
        local,
        b"POST /api/v1/namespaces/train/pods/trainer-0/exec?command=sh&stdin=true HTTP/1.1\r\n\
          Host: kube.c1.train\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
          X-Stream-Protocol-Version: v4.channel.k8s.io\r\nAuthorization: Bearer forged\r\n\
          Content-Length: 0\r\n\r\n",
        "spdy-frames-both-ways",
    );
    r.ok();
    assert!(r.stdout.starts_with("HTTP/1.1 101"), "{r:?}");
    assert!(r.stdout.contains("spdy-frames-both-ways"), "{r:?}");
    let record = w.record();
    let exec: Vec<_> = record
        .iter()
        .filter(|q| q["path"].as_str().unwrap_or("").ends_with("/exec"))
        .collect();
    assert_eq!(exec.len(), 1, "{record:?}");
    assert_eq!(user(exec[0]), Some("bob@example.com"));
    assert_eq!(header(exec[0], "upgrade"), ["SPDY/3.1"]);
    assert!(!exec[0].to_string().contains("forged"));
    // The stream is audited when it ends, with its pod and duration.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let audit = w.audit();
        if audit
            .iter()
            .any(|e| e["action"] == "kube exec" && e["actor"] == "bob")
        {
            break;
        }
        assert!(Instant::now() < deadline, "no kube exec event: {audit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A body that is not valid HTTP is the client's fault (400), not the
    // API server's.
    let r = raw_https(
        &w,
        local,
        b"POST /api/v1/namespaces/train/pods HTTP/1.1\r\nHost: kube.c1.train\r\n\
          Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\n{}\r\n",
        "",
    );
    r.ok();
    assert!(r.stdout.starts_with("HTTP/1.1 400"), "{r:?}");
    assert!(
        w.audit().iter().any(|e| e["action"] == "kube"
            && e["detail"]
                .as_str()
                .unwrap_or("")
                .contains("status 400: the request body was malformed")),
        "the bad body is audited as the client's"
    );
}

/// A front door that never gets a request does not hold its channel: it is
/// closed after the 30 s a request head may take.
#[test]
fn a_front_door_without_requests_is_closed() {
    let Some(w) = world() else { return };
    let local = common::free_port();
    let _tunnel = w.tunnel("bob", &["-L", &format!("{local}:kube.c1.train:443")], local);
    let client = r#"
import socket, ssl, sys, time
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=90), server_hostname="kube.c1.train")
start = time.time()
try:
    data = s.recv(1)
    print("closed" if data == b"" else "data", round(time.time() - start))
except (ssl.SSLError, ConnectionError) as e:
    print("closed", round(time.time() - start))
except socket.timeout:
    print("still open")
"#;
    let r = common::run_with_timeout(
        Command::new("python3")
            .arg("-c")
            .arg(client)
            .arg(local.to_string())
            .arg(w.gw.path("data/kube_ca.crt")),
        None,
        Duration::from_secs(120),
    );
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(
        out.starts_with("closed"),
        "{out} {}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(
        w.audit().iter().any(|e| e["action"] == "forward"
            && e["detail"]
                .as_str()
                .unwrap_or("")
                .starts_with("closed: idle")),
        "the forward's event says why"
    );
}
