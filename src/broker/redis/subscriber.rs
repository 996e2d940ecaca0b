//! The node's one subscription to `confab:events`, and the repair that makes it lossless.
//!
//! Redis pub/sub is at-most-once: a subscriber whose connection drops misses what was published
//! meanwhile. But every frame also goes into the `confab:log` stream under its id, and every
//! node sees one contiguous id sequence on the one channel. So the relay knows the next id it
//! should see; a frame further ahead means a gap, which it fills from the log before handing
//! the newer frame on. After a reconnect it first reads everything after the last id it
//! delivered. Each socket therefore gets every frame once, in id order, across any blip.

use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::redis::{self, FromRedisValue};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{EVENTS_CHANNEL, LOG_KEY, MAX_BACKOFF, Shared};
use crate::broker::BrokerError;
use crate::protocol::{Frame, parse_frame_header};

/// How often the subscription connection is pinged, so a silently dead one is noticed.
const PING_PERIOD: Duration = Duration::from_secs(3);
/// The first wait before reconnecting; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Log entries read per request when catching up.
const LOG_PAGE: usize = 1000;

/// Keeps the node subscribed until `stop`, reconnecting with capped, jittered back-off.
pub(super) async fn run(shared: Arc<Shared>, stop: CancellationToken) {
    let mut relay = Relay {
        shared: &shared,
        delivered: 0,
        connected_once: false,
    };
    let mut backoff = FIRST_BACKOFF;
    loop {
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            outcome = relay.subscribe_and_relay(&mut backoff) => outcome,
        };
        shared.note_subscribed(false);
        if let Err(error) = outcome {
            debug!(%error, "Redis subscription ended");
        }
        let wait = backoff.mul_f64(0.5 + rand::random::<f64>() / 2.0);
        backoff = (backoff * 2).min(MAX_BACKOFF);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// Hands frames to the hub in id order, exactly once each.
struct Relay<'a> {
    shared: &'a Shared,
    /// The id of the last frame handed to the hub; 0 before the first.
    delivered: u64,
    connected_once: bool,
}

impl Relay<'_> {
    /// Subscribes, catches up from the log, then relays until the connection fails.
    async fn subscribe_and_relay(&mut self, backoff: &mut Duration) -> Result<(), BrokerError> {
        let shared = self.shared;
        let pubsub = tokio::time::timeout(super::COMMAND_TIMEOUT, shared.client.get_async_pubsub())
            .await
            .map_err(|_| BrokerError::Timeout(super::COMMAND_TIMEOUT))??;
        let (mut sink, mut stream) = pubsub.split();
        tokio::time::timeout(super::COMMAND_TIMEOUT, sink.subscribe(EVENTS_CHANNEL))
            .await
            .map_err(|_| BrokerError::Timeout(super::COMMAND_TIMEOUT))??;
        // Subscribed first, then read the log: whatever is published in between arrives on
        // both, and the relay drops the second copy.
        if self.delivered > 0 {
            self.catch_up().await?;
        }
        if self.connected_once {
            shared.metrics.broker_reconnects.inc();
            info!(last.id = self.delivered, "Redis subscription restored");
        }
        self.connected_once = true;
        *backoff = FIRST_BACKOFF;
        shared.note_subscribed(true);

        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_PERIOD, PING_PERIOD);
        loop {
            tokio::select! {
                message = stream.next() => {
                    let Some(message) = message else {
                        warn!("Redis subscription connection closed");
                        return Ok(());
                    };
                    let payload = message.get_payload_bytes();
                    match std::str::from_utf8(payload) {
                        Ok(text) => self.relay(text).await?,
                        Err(_) => warn!("ignoring a non-UTF-8 message on the events channel"),
                    }
                }
                _ = ping.tick() => {
                    tokio::time::timeout(super::COMMAND_TIMEOUT, sink.ping::<String>())
                        .await
                        .map_err(|_| BrokerError::Timeout(super::COMMAND_TIMEOUT))??;
                }
            }
        }
    }

    /// Hands on one frame from the channel, first filling any gap before it.
    async fn relay(&mut self, text: &str) -> Result<(), BrokerError> {
        let Ok(header) = parse_frame_header(text) else {
            warn!("ignoring a malformed frame on the events channel");
            return Ok(());
        };
        if header.id <= self.delivered {
            return Ok(());
        }
        if self.delivered > 0 && header.id > self.delivered + 1 {
            self.fill_gap(header.id).await?;
        }
        let lag_ms = crate::protocol::now_ms().saturating_sub(header.ts);
        self.shared
            .metrics
            .broker_delivery_lag_seconds
            .observe(lag_ms as f64 / 1000.0);
        self.deliver(header.id, header.room, text.to_owned());
        Ok(())
    }

    /// Reads the log after the last delivered id, up to the newest entry.
    async fn catch_up(&mut self) -> Result<(), BrokerError> {
        let before = self.delivered;
        let recovered = self.read_log(None).await?;
        if recovered > 0 {
            info!(
                frames = recovered,
                from.id = before,
                "caught up from the Redis log"
            );
        }
        Ok(())
    }

    /// Reads the log for the frames between the last delivered id and `next` (exclusive).
    async fn fill_gap(&mut self, next: u64) -> Result<(), BrokerError> {
        let before = self.delivered;
        let recovered = self.read_log(Some(next - 1)).await?;
        let missing = (next - 1 - before).saturating_sub(recovered);
        if missing > 0 && !self.log_covers(before + 1).await? {
            // Either the log was trimmed past them (lost), or Redis restarted empty and raised
            // its counter (they never existed); the log cannot say which.
            self.shared.metrics.broker_frames_lost.inc_by(missing);
            warn!(
                missing,
                from.id = before,
                to.id = next,
                "frames missing from the subscription are no longer in the Redis log"
            );
        }
        Ok(())
    }

    /// Delivers the log's frames after the last delivered id and up to `last` (or all),
    /// returning how many.
    async fn read_log(&mut self, last: Option<u64>) -> Result<u64, BrokerError> {
        let mut recovered = 0;
        let mut cursor = self.delivered;
        loop {
            let end = last.map_or_else(|| "+".to_owned(), |last| format!("{last}-0"));
            let mut command = redis::cmd("XRANGE");
            command
                .arg(LOG_KEY)
                .arg(format!("{}-0", cursor + 1))
                .arg(end)
                .arg("COUNT")
                .arg(LOG_PAGE);
            let entries: Vec<LogEntry> = self.shared.query(command).await?;
            let page = entries.len();
            for entry in entries {
                cursor = cursor.max(entry.id);
                if let Ok(header) = parse_frame_header(&entry.frame)
                    && header.id > self.delivered
                {
                    let room = header.room.to_owned();
                    self.deliver(header.id, &room, entry.frame);
                    recovered += 1;
                }
            }
            if page < LOG_PAGE {
                break;
            }
        }
        self.shared
            .metrics
            .broker_frames_recovered
            .inc_by(recovered);
        Ok(recovered)
    }

    /// Whether the log still holds entries from `id` on (its oldest entry is at or before it).
    async fn log_covers(&self, id: u64) -> Result<bool, BrokerError> {
        let mut command = redis::cmd("XRANGE");
        command.arg(LOG_KEY).arg("-").arg("+").arg("COUNT").arg(1);
        let oldest: Vec<LogEntry> = self.shared.query(command).await?;
        Ok(oldest.first().is_some_and(|entry| entry.id <= id))
    }

    fn deliver(&mut self, id: u64, room: &str, text: String) {
        self.shared.hub.dispatch(room, &Frame::new(id, text));
        self.delivered = id;
        self.shared.saw(id);
    }
}

/// One entry of `confab:log`: `<id>-0` with the field `f` holding the frame.
struct LogEntry {
    id: u64,
    frame: String,
}

impl FromRedisValue for LogEntry {
    fn from_redis_value(value: redis::Value) -> Result<Self, redis::ParsingError> {
        let (id, fields): (String, Vec<String>) = FromRedisValue::from_redis_value(value)?;
        let id = id
            .split('-')
            .next()
            .and_then(|id| id.parse().ok())
            .ok_or_else(|| redis::ParsingError::from("a log entry id is not <id>-0"))?;
        let frame = fields
            .into_iter()
            .nth(1)
            .ok_or_else(|| redis::ParsingError::from("a log entry has no frame"))?;
        Ok(Self { id, frame })
    }
}
