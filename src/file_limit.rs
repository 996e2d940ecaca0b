//! The process's open-file limit. Every socket is a file, and containers and service managers
//! often start a process with a soft limit of 1,024: a node would then stall near a thousand
//! sockets, far below `CONFAB_MAX_CONNECTIONS`. At start-up confab raises its soft limit to the
//! hard limit (which needs no privilege), logs the result, and warns when even that is short.

use tracing::{info, warn};

/// Files a node needs beside its sockets: the listener, Redis connections, logs, the
/// allocator's and runtime's own descriptors, with room to spare.
pub const HEADROOM: u64 = 64;

/// What start-up found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimit {
    /// The soft limit before start-up changed it.
    pub before: u64,
    /// The soft limit now.
    pub soft: u64,
}

/// Raises the soft open-file limit to the hard limit and logs it; warns when the result leaves
/// no room for `max_connections` sockets. `None` when the limit cannot be read (not Unix).
pub fn raise_open_file_limit(max_connections: usize) -> Option<FileLimit> {
    let (before, _hard) = rlimit::Resource::NOFILE.get().ok()?;
    let soft = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(soft) => soft,
        Err(error) => {
            warn!(%error, limit = before, "cannot raise the open-file limit");
            before
        }
    };
    if soft > before {
        info!(
            limit = soft,
            previous = before,
            "raised the open-file limit"
        );
    } else {
        info!(limit = soft, "open-file limit");
    }
    let needed = max_connections as u64 + HEADROOM;
    if soft < needed {
        warn!(
            limit = soft,
            needed,
            "the open-file limit is below CONFAB_MAX_CONNECTIONS plus {HEADROOM}: sockets past it \
             wait in the accept backlog; raise the hard limit (ulimit -Hn, compose `ulimits`, \
             systemd LimitNOFILE) or lower CONFAB_MAX_CONNECTIONS"
        );
    }
    Some(FileLimit { before, soft })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        let limit = raise_open_file_limit(10).expect("Linux has limits");
        let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap();
        assert_eq!(limit.soft, soft);
        assert!(soft == hard || soft >= 1 << 20, "soft {soft}, hard {hard}");
        assert!(limit.soft >= limit.before);
    }
}
