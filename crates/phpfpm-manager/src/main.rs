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
    /// Import an existing php-fpm setup: writes an equivalent manager config
    /// and managed pool files. `env[...]` values are kept out of the config
    /// (in 0600 files under env/) unless --include-secrets.
    Import(ImportArgs),
    /// Run the autoscaler and php-fpm's own process managers side by side in
    /// a deterministic simulation and print p50/p99 response, wait,
    /// memory-seconds and changes per policy. With --config, the policy is a
    /// pool's `scaling:` section and the budget `scaling.memory_budget`.
    Simulate(SimulateArgs),
    /// Pin, unpin, pause or resume a pool's autoscaler in the running
    /// manager (through its API on server.bind_address).
    Scaling(ScalingArgs),
    /// API keys: `key new NAME --scope operate` makes one.
    Key(phpfpm_manager::cli::key::KeyArgs),
    /// Print a table of the running manager's pools: state, busy/idle/total
    /// workers, accept queue, requests/s, p95 request time, worker PSS,
    /// recommended/applied size, last event (--watch, --json).
    Status(phpfpm_manager::cli::StatusArgs),
    /// Reload POOL by hand-over in the running manager, or without POOL
    /// its configuration (as SIGHUP).
    Reload(phpfpm_manager::cli::ReloadArgs),
    /// Print the version.
    Version,
}

#[derive(clap::Args, Debug)]
struct ScalingArgs {
    /// The pool.
    pool: String,
    #[command(subcommand)]
    action: ScalingAction,
    /// The manager's address (default: the config's server.bind_address).
    #[arg(long, global = true)]
    address: Option<String>,
    /// YAML configuration file (to find the address).
    #[arg(long, short, global = true, env = "PHPFPM_MANAGER_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    tls: phpfpm_manager::cli::client::TlsArgs,
}

#[derive(Subcommand, Debug)]
enum ScalingAction {
    /// Hold the pool at exactly N workers.
    Pin {
        workers: u32,
        /// When the pin ends: RFC 3339 time or a duration from now (30m).
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        reason: Option<String>,
    },
    /// End a pin: the autoscaler decides again.
    Unpin,
    /// Keep the current size; the autoscaler still learns and advises.
    Pause {
        #[arg(long)]
        reason: Option<String>,
    },
    /// End a pause.
    Resume,
}

#[derive(clap::Args, Debug)]
struct SimulateArgs {
    /// steady, step, spike, diurnal, ramp, all, or a CSV file of `time_s,rate`.
    #[arg(long, default_value = "spike")]
    trace: String,
    /// YAML autoscaler policy (validated like the main config).
    #[arg(long, conflicts_with = "config")]
    policy: Option<PathBuf>,
    /// The manager's config: the policy comes from a pool's `scaling:`
    /// section (limits, target_utilization, weight, priority) and the budget
    /// from `scaling.memory_budget`, as the daemon reads them.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The pool of --config to simulate (default: the first autoscaled pool,
    /// else the first pool).
    #[arg(long, requires = "config")]
    pool: Option<String>,
    /// Random seed; the same seed gives the same table.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(clap::Args, Debug)]
struct ImportArgs {
    /// The existing php-fpm main config, e.g. /etc/php/8.2/fpm/php-fpm.conf.
    #[arg(long)]
    from: PathBuf,
    /// Directory to write `phpfpm-manager.yaml` and the pool files into.
    #[arg(long, short, default_value = "phpfpm-manager-import")]
    output: PathBuf,
    /// The runtime directory the imported config will use (written to it as
    /// an absolute path). Without it the config keeps the manager's default,
    /// `./var/phpfpm-manager` relative to where the manager runs.
    #[arg(long)]
    runtime_dir: Option<PathBuf>,
    /// php-fpm's prefix (-p): where relative include patterns start.
    #[arg(long, default_value = "/usr")]
    prefix: PathBuf,
    /// Read a copy of a system mounted here (absolute paths are looked up under it).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Put env[...] values into the manager config itself (written 0600).
    #[arg(long)]
    include_secrets: bool,
    /// Overwrite files already in the output directory.
    #[arg(long)]
    force: bool,
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
        Command::Import(args) => import(args),
        Command::Simulate(args) => simulate(args),
        Command::Scaling(args) => scaling(args),
        Command::Key(args) => phpfpm_manager::cli::key::run(args),
        Command::Status(args) => phpfpm_manager::cli::status(args),
        Command::Reload(args) => phpfpm_manager::cli::reload(args),
        Command::Validate(args) => match load(&args) {
            Ok(cfg) => validate(&cfg),
            Err(code) => code,
        },
        Command::Run(args) => {
            let cfg = match load(&args.config) {
                Ok(cfg) => cfg,
                Err(code) => return code,
            };
            // TLS files are read before anything starts: a bad one is a
            // configuration problem.
            if let Err(e) = phpfpm_manager::surface::http::tls::check(&cfg) {
                eprintln!("invalid configuration: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
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

/// `validate` of a config that loaded: the checks against this machine
/// (directories, `php-fpm -t` on every supervised pool), all problems
/// reported together.
fn validate(cfg: &config::Config) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let path = std::env::var("PATH").ok();
    let report = rt.block_on(config::check_system(cfg, path.as_deref()));
    for note in &report.notes {
        eprintln!("note: {note}");
    }
    if !report.problems.is_empty() {
        eprint!(
            "{}",
            config::ConfigError {
                problems: report.problems
            }
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    print!("{}", cfg.summary());
    ExitCode::SUCCESS
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

/// `import`: exit 64 when the php-fpm setup cannot be read or mapped (bad
/// input), 1 when the result cannot be written.
fn import(args: ImportArgs) -> ExitCode {
    let absolute = |p: &PathBuf| std::path::absolute(p).unwrap_or_else(|_| p.clone());
    let read = fpm_import::ReadOptions {
        prefix: args.prefix.clone(),
        root: args.root.clone(),
        ..fpm_import::ReadOptions::default()
    };
    let opts = fpm_import::ImportOptions {
        runtime_dir: absolute(
            args.runtime_dir
                .as_ref()
                .unwrap_or(&PathBuf::from("./var/phpfpm-manager")),
        ),
        write_runtime_dir: args.runtime_dir.is_some(),
        include_secrets: args.include_secrets,
    };
    let imported = match fpm_import::import_file(&absolute(&args.from), &read, &opts) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: cannot import {}: {e}", args.from.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let written = match fpm_import::write_import(&imported, &args.output, args.force) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Notes never contain env values; the files that do are only named.
    for note in &imported.notes {
        println!("note: {note}");
    }
    println!("wrote {}", written.config.display());
    for f in written.pool_files.iter().chain(&written.env_files) {
        println!("wrote {}", f.display());
    }
    println!(
        "next: phpfpm-manager validate --config {}",
        written.config.display()
    );
    ExitCode::SUCCESS
}

/// The policy and budget of one pool of the manager's config, through the
/// daemon's own reading of them (`scale::policy_for`); prints what it
/// simulates. Exit 64 for an invalid config (as `validate`), 2 for an
/// unknown pool.
fn simulate_policy_from_config(
    path: &std::path::Path,
    pool: Option<&str>,
) -> Result<(fpm_autoscale::Policy, Option<u64>), ExitCode> {
    let cfg = load(&ConfigArgs {
        config: Some(path.to_owned()),
        runtime_dir: None,
    })?;
    let chosen = match pool {
        Some(name) => cfg.pools.iter().find(|p| p.name.as_str() == name),
        None => cfg
            .pools
            .iter()
            .find(|p| p.spec.is_some() && p.scaling.enabled)
            .or(cfg.pools.first()),
    };
    let Some(chosen) = chosen else {
        let names: Vec<&str> = cfg.pools.iter().map(|p| p.name.as_str()).collect();
        eprintln!(
            "error: --pool {}: no such pool in {}; its pools are: {}",
            pool.unwrap_or(""),
            path.display(),
            names.join(", ")
        );
        return Err(ExitCode::from(2));
    };
    let policy = phpfpm_manager::scale::policy_for(chosen).map_err(|e| {
        eprintln!("error: pool {}: scaling: {e}", chosen.name);
        ExitCode::from(EXIT_CONFIG)
    })?;
    let spec = policy.spec();
    let (budget, budget_note) = match cfg.scaling.memory_budget {
        config::MemoryBudget::Fixed(bytes) => (
            Some(bytes),
            format!("scaling.memory_budget {} MiB", bytes / (1024 * 1024)),
        ),
        config::MemoryBudget::Auto { .. } => (
            None,
            "scaling.memory_budget is auto (this machine's memory): the simulation uses the scenario's default budget instead".to_owned(),
        ),
    };
    println!(
        "pool {} of {}: min_workers {}, max_workers {}, headroom {:.2} (target_utilization {}), weight {}, priority {}; {budget_note}; the pool alone under the budget",
        chosen.name,
        path.display(),
        spec.min_workers,
        spec.max_workers,
        spec.headroom,
        chosen.scaling.target_utilization,
        spec.weight,
        spec.priority,
    );
    if spec.advise_only {
        println!(
            "note: the manager only advises on pool {} (observed, or scaling.enabled is false); simulated as if autoscaling were on",
            chosen.name
        );
    }
    Ok((policy, budget))
}

/// `simulate`: exit 2 for a trace that is neither built in nor a readable
/// file, or an unknown --pool (usage errors), 64 for a bad policy, config or
/// trace file, 1 if the policy is unreadable.
fn simulate(args: SimulateArgs) -> ExitCode {
    let from_config = match &args.config {
        None => None,
        Some(path) => match simulate_policy_from_config(path, args.pool.as_deref()) {
            Ok(found) => Some(found),
            Err(code) => return code,
        },
    };
    let policy = match &args.policy {
        None => None,
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("error: cannot read {}: {e}", p.display());
                return ExitCode::FAILURE;
            }
        },
    };
    let names: Vec<&str> = match args.trace.as_str() {
        "all" => vec!["steady", "step", "spike", "diurnal", "ramp"],
        one => vec![one],
    };
    for name in names {
        let trace = match fpm_autoscale::sim::TraceSpec::builtin(name) {
            Some(t) => t,
            None => match std::fs::read_to_string(name) {
                Ok(csv) => fpm_autoscale::sim::TraceSpec::Csv(csv),
                Err(e) => {
                    eprintln!("error: --trace {name}: not a built-in trace (steady, step, spike, diurnal, ramp, all) and not a readable CSV file: {e}");
                    return ExitCode::from(2);
                }
            },
        };
        let report = match &from_config {
            Some((policy, budget)) => {
                fpm_autoscale::simulate_report_policy(trace, policy, *budget, args.seed)
            }
            None => fpm_autoscale::simulate_report(trace, policy.as_deref(), args.seed),
        };
        match report {
            Ok(table) => println!("{table}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    ExitCode::SUCCESS
}

fn scaling(args: ScalingArgs) -> ExitCode {
    let manager = phpfpm_manager::cli::client::ManagerArgs {
        url: args.address.clone(),
        config: args.config.clone(),
        tls: args.tls.clone(),
    };
    let body = match &args.action {
        ScalingAction::Pin {
            workers,
            until,
            reason,
        } => {
            serde_json::json!({"action": "pin", "workers": workers, "until": until, "reason": reason})
        }
        ScalingAction::Unpin => serde_json::json!({"action": "unpin"}),
        ScalingAction::Pause { reason } => serde_json::json!({"action": "pause", "reason": reason}),
        ScalingAction::Resume => serde_json::json!({"action": "resume"}),
    };
    match phpfpm_manager::control::scaling(&manager, &args.pool, &body) {
        Ok(answer) => {
            println!(
                "pool {}: {} (pm.max_children {})",
                args.pool,
                answer["override"].as_str().unwrap_or("?"),
                answer["applied_workers"]
                    .as_u64()
                    .map_or("unknown".to_owned(), |n| n.to_string())
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("phpfpm-manager: {}", e.message());
            ExitCode::from(e.exit_code())
        }
    }
}
