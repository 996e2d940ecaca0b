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

use super::{EVENTS_CHANNEL, LOG_KEY, MAX_BACKOFF, SEQ_KEY, SEQ_START_KEY, Shared};
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
    let mut warned_at_start = false;
    loop {
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            outcome = relay.subscribe_and_relay(&mut backoff) => outcome,
        };
        shared.note_subscribed(false);
        match outcome {
            Err(error) if !relay.connected_once && !warned_at_start => {
                // Later outages are logged once by the broker's state change; this is the
                // only word about a Redis that is down from the start.
                warn!(%error, "Redis is unreachable at start-up; retrying");
                warned_at_start = true;
            }
            Err(error) => debug!(%error, "Redis subscription ended"),
            Ok(()) => {}
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
    /// The id of the last frame handed to the hub (or, before the first, the newest id when
    /// the node first subscribed); 0 while Redis has never given out an id.
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
        // Subscribed first, then read Redis: whatever is published in between arrives on
        // both, and the relay drops the second copy.
        if self.connected_once {
            self.catch_up().await?;
            shared.metrics.broker_reconnects.inc();
            info!(last.id = self.delivered, "Redis subscription restored");
        } else {
            // The first subscription starts from the newest id: from here on every frame is
            // either received or repaired, so the node may take sockets.
            let newest: Option<u64> = shared.query(redis::cmd("GET").arg(SEQ_KEY).clone()).await?;
            self.delivered = newest.unwrap_or(0);
            shared.saw(self.delivered);
            shared.note_baseline();
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
                    // A subscribed connection answers PING with ["pong", ""], not "PONG".
                    tokio::time::timeout(super::COMMAND_TIMEOUT, sink.ping::<redis::Value>())
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
        // With no id ever given out before, the first frame starts the sequence.
        if self.delivered > 0 && header.id > self.delivered + 1 {
            let before = self.delivered;
            let (recovered, _) = self.read_log(Some(header.id - 1)).await?;
            self.account_for_gap(before, header.id, recovered).await?;
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
        let (recovered, first) = self.read_log(None).await?;
        if let Some(first) = first
            && first > before + 1
        {
            self.account_for_gap(before, first, 0).await?;
        }
        if recovered > 0 {
            info!(
                frames = recovered,
                from.id = before,
                "caught up from the Redis log"
            );
        }
        Ok(())
    }

    /// After repairing the gap between `before` and `next` (both exclusive) with `recovered`
    /// frames from the log, counts and reports what could not be recovered — except ids that
    /// never existed, below the start of a new sequence (Redis restarted empty).
    async fn account_for_gap(
        &self,
        before: u64,
        next: u64,
        recovered: u64,
    ) -> Result<(), BrokerError> {
        let missing = (next - before - 1).saturating_sub(recovered);
        if missing == 0 {
            return Ok(());
        }
        let sequence_start: Option<u64> = self
            .shared
            .query(redis::cmd("GET").arg(SEQ_START_KEY).clone())
            .await?;
        let never_given = match sequence_start {
            Some(start) if start > before + 1 => start.min(next) - before - 1,
            _ => 0,
        };
        let lost = missing.saturating_sub(never_given);
        if lost > 0 {
            self.shared.metrics.broker_frames_lost.inc_by(lost);
            warn!(
                lost,
                from.id = before,
                to.id = next,
                "frames missing from the subscription are no longer in the Redis log"
            );
        } else {
            info!(
                from.id = before,
                to.id = next,
                "Redis started a new id sequence"
            );
        }
        Ok(())
    }

    /// Delivers the log's frames after the last delivered id and up to `last` (or all).
    /// Returns how many, and the id of the first.
    async fn read_log(&mut self, last: Option<u64>) -> Result<(u64, Option<u64>), BrokerError> {
        let mut recovered = 0;
        let mut first = None;
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
                    first.get_or_insert(header.id);
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
        Ok((recovered, first))
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
