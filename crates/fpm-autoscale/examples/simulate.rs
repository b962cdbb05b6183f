//! Prints the simulator's comparison table:
//! `cargo run -p fpm-autoscale --release --example simulate -- --trace all [--seed N] [--policy FILE] [--change handover|reload]`.
//! `--trace` takes a built-in name, `all`, or the path of a CSV `time_s,rate` file.

#![allow(clippy::print_stdout)]

use fpm_autoscale::sim::{simulate_report_with, ChangeMechanism, Scenario};
use fpm_autoscale::TraceSpec;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut trace = "all".to_owned();
    let mut seed = 1_u64;
    let mut policy_text = None;
    let mut change = ChangeMechanism::Handover;
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
            "--policy" => policy_text = Some(std::fs::read_to_string(&value)?),
            "--change" => {
                change = match value.as_str() {
                    "handover" => ChangeMechanism::Handover,
                    "reload" => ChangeMechanism::Reload,
                    _ => return Err(format!("--change: '{value}': use handover or reload").into()),
                };
            }
            other => {
                return Err(format!(
                    "unknown argument '{other}'; use --trace, --seed, --policy, --change"
                )
                .into())
            }
        }
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
        println!(
            "{}",
            simulate_report_with(spec, policy_text.as_deref(), scenario)?
        );
    }
    Ok(())
}
