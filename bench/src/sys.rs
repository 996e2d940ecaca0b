//! What the operating system tells about CPU time and memory, and the open-file limit.
//!
//! The generator's own CPU time comes from `getrusage(RUSAGE_SELF)`; a server's from
//! `/proc/PID/stat` (user + system ticks) and its memory from `/proc/PID/status` (`VmRSS`,
//! `VmHWM`). The three libc calls are the crate's only `unsafe` code.
#![allow(unsafe_code)]

use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Now, in nanoseconds since the Unix epoch (the clock every tag and latency uses).
#[inline]
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// This process's CPU time so far (user + system, all threads), in nanoseconds.
pub fn self_cpu_ns() -> u64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole `rusage` into the pointer it is given, which points at
    // one; RUSAGE_SELF is always valid.
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
            return 0;
        }
        usage.assume_init()
    };
    let ns = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000_000 + tv.tv_usec as u64 * 1000;
    ns(usage.ru_utime) + ns(usage.ru_stime)
}

/// Raises this process's soft open-file limit to its hard limit. Returns the limit now in
/// force.
pub fn raise_open_files_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write one `rlimit`, which `limit` is.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(limit.rlim_cur)
}

/// Clock ticks per second, the unit of `/proc/PID/stat` times.
fn clock_ticks() -> u64 {
    // SAFETY: sysconf only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

/// One look at a process: its CPU time and memory.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcSample {
    /// The process.
    pub pid: u32,
    /// User + system CPU time so far, nanoseconds (clock-tick resolution, usually 10 ms).
    pub cpu_ns: u64,
    /// Resident memory now, bytes.
    pub rss_bytes: u64,
    /// Peak resident memory so far, bytes.
    pub hwm_bytes: u64,
}

impl ProcSample {
    /// Reads `/proc/PID/stat` and `/proc/PID/status`.
    pub fn read(pid: u32) -> io::Result<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let ticks = parse_stat_ticks(&stat)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable stat"))?;
        Ok(Self {
            pid,
            cpu_ns: ticks * 1_000_000_000 / clock_ticks(),
            rss_bytes: status_kib(&status, "VmRSS:").unwrap_or(0) * 1024,
            hwm_bytes: status_kib(&status, "VmHWM:").unwrap_or(0) * 1024,
        })
    }
}

/// utime + stime from a `/proc/PID/stat` line. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from the last `)`.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // After the name: state (3), ppid … cmajflt (4–12), utime (14), stime (15).
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// A `Name:   N kB` line of `/proc/PID/status`, in KiB.
fn status_kib(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with(name))?;
    line[name.len()..]
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ticks_past_a_name_with_spaces() {
        let stat = "1234 (tokio (worker) 1) S 1 1234 1234 0 -1 4194560 500 0 0 0 250 37 0 0 20 0 3 0 100 1000 200";
        assert_eq!(parse_stat_ticks(stat), Some(287));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn reads_status_lines() {
        let status = "Name:\tconfab\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(10_240));
        assert_eq!(status_kib(status, "VmHWM:"), Some(20_480));
        assert_eq!(status_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn samples_this_process() {
        let sample = ProcSample::read(std::process::id()).unwrap();
        assert!(sample.rss_bytes > 0);
        assert!(sample.hwm_bytes >= sample.rss_bytes);
        let spin = std::time::Instant::now();
        while spin.elapsed().as_millis() < 30 {
            std::hint::black_box(0);
        }
        assert!(self_cpu_ns() > 0);
        assert!(raise_open_files_limit().unwrap() > 0);
    }
}
