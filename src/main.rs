//! The `confab` binary: read the configuration, start logging, bind, and serve until SIGTERM
//! or SIGINT, then drain.

use std::process::ExitCode;

use confab::config::{RuntimeFlavor, StartupError};
use confab::{Application, Config, telemetry};

fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(StartupError::Usage(error)) => error.exit(),
        Err(StartupError::Config(error)) => {
            eprintln!("confab: {error}");
            return ExitCode::from(2);
        }
    };
    telemetry::init();
    let runtime = match config.runtime {
        RuntimeFlavor::MultiThread => tokio::runtime::Builder::new_multi_thread(),
        RuntimeFlavor::CurrentThread => tokio::runtime::Builder::new_current_thread(),
    }
    .enable_all()
    .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("confab: cannot start the tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let application = Application::bind(config).await?;
        application.run_until(shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("confab: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    // Installing a handler only fails if the signal is forbidden, which SIGTERM/SIGINT never are.
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
}
