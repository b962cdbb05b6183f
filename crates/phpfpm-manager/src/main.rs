//! Entry point of the `phpfpm-manager` binary: parses the command line, loads
//! the configuration and maps the outcome to an exit code
//! (0 ok, 1 runtime failure, 2 usage, 64 invalid configuration).

// The CLI's job is to print to stdout.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use phpfpm_manager::{app, config, telemetry};

/// Exit code for an invalid configuration (EX_CONFIG from sysexits.h).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser, Debug)]
#[command(
    name = "phpfpm-manager",
    version,
    about = "Runs PHP-FPM, watches every pool, scales workers and exports metrics."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the manager (the default). Without --config: zero-config mode, one demo pool.
    Run(RunArgs),
    /// Check a configuration and print a summary of it; exit 64 if invalid.
    Validate(ConfigArgs),
    /// Print the commented example configuration.
    ExampleConfig {
        /// Write it to this file instead of stdout (refuses to overwrite).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Print the version.
    Version,
}

#[derive(clap::Args, Debug, Default)]
struct ConfigArgs {
    /// YAML configuration file.
    #[arg(long, short, env = "PHPFPM_MANAGER_CONFIG")]
    config: Option<PathBuf>,
    /// The manager's directory (generated configs, sockets); overrides phpfpm.runtime_dir.
    #[arg(long)]
    runtime_dir: Option<String>,
}

#[derive(clap::Args, Debug, Default)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Take over from a manager running on the same runtime directory: it exits
    /// without stopping php-fpm, and this one adopts the running masters.
    #[arg(long)]
    replace: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run(RunArgs::default())) {
        Command::Version => {
            println!("phpfpm-manager {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::ExampleConfig { output } => example_config(output),
        Command::Validate(args) => match load(&args) {
            Ok(cfg) => {
                print!("{}", cfg.summary());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Run(args) => {
            let cfg = match load(&args.config) {
                Ok(cfg) => cfg,
                Err(code) => return code,
            };
            telemetry::init(&cfg.telemetry);
            let opts = app::RunOptions {
                config_path: args.config.config.clone(),
                runtime_dir: args.config.runtime_dir.clone(),
                replace: args.replace,
            };
            match app::run(cfg, opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("Manager stopped with an error: {e:#}");
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn load(args: &ConfigArgs) -> Result<config::Config, ExitCode> {
    config::load_from_system(args.config.as_deref(), args.runtime_dir.clone()).map_err(|e| {
        eprint!("{e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn example_config(output: Option<PathBuf>) -> ExitCode {
    let Some(path) = output else {
        print!("{}", config::EXAMPLE_CONFIG);
        return ExitCode::SUCCESS;
    };
    // create_new: never overwrite a file the user already has.
    let res = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .and_then(|mut f| {
            use std::io::Write;
            f.write_all(config::EXAMPLE_CONFIG.as_bytes())?;
            f.sync_all()
        });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot write {}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}
