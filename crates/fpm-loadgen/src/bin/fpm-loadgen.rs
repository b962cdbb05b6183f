//! Command-line front end of the load generator: one loopback URL, a rate
//! schedule, a summary and a per-second series on stdout, optionally every
//! request as CSV.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use fpm_loadgen::{parse_phase, per_second, summarize, Phase, Plan, Stream, Target};

/// Open-loop HTTP load against a loopback URL: Poisson arrivals at the rates
/// of the given phases, whether or not earlier requests finished.
#[derive(Parser, Debug)]
#[command(name = "fpm-loadgen", version)]
struct Args {
    /// Target URL (http://127.0.0.1:PORT/PATH; loopback only).
    #[arg(long)]
    url: String,
    /// A phase RATE:DURATION (requests per second : how long), repeatable,
    /// run in order. Example: --phase 60:30s --phase 600:30s --phase 60:30s
    #[arg(long = "phase", value_parser = parse_phase, required = true)]
    phases: Vec<Phase>,
    /// Seed of the arrival times (same seed, same requests).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Add `n=<k>` to the query of the k-th request, so that the app can
    /// seed its per-request randomness with it (same work per request in
    /// every run).
    #[arg(long)]
    numbered: bool,
    /// Requests open at once; one due beyond that is not sent and fails.
    #[arg(long, default_value_t = 2000)]
    max_in_flight: usize,
    /// Per-request timeout, from its scheduled time.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Wait this long after the schedule for open requests (hard deadline).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// Write every request as CSV to this file.
    #[arg(long)]
    records: Option<std::path::PathBuf>,
    /// Print the per-second series.
    #[arg(long)]
    series: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let target = match Target::parse(&args.url) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("fpm-loadgen: {e}");
            return ExitCode::from(64);
        }
    };
    let plan = Plan {
        streams: vec![Stream {
            name: args.url.clone(),
            target,
            phases: args.phases.clone(),
            numbered: args.numbered,
        }],
        seed: args.seed,
        max_in_flight: args.max_in_flight,
        request_timeout: args.timeout,
        grace: args.grace,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fpm-loadgen: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match rt.block_on(fpm_loadgen::run(&plan)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fpm-loadgen: {e}");
            return ExitCode::from(64);
        }
    };
    let s = summarize(&result.records);
    println!(
        "requests {}  ok {}  failed {}  p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms  max send lag {:.1} ms",
        s.requests,
        s.ok,
        s.failed,
        ms(s.p50),
        ms(s.p90),
        ms(s.p99),
        ms(s.max),
        ms(s.max_send_lag)
    );
    for (kind, n) in &s.failures {
        println!("  failed: {kind} × {n}");
    }
    if args.series {
        println!("second,requests,failed,p50_ms,p99_ms,max_ms");
        for b in per_second(&result.records) {
            println!(
                "{},{},{},{:.1},{:.1},{:.1}",
                b.second,
                b.requests,
                b.failed,
                ms(b.p50),
                ms(b.p99),
                ms(b.max)
            );
        }
    }
    if let Some(path) = &args.records {
        if let Err(e) = write_csv(path, &result.records) {
            eprintln!("fpm-loadgen: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if s.failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn write_csv(path: &std::path::Path, records: &[fpm_loadgen::Record]) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(f, "scheduled_ms,sent_ms,latency_ms,outcome")?;
    for r in records {
        writeln!(
            f,
            "{:.3},{},{},{}",
            ms(r.scheduled),
            r.sent.map(|d| format!("{:.3}", ms(d))).unwrap_or_default(),
            r.latency
                .map(|d| format!("{:.3}", ms(d)))
                .unwrap_or_default(),
            r.outcome.label()
        )?;
    }
    f.flush()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
