//! The `confab` binary: read the configuration, start logging, bind, and serve until SIGTERM
//! or SIGINT, then drain.

#![forbid(unsafe_code)]

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
        let mut signals = StopSignals::install()?;
        let application = Application::bind(config).await?;
        let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
        let run = application.run_until(async {
            let _ = drain_rx.await;
        });
        tokio::pin!(run);
        tokio::select! {
            result = &mut run => return result,
            () = signals.next() => {
                let _ = drain_tx.send(());
            }
        }
        // A second signal means the operator will not wait for the drain.
        tokio::select! {
            result = &mut run => result,
            () = signals.next() => {
                tracing::warn!("second stop signal: exiting without finishing the drain");
                Err(anyhow::anyhow!("stopped by a second signal before the drain finished"))
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("confab: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM and SIGINT, either of which stops the node.
struct StopSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Completes on the next SIGTERM or SIGINT.
    async fn next(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}
