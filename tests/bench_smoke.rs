//! The benchmark runs end to end with tiny sizes, so it cannot rot. It
//! checks that every figure is produced; it asserts nothing about speed.

mod common;

#[test]
fn benchmark_smoke_run_produces_every_figure() {
    if !common::have("ssh") || !common::have("sshd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("BENCH.md");
    std::fs::write(
        &out,
        "# Notes kept\n\n<!-- bench:start -->\nold\n<!-- bench:end -->\n\nTrailer kept\n",
    )
    .unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse-bench"));
    cmd.arg("--quick").arg("--out").arg(&out);
    let run = common::run_with_timeout(&mut cmd, None, std::time::Duration::from_secs(300));
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let text = std::fs::read_to_string(&out).unwrap();
    for figure in [
        "throughput",
        "round trip",
        "beside a stalled forward",
        "connection setup",
        "memory per idle session",
        "concurrent sessions held",
        "(gatehouse alone)",
        "accounts",
        "login on a node",
        "A node question",
    ] {
        assert!(text.contains(figure), "missing {figure}: {text}");
    }
    for failure in ["not measured", "failed"] {
        assert!(!text.contains(failure), "{text}");
    }
    assert!(
        text.starts_with("# Notes kept")
            && text.contains("Trailer kept")
            && !text.contains("\nold\n")
    );
    // Every row has numbers on both sides and a ratio, but the figures
    // measured on gatehouse alone, which have a number on its side only.
    for row in text
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| figure"))
    {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let number = |cell: &str| -> f64 {
            let value = cell.split_whitespace().next().unwrap_or("");
            value
                .parse()
                .unwrap_or_else(|_| panic!("a number in {row}"))
        };
        assert!(number(cells[3]).is_finite(), "{row}");
        if row.contains("(gatehouse alone)") {
            assert_eq!((cells[2], cells[4]), ("—", "—"), "{row}");
            continue;
        }
        let ratio = number(cells[4]);
        assert!(ratio.is_finite() && ratio >= 0.0, "{row}");
    }
}
