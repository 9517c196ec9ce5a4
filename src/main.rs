//! The `gatehouse` binary: `serve` and the operator CLI.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use gatehouse::config::Config;
use gatehouse::operator::{self, AccountCmd, AuditArgs, KeyCmd, NodeCmd, ProjectCmd};
use gatehouse::output::CmdError;
use gatehouse::store::Store;

#[derive(Debug, Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "An SSH gateway for GPU cluster projects"
)]
struct Cli {
    /// Config file [default: $GATEHOUSE_CONFIG, else config/gatehouse.toml]
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the SSH gateway.
    Serve,
    /// Manage accounts.
    #[command(subcommand)]
    Account(AccountCmd),
    /// Manage accounts' SSH keys.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Manage projects.
    #[command(subcommand)]
    Project(ProjectCmd),
    /// Manage the node pool.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Show audit events, newest first.
    Audit(AuditArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    // An empty GATEHOUSE_CONFIG is as good as none, as with most tools.
    let path = cli.config.or_else(|| {
        std::env::var_os("GATEHOUSE_CONFIG")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    });
    let config = match Config::load(path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Command::Serve = cli.command {
        // The logger writes to stderr too: the error is printed once, here.
        return match gatehouse::gateway::serve(config).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    init_cli_logging();
    let store = match Store::connect(&config.database.url, 2).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(1);
        }
    };
    let result = match cli.command {
        Command::Serve => unreachable!("handled above"),
        Command::Account(c) => operator::account(&store, c).await,
        Command::Key(c) => operator::key(&store, c).await,
        Command::Project(c) => operator::project(&store, c).await,
        Command::Node(c) => {
            let enrol = operator::EnrolContext {
                host_key: config.server.host_key.clone(),
                gateway: config.nodes.gateway.clone(),
            };
            operator::node(&store, c, &enrol).await
        }
        Command::Audit(a) => operator::audit(&store, a).await,
    };
    finish(result)
}

/// Help and version go to stdout; a usage error is one `error: ` line and
/// exit status 2, like every other error of gatehouse.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return ExitCode::from(
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                2
            } else {
                0
            },
        );
    }
    // clap's whole message: it names what is missing or wrong, then the
    // usage line and where to read more.
    eprint!("{}", e.render());
    ExitCode::from(2)
}

fn finish(result: Result<String, CmdError>) -> ExitCode {
    match result {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}", e.line());
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

/// The operator CLI logs only warnings, to stderr, so its stdout stays clean.
fn init_cli_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
}
