//! Logging setup, shared by `main` and the tests.
//!
//! Logs are `tracing` events written as text lines to stdout; `RUST_LOG` filters them
//! (default `info`). Log fields follow `docs/LOGGING.md`: dotted by entity, units in names,
//! and never a message body, a cookie, a secret or an address.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Safe to call more than once: later calls do nothing, which
/// lets every test ask for logs.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal: log files and collectors get plain text.
    let ansi = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .try_init();
}

/// For tests: installs the subscriber only when `TEST_LOG` is set, so test output stays quiet.
pub fn init_for_tests() {
    if std::env::var_os("TEST_LOG").is_some() {
        init();
    }
}
