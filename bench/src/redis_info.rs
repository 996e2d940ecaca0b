//! What a Redis server spent during a step: `INFO commandstats` and `INFO cpu` read before and
//! after, over a plain TCP connection (one inline command, one bulk reply: no client crate).
//!
//! With `--redis HOST:PORT` (each primary of a cluster), every step reports per server the
//! script calls it ran (`EVALSHA`), their Redis CPU per call (`usec_per_call` of the step's
//! calls alone), and the server's CPU per message sent: the cost of the publish path measured
//! where it is paid.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde::Serialize;

/// One server's counters at one instant.
#[derive(Debug, Clone, Copy, Default)]
pub struct RedisSample {
    /// `cmdstat_evalsha` `calls`.
    pub evalsha_calls: u64,
    /// `cmdstat_evalsha` `usec`.
    pub evalsha_usec: u64,
    /// `used_cpu_sys` + `used_cpu_user`, seconds.
    pub cpu_secs: f64,
}

/// One server's share of a step.
#[derive(Debug, Clone, Serialize)]
pub struct RedisStep {
    /// `HOST:PORT`.
    pub address: String,
    /// Scripts run during the step.
    pub evalsha_calls: u64,
    /// This server's share of all the step's script calls (0–1).
    pub evalsha_share: f64,
    /// Redis CPU per script call during the step, microseconds (`usec` / `calls`).
    pub evalsha_us_per_call: f64,
    /// Redis CPU in script calls over the step, microseconds (`usec`): divided by the
    /// messages sent, a chat's share, however many chats a call carried.
    pub evalsha_usec: u64,
    /// The server's whole CPU over the step, seconds.
    pub cpu_secs: f64,
}

/// Reads `address`'s counters; `None` when it cannot be reached (reported as missing).
pub fn sample(address: &str) -> Option<RedisSample> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(b"INFO everything\r\n").ok()?;
    let mut reader = BufReader::new(stream);
    let mut header = String::new();
    reader.read_line(&mut header).ok()?;
    let len: usize = header.trim_end().strip_prefix('$')?.parse().ok()?;
    let mut body = vec![0; len + 2];
    reader.read_exact(&mut body).ok()?;
    Some(parse(&String::from_utf8_lossy(&body)))
}

fn parse(info: &str) -> RedisSample {
    let mut sample = RedisSample::default();
    for line in info.lines() {
        if let Some(stats) = line.strip_prefix("cmdstat_evalsha:") {
            for field in stats.split(',') {
                match field.split_once('=') {
                    Some(("calls", v)) => sample.evalsha_calls = v.parse().unwrap_or(0),
                    Some(("usec", v)) => sample.evalsha_usec = v.parse().unwrap_or(0),
                    _ => {}
                }
            }
        } else if let Some(v) = line
            .strip_prefix("used_cpu_sys:")
            .or_else(|| line.strip_prefix("used_cpu_user:"))
        {
            sample.cpu_secs += v.trim().parse::<f64>().unwrap_or(0.0);
        }
    }
    sample
}

/// Each server's share of the step between `before` and `after` (same order as `addresses`).
pub fn between(
    addresses: &[String],
    before: &[Option<RedisSample>],
    after: &[Option<RedisSample>],
) -> Vec<RedisStep> {
    let deltas: Vec<(u64, u64, f64)> = before
        .iter()
        .zip(after)
        .map(|pair| match pair {
            (Some(b), Some(a)) => (
                a.evalsha_calls.saturating_sub(b.evalsha_calls),
                a.evalsha_usec.saturating_sub(b.evalsha_usec),
                a.cpu_secs - b.cpu_secs,
            ),
            _ => (0, 0, 0.0),
        })
        .collect();
    let total: u64 = deltas.iter().map(|(calls, _, _)| calls).sum();
    addresses
        .iter()
        .zip(deltas)
        .map(|(address, (calls, usec, cpu))| RedisStep {
            address: address.clone(),
            evalsha_calls: calls,
            evalsha_share: if total == 0 {
                0.0
            } else {
                calls as f64 / total as f64
            },
            evalsha_us_per_call: if calls == 0 {
                0.0
            } else {
                usec as f64 / calls as f64
            },
            evalsha_usec: usec,
            cpu_secs: cpu,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_script_calls_and_cpu() {
        let info = "# CPU\r\nused_cpu_sys:1.50\r\nused_cpu_user:2.25\r\n# Commandstats\r\n\
                    cmdstat_evalsha:calls=10,usec=55,usec_per_call=5.50,rejected_calls=0\r\n";
        let sample = parse(info);
        assert_eq!((sample.evalsha_calls, sample.evalsha_usec), (10, 55));
        assert!((sample.cpu_secs - 3.75).abs() < 1e-9);
        let before = RedisSample::default();
        let steps = between(
            &["a".to_owned(), "b".to_owned()],
            &[Some(before), Some(before)],
            &[
                Some(sample),
                Some(RedisSample {
                    evalsha_calls: 30,
                    ..sample
                }),
            ],
        );
        assert!((steps[0].evalsha_share - 0.25).abs() < 1e-9);
        assert!((steps[0].evalsha_us_per_call - 5.5).abs() < 1e-9);
        assert_eq!(steps[1].evalsha_usec, 55);
    }
}
