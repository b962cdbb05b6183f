//! Prints the simulator's comparison table:
//! `cargo run -p fpm-autoscale --release --example simulate -- --trace all [--seed N] [--policy FILE]`.

#![allow(clippy::print_stdout)]

use fpm_autoscale::{simulate_report, TraceSpec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut trace = "all".to_owned();
    let mut seed = 1_u64;
    let mut policy_text = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or_else(|| format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--trace" => trace = value,
            "--seed" => {
                seed = value
                    .parse()
                    .map_err(|_| format!("--seed: '{value}' is not a number"))?
            }
            "--policy" => policy_text = Some(std::fs::read_to_string(&value)?),
            other => {
                return Err(
                    format!("unknown argument '{other}'; use --trace, --seed, --policy").into(),
                )
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
        println!("{}", simulate_report(spec, policy_text.as_deref(), seed)?);
    }
    Ok(())
}
