//! Prints the simulator's comparison table:
//! `cargo run -p fpm-autoscale --release --example simulate -- --trace all [--seed N] [--policy FILE] [--change handover|reload] [--probe SECONDS] [--handover SECONDS]`.
//! `--trace` takes a built-in name, `all`, `shared` (two pools under one
//! budget), or the path of a CSV `time_s,rate` file. `--sweep N` prints
//! instead one line per built-in trace and seed 1 to N with the figures
//! the goals are about.

#![allow(clippy::print_stdout)]

use fpm_autoscale::sim::{
    run_shared, simulate_all, simulate_report_with, ChangeMechanism, Scenario, SharedPool,
};
use fpm_autoscale::{Policy, TraceSpec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut trace = "all".to_owned();
    let mut seed = 1_u64;
    let mut policy_text = None;
    let mut change = ChangeMechanism::Handover;
    let mut probe_s = None;
    let mut sweep = None;
    let mut handover_s = None;
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
            "--handover" => {
                handover_s = Some(value.parse::<f64>().map_err(|_| {
                    format!("--handover: '{value}' is not a number of seconds")
                })?);
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
            "--change" => {
                change = match value.as_str() {
                    "handover" => ChangeMechanism::Handover,
                    "reload" => ChangeMechanism::Reload,
                    _ => return Err(format!("--change: '{value}': use handover or reload").into()),
                };
            }
            other => {
                return Err(format!(
                    "unknown argument '{other}'; use --trace, --seed, --sweep, --policy, --change, --probe, --handover"
                )
                .into())
            }
        }
    }
    if trace == "shared" {
        return print_shared(seed);
    }
    if let Some(seeds) = sweep {
        let policy = match &policy_text {
            Some(text) => Policy::from_yaml(text)?,
            None => Policy::default(),
        };
        return print_sweep(seeds, &policy, change, probe_s, handover_s);
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
        scenario.change = change;
        if let Some(probe_s) = probe_s {
            scenario.probe_s = probe_s;
        }
        if let Some(handover_s) = handover_s {
            scenario.handover_s = handover_s;
        }
        println!(
            "{}",
            simulate_report_with(spec, policy_text.as_deref(), scenario)?
        );
    }
    Ok(())
}

/// The goals' figures for every built-in trace and seeds 1 to `seeds`.
fn print_sweep(
    seeds: u64,
    policy: &Policy,
    change: ChangeMechanism,
    probe_s: Option<f64>,
    handover_s: Option<f64>,
) -> Result<(), Box<dyn std::error::Error>> {
    let window_s = policy.spec().oscillation_window_s;
    println!("| trace | seed | manager p99 ms | static p99 ms | dynamic p99 ms | waited > 0 | 1 % of requests | memory vs static | most changes in 5 min | oscillations ({window_s:.0} s) |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for name in TraceSpec::BUILTIN {
        let trace = TraceSpec::builtin(name).ok_or("unknown built-in trace")?;
        for seed in 1..=seeds {
            let mut scenario = Scenario::standard(seed);
            scenario.change = change;
            scenario.max_workers = policy.spec().max_workers;
            scenario.slow_wait_s = policy.emergency_wait_s();
            if let Some(probe_s) = probe_s {
                scenario.probe_s = probe_s;
            }
            if let Some(handover_s) = handover_s {
                scenario.handover_s = handover_s;
            }
            let results = simulate_all(&trace, policy, &scenario)?;
            let [manager, static_max, dynamic, _] = &results[..] else {
                return Err("expected four managers".into());
            };
            println!(
                "| {name} | {seed} | {:.1} | {:.1} | {:.1} | {} | {} | {:.2}x | {} | {} |",
                manager.p99_wait_s * 1000.0,
                static_max.p99_wait_s * 1000.0,
                dynamic.p99_wait_s * 1000.0,
                manager.waited,
                manager.requests / 100,
                manager.memory_gib_seconds / static_max.memory_gib_seconds,
                manager.max_changes_within(300.0),
                manager.oscillations_within(window_s),
            );
        }
    }
    Ok(())
}

/// Two pools under one budget that fits about 30 workers: "shop" (priority
/// 1, spike trace) and "admin" (priority 0, steady trace).
fn print_shared(seed: u64) -> Result<(), Box<dyn std::error::Error>> {
    const MIB: u64 = 1024 * 1024;
    let pools = [
        SharedPool {
            name: "shop".to_owned(),
            trace: TraceSpec::Spike,
            policy: Policy::from_yaml("priority: 1\n")?,
        },
        SharedPool {
            name: "admin".to_owned(),
            trace: TraceSpec::Steady,
            policy: Policy::from_yaml("priority: 0\n")?,
        },
    ];
    let mut scenario = Scenario::standard(seed);
    scenario.memory_budget_bytes = 384 * MIB + 30 * 70 * MIB;
    let shared = run_shared(&pools, &scenario)?;
    println!(
        "shared budget {} MiB (about 30 workers), seed {seed}, peak memory of all workers {} MiB",
        scenario.memory_budget_bytes / MIB,
        shared.peak_memory_bytes / MIB
    );
    println!("| pool | priority | p50 wait ms | p99 wait ms | max wait ms | waited > target | memory GiB-s | changes | cap low..high |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (index, (pool, result)) in pools.iter().zip(&shared.pools).enumerate() {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.0} | {} | {:.0} | {} | {}..{} |",
            pool.name,
            pool.policy.spec().priority,
            result.p50_wait_s * 1000.0,
            result.p99_wait_s * 1000.0,
            result.max_wait_s * 1000.0,
            result.over_target,
            result.memory_gib_seconds,
            result.changes,
            shared.granted_low[index],
            shared.granted_peak[index],
        );
    }
    Ok(())
}
