//! The `tollgate` command: run the gateway, or check a config file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: a proxy allocates and frees many small buffers per request
/// (headers, frames); measured faster than glibc malloc in bench/RESULTS.md.
/// Called through `tollgate::alloc` rather than the `mimalloc` crate's
/// adapter, which takes mimalloc's slower aligned path for every block.
#[global_allocator]
static ALLOCATOR: tollgate::alloc::Allocator = tollgate::alloc::Allocator;
use tollgate::config::{self, Config, LogFormat};

#[derive(Parser)]
#[command(name = "tollgate", version, about = "API gateway and protocol bridge")]
struct Cli {
    /// Config file to use.
    #[arg(long, short, global = true, default_value = "config/tollgate.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Validate the config file and exit: 0 when valid, 1 with `file:line: key: problem` otherwise.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Some(Command::Check) => {
            println!(
                "{}: ok ({} listeners, {} routes, {} upstreams)",
                cli.config.display(),
                config.listeners.len(),
                config.routes.len(),
                config.upstreams.len()
            );
            ExitCode::SUCCESS
        }
        Some(Command::Run) | None => run(config),
    }
}

fn run(config: Config) -> ExitCode {
    init_logging(&config);
    // One worker: a current-thread runtime skips the work-stealing machinery
    // (cross-thread wakeups, the injection queue) that a single worker never needs.
    let mut builder = match config.runtime.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut multi = tokio::runtime::Builder::new_multi_thread();
            multi.worker_threads(n);
            multi
        }
    };
    config.runtime.gather.install(&mut builder);
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(tollgate::server::serve(config));
    // Do not wait for connections the grace period already gave up on.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match config.log.format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
        LogFormat::Text => builder.init(),
    }
}
