//! The node's one pub/sub connection, subscribed to the channels of the partitions its sockets
//! are in, and the repair that makes it lossless.
//!
//! Redis pub/sub is at-most-once: a subscriber whose connection drops misses what was published
//! meanwhile. But every frame also goes into its partition's log (a list, oldest first), and ids
//! within a partition are consecutive steps of [`PARTITIONS`]. So the relay knows the next id
//! it should see in each partition; a frame further ahead means a gap, which it fills from
//! that partition's log before handing the newer frame on. After a reconnect it first reads,
//! partition by partition, everything after the last id it delivered. Each socket therefore
//! gets every frame once, in id order, across any blip.
//!
//! Subscriptions follow the sockets ([`PartitionTable`](super::partition::PartitionTable)):
//! a partition wanted by a joining socket is subscribed, then its starting point is read (the
//! partition's newest id), and only then may the socket take its snapshot.
//!
//! On one server the node keeps a pub/sub connection of its own (`SUBSCRIBE`). On a Redis
//! Cluster it subscribes with `SSUBSCRIBE` through the cluster client, which sends each to the
//! node serving the channel's slot and subscribes again after a failover; the messages come
//! back as pushes. A slot that moves away is unsubscribed by the server (`sunsubscribe`), and
//! the relay subscribes again at its new owner; after either, it catches the partition up from
//! its log. Every [`AUDIT_PERIOD`] it also compares each partition's newest id with the last it
//! delivered, so a frame missed without any sign (the last one before a failover) is still
//! delivered, a moment late.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::try_join_all;
use redis::aio::{PubSubSink, PubSubStream};
use redis::cluster_async::ClusterConnection;
use redis::{self, PushInfo, PushKind, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::connection::Commands;
use super::keys::{ID_STEP, LEGACY_SEQ_KEY, PARTITIONS, Partition};
use super::{COMMAND_TIMEOUT, MAX_BACKOFF, Shared};
use crate::broker::BrokerError;
use crate::protocol::{
    Frame, FrameHeader, RoomName, UnsequencedHeader, frame_id, parse_frame_header,
};

/// How often the subscription connection is pinged, so a silently dead one is noticed, and
/// lingering partitions are let go.
const PING_PERIOD: Duration = Duration::from_secs(3);
/// How often the subscriber looks for partitions to let go.
const RECONCILE_PERIOD: Duration = Duration::from_secs(1);
/// How often every subscribed partition's newest id is compared with the last delivered.
pub(super) const AUDIT_PERIOD: Duration = Duration::from_secs(2);
/// The first wait before reconnecting; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Log entries read per request when catching up.
const LOG_PAGE: i64 = 256;

/// Keeps the node subscribed until `stop`, reconnecting with capped, jittered back-off. On a
/// Redis Cluster, `pushes` brings the sharded messages the command connection receives.
pub(super) async fn run(
    shared: Arc<Shared>,
    stop: CancellationToken,
    mut pushes: mpsc::Receiver<PushInfo>,
) {
    let mut relay = Relay {
        shared: &shared,
        delivered: vec![None; usize::from(PARTITIONS)],
        connected_once: false,
    };
    let mut backoff = FIRST_BACKOFF;
    let mut warned_at_start = false;
    loop {
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            outcome = relay.subscribe_and_relay(&mut backoff, &mut pushes) => outcome,
        };
        shared.partitions.mark_unsubscribed(Partition::all());
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

/// Runs `future` within [`COMMAND_TIMEOUT`].
async fn timed<T>(
    future: impl Future<Output = Result<T, redis::RedisError>>,
) -> Result<T, BrokerError> {
    Ok(tokio::time::timeout(COMMAND_TIMEOUT, future)
        .await
        .map_err(|_| BrokerError::Timeout(COMMAND_TIMEOUT))??)
}

/// Hands frames to the hub in id order, exactly once each.
struct Relay<'a> {
    shared: &'a Shared,
    /// Per partition: the id of the last frame handed to the hub (or, before the first, the
    /// partition's newest id when it was subscribed; 0 while Redis never gave one out there).
    /// `None`: not subscribed, frames of that partition concern no socket here.
    delivered: Vec<Option<u64>>,
    connected_once: bool,
}

impl Relay<'_> {
    /// Connects, subscribes again to what it relayed before and catches up from the logs,
    /// then relays and follows the wanted partitions until the connection fails.
    async fn subscribe_and_relay(
        &mut self,
        backoff: &mut Duration,
        pushes: &mut mpsc::Receiver<PushInfo>,
    ) -> Result<(), BrokerError> {
        let shared = self.shared;
        let mut transport = match shared.commands() {
            Some(Commands::Cluster(connection)) => Transport::Cluster {
                connection: connection.clone(),
                pushes,
            },
            Some(Commands::Single(_)) => {
                let pubsub = timed(shared.target.first_client().get_async_pubsub()).await?;
                let (sink, stream) = pubsub.split();
                Transport::Single { sink, stream }
            }
            None => return Err(BrokerError::Starting),
        };
        if !self.connected_once {
            // Ids given out by the one-channel layout (before partitions) stay below every
            // new one: they are the floor of every partition.
            let legacy: Option<u64> = shared
                .query(redis::cmd("GET").arg(LEGACY_SEQ_KEY).clone())
                .await?;
            shared.partitions.saw_everywhere(legacy.unwrap_or(0));
        }
        let tracked = self.tracked();
        if !tracked.is_empty() {
            // Subscribed first, then read Redis: whatever is published in between arrives
            // on both, and the relay drops the second copy.
            transport.subscribe(shared, &tracked).await?;
            for &partition in &tracked {
                self.catch_up(partition).await?;
            }
            shared.metrics.broker_reconnects.inc();
            info!(partitions = tracked.len(), "Redis subscription restored");
            shared.partitions.mark_ready(&tracked);
        }
        self.connected_once = true;
        *backoff = FIRST_BACKOFF;
        shared.note_subscribed(true);
        self.report_subscriptions();

        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_PERIOD, PING_PERIOD);
        let mut reconcile = tokio::time::interval(RECONCILE_PERIOD);
        let mut audit =
            tokio::time::interval_at(tokio::time::Instant::now() + AUDIT_PERIOD, AUDIT_PERIOD);
        loop {
            tokio::select! {
                event = transport.next() => match event {
                    Event::Message(payload) => {
                        shared.metrics.broker_frames_received.inc();
                        match std::str::from_utf8(&payload) {
                            Ok(text) => self.relay(text).await?,
                            Err(_) => warn!("ignoring a non-UTF-8 message on a partition channel"),
                        }
                    }
                    Event::Subscribed(partition) => {
                        // A subscription made again (after a failover): fill what fell between.
                        if self.delivered[partition.index()].is_some() {
                            self.catch_up(partition).await?;
                        }
                    }
                    Event::Unsubscribed(partition) => {
                        // The server let go of a channel whose slot moved: follow it.
                        if self.delivered[partition.index()].is_some() {
                            debug!(partition = %partition, "a partition's slot moved; subscribing at its new owner");
                            transport.subscribe(shared, &[partition]).await?;
                            self.catch_up(partition).await?;
                        }
                    }
                    Event::Disconnected => {
                        shared.metrics.broker_reconnects.inc();
                        debug!("a connection of the Redis Cluster client closed; it reconnects");
                    }
                    Event::Other => {}
                    Event::Closed => {
                        warn!("Redis subscription connection closed");
                        return Ok(());
                    }
                },
                () = shared.partitions.changed.notified() => self.reconcile(&mut transport).await?,
                _ = reconcile.tick() => self.reconcile(&mut transport).await?,
                _ = audit.tick() => self.audit().await?,
                _ = ping.tick() => transport.ping().await?,
            }
        }
    }

    /// The partitions relayed now (subscribed, or to subscribe again after a reconnect).
    fn tracked(&self) -> Vec<Partition> {
        Partition::all()
            .filter(|partition| self.delivered[partition.index()].is_some())
            .collect()
    }

    /// Each of `partitions`' newest id (0 while its counter never gave one out), read together.
    async fn newest_ids(&self, partitions: &[Partition]) -> Result<Vec<u64>, BrokerError> {
        let shared = self.shared;
        let counters = try_join_all(partitions.iter().map(|&partition| {
            let key = &shared.keys[partition.index()].seq;
            shared.query::<Option<u64>>(redis::cmd("GET").arg(key).clone())
        }))
        .await?;
        Ok(partitions
            .iter()
            .zip(counters)
            .map(|(partition, counter)| counter.map_or(0, |counter| partition.id(counter)))
            .collect())
    }

    /// Catches up every subscribed partition whose newest id is past the last delivered.
    async fn audit(&mut self) -> Result<(), BrokerError> {
        let tracked = self.tracked();
        let newest = self.newest_ids(&tracked).await?;
        for (partition, newest) in tracked.into_iter().zip(newest) {
            if newest > self.delivered[partition.index()].unwrap_or(0) {
                self.catch_up(partition).await?;
            }
        }
        Ok(())
    }

    /// Subscribes to the partitions sockets now want, taking each one's starting point, and
    /// lets go of those idle past their linger.
    async fn reconcile(&mut self, transport: &mut Transport<'_>) -> Result<(), BrokerError> {
        let shared = self.shared;
        let plan = shared.partitions.plan(tokio::time::Instant::now());
        if !plan.unsubscribe.is_empty() {
            for partition in &plan.unsubscribe {
                self.delivered[partition.index()] = None;
            }
            transport.unsubscribe(shared, &plan.unsubscribe).await?;
            debug!(
                partitions = plan.unsubscribe.len(),
                "unsubscribed idle partitions"
            );
        }
        if !plan.subscribe.is_empty() {
            transport.subscribe(shared, &plan.subscribe).await?;
            // Subscribed first, then the starting point: every frame after it is either
            // received or repaired, so sockets may take their snapshots from now on.
            let newest = self.newest_ids(&plan.subscribe).await?;
            for (&partition, start) in plan.subscribe.iter().zip(newest) {
                let delivered = &mut self.delivered[partition.index()];
                *delivered = Some(delivered.unwrap_or(0).max(start));
                shared.partitions.saw(start);
            }
            shared.partitions.mark_ready(&plan.subscribe);
        }
        if !plan.subscribe.is_empty() || !plan.unsubscribe.is_empty() {
            self.report_subscriptions();
        }
        Ok(())
    }

    fn report_subscriptions(&self) {
        let subscribed = self.delivered.iter().filter(|d| d.is_some()).count();
        self.shared
            .metrics
            .broker_partitions_subscribed
            .set(subscribed as i64);
    }

    /// Hands on one frame from a channel, first filling any gap before it.
    async fn relay(&mut self, text: &str) -> Result<(), BrokerError> {
        let Ok(header) = parse_frame_header(text) else {
            warn!("ignoring a malformed frame on a partition channel");
            return Ok(());
        };
        if header.id == 0 {
            self.relay_unsequenced(text);
            return Ok(());
        }
        let partition = Partition::of_id(header.id);
        let Some(delivered) = self.delivered[partition.index()] else {
            // Unsubscribed, or not yet: no socket here is waiting for it.
            return Ok(());
        };
        if header.id <= delivered {
            return Ok(());
        }
        // With no id ever given out before, the first frame starts the sequence.
        if delivered > 0 && header.id > delivered + ID_STEP {
            let (recovered, _) = self.read_log(partition, Some(header.id - 1)).await?;
            self.account_for_gap(partition, delivered, header.id, recovered)
                .await?;
        }
        let lag_ms = crate::protocol::now_ms().saturating_sub(header.ts);
        self.shared
            .metrics
            .broker_delivery_lag_seconds
            .observe(lag_ms as f64 / 1000.0);
        self.deliver(&header, text);
        Ok(())
    }

    /// Acts on a frame with id 0, outside the partition's sequence (no gap to fill, nothing to
    /// repair if it is lost): a `typing` frame goes to the room's sockets but its typist's own;
    /// a `kick` notice closes the user's sockets in the room and reaches nobody.
    fn relay_unsequenced(&self, text: &str) {
        let Ok(header) = serde_json::from_str::<UnsequencedHeader<'_>>(text) else {
            warn!("ignoring a malformed id-0 frame on a partition channel");
            return;
        };
        let Ok(room) = RoomName::parse(header.room) else {
            return;
        };
        if self.delivered[Partition::of(&room).index()].is_none() {
            return;
        }
        let (hub, user) = (&self.shared.hub, &header.user.id);
        match header.kind {
            "typing" => hub.dispatch_typing(room.as_str(), &Frame::new(0, text), user),
            // As nodes before kicks were sequenced sent them.
            "kick" => self.kick(room.as_str(), user),
            _ => warn!("ignoring an unknown id-0 frame on a partition channel"),
        }
    }

    /// Closes this node's sockets of `user` in `room`, as a kick notice says.
    fn kick(&self, room: &str, user: &str) {
        let kicked = self.shared.hub.kick(room, user);
        if kicked > 0 {
            info!(room.id = %room, sockets = kicked, "kicked a user's sockets");
        }
    }

    /// Reads the partition's log after the last delivered id, up to the newest entry.
    async fn catch_up(&mut self, partition: Partition) -> Result<(), BrokerError> {
        let before = self.delivered[partition.index()].unwrap_or(0);
        let (recovered, first) = self.read_log(partition, None).await?;
        if let Some(first) = first
            && before > 0
            && first > before + ID_STEP
        {
            self.account_for_gap(partition, before, first, 0).await?;
        }
        if recovered > 0 {
            info!(
                frames = recovered,
                partition = %partition,
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
        partition: Partition,
        before: u64,
        next: u64,
        recovered: u64,
    ) -> Result<(), BrokerError> {
        let missing = ((next - before) / ID_STEP)
            .saturating_sub(1)
            .saturating_sub(recovered);
        if missing == 0 {
            return Ok(());
        }
        let key = &self.shared.keys[partition.index()].seq_start;
        let sequence_start: Option<u64> = self
            .shared
            .query(redis::cmd("GET").arg(key).clone())
            .await?;
        let start = sequence_start.map(|counter| partition.id(counter));
        let never_given = match start {
            Some(start) if start > before + ID_STEP => (start.min(next) - before) / ID_STEP - 1,
            _ => 0,
        };
        let lost = missing.saturating_sub(never_given);
        if lost > 0 {
            self.shared.metrics.broker_frames_lost.inc_by(lost);
            warn!(
                lost,
                partition = %partition,
                from.id = before,
                to.id = next,
                "frames missing from the subscription are no longer in the Redis log"
            );
        } else {
            info!(
                partition = %partition,
                from.id = before,
                to.id = next,
                "Redis started a new id sequence"
            );
        }
        Ok(())
    }

    /// Delivers the partition log's frames after the last delivered id and up to `last` (or
    /// all). Returns how many, and the id of the first.
    ///
    /// The log is a list, oldest first: it is read in pages from its newest end back to the
    /// last delivered id (a gap is rare and short, so this reads little), then delivered
    /// oldest first. Frames appended meanwhile shift the pages; ids already delivered are
    /// skipped, so a frame read twice is delivered once.
    async fn read_log(
        &mut self,
        partition: Partition,
        last: Option<u64>,
    ) -> Result<(u64, Option<u64>), BrokerError> {
        let after = self.delivered[partition.index()].unwrap_or(0);
        let log = &self.shared.keys[partition.index()].log;
        let mut newest_first: Vec<(u64, String)> = Vec::new();
        let mut end: i64 = -1;
        loop {
            let start = end - LOG_PAGE + 1;
            let page: Vec<String> = self
                .shared
                .query(redis::cmd("LRANGE").arg(log).arg(start).arg(end).clone())
                .await?;
            let full = page.len() as i64 == LOG_PAGE;
            let mut reached = false;
            for text in page.into_iter().rev() {
                match frame_id(&text) {
                    Some(id) if id <= after => {
                        reached = true;
                        break;
                    }
                    Some(id) => newest_first.push((id, text)),
                    None => {}
                }
            }
            if reached || !full {
                break;
            }
            end = start - 1;
        }
        let mut recovered = 0;
        let mut first = None;
        for (id, text) in newest_first.into_iter().rev() {
            let delivered = self.delivered[partition.index()].unwrap_or(0);
            if id <= delivered || last.is_some_and(|last| id > last) {
                continue;
            }
            let Ok(header) = parse_frame_header(&text) else {
                continue;
            };
            first.get_or_insert(id);
            self.deliver(&header, &text);
            recovered += 1;
        }
        self.shared
            .metrics
            .broker_frames_recovered
            .inc_by(recovered);
        Ok((recovered, first))
    }

    /// Hands one frame to the hub; [`Frame::new`] makes the one copy every socket shares. A
    /// kick notice is acted on instead: it reaches no socket.
    fn deliver(&mut self, header: &FrameHeader<'_>, text: &str) {
        let id = header.id;
        if header.kind == "kick" {
            match serde_json::from_str::<UnsequencedHeader<'_>>(text) {
                Ok(notice) => self.kick(notice.room, &notice.user.id),
                Err(_) => warn!("ignoring a malformed kick notice on a partition channel"),
            }
        } else {
            self.shared.hub.dispatch(header.room, &Frame::new(id, text));
        }
        self.delivered[Partition::of_id(id).index()] = Some(id);
        self.shared.partitions.saw(id);
    }
}

/// How the node receives its partitions' frames.
enum Transport<'a> {
    /// One server: a pub/sub connection of the node's own.
    Single {
        sink: PubSubSink,
        stream: PubSubStream,
    },
    /// A Redis Cluster: sharded subscriptions through the cluster client, whose pushes arrive
    /// on `pushes`.
    Cluster {
        connection: ClusterConnection,
        pushes: &'a mut mpsc::Receiver<PushInfo>,
    },
}

/// What the transport received.
enum Event {
    /// A frame, as published.
    Message(Vec<u8>),
    /// A partition's channel was subscribed (again).
    Subscribed(Partition),
    /// A partition's channel was unsubscribed (by the server, when its slot moved).
    Unsubscribed(Partition),
    /// A connection of the cluster client closed; it reconnects and subscribes again by
    /// itself (each partition then comes back as [`Event::Subscribed`]).
    Disconnected,
    /// Anything else (a confirmation, a pong).
    Other,
    /// The connection is gone.
    Closed,
}

impl Transport<'_> {
    async fn subscribe(
        &mut self,
        shared: &Shared,
        partitions: &[Partition],
    ) -> Result<(), BrokerError> {
        match self {
            Self::Single { sink, .. } => timed(sink.subscribe(channels(shared, partitions))).await,
            // One command per channel: each goes to the node serving its slot.
            Self::Cluster { connection, .. } => {
                try_join_all(channels(shared, partitions).into_iter().map(|channel| {
                    let mut connection = connection.clone();
                    async move { timed(connection.ssubscribe(channel)).await }
                }))
                .await
                .map(drop)
            }
        }
    }

    async fn unsubscribe(
        &mut self,
        shared: &Shared,
        partitions: &[Partition],
    ) -> Result<(), BrokerError> {
        match self {
            Self::Single { sink, .. } => {
                timed(sink.unsubscribe(channels(shared, partitions))).await
            }
            Self::Cluster { connection, .. } => {
                try_join_all(channels(shared, partitions).into_iter().map(|channel| {
                    let mut connection = connection.clone();
                    async move { timed(connection.sunsubscribe(channel)).await }
                }))
                .await
                .map(drop)
            }
        }
    }

    async fn next(&mut self) -> Event {
        match self {
            Self::Single { stream, .. } => match stream.next().await {
                Some(message) => Event::Message(message.get_payload_bytes().to_vec()),
                None => Event::Closed,
            },
            Self::Cluster { pushes, .. } => match pushes.recv().await {
                Some(push) => Event::from_push(push),
                None => Event::Closed,
            },
        }
    }

    /// Makes sure a silent connection is still alive. The cluster client watches its own
    /// connections (and the audit sends commands to every subscribed partition's node).
    async fn ping(&mut self) -> Result<(), BrokerError> {
        match self {
            // A subscribed connection answers PING with ["pong", ""], not "PONG".
            Self::Single { sink, .. } => timed(sink.ping::<Value>()).await.map(drop),
            Self::Cluster { .. } => Ok(()),
        }
    }
}

impl Event {
    fn from_push(push: PushInfo) -> Self {
        let channel_partition = |data: &[Value]| match data.first() {
            Some(Value::BulkString(channel)) => std::str::from_utf8(channel)
                .ok()
                .and_then(Partition::of_key),
            _ => None,
        };
        match push.kind {
            PushKind::SMessage | PushKind::Message => match push.data.into_iter().nth(1) {
                Some(Value::BulkString(payload)) => Self::Message(payload),
                _ => Self::Other,
            },
            PushKind::SSubscribe => {
                channel_partition(&push.data).map_or(Self::Other, Self::Subscribed)
            }
            PushKind::SUnsubscribe => {
                channel_partition(&push.data).map_or(Self::Other, Self::Unsubscribed)
            }
            PushKind::Disconnection => Self::Disconnected,
            _ => Self::Other,
        }
    }
}

/// The channels of `partitions`.
fn channels<'a>(shared: &'a Shared, partitions: &[Partition]) -> Vec<&'a str> {
    partitions
        .iter()
        .map(|partition| shared.keys[partition.index()].channel.as_str())
        .collect()
}
