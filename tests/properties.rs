//! Property tests (a stable-Rust fuzz harness) over the parsers that take
//! input from the network, from users and from the operator's files:
//!
//! 1. the SSH command language: `decode_line`, `split_line`, the clap grammar
//!    and, end to end, `commands::execute` (its one stderr line);
//! 2. forwarding targets: `Target::parse`;
//! 3. the shell's line editor, fed byte streams in arbitrary chunks;
//! 4. OpenSSH public keys: `SshPublicKey::parse`;
//! 5. the TOML config: `Config::load`;
//!
//! and the small validated types of `model` (`Email`, `Login`, `Name`,
//! `Size`, `HostPort` …).
//!
//! No property may panic on any input, and each checks what the parser
//! promises (round trips, bounds, one-line error messages).
//!
//! `cargo test` runs a bounded number of cases per property (a few seconds
//! in all). To fuzz, set `GATEHOUSE_FUZZ_CASES` to the number of cases per
//! property, for example one million inputs over the five parsers:
//!
//! ```text
//! GATEHOUSE_FUZZ_CASES=200000 cargo test --release --test properties
//! ```
//!
//! Nothing is written outside a temporary folder (no failure-persistence
//! files). A failure prints the shrunk minimal input.

use std::fmt;
use std::path::Path;
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use clap::Parser as _;
use clap::error::ErrorKind;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{TestCaseError, TestRunner};
use sha2::Digest as _;

use gatehouse::commands::grammar::{Invocation, completions};
use gatehouse::commands::{
    Ctx, MAX_LINE, SessionInfo, Sessions, Stdin, decode_line, execute, split_line,
};
use gatehouse::config::Config;
use gatehouse::gateway::line_editor::{Event, LineEditor};
use gatehouse::model::{
    Email, HostPort, Login, Name, Size, SshPublicKey, is_format_char, parse_count,
    parse_fingerprint, parse_gpu_type, printable, quoted, valid_hostname,
};
use gatehouse::output::CmdError;
use gatehouse::store::Store;
use gatehouse::target::Target;

// ---------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------

/// Cases per property: `GATEHOUSE_FUZZ_CASES` when set, else `default`.
fn cases(default: u32) -> u32 {
    match std::env::var("GATEHOUSE_FUZZ_CASES") {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| {
            panic!("GATEHOUSE_FUZZ_CASES must be a whole number of cases, got {v:?}")
        }),
        Err(_) => default,
    }
}

/// Runs `test` on `cases(default)` inputs drawn from `strategy`; on failure,
/// panics with the shrunk input.
fn check<S>(
    name: &str,
    default: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S: Strategy,
    S::Value: fmt::Debug,
{
    let config = ProptestConfig {
        cases: cases(default),
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let n = config.cases;
    let mut runner = TestRunner::new(config);
    let started = Instant::now();
    if let Err(e) = runner.run(&strategy, test) {
        panic!("property `{name}` failed\n{e}");
    }
    eprintln!("{name}: {n} cases in {:.2?}", started.elapsed());
}

/// Bytes shown as a byte-string literal in failure reports.
#[derive(Clone, PartialEq, Eq)]
struct Bytes(Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b\"{}\" ({} bytes)", self.0.escape_ascii(), self.0.len())
    }
}

fn concat(parts: Vec<Vec<u8>>) -> Vec<u8> {
    parts.concat()
}

/// One line, without control characters (a tab is allowed only when
/// `allow_tab`), and not blank.
fn one_clean_line(what: &str, s: &str, allow_tab: bool) -> Result<(), TestCaseError> {
    prop_assert!(!s.trim().is_empty(), "{what}: empty message");
    prop_assert!(
        !s.contains(['\n', '\r']),
        "{what}: message spans lines: {s:?}"
    );
    prop_assert!(
        !s.chars()
            .any(|c| c.is_control() && !(allow_tab && c == '\t')),
        "{what}: control character in message: {s:?}"
    );
    Ok(())
}

/// What a command error promises: one line, `error: …` or
/// `permission denied: …`, something after the prefix.
fn check_cmd_error(e: &CmdError) -> Result<(), TestCaseError> {
    let line = e.line();
    let rest = line
        .strip_prefix("error: ")
        .or_else(|| line.strip_prefix("permission denied: "));
    prop_assert!(rest.is_some(), "bad prefix: {line:?}");
    prop_assert!(
        !rest.unwrap_or_default().trim().is_empty(),
        "nothing after the prefix: {line:?}"
    );
    prop_assert!([1, 2, 3].contains(&e.exit_code()));
    one_clean_line("CmdError::line", &line, false)
}

// ---------------------------------------------------------------------------
// 1. The SSH command language
// ---------------------------------------------------------------------------

/// Command words, as a user would type them before the arguments.
const COMMAND_PATHS: &[&str] = &[
    "",
    "whoami",
    "project",
    "project list",
    "cluster",
    "cluster list",
    "cluster show",
    "cluster create",
    "cluster delete",
    "cluster scale",
    "cluster config",
    "node list",
    "volume list",
    "volume show",
    "volume create",
    "volume delete",
    "member list",
    "member add",
    "member remove",
    "member role",
    "key list",
    "key add",
    "key remove",
    "kubeconfig",
    "cluster credential set",
    "cluster credential clear",
    "session list",
    "session kill",
    "audit",
    "use",
    "exit",
    "quit",
    "help",
    "help cluster",
    "help volume create",
    "nope",
];

const FLAGS: &[&str] = &[
    "--project",
    "-p",
    "--json",
    "--nodes",
    "--size",
    "--gpu-type",
    "-y",
    "--yes",
    "--limit",
    "--socks-port",
    "--role",
    "--help",
    "-h",
    "--",
    "-",
    "--json=1",
    "--project=",
    "--project=train",
    "-ptrain",
    "--nodes=3",
    "-yy",
    "-yp",
    "--version",
    "-V",
    "--nope",
];

const ODD_WORDS: &[&str] = &[
    "\t",
    "a\tb",
    "é",
    "\u{202e}",
    "\u{200b}",
    "'",
    "\"",
    "\\",
    "$(id)",
    "`id`",
    ";",
    "|",
    "&&",
    ">",
    "#",
    "~",
    "*",
    "=",
    "KEY=VALUE",
    "gpu_type=h100",
    "500GiB",
    "1.5TiB",
    "0",
    "-1",
    "99999999999999999999",
    "ssh-ed25519",
    "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
    "SHA256:abc",
    "bob@example.com",
    "admin",
    "member",
    "train",
    "Train",
    "p1",
    "",
    " ",
];

fn word() -> BoxedStrategy<String> {
    prop_oneof![
        3 => select(FLAGS).prop_map(String::from),
        3 => "[a-z0-9-]{0,12}",
        2 => "[ -~]{0,16}",
        2 => select(ODD_WORDS).prop_map(String::from),
        1 => "\\PC{0,8}",
        1 => any::<String>(),
        1 => (1usize..3000).prop_map(|n| "w".repeat(n)),
    ]
    .boxed()
}

/// A known command path followed by random words.
fn structured_words() -> impl Strategy<Value = Vec<String>> {
    (select(COMMAND_PATHS), prop::collection::vec(word(), 0..8)).prop_map(|(path, rest)| {
        path.split_whitespace()
            .map(String::from)
            .chain(rest)
            .collect()
    })
}

/// Pieces of command lines: quotes, escapes, metacharacters, controls,
/// broken UTF-8, words.
fn line_piece() -> impl Strategy<Value = Vec<u8>> {
    const PIECES: &[&[u8]] = &[
        b"'",
        b"\"",
        b"\\",
        b" ",
        b"  ",
        b"\t",
        b"\0",
        b"\n",
        b"\r",
        b"\x1b",
        b"\x7f",
        b"$",
        b"`",
        b"#",
        b";",
        b"|",
        b"&",
        b"*",
        b"~",
        b"=",
        b"-",
        b"--",
        b"\xc3\xa9",
        b"\xff",
        b"\xc3",
        b"\xe2\x80\xae",
        b"\xc2\x9b",
        b"\xf0\x9f\x98\x80",
        b"\xed\xa0\x80",
        b"cluster",
        b"create",
        b"--nodes",
        b"--json",
        b"-p",
        b"help",
        b"key",
        b"add",
    ];
    prop_oneof![
        4 => select(PIECES).prop_map(<[u8]>::to_vec),
        3 => "[ -~]{1,8}".prop_map(String::into_bytes),
        1 => any::<char>().prop_map(|c| c.to_string().into_bytes()),
        1 => any::<u8>().prop_map(|b| vec![b]),
    ]
}

/// Raw exec request bytes.
fn raw_line() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..64),
        4 => prop::collection::vec(line_piece(), 0..24).prop_map(concat),
        2 => structured_words().prop_map(|w| shell_words::join(w).into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..=8192),
        1 => (MAX_LINE - 4..MAX_LINE + 4, select(&[b'a', b' ', b'\'', 0xc3][..]))
            .prop_map(|(n, b)| vec![b; n]),
    ]
    .prop_map(Bytes)
}

#[derive(Debug, Clone)]
enum CommandInput {
    /// Bytes as an exec request carries them.
    Raw(Bytes),
    /// Words (as a client meant them), joined with shell quoting.
    Words(Vec<String>),
}

fn command_input() -> impl Strategy<Value = CommandInput> {
    prop_oneof![
        raw_line().prop_map(CommandInput::Raw),
        structured_words().prop_map(CommandInput::Words),
    ]
}

/// The clap grammar on words that passed `split_line`.
fn check_grammar(words: &[String]) -> Result<(), TestCaseError> {
    match Invocation::try_parse_from(words) {
        Ok(inv) => {
            // `--json` is a flag: it is set only when the word is there.
            if inv.json {
                prop_assert!(words.iter().any(|w| w == "--json"), "json without --json");
            }
            if let Some(p) = &inv.project {
                prop_assert!(
                    words.iter().any(|w| w.contains(p.as_str())),
                    "project {p:?} from nowhere"
                );
            }
        }
        Err(e) => {
            let rendered = e.render().to_string();
            match e.kind() {
                ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                | ErrorKind::MissingSubcommand => {
                    prop_assert!(!rendered.trim().is_empty(), "empty help");
                }
                kind => {
                    // commands::parse keeps the first non-empty line and
                    // strips `error: ` from it.
                    let first = rendered
                        .lines()
                        .map(str::trim)
                        .find(|l| !l.is_empty())
                        .unwrap_or_default();
                    prop_assert!(
                        first.starts_with("error: "),
                        "{kind:?}: first line {first:?}"
                    );
                }
            }
        }
    }
    Ok(())
}

#[test]
fn command_lines() {
    check("command_lines", 4096, command_input(), |input| {
        let (bytes, meant) = match input {
            CommandInput::Raw(b) => (b.0, None),
            CommandInput::Words(w) => (shell_words::join(&w).into_bytes(), Some(w)),
        };
        let line = match decode_line(&bytes) {
            Ok(line) => {
                prop_assert!(bytes.len() <= MAX_LINE);
                prop_assert_eq!(line.as_bytes(), &bytes[..]);
                line
            }
            Err(e) => {
                prop_assert!(bytes.len() > MAX_LINE || std::str::from_utf8(&bytes).is_err());
                return check_cmd_error(&e);
            }
        };
        // Refused by `split_line`: controls but tab, and invisible
        // formatting characters (bidi overrides, zero-width ones).
        let unclean = |c: char| (c.is_control() && c != '\t') || is_format_char(c);
        let has_unclean = line.chars().any(unclean);
        let words = match split_line(&line) {
            Ok(words) => {
                prop_assert!(!has_unclean);
                for w in &words {
                    prop_assert!(!w.chars().any(unclean), "{w:?}");
                }
                // Whatever it split, quoting it again splits the same.
                let again = shell_words::join(&words);
                if again.len() <= MAX_LINE {
                    prop_assert_eq!(
                        &split_line(&again).map_err(|e| e.line()),
                        &Ok(words.clone())
                    );
                }
                words
            }
            Err(e) => {
                check_cmd_error(&e)?;
                prop_assert!(
                    has_unclean || line.len() > MAX_LINE || shell_words::split(&line).is_err(),
                    "refused a clean line: {}",
                    e.line()
                );
                return Ok(());
            }
        };
        // Words joined with shell quoting come back as they were.
        if let Some(meant) = meant {
            prop_assert_eq!(&words, &meant);
        }
        check_grammar(&words)
    });
}

struct NoSessions;

impl Sessions for NoSessions {
    fn list(&self) -> Vec<SessionInfo> {
        Vec::new()
    }
    fn forwards_to(&self, _: &str, _: &str, _: &[String]) -> usize {
        0
    }
    fn nudge(&self) {}
}

/// End to end through `execute` with a SQLite store, an account that is
/// admin of one project: whatever the words, the answer's stderr is one
/// line `error: …`/`permission denied: …` and its exit status matches.
#[test]
fn command_execution() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("fuzz.db").display());
    let (store, account) = rt.block_on(async {
        let store = Store::connect(&url, 1).await.unwrap();
        let account = store
            .account_add(
                &Email::parse("fuzz@example.com").unwrap(),
                &Login::parse("fuzz").unwrap(),
            )
            .await
            .unwrap();
        store
            .key_add(&account, &SshPublicKey::parse(ED25519_LINE).unwrap())
            .await
            .unwrap();
        store
            .project_create(&Name::parse("p", "train").unwrap(), account.id)
            .await
            .unwrap();
        for i in 0..4 {
            store
                .node_register(
                    &Name::parse("n", &format!("n{i}")).unwrap(),
                    &HostPort::parse(&format!("10.0.0.{i}:22")).unwrap(),
                    Some("H100"),
                    8,
                )
                .await
                .unwrap();
        }
        (store, account)
    });
    let sessions = NoSessions;
    let reach = gatehouse::reach::Rules::default();
    // Exec request bytes; what `split_line` lets through is run.
    let requests = prop_oneof![
        3 => structured_words().prop_map(|w| Bytes(shell_words::join(w).into_bytes())),
        1 => raw_line(),
    ];
    // The database makes each case dearer: a tenth of the others when fuzzing.
    let n = cases(10_240) / 10;
    let config = ProptestConfig {
        cases: n.max(1),
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = TestRunner::new(config);
    let started = Instant::now();
    let result = runner.run(
        &(requests, any::<bool>(), any::<bool>()),
        |(request, in_shell, current)| {
            let Ok(words) = decode_line(&request.0).and_then(|l| split_line(&l)) else {
                return Ok(());
            };
            let ctx = Ctx {
                store: &store,
                account: &account,
                source: "192.0.2.1:40000",
                current_project: current.then_some("train"),
                interactive: false,
                in_shell,
                stdin: Stdin::None,
                stdin_wanted: Default::default(),
                sessions: &sessions,
                reach: &reach,
                kube_ca_pem: "",
                gateway_port: Some(2222),
            };
            let r = rt.block_on(execute(&ctx, &words, false));
            match &r.stderr {
                Some(line) => {
                    let rest = line
                        .strip_prefix("error: ")
                        .or_else(|| line.strip_prefix("permission denied: "));
                    prop_assert!(
                        rest.is_some_and(|m| !m.trim().is_empty()),
                        "stderr {line:?}"
                    );
                    // Words may carry tabs (`split_line` lets them through).
                    one_clean_line("Response::stderr", line, true)?;
                    prop_assert!([1, 2, 3].contains(&r.code), "code {} with {line:?}", r.code);
                    if !r.stdout.is_empty() {
                        let v: serde_json::Value =
                            serde_json::from_str(&r.stdout).map_err(|e| {
                                TestCaseError::fail(format!("--json error: {e}: {:?}", r.stdout))
                            })?;
                        prop_assert_eq!(v["exit"].as_u64(), Some(u64::from(r.code)));
                    }
                }
                None => prop_assert_eq!(r.code, 0),
            }
            Ok(())
        },
    );
    if let Err(e) = result {
        panic!("property `command_execution` failed\n{e}");
    }
    eprintln!("command_execution: {n} cases in {:.2?}", started.elapsed());
}

// ---------------------------------------------------------------------------
// 2. Forwarding targets
// ---------------------------------------------------------------------------

fn host_label() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9][a-z0-9-]{0,10}",
        2 => select(&["kube", "dashboard", "KUBE", "Dashboard", "n1", "train", "p1", "10", "0"][..])
            .prop_map(String::from),
        1 => "[A-Za-z0-9_-]{0,8}",
        1 => "[a-z]{63,65}",
        1 => "[ -~]{0,6}",
        1 => "\\PC{0,4}",
    ]
}

fn host_name() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (prop::collection::vec(host_label(), 1..5), select(&["", ".", ".."][..]))
            .prop_map(|(labels, end)| format!("{}{end}", labels.join("."))),
        2 => any::<[u8; 4]>().prop_map(|a| std::net::Ipv4Addr::from(a).to_string()),
        2 => (any::<[u16; 8]>(), any::<bool>()).prop_map(|(a, br)| {
            let ip = std::net::Ipv6Addr::from(a).to_string();
            if br { format!("[{ip}]") } else { ip }
        }),
        1 => "[\\[\\]:.0-9a-fA-F]{0,16}",
        1 => "[ -~]{0,20}",
        1 => any::<String>(),
        1 => (250usize..260).prop_map(|n| "a.".repeat(n / 2)),
    ]
}

fn port() -> impl Strategy<Value = u32> {
    prop_oneof![
        2 => select(&[0, 1, 22, 443, 65535, 65536, u32::MAX][..]),
        3 => 0u32..70_000,
        1 => any::<u32>(),
    ]
}

/// A lower-case DNS label, as `NODE.CLUSTER.PROJECT` needs.
fn label(s: &str) -> bool {
    Name::parse("label", s).is_ok() && valid_hostname(s)
}

#[test]
fn forwarding_targets() {
    check(
        "forwarding_targets",
        16_384,
        (host_name(), port()),
        |(host, port)| {
            let as_typed = host.trim_end_matches('.').to_ascii_lowercase();
            match Target::parse(&host, port) {
                Ok(t) => {
                    prop_assert!((1..=65535).contains(&port));
                    // Parsing ignores ASCII case and trailing dots.
                    prop_assert_eq!(
                        &Target::parse(&host.to_ascii_uppercase(), port),
                        &Ok(t.clone())
                    );
                    match &t {
                        Target::Node {
                            node,
                            cluster,
                            project,
                            port: p,
                        } => {
                            prop_assert_eq!(u32::from(*p), port);
                            prop_assert!(label(node) && label(cluster));
                            prop_assert!(project.as_deref().is_none_or(label));
                            let mut joined = format!("{node}.{cluster}");
                            if let Some(p) = project {
                                joined = format!("{joined}.{p}");
                            }
                            prop_assert_eq!(&joined, &as_typed);
                            prop_assert_eq!(&Target::parse(&joined, port), &Ok(t.clone()));
                        }
                        Target::Kube { cluster, project }
                        | Target::Dashboard { cluster, project } => {
                            prop_assert!(label(cluster));
                            prop_assert!(project.as_deref().is_none_or(label));
                            let word = if matches!(t, Target::Kube { .. }) {
                                "kube"
                            } else {
                                "dashboard"
                            };
                            let mut joined = format!("{word}.{cluster}");
                            if let Some(p) = project {
                                joined = format!("{joined}.{p}");
                            }
                            prop_assert_eq!(&joined, &as_typed);
                        }
                        Target::Address { host: h, port: p } => {
                            prop_assert_eq!(u32::from(*p), port);
                            prop_assert!(
                                h.parse::<std::net::IpAddr>().is_ok() || valid_hostname(h),
                                "address host {h:?}"
                            );
                            prop_assert!(as_typed.contains(h.as_str()));
                            prop_assert!(!h.chars().any(|c| c.is_ascii_uppercase()));
                        }
                    }
                }
                Err(e) => {
                    one_clean_line("Refusal", &e.0, false)?;
                    prop_assert!(!e.0.chars().any(is_format_char), "{:?}", e.0);
                }
            }
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------
// 3. The shell's line editor
// ---------------------------------------------------------------------------

fn editor_piece() -> impl Strategy<Value = Vec<u8>> {
    const KEYS: &[&[u8]] = &[
        b"\r",
        b"\n",
        b"\r\n",
        b"\t",
        b"\x03",
        b"\x04",
        b"\x7f",
        b"\x08",
        b"\x15",
        b"\x17",
        b"\x01",
        b"\x05",
        b"\x0b",
        b"\x0c",
        b"\0",
        b"\x1b",
        b"\x1b[A",
        b"\x1b[B",
        b"\x1b[C",
        b"\x1b[D",
        b"\x1b[H",
        b"\x1b[F",
        b"\x1b[1~",
        b"\x1b[3~",
        b"\x1b[4~",
        b"\x1bOA",
        b"\x1bOD",
        b"\x1b[",
        b"\x1bO",
        b"\x1b[1;5C",
        b"\x1b[200~",
        b"\x1b[201~",
        b" ",
    ];
    const RUNS: &[&[u8]] = &[b"a", b"\xc3\xa9", b"\xf0\x9f\x98\x80", b" "];
    const WORDS: &[&str] = &[
        "c", "cl", "clu", "cluster ", "m", "mem", "member ", "vol", "v", "k", "ku", "s", "se", "h",
        "help ", "w", "a", "u", "n", "p", "e", "sc", "cr", "d", "co", "list", "create ", "-",
        "--json", "é", "日本", "\u{202e}",
    ];
    prop_oneof![
        3 => "[ -~]{1,8}".prop_map(String::into_bytes),
        4 => select(KEYS).prop_map(<[u8]>::to_vec),
        3 => select(WORDS).prop_map(|w| w.as_bytes().to_vec()),
        2 => Just(b"\t".to_vec()),
        1 => Just(b"\r".to_vec()),
        1 => any::<char>().prop_map(|c| c.to_string().into_bytes()),
        1 => any::<u8>().prop_map(|b| vec![b]),
        1 => prop::collection::vec(0x20u8..0x7f, 0..24)
            .prop_map(|p| [&b"\x1b["[..], &p].concat()),
        1 => (1usize..600, select(RUNS)).prop_map(|(n, p)| p.repeat(n)),
    ]
}

#[derive(Debug, Clone)]
enum EditorOp {
    Feed(Bytes),
    Width(usize),
}

#[derive(Debug, Clone)]
struct EditorRun {
    max_len: usize,
    width: usize,
    prompt: String,
    history: Vec<String>,
    ops: Vec<EditorOp>,
}

fn editor_run() -> impl Strategy<Value = EditorRun> {
    let stream = prop::collection::vec(editor_piece(), 0..64).prop_map(concat);
    let op = prop_oneof![
        8 => (stream, prop::collection::vec(1usize..64, 1..4)).prop_map(|(bytes, cuts)| {
            // The stream in chunks of the given sizes, cycled.
            let mut chunks = Vec::new();
            let mut rest = &bytes[..];
            for &n in cuts.iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let (a, b) = rest.split_at(n.min(rest.len()));
                chunks.push(EditorOp::Feed(Bytes(a.to_vec())));
                rest = b;
            }
            chunks
        }),
        1 => (0usize..300).prop_map(|w| vec![EditorOp::Width(w)]),
    ];
    (
        prop_oneof![3 => 1usize..24, 1 => 24usize..300, 1 => Just(MAX_LINE)],
        0usize..200,
        prop_oneof!["[ -~]{0,12}", "\\PC{0,6}"],
        prop::collection::vec("[ -~]{0,12}", 0..4),
        prop::collection::vec(op, 0..12),
    )
        .prop_map(|(max_len, width, prompt, history, ops)| EditorRun {
            max_len,
            width,
            prompt,
            history,
            ops: ops.concat(),
        })
}

/// Output one input byte may cause, at most: a full redraw (prompt and a
/// line of at most `max_len` bytes) after a screen clear or a completion
/// list, with cursor movements.
fn per_byte_output(max_len: usize, prompt: usize) -> usize {
    2 * prompt + max_len + 512
}

/// `completions`, remembered: it builds the whole clap command each time,
/// and the editor asks on every Tab. The answers are the same.
fn cached_completions(words: &[&str]) -> Vec<String> {
    use std::cell::RefCell;
    use std::collections::HashMap;
    thread_local! {
        static CACHE: RefCell<HashMap<Vec<String>, Vec<String>>> = RefCell::new(HashMap::new());
    }
    let key: Vec<String> = words.iter().map(|w| w.to_string()).collect();
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache
            .entry(key)
            .or_insert_with(|| completions(words))
            .clone()
    })
}

#[test]
fn shell_line_editor() {
    check("shell_line_editor", 1024, editor_run(), |run| {
        let mut ed = LineEditor::new(run.max_len, run.width, cached_completions);
        for h in &run.history {
            if h.len() <= run.max_len {
                ed.add_history(h);
            }
        }
        let prompt_len = run.prompt.len();
        ed.start(&run.prompt);
        let mut starts = 1usize;
        let mut fed = 0usize;
        let mut output = ed.take_output().len();
        // What a line may hold: `max_len`, unless a known bug is tolerated.
        let mut longest_line = run.max_len;
        let mut cap = run.max_len;
        for op in &run.ops {
            let data = match op {
                EditorOp::Width(w) => {
                    ed.set_width(*w);
                    continue;
                }
                EditorOp::Feed(b) => &b.0,
            };
            fed += data.len();
            let line_cap = longest_line;
            cap = cap.max(line_cap);
            for ev in ed.feed(data) {
                match ev {
                    Event::Line(line) => {
                        prop_assert!(
                            line.len() <= line_cap,
                            "Event::Line of {} bytes, max_len {}: {line:?}",
                            line.len(),
                            run.max_len
                        );
                        prop_assert!(!line.contains('\0'));
                        longest_line = longest_line.max(line.len());
                        ed.add_history(&line);
                    }
                    Event::Rejected(m) => one_clean_line("Event::Rejected", &m, false)?,
                    Event::Cancel | Event::Eof => {}
                }
                // As the shell does: a new prompt after each event.
                ed.start(&run.prompt);
                starts += 1;
            }
            output += ed.take_output().len();
            let bound = starts * prompt_len + fed * per_byte_output(cap, prompt_len);
            prop_assert!(
                output <= bound,
                "{output} bytes of output for {fed} bytes of input (bound {bound})"
            );
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------
// 4. OpenSSH public keys
// ---------------------------------------------------------------------------

const ED25519_LINE: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl user@host";

/// Keys made by `ssh-keygen` (the last, RSA 1024, is below the policy).
const SEED_KEYS: &[&str] = &[
    ED25519_LINE,
    "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBNSwwCibrmnhipGUKIIreYg8NqMOSSFVDM0x1Xo0oZpqyV5ZXYD3LXQ2S6oJAZbawvV43x6v1Tn+JLDputTDmUo= fuzz",
    "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBBttnIvs+LbeQ5a951cLMIXHSHBPLHw9JVKQ6y/y+MGsNZpHD/Ib7bgAW2FV4JOoVTaDnJu5soS8MLqi4lhI+pYwSz8Vnseb6nSB1O7XsYSrJH79jKyX+lHcWJWseRsUzQ== fuzz",
    "ecdsa-sha2-nistp521 AAAAE2VjZHNhLXNoYTItbmlzdHA1MjEAAAAIbmlzdHA1MjEAAACFBAAvM5HlWM3KYjFR+WkTRTLlYwTjFUE98/hLatsPnMc9L+nge0bth6AS+5a74M8mSyAUNTuNM1wWSM5yFBq2Rx43+ADDwEwJHKBAweKkyvUS+qzg1l95BAa7TUliy+3Ml1S1k4+ezqkUQsZrYAqqxMC8CKNG4eufkp3l5hRmKQeKaBHl2w== fuzz",
    "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQCPDbrS6KTlreFGSL0d7beKZgw7RNF0wUUyccdUYxCg9FJIm3jIit1a76ng+fnP5cOzOZcHMnJ8HE2aPiz7QlVgxTHZwJVz+uFhTr+ow59K0Jm/r5lrxTCHnZ/eGfghVRdIJRY3/2Mf5Db/5aUpTK6xucWQ6v5X8ygopOsfJ6qOWkxnP/KUpGITgp3W6EFNK+kPVvAnSUCpd30fJIy69glQV4517seJ43rCe9Pu9bF3+ufmw8fNKMtZfQ6ZCQdvSNz/Y2X2zAwV3bdBA14pgfqor84X0WElV4Rzp8QQg+P2u9RNrWUGxpDrFdc+xJTNR0XkkW2XqXe1p1YCxEmFSdHR fuzz",
    "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC/UKwLh9TYraycUXmTDb+F5h6SD+l44K7rderwyxCTdoBwiwPAIubKIiWsdx4JvLsEFa9SjJDn+bBCl2uuN4vekkzbAYHTiqBKqQ/ATX8jB/xsv2CTKR3rGVNuSGtJpKM9+kNuP+f+PZCjDPdAfwBCrSONr5Pj8wgizygrHA8BxQ== fuzz",
];

const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-dss",
    "SSH-ED25519",
    "",
    "sk-ssh-ed25519@openssh.com",
    "ssh-ed25519-cert-v01@openssh.com",
    "rsa-sha2-256",
    "nistp256",
];

#[derive(Debug, Clone)]
enum Mutation {
    /// Replace the character at this position (modulo the length).
    Set(usize, char),
    Truncate(usize),
    Insert(usize, String),
    Remove(usize, usize),
    /// Replace the first word.
    Kind(&'static str),
    /// Lines before and after.
    Around(String, String),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let b64 = select(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
            .chars()
            .collect::<Vec<_>>(),
    );
    prop_oneof![
        4 => (any::<usize>(), b64).prop_map(|(i, c)| Mutation::Set(i, c)),
        1 => (any::<usize>(), any::<char>()).prop_map(|(i, c)| Mutation::Set(i, c)),
        2 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<usize>(), "[ -~\t\n]{0,6}").prop_map(|(i, s)| Mutation::Insert(i, s)),
        1 => (any::<usize>(), 0usize..8).prop_map(|(i, n)| Mutation::Remove(i, n)),
        2 => select(KEY_TYPES).prop_map(Mutation::Kind),
        1 => (
            select(&["", "\n", "# comment\n", "\r\n\r\n", "  ", ED25519_LINE, "-----BEGIN OPENSSH PRIVATE KEY-----\n"][..]),
            select(&["", "\n", "\n# c", "\n\n", "\nx", "\0"][..]),
        )
            .prop_map(|(a, b)| Mutation::Around(a.to_string(), b.to_string())),
    ]
}

fn apply(line: &str, m: &Mutation) -> String {
    let chars: Vec<char> = line.chars().collect();
    let at = |i: usize| {
        if chars.is_empty() {
            0
        } else {
            i % (chars.len() + 1)
        }
    };
    match m {
        Mutation::Set(i, c) if !chars.is_empty() => {
            let mut chars = chars.clone();
            let i = i % chars.len();
            chars[i] = *c;
            chars.into_iter().collect()
        }
        Mutation::Set(..) => line.to_string(),
        Mutation::Truncate(i) => chars[..at(*i)].iter().collect(),
        Mutation::Insert(i, s) => {
            let i = at(*i);
            let head: String = chars[..i].iter().collect();
            let tail: String = chars[i..].iter().collect();
            format!("{head}{s}{tail}")
        }
        Mutation::Remove(i, n) => {
            let i = at(*i);
            let j = (i + n).min(chars.len());
            chars[..i].iter().chain(&chars[j..]).collect()
        }
        Mutation::Kind(k) => match line.split_once(' ') {
            Some((_, rest)) => format!("{k} {rest}"),
            None => k.to_string(),
        },
        Mutation::Around(a, b) => format!("{a}{line}{b}"),
    }
}

/// SSH wire encoding: a string with its length.
fn ssh_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A key blob with plausible structure and random contents, and the type
/// word it names.
fn key_blob() -> impl Strategy<Value = (&'static str, Vec<u8>)> {
    const LENGTHS: &[usize] = &[
        0, 1, 31, 32, 33, 64, 65, 97, 127, 128, 129, 133, 255, 256, 257, 384, 512, 513,
    ];
    const EXPONENTS: &[&[u8]] = &[
        b"",
        b"\x01",
        b"\x03",
        b"\x01\x00\x01",
        b"\x00",
        b"\x80",
        b"\x00\x80",
        b"\x00\x01",
    ];
    let len = || prop_oneof![3 => select(LENGTHS), 1 => 0usize..600];
    let body = || prop::collection::vec(any::<u8>(), 1..600);
    let cycle = |b: &[u8], n: usize| -> Vec<u8> { b.iter().copied().cycle().take(n).collect() };
    prop_oneof![
        // ed25519: a 32-byte point (any bytes are taken).
        (len(), body()).prop_map(move |(n, b)| {
            let mut out = Vec::new();
            ssh_string(&mut out, b"ssh-ed25519");
            ssh_string(&mut out, &cycle(&b, n));
            ("ssh-ed25519", out)
        }),
        // RSA: mpint e, mpint n; the modulus with or without its top bit set.
        (
            len(),
            body(),
            prop_oneof![
                select(EXPONENTS).prop_map(<[u8]>::to_vec),
                prop::collection::vec(any::<u8>(), 0..5)
            ],
            any::<bool>(),
        )
            .prop_map(move |(n, b, e, top)| {
                let mut modulus = cycle(&b, n);
                if let Some(first) = modulus.first_mut() {
                    if top {
                        *first |= 0x80;
                    } else {
                        *first = (*first & 0x7f).max(1);
                    }
                }
                if top && !modulus.is_empty() {
                    modulus.insert(0, 0);
                }
                let mut out = Vec::new();
                ssh_string(&mut out, b"ssh-rsa");
                ssh_string(&mut out, &e);
                ssh_string(&mut out, &modulus);
                ("ssh-rsa", out)
            }),
        // ECDSA: curve name and SEC1 point.
        (
            select(&["nistp256", "nistp384", "nistp521", "nistp1"][..]),
            len(),
            body(),
            select(&[2u8, 3, 4, 0][..]),
        )
            .prop_map(move |(curve, n, b, tag)| {
                let mut point = cycle(&b, n);
                if let Some(first) = point.first_mut() {
                    *first = tag;
                }
                let kind = match curve {
                    "nistp256" => "ecdsa-sha2-nistp256",
                    "nistp384" => "ecdsa-sha2-nistp384",
                    _ => "ecdsa-sha2-nistp521",
                };
                let mut out = Vec::new();
                ssh_string(&mut out, format!("ecdsa-sha2-{curve}").as_bytes());
                ssh_string(&mut out, curve.as_bytes());
                ssh_string(&mut out, &point);
                (kind, out)
            }),
        // A label of any text, then anything.
        ("\\PC{0,12}|[\x00-\x1f]{1,4}", body()).prop_map(|(label, b)| {
            let mut out = Vec::new();
            ssh_string(&mut out, label.as_bytes());
            out.extend(b);
            ("ssh-ed25519", out)
        }),
        body().prop_map(|b| ("ssh-ed25519", b)),
    ]
}

fn key_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (select(SEED_KEYS), prop::collection::vec(mutation(), 1..4))
            .prop_map(|(seed, ms)| ms.iter().fold(seed.to_string(), |l, m| apply(&l, m))),
        4 => (
            key_blob(),
            prop_oneof![6 => Just(None), 1 => select(KEY_TYPES).prop_map(Some)],
            prop_oneof![6 => Just(Vec::new()), 1 => prop::collection::vec(any::<u8>(), 1..3)],
            "[ -~]{0,10}",
        )
            .prop_map(|((kind, mut blob), other, junk, comment)| {
                blob.extend(junk);
                format!("{} {} {comment}", other.unwrap_or(kind), STANDARD.encode(&blob))
            }),
        1 => "[ -~\n]{0,120}",
        1 => any::<String>(),
    ]
}

#[test]
fn public_keys() {
    check(
        "public_keys",
        8192,
        key_text(),
        |text| match SshPublicKey::parse(&text) {
            Ok(k) => {
                let fp = k.fingerprint().to_string();
                prop_assert!(fp.starts_with("SHA256:") && fp.len() == 7 + 43, "{fp}");
                prop_assert!(parse_fingerprint(&fp).is_ok());
                let line = k
                    .to_openssh()
                    .map_err(|e| TestCaseError::fail(format!("to_openssh: {e}")))?;
                // The fingerprint is SHA-256 of the key blob, as ssh-keygen has it.
                let blob = line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|b| STANDARD.decode(b).ok())
                    .unwrap_or_default();
                prop_assert_eq!(
                    &fp,
                    &format!(
                        "SHA256:{}",
                        STANDARD_NO_PAD.encode(sha2::Sha256::digest(&blob))
                    )
                );
                // The stored line parses back to the same key.
                let again = SshPublicKey::parse(&line).map_err(|e| {
                    TestCaseError::fail(format!("{line:?} does not parse back: {e}"))
                })?;
                prop_assert_eq!(again.fingerprint(), fp.as_str());
                let alg = k.algorithm();
                prop_assert!(
                    [
                        "ssh-ed25519",
                        "ssh-rsa",
                        "ecdsa-sha2-nistp256",
                        "ecdsa-sha2-nistp384",
                        "ecdsa-sha2-nistp521"
                    ]
                    .contains(&alg.as_str()),
                    "algorithm {alg}"
                );
                if alg == "ssh-rsa" {
                    // The key policy: RSA moduli of 2048 bits or more.
                    let key = russh::keys::ssh_key::PublicKey::from_openssh(&line)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                    let n = key
                        .key_data()
                        .rsa()
                        .and_then(|r| r.n().as_positive_bytes())
                        .unwrap_or_default();
                    let bits = n.len() * 8 - n.first().map_or(0, |b| b.leading_zeros() as usize);
                    prop_assert!(
                        bits >= 2048,
                        "accepted an RSA key with a {bits}-bit modulus"
                    );
                }
                Ok(())
            }
            Err(e) => {
                let msg = e.0.clone();
                one_clean_line("Invalid", &msg, false)?;
                prop_assert!(!msg.chars().any(is_format_char), "{:?}", e.0);
                Ok(())
            }
        },
    );
}

// ---------------------------------------------------------------------------
// 5. The TOML config
// ---------------------------------------------------------------------------

/// The config's sections and their keys (some the file does not have yet,
/// or never will).
const SECTION_KEYS: &[(&str, &[&str])] = &[
    (
        "server",
        &["listen", "host_key", "shutdown_grace", "workers"],
    ),
    ("database", &["url", "max_connections"]),
    (
        "limits",
        &[
            "max_auth_attempts",
            "login_grace_time",
            "idle_timeout",
            "max_sessions_per_account",
            "max_connections",
            "connect_timeout",
            "penalty_after_failures",
            "penalty_base",
            "penalty_max",
            "max_channels_per_connection",
            "max_channels_per_account",
            "max_startups",
            "per_source_max_startups",
            "per_source_noauth_burst",
            "per_source_noauth_rate",
        ],
    ),
    ("log", &["format", "level"]),
    ("metrics", &["listen"]),
    ("forwarding", &["api_allow", "node_ports"]),
    ("kube", &["ca_key", "ca_cert"]),
];

const ODD_SECTIONS: &[&str] = &["Server", "server.tls", "[server]", "\"server\"", "", "nope"];

const ODD_KEYS: &[&str] = &[
    "listne",
    "\"listen\"",
    "\"a\\u0007b\"",
    "\"\\u001b[31m\"",
    "'x y'",
    "server.listen",
    "a.b.c",
];

const STRING_VALUES: &[&str] = &[
    "0.0.0.0:2222",
    "127.0.0.1:0",
    "[::1]:22",
    "::1",
    "nowhere",
    "",
    "sqlite://x.db",
    "sqlite://:memory:",
    "sqlite://",
    "sqlite://../a/b?mode=ro",
    "sqlite:///abs/x.db",
    "postgres://u:p@h/db",
    "postgresql://h",
    "mysql://x",
    "text",
    "json",
    "xml",
    "info",
    "gatehouse=debug",
    "../data/host_ed25519",
    "/etc/passwd",
    "\u{0}",
    "é",
    "10:30:100",
    "10",
    "0:30:100",
    "10:0:100",
    "10:101:100",
    "100:30:10",
    "1:1:1",
    "10:30",
    "18446744073709551616",
    "10.20.0.0/16",
    "::/0",
    "10.0.0.1",
    "10.0.0.0/33",
    "8000-8999",
    "22",
    "0",
    "1-65535",
    "65535-1",
    "1-65536",
    "-",
    "8000-",
    " 22 ",
];

const DURATIONS: &[&str] = &[
    "30s",
    "5m",
    "1h",
    "0s",
    "1y",
    "soon",
    "1h 30m",
    "1e9s",
    "-5s",
    "1.5s",
    "",
    "18446744073709551615s",
    "18446744073709551616s",
    "99999999999999999999999s",
    "584942417355y",
    "300000000000y",
    "10000000000000000000s",
    "9999999999999999d",
];

const OTHER_VALUES: &[&str] = &[
    "1.5",
    "-0.0",
    "inf",
    "nan",
    "1e400",
    "true",
    "false",
    "1979-05-27T07:32:00Z",
    "[]",
    "[1, \"a\"]",
    "{}",
    "{ a = 1 }",
    "'''x'''",
    "\"\\q\"",
    "0x10",
    "1_000",
];

/// A TOML basic string: JSON's string escapes are TOML's.
fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn toml_value() -> impl Strategy<Value = String> {
    let string = prop_oneof![
        4 => select(STRING_VALUES).prop_map(String::from),
        3 => select(DURATIONS).prop_map(String::from),
        2 => (
            "[0-9]{1,22}",
            select(&["ns", "us", "ms", "s", "sec", "m", "min", "h", "hours", "d", "days", "w", "M", "months", "y", "years", ""][..]),
        )
            .prop_map(|(n, u)| format!("{n}{u}")),
        1 => any::<String>(),
        1 => "[ -~]{0,12}",
    ]
    .prop_map(|s| toml_string(&s));
    prop_oneof![
        8 => string.clone(),
        1 => prop::collection::vec(string, 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
        2 => prop_oneof![any::<i64>(), -3i64..20].prop_map(|i| i.to_string()),
        1 => select(OTHER_VALUES).prop_map(String::from),
        1 => "[ -~]{0,10}",
    ]
}

fn toml_section() -> impl Strategy<Value = String> {
    let known = (0..SECTION_KEYS.len()).prop_flat_map(|i| {
        let (name, keys) = SECTION_KEYS[i];
        let key = prop_oneof![6 => select(keys), 1 => select(ODD_KEYS)];
        (
            Just(name.to_string()),
            prop::collection::vec((key, toml_value()), 0..5),
        )
    });
    let odd = (
        prop_oneof![select(ODD_SECTIONS).prop_map(String::from), "[a-z_.]{1,10}"],
        prop::collection::vec((select(ODD_KEYS), toml_value()), 0..3),
    );
    (prop_oneof![6 => known, 1 => odd], any::<u8>()).prop_map(|((name, entries), h)| {
        // Mostly under its header; sometimes the keys at the top level.
        let mut out = if h < 230 {
            format!("[{name}]\n")
        } else {
            String::new()
        };
        for (k, v) in entries {
            out.push_str(&format!("{k} = {v}\n"));
        }
        out
    })
}

fn toml_text() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::collection::vec(toml_section(), 0..5).prop_map(|s| s.concat()),
        1 => "[ -~\n\t]{0,80}",
        1 => any::<String>(),
    ]
}

#[test]
fn config_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.toml");
    let strategy = prop_oneof![
        8 => toml_text().prop_map(|s| Bytes(s.into_bytes())),
        1 => prop::collection::vec(any::<u8>(), 0..128).prop_map(Bytes),
    ];
    check("config_files", 2048, strategy, |text| {
        std::fs::write(&path, &text.0).map_err(|e| TestCaseError::fail(e.to_string()))?;
        match Config::load(Some(Path::new(&path))) {
            Ok(c) => {
                prop_assert!(c.listen_addr().is_ok());
                prop_assert!(c.server.host_key.is_absolute(), "{:?}", c.server.host_key);
                prop_assert!(
                    c.database.url.starts_with("sqlite://")
                        || c.database.url.starts_with("postgres://")
                        || c.database.url.starts_with("postgresql://"),
                    "{}",
                    c.database.url
                );
                prop_assert!(c.log.format == "text" || c.log.format == "json");
                prop_assert!(c.limits.max_auth_attempts >= 1);
                prop_assert!(
                    c.metrics.listen.is_empty()
                        || c.metrics.listen.parse::<std::net::SocketAddr>().is_ok()
                );
                // Durations the gateway adds to the clock with `Instant + d`,
                // which panics on overflow (tokio's `sleep` and `timeout`
                // saturate; these do not): the shutdown deadline, and the
                // longest penalty, as gateway::penalty computes it.
                let penalty = c
                    .limits
                    .penalty_base
                    .saturating_mul(1 << 16)
                    .min(c.limits.penalty_max);
                for (what, d) in [
                    ("server.shutdown_grace", c.server.shutdown_grace),
                    ("limits.penalty_base/penalty_max", penalty),
                ] {
                    prop_assert!(
                        Instant::now().checked_add(d).is_some(),
                        "{what}: {d:?} loads, and Instant::now() + {d:?} panics"
                    );
                }
            }
            Err(e) => {
                let msg = format!("{e:#}");
                one_clean_line("config error", &msg, false)?;
            }
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------
// 6. The small validated types
// ---------------------------------------------------------------------------

fn model_text() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => "[a-z0-9_.@:%+'\\[\\]-]{0,20}",
        2 => ("[0-9]{0,14}", select(&["", ".", ".5", ".000001", ".0000001", ".25"][..]),
              select(&["GiB", "gi", "TiB", "Ti", "PiB", "pi", "GB", "g", "TB", "t", "PB", "P", "", "MiB", "x"][..]))
            .prop_map(|(a, b, c)| format!("{a}{b}{c}")),
        1 => (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| format!("{}:{p}", std::net::Ipv4Addr::from(ip))),
        1 => (any::<[u16; 8]>(), "[0-9+-]{0,6}").prop_map(|(ip, p)| format!("[{}]:{p}", std::net::Ipv6Addr::from(ip))),
        1 => ("[A-Za-z0-9._%+'-]{1,20}", "[A-Za-z0-9.-]{1,20}").prop_map(|(l, d)| format!("{l}@{d}")),
        1 => "[ -~]{0,30}",
        1 => any::<String>(),
        1 => (60usize..70).prop_map(|n| "a".repeat(n)),
    ]
}

fn clean_invalid(what: &str, e: &gatehouse::model::Invalid) -> Result<(), TestCaseError> {
    one_clean_line(what, &e.0, false)?;
    prop_assert!(!e.0.chars().any(is_format_char), "{what}: {:?}", e.0);
    Ok(())
}

#[test]
fn model_types() {
    check("model_types", 8192, model_text(), |s| {
        match Size::parse(&s) {
            Ok(size) => {
                prop_assert!(
                    size.gib() > 0 && size.gib() <= 1024 * 1024,
                    "{}",
                    size.gib()
                );
                prop_assert_eq!(Size::parse(&size.to_string()), Ok(size));
            }
            Err(e) => clean_invalid("Size", &e)?,
        }
        match HostPort::parse(&s) {
            Ok(hp) => {
                prop_assert!(hp.port > 0);
                prop_assert_eq!(&HostPort::parse(&hp.to_string()), &Ok(hp.clone()));
            }
            Err(e) => clean_invalid("HostPort", &e)?,
        }
        match Email::parse(&s) {
            Ok(email) => {
                prop_assert_eq!(email.as_str(), s.as_str());
                let login = email.default_login();
                prop_assert!(login.is_ok(), "{s:?}: {login:?}");
            }
            Err(e) => clean_invalid("Email", &e)?,
        }
        match Login::parse(&s) {
            Ok(l) => prop_assert!(l.as_str() == s && s.len() <= 32),
            Err(e) => clean_invalid("Login", &e)?,
        }
        match Name::parse("project", &s) {
            Ok(n) => {
                prop_assert!(n.as_str() == s && s.len() <= 63);
                prop_assert!(valid_hostname(&s), "{s:?} is not a DNS label");
            }
            Err(e) => clean_invalid("Name", &e)?,
        }
        if let Err(e) = parse_count(&s, 1) {
            clean_invalid("count", &e)?;
        }
        if let Err(e) = parse_gpu_type(&s) {
            clean_invalid("GPU type", &e)?;
        }
        if let Err(e) = parse_fingerprint(&s) {
            clean_invalid("fingerprint", &e)?;
        }
        let q = quoted(&s);
        prop_assert!(
            !q.chars().any(|c| c.is_control() || is_format_char(c)),
            "{q:?}"
        );
        let p = printable(&s, 40);
        prop_assert!(
            !p.chars().any(|c| c.is_control() || is_format_char(c)),
            "{p:?}"
        );
        Ok(())
    });
}

// ---------------------------------------------------------------------------
// Regression tests for the bugs these properties found (all fixed)
// ---------------------------------------------------------------------------

#[test]
fn editor_completion_stays_within_max_len() {
    let mut ed = LineEditor::new(4, 80, completions);
    ed.start("> ");
    let events = ed.feed(b"cl\t\r");
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Line(l) if l.len() > 4)),
        "{events:?}"
    );
}

/// Home, Right, Right, Tab completes `cl` again and again: the line grows
/// without bound, past `MAX_LINE`, and each redraw echoes all of it.
#[test]
fn editor_completion_cannot_grow_a_line_without_bound() {
    let mut ed = LineEditor::new(MAX_LINE, 80, completions);
    ed.start("> ");
    let step = b"\x1b[H\x1b[C\x1b[C\t";
    let mut input = b"cl".to_vec();
    for _ in 0..1_000 {
        input.extend_from_slice(step);
    }
    input.push(b'\r');
    let events = ed.feed(&input);
    let output = ed.take_output().len();
    let long = events.iter().find_map(|e| match e {
        Event::Line(l) if l.len() > MAX_LINE => Some(l.len()),
        _ => None,
    });
    assert!(
        long.is_none() && output <= input.len() * per_byte_output(MAX_LINE, 2),
        "{} bytes in: a line of {long:?} bytes (at most {MAX_LINE}), {output} bytes of output",
        input.len()
    );
}

#[test]
fn key_errors_do_not_echo_raw_labels() {
    let mut blob = Vec::new();
    ssh_string(&mut blob, b"\x1b[2J\nx");
    let line = format!("ssh-ed25519 {} user@host", STANDARD.encode(&blob));
    let e = SshPublicKey::parse(&line).unwrap_err();
    assert!(!e.0.chars().any(char::is_control), "{:?}", e.0);
}

#[test]
fn config_errors_do_not_echo_raw_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(&path, "\"\\u001b[2J\" = 1\n").unwrap();
    let e = format!("{:#}", Config::load(Some(&path)).unwrap_err());
    assert!(!e.chars().any(char::is_control), "{e:?}");
}

#[test]
fn names_are_dns_labels() {
    assert!(Name::parse("cluster", "a-").is_err());
}

#[test]
fn rsa_keys_below_2048_bits_are_refused() {
    // e = 65537, n = 0x7f ff … ff: 256 bytes, 2047 bits.
    let mut blob = Vec::new();
    ssh_string(&mut blob, b"ssh-rsa");
    ssh_string(&mut blob, &[0x01, 0x00, 0x01]);
    let mut n = vec![0xff; 256];
    n[0] = 0x7f;
    ssh_string(&mut blob, &n);
    let line = format!("ssh-rsa {} short", STANDARD.encode(&blob));
    assert!(
        SshPublicKey::parse(&line).is_err(),
        "a 2047-bit RSA key was accepted"
    );
}

#[test]
fn config_durations_that_load_do_not_overflow_the_clock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(
        &path,
        "[server]\nshutdown_grace = \"18446744073709551615s\"\n",
    )
    .unwrap();
    if let Ok(c) = Config::load(Some(&path)) {
        // What gateway::shutdown does on SIGTERM.
        let _deadline = tokio::time::Instant::now() + c.server.shutdown_grace;
    }
}

#[test]
fn completions_sharing_a_partial_character_do_not_panic() {
    fn accented(_: &[&str]) -> Vec<String> {
        vec!["é1".into(), "è2".into()]
    }
    let mut ed = LineEditor::new(MAX_LINE, 80, accented);
    ed.start("> ");
    ed.feed(b"\t");
}
