//! Prints what an import would write (config, notes; never env values):
//! `cargo run -p fpm-import --example import_preview -- /etc/php/8.2/fpm/php-fpm.conf [prefix]`.

use std::path::PathBuf;

use fpm_import::{import_file, ImportOptions, ReadOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let main = PathBuf::from(args.next().ok_or("usage: import_preview FILE [PREFIX]")?);
    let mut read = ReadOptions::default();
    if let Some(p) = args.next() {
        read.prefix = std::path::absolute(p)?;
    }
    let imported = import_file(
        &std::path::absolute(&main)?,
        &read,
        &ImportOptions {
            runtime_dir: PathBuf::from("/var/lib/phpfpm-manager"),
            write_runtime_dir: true,
            include_secrets: false,
        },
    )?;
    #[allow(clippy::print_stdout)]
    {
        println!("{}", imported.config_yaml);
        for (pool, _) in &imported.env_files {
            println!("# (env/{pool}.yaml not shown: it holds env values)");
        }
    }
    Ok(())
}
