//! Commands of the `phpfpm-manager` binary that have code of their own:
//! `key new` (`key.rs`), and those for people at a terminal that talk to a
//! running manager through its API: `status` (a table of pools, `--watch`,
//! `--json`) and `reload [POOL]`. Exit codes: 0 done, 1 no manager or it failed, 64
//! refused as bad input (HTTP 400 or 404, or an invalid config).

// The CLI's job is to print to stdout.
#![allow(clippy::print_stdout)]

pub mod client;
pub mod key;
pub mod status;

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use client::{ClientError, ManagerArgs};

/// `phpfpm-manager status`.
#[derive(clap::Args, Debug, Clone)]
pub struct StatusArgs {
    #[command(flatten)]
    pub manager: ManagerArgs,
    /// Print the manager's answers as JSON instead of the table.
    #[arg(long, conflicts_with = "watch")]
    pub json: bool,
    /// Refresh the table in place until interrupted.
    #[arg(long)]
    pub watch: bool,
    /// Time between refreshes with --watch.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// With --watch: stop after this many refreshes.
    #[arg(long, requires = "watch")]
    pub count: Option<u64>,
}

/// `phpfpm-manager reload [POOL]`.
#[derive(clap::Args, Debug, Clone)]
pub struct ReloadArgs {
    /// The pool to hand over to a new master; without it the manager
    /// reloads its configuration (as SIGHUP).
    pub pool: Option<String>,
    /// Why, for the event and the log (stored and shown: never a secret).
    #[arg(long)]
    pub reason: Option<String>,
    #[command(flatten)]
    pub manager: ManagerArgs,
}

/// Runs `status`.
pub fn status(args: StatusArgs) -> ExitCode {
    let client = match args.manager.client() {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let mut shown = 0u64;
    loop {
        let answers = match status::Answers::fetch(&client) {
            Ok(a) => a,
            Err(e) => return fail(&e),
        };
        let mut out = std::io::stdout().lock();
        let written = if args.json {
            writeln!(out, "{:#}", answers.to_json())
        } else {
            let now_ms = crate::events::unix_ms(std::time::SystemTime::now());
            let table = status::render(&status::rows(&answers, now_ms));
            if args.watch {
                // Home, clear the screen: the table is redrawn in place.
                write!(
                    out,
                    "\x1b[H\x1b[2J{} at {}\n\n{table}",
                    client.base(),
                    humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                )
            } else {
                write!(out, "{table}")
            }
        };
        if written.and_then(|()| out.flush()).is_err() {
            // The reader went away (a closed pipe): nothing more to show.
            return ExitCode::SUCCESS;
        }
        shown += 1;
        if !args.watch || args.count.is_some_and(|n| shown >= n) {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(args.interval);
    }
}

/// Runs `reload`.
pub fn reload(args: ReloadArgs) -> ExitCode {
    let client = match args.manager.client() {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let body = match &args.reason {
        Some(r) => serde_json::json!({ "reason": r }),
        None => serde_json::json!({}),
    };
    let Some(pool) = &args.pool else {
        return match client.post("/api/v1/config/reload", &body) {
            Ok(_) => {
                println!("configuration reloaded");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        };
    };
    // Checked like the config checks names, so it is safe in a URL path.
    if let Err(e) = fpm_core::PoolName::new(pool) {
        return fail(&ClientError::Refused(format!("pool {pool:?}: {e}")));
    }
    match client.post(&format!("/api/v1/pools/{pool}/reload"), &body) {
        Ok(a) => {
            println!("{}", reloaded(pool, &a));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// One line about a done pool reload. Pure.
fn reloaded(pool: &str, a: &serde_json::Value) -> String {
    let pid = |v: &serde_json::Value| v.as_u64().map_or("none".to_owned(), |n| n.to_string());
    format!(
        "pool {pool}: reloaded by hand-over in {} ms (master {} -> {}, generation {})",
        a["took_ms"].as_u64().unwrap_or(0),
        pid(&a["old_pid"]),
        pid(&a["new_pid"]),
        a["generation"].as_u64().unwrap_or(0),
    )
}

fn fail(e: &ClientError) -> ExitCode {
    eprintln!("phpfpm-manager: {}", e.message());
    ExitCode::from(e.exit_code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_is_told_in_one_line() {
        let a = serde_json::json!({"pool": "www", "action": "reload", "old_pid": 10, "new_pid": 11, "generation": 3, "took_ms": 212});
        assert_eq!(
            reloaded("www", &a),
            "pool www: reloaded by hand-over in 212 ms (master 10 -> 11, generation 3)"
        );
        let a = serde_json::json!({"new_pid": 11, "old_pid": null, "generation": 1, "took_ms": 5});
        assert!(reloaded("www", &a).contains("master none -> 11"));
    }
}
