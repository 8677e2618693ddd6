#![doc = include_str!("../README.md")]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod desktop;
mod icons;
mod model;
mod notify;
mod proc_net;
mod ui;
mod worker;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};

use crate::worker::{Locator, UiMsg, Worker};

/// Renders and the quit message queued for the UI thread.
const UI_QUEUE: usize = 16;
/// Menu clicks queued for the worker (more are dropped, with a warning).
const CLICK_QUEUE: usize = 32;

/// The anonnet daemon in the system tray.
///
/// Shows whether the daemon is on, connecting, off or in trouble; switches the proxy,
/// asks for a new identity and publishes local web servers as hidden services, all through
/// the daemon's control API.
#[derive(Debug, Parser)]
#[command(name = "anonnet-tray", version)]
struct Cli {
    /// Client config file of the daemon [default: the OS config directory's
    /// anonnet/client.toml, as for `anonnet run`].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log level on stderr [default: $RUST_LOG, else info].
    #[arg(long, value_enum, value_name = "LEVEL")]
    log_level: Option<LogLevel>,
    /// Write the man page anonnet-tray.1 into DIR (created if missing) and exit. Hidden:
    /// packaging runs it (scripts/package-deb.sh), so the page always matches `--help`.
    #[arg(long, value_name = "DIR", hide = true)]
    man: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

fn init_logging(level: Option<LogLevel>) {
    let filter = match level {
        Some(level) => tracing_subscriber::EnvFilter::new(level.as_str()),
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// `anonnet-tray --man DIR`: DIR/anonnet-tray.1 from the clap definition (clap_mangen).
fn write_man_page(dir: &std::path::Path) -> std::io::Result<()> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir)?;
    clap_mangen::Man::new(Cli::command()).generate_to(dir)?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(dir) = &cli.man {
        return match write_man_page(dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!(
                    "anonnet-tray: error: writing the man page to {}: {e}",
                    dir.display()
                );
                ExitCode::FAILURE
            }
        };
    }
    init_logging(cli.log_level);

    let (ui_tx, ui_rx) = std::sync::mpsc::sync_channel::<UiMsg>(UI_QUEUE);
    let (click_tx, click_rx) = tokio::sync::mpsc::channel::<String>(CLICK_QUEUE);
    let worker = Worker::new(Locator { config: cli.config }, ui_tx);
    let spawned = std::thread::Builder::new()
        .name("anonnet-tray-worker".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(worker.run(click_rx)),
                Err(e) => eprintln!("anonnet-tray: error: cannot start the runtime: {e}"),
            }
        });
    if let Err(e) = spawned {
        eprintln!("anonnet-tray: error: cannot start the worker thread: {e}");
        return ExitCode::FAILURE;
    }

    // The tray icon lives on this thread until the worker says quit (or stops).
    match ui::run(ui_rx, click_tx) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("anonnet-tray: error: {e}");
            ExitCode::FAILURE
        }
    }
}
