//! Prints the simulator's comparison tables:
//! `cargo run -p fpm-autoscale --release --example simulate -- --trace all [--seed N] [--policy FILE] [--probe SECONDS]`.
//! `--trace` takes a built-in name, `all`, `shared` (two pools under one
//! budget), or the path of a CSV `time_s,rate` file. `--sweep N` prints
//! instead, for every built-in trace, each contender's figures summed or
//! worst over seeds 1 to N.

#![allow(clippy::print_stdout)]

use fpm_autoscale::sim::{
    simulate_all, simulate_report_with, simulate_shared, Scenario, SimResult,
};
use fpm_autoscale::{Policy, TraceSpec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut trace = "all".to_owned();
    let mut seed = 1_u64;
    let mut policy_text = None;
    let mut probe_s = None;
    let mut sweep = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--trace" => trace = value,
            "--seed" => {
                seed = value
                    .parse()
                    .map_err(|_| format!("--seed: '{value}' is not a number"))?;
            }
            "--sweep" => {
                sweep = Some(
                    value
                        .parse::<u64>()
                        .map_err(|_| format!("--sweep: '{value}' is not a number of seeds"))?,
                );
            }
            "--policy" => policy_text = Some(std::fs::read_to_string(&value)?),
            "--probe" => {
                probe_s = Some(
                    value
                        .parse::<f64>()
                        .map_err(|_| format!("--probe: '{value}' is not a number of seconds"))?,
                );
            }
            other => {
                return Err(format!(
                    "unknown argument '{other}'; use --trace, --seed, --sweep, --policy, --probe"
                )
                .into())
            }
        }
    }
    if trace == "shared" {
        println!("{}", simulate_shared(seed)?);
        return Ok(());
    }
    if let Some(seeds) = sweep {
        let policy = match &policy_text {
            Some(text) => Policy::from_yaml(text)?,
            None => Policy::default(),
        };
        return print_sweep(seeds, &policy, probe_s);
    }
    let traces: Vec<TraceSpec> = match trace.as_str() {
        "all" => TraceSpec::BUILTIN
            .iter()
            .filter_map(|name| TraceSpec::builtin(name))
            .collect(),
        name => match TraceSpec::builtin(name) {
            Some(spec) => vec![spec],
            None => vec![TraceSpec::Csv(std::fs::read_to_string(name)?)],
        },
    };
    for spec in traces {
        let mut scenario = Scenario::standard(seed);
        if let Some(probe_s) = probe_s {
            scenario.probe_s = probe_s;
        }
        println!(
            "{}",
            simulate_report_with(spec, policy_text.as_deref(), scenario)?
        );
    }
    Ok(())
}

/// Per trace and contender over seeds 1 to `seeds`: requests and failures
/// summed, the median and worst of the per-seed p99 response, the worst
/// max response, the share of requests that waited, memory relative to
/// `static` at max (mean), the most changes and oscillations of any seed.
fn print_sweep(
    seeds: u64,
    policy: &Policy,
    probe_s: Option<f64>,
) -> Result<(), Box<dyn std::error::Error>> {
    let window_s = policy.spec().oscillation_window_s;
    println!("| trace | manager | requests | failed | p99 response ms, median of seeds | p99 response ms, worst seed | max response ms, worst seed | waited > 0 | memory vs static@max | most changes | most oscillations ({window_s:.0} s) |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for name in TraceSpec::BUILTIN {
        let trace = TraceSpec::builtin(name).ok_or("unknown built-in trace")?;
        let mut runs: Vec<Vec<SimResult>> = Vec::new();
        for seed in 1..=seeds {
            let mut scenario = Scenario::standard(seed);
            scenario.max_workers = policy.spec().max_workers;
            scenario.slow_wait_s = policy.emergency_wait_s();
            if let Some(probe_s) = probe_s {
                scenario.probe_s = probe_s;
            }
            runs.push(simulate_all(&trace, policy, &scenario)?);
        }
        let contenders = runs.first().map_or(0, Vec::len);
        let static_index = runs
            .first()
            .and_then(|first| first.iter().position(|r| r.manager == "static@max"))
            .ok_or("no static@max contender")?;
        for index in 0..contenders {
            let column: Vec<&SimResult> = runs.iter().map(|run| &run[index]).collect();
            let mut p99: Vec<f64> = column.iter().map(|r| r.p99_response_s).collect();
            p99.sort_by(f64::total_cmp);
            let median = p99[p99.len() / 2];
            let worst = p99.last().copied().unwrap_or(0.0);
            let max = column.iter().map(|r| r.max_response_s).fold(0.0, f64::max);
            let requests: u64 = column.iter().map(|r| r.requests).sum();
            let failed: u64 = column.iter().map(|r| r.failed).sum();
            let waited: u64 = column.iter().map(|r| r.waited).sum();
            let memory: f64 = runs
                .iter()
                .map(|run| run[index].memory_gib_seconds / run[static_index].memory_gib_seconds)
                .sum::<f64>()
                / runs.len() as f64;
            let changes = column.iter().map(|r| r.changes).max().unwrap_or(0);
            let oscillations = column
                .iter()
                .map(|r| r.oscillations_within(window_s))
                .max()
                .unwrap_or(0);
            println!(
                "| {name} | {} | {requests} | {failed} | {:.1} | {:.1} | {:.0} | {:.2} % | {memory:.2}x | {changes} | {oscillations} |",
                column[0].manager,
                median * 1000.0,
                worst * 1000.0,
                max * 1000.0,
                waited as f64 * 100.0 / requests.max(1) as f64,
            );
        }
    }
    Ok(())
}
