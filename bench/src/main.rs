//! The `confab-bench` binary: parse the command line, raise the open-file limit, run the
//! scenario (or, as `confab-bench worker`, serve a coordinator), print the table and write
//! the JSON.

use std::process::ExitCode;

use clap::Parser;
use confab_bench::cli::{Cli, Scenario};
use confab_bench::{coord, sys};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let limit = sys::raise_open_files_limit();
    if let Scenario::Worker = cli.scenario {
        return match coord::worker_main() {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("confab-bench worker: {error}");
                ExitCode::FAILURE
            }
        };
    }
    match limit {
        Ok(limit) if !cli.common.quiet => eprintln!("open-file limit: {limit}"),
        Ok(_) => {}
        Err(error) => eprintln!("confab-bench: cannot raise the open-file limit: {error}"),
    }
    let report = match coord::run(&cli.common, &cli.scenario) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("confab-bench: {error}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", report.human());
    if let Some(path) = &cli.common.json {
        let json = serde_json::to_string_pretty(&report).expect("reports serialize");
        if let Err(error) = std::fs::write(path, json + "\n") {
            eprintln!("confab-bench: cannot write {}: {error}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
