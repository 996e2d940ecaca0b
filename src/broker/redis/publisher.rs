//! Chat messages on their way to Redis, a partition at a time.
//!
//! A chat costs Redis one `EVALSHA` of the publish script, and most of that is the call, not
//! the chat: reading the command, building the script's `KEYS` and `ARGV`, the counter's
//! `INCR`, the append to the partition's log (BENCHMARKS.md, "What a publish costs Redis").
//! So while a call of one partition is out, this node's further chats for that partition
//! wait for it and then go together, in one call: consecutive ids from one step of the
//! counter, one append of them all to the log, then each chat's own append and publish
//! (`lua/publish.lua`). A lone chat goes at once, from its own task, as if there were no
//! queue; under load a call carries more chats, Redis runs fewer instructions per chat, and
//! three nodes near their ceiling keep their latency a ramp step longer (BENCHMARKS.md, "The
//! Redis tier") — no timer, no waiting for company. Nagle's algorithm, per partition.
//!
//! Chats keep the order in which they reached the lane, so a partition's ids follow it, and a
//! socket's chats (one in flight at a time) keep theirs. A call that fails fails each of its
//! chats with the same error, and each sender is told (`unavailable`), as for a lone chat;
//! the chats that waited behind it fail with it at once (Redis is not answering) rather than
//! each wait out a call of their own, so a sender hears within one command's time limit.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::IntGauge;
use tokio::sync::oneshot;

use super::Shared;
use super::keys::{ID_STEP, PARTITIONS, Partition};
use crate::broker::BrokerError;

/// The most chats one call carries; more wait for the next. Bounds the script's run (each
/// chat is four commands) and the size of a call.
pub(super) const MAX_CHATS_PER_CALL: usize = 32;

/// One chat message, ready for the publish script.
#[derive(Debug)]
pub(super) struct Chat {
    /// The room's `chats` list.
    pub(super) chats_key: String,
    /// The frame body without its id (`"type":"chat",…}`).
    pub(super) body: String,
    /// The node renews the room's expiry with this chat (`expiry.rs`).
    pub(super) renew: bool,
}

/// A chat waiting for its partition's next call, and where its id goes.
struct Queued {
    chat: Chat,
    reply: oneshot::Sender<Result<u64, BrokerError>>,
}

/// One partition's chats on this node.
#[derive(Default)]
struct Lane {
    /// A call of the partition is out.
    busy: bool,
    /// Chats that came while it was, oldest first.
    queued: VecDeque<Queued>,
}

impl Lane {
    /// The next call's chats, oldest first; the lane is idle again when none wait.
    fn next_batch(&mut self) -> Option<Vec<Queued>> {
        if self.queued.is_empty() {
            self.busy = false;
            return None;
        }
        let count = self.queued.len().min(MAX_CHATS_PER_CALL);
        Some(self.queued.drain(..count).collect())
    }
}

/// Whether a chat goes now or waits for the call before it.
enum Turn {
    /// The lane was idle and is now busy with this chat's call, made by its caller.
    Now(Chat),
    /// A call is out: the chat's id comes on this channel after a later call.
    Queued(oneshot::Receiver<Result<u64, BrokerError>>),
}

/// Every partition's lane. Each lane's lock is held only to look at it, never across an
/// `.await`.
pub(super) struct Publisher {
    lanes: Box<[Mutex<Lane>]>,
}

impl Publisher {
    /// Idle lanes, one per partition.
    pub(super) fn new() -> Self {
        Self {
            lanes: (0..PARTITIONS).map(|_| Mutex::default()).collect(),
        }
    }

    fn lane(&self, partition: Partition) -> std::sync::MutexGuard<'_, Lane> {
        self.lanes[partition.index()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn enter(&self, partition: Partition, chat: Chat) -> Turn {
        let mut lane = self.lane(partition);
        if !lane.busy {
            lane.busy = true;
            return Turn::Now(chat);
        }
        let (reply, id) = oneshot::channel();
        lane.queued.push_back(Queued { chat, reply });
        Turn::Queued(id)
    }
}

/// Publishes `chat` in `partition` and returns its id: in a call of its own when no call of
/// the partition is out, else in the next one, with whatever else waited.
pub(super) async fn publish(
    shared: &Arc<Shared>,
    partition: Partition,
    chat: Chat,
) -> Result<u64, BrokerError> {
    match shared.publisher.enter(partition, chat) {
        Turn::Queued(id) => {
            let _counted = Counted::new(&shared.metrics.broker_publish_queued);
            id.await.unwrap_or(Err(BrokerError::Stopped))
        }
        Turn::Now(chat) => {
            // Hands the lane on when the call is through — or when the sender's socket went
            // and this future with it, which must not leave the partition's chats stranded.
            let mut hand_on = HandOn {
                shared,
                partition,
                failure: None,
            };
            let outcome = call(shared, partition, std::slice::from_ref(&chat).iter()).await;
            hand_on.failure = outcome.as_ref().err().cloned();
            outcome
        }
    }
}

/// One waiting chat in `confab_broker_publish_queued`, for as long as its sender waits —
/// also when the sender's socket goes first.
struct Counted<'a>(&'a IntGauge);

impl<'a> Counted<'a> {
    fn new(gauge: &'a IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Hands a lane on when its call is through: the chats that waited go in a task of their
/// own, call after call until none are left, and the lane is idle again.
struct HandOn<'a> {
    shared: &'a Arc<Shared>,
    partition: Partition,
    /// The call failed: the waiting chats fail with it.
    failure: Option<BrokerError>,
}

impl Drop for HandOn<'_> {
    fn drop(&mut self) {
        if let Some(error) = &self.failure {
            fail_waiting(self.shared, self.partition, error);
            return;
        }
        let Some(batch) = self.shared.publisher.lane(self.partition).next_batch() else {
            return;
        };
        let shared = Arc::clone(self.shared);
        let partition = self.partition;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(drain(shared, partition, batch))),
            // No runtime (the node is stopping): the waiting chats fail with `Stopped` as
            // their replies are dropped.
            Err(_) => drop(batch),
        }
    }
}

/// Makes the calls of a lane's waiting chats until none are left.
async fn drain(shared: Arc<Shared>, partition: Partition, mut batch: Vec<Queued>) {
    loop {
        let outcome = call(&shared, partition, batch.iter().map(|queued| &queued.chat)).await;
        for (n, queued) in batch.drain(..).enumerate() {
            // A sender that went away no longer waits for its id.
            let _ = queued
                .reply
                .send(outcome.clone().map(|first| first + n as u64 * ID_STEP));
        }
        if let Err(error) = outcome {
            fail_waiting(&shared, partition, &error);
            return;
        }
        match shared.publisher.lane(partition).next_batch() {
            Some(next) => batch = next,
            None => return,
        }
    }
}

/// Fails every chat waiting in `partition`'s lane with `error`, and leaves the lane idle.
fn fail_waiting(shared: &Shared, partition: Partition, error: &BrokerError) {
    while let Some(batch) = shared.publisher.lane(partition).next_batch() {
        for queued in batch {
            let _ = queued.reply.send(Err(error.clone()));
        }
    }
}

/// One call of the publish script with `chats`, all of `partition`. Returns the first one's
/// id; the others' follow it a counter step apart.
async fn call<'c>(
    shared: &Shared,
    partition: Partition,
    chats: impl ExactSizeIterator<Item = &'c Chat>,
) -> Result<u64, BrokerError> {
    let count = chats.len() as u64;
    let mut invocation = shared.common(partition).invoke(&shared.scripts()?.publish);
    let mut renewals = RenewMarks::default();
    for (n, chat) in chats.enumerate() {
        invocation.key(&chat.chats_key).arg(&chat.body);
        renewals.note(n, chat.renew);
    }
    if !renewals.0.is_empty() {
        invocation.arg(renewals.0);
    }
    shared.metrics.broker_publish_calls.inc();
    let first: u64 = shared.run(invocation).await?;
    shared.partitions.saw(first + (count - 1) * ID_STEP);
    Ok(first)
}

/// Which chats of a call renew their room's expiry, as the publish script reads them: a
/// character per chat up to the last that does, `1` for those. Empty — and not passed — when
/// none does, as in nearly every call: each argument costs Redis a slot of the script's
/// `ARGV` table.
#[derive(Debug, Default)]
struct RenewMarks(String);

impl RenewMarks {
    /// Chat `n` of the call (from 0, in order) renews its room's expiry, or not.
    fn note(&mut self, n: usize, renew: bool) {
        if renew {
            let skipped = n - self.0.len();
            self.0.extend(std::iter::repeat_n('0', skipped));
            self.0.push('1');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(text: &str) -> Chat {
        Chat {
            chats_key: "chats".to_owned(),
            body: text.to_owned(),
            renew: false,
        }
    }

    fn texts(batch: &[Queued]) -> Vec<&str> {
        batch
            .iter()
            .map(|queued| queued.chat.body.as_str())
            .collect()
    }

    #[test]
    fn a_chat_goes_at_once_when_its_lane_is_idle_and_waits_while_a_call_is_out() {
        let publisher = Publisher::new();
        let lobby = Partition::of(&crate::protocol::RoomName::lobby());
        assert!(matches!(publisher.enter(lobby, chat("a")), Turn::Now(_)));
        assert!(matches!(publisher.enter(lobby, chat("b")), Turn::Queued(_)));
        assert!(matches!(publisher.enter(lobby, chat("c")), Turn::Queued(_)));
        let other = Partition::all().find(|p| *p != lobby).unwrap();
        assert!(
            matches!(publisher.enter(other, chat("x")), Turn::Now(_)),
            "lanes are per partition"
        );
        let batch = publisher.lane(lobby).next_batch().unwrap();
        assert_eq!(texts(&batch), ["b", "c"], "in the order they came");
        assert!(publisher.lane(lobby).busy, "busy with their call");
        assert!(publisher.lane(lobby).next_batch().is_none());
        assert!(!publisher.lane(lobby).busy, "idle once none wait");
        assert!(matches!(publisher.enter(lobby, chat("d")), Turn::Now(_)));
    }

    #[test]
    fn renewal_marks_name_the_chats_that_renew_and_are_empty_when_none_does() {
        let marks = |flags: &[bool]| {
            let mut marks = RenewMarks::default();
            for (n, renew) in flags.iter().enumerate() {
                marks.note(n, *renew);
            }
            marks.0
        };
        assert_eq!(marks(&[false]), "");
        assert_eq!(marks(&[true]), "1");
        assert_eq!(marks(&[false, false, false]), "");
        assert_eq!(marks(&[false, true, false, true, false]), "0101");
        assert_eq!(marks(&[true, true, false]), "11");
    }

    #[test]
    fn a_waiting_chat_leaves_the_gauge_when_its_sender_stops_waiting() {
        let gauge = IntGauge::new("queued", "chats waiting").unwrap();
        let waiting = Counted::new(&gauge);
        let also = Counted::new(&gauge);
        assert_eq!(gauge.get(), 2);
        drop(also);
        drop(waiting);
        assert_eq!(
            gauge.get(),
            0,
            "a dropped wait (a socket that went) counts off too"
        );
    }

    #[test]
    fn a_call_carries_at_most_its_limit_and_the_rest_wait_for_the_next() {
        let publisher = Publisher::new();
        let lobby = Partition::of(&crate::protocol::RoomName::lobby());
        let _ = publisher.enter(lobby, chat("first"));
        let receivers: Vec<_> = (0..MAX_CHATS_PER_CALL + 3)
            .map(|n| publisher.enter(lobby, chat(&n.to_string())))
            .collect();
        assert_eq!(receivers.len(), MAX_CHATS_PER_CALL + 3);
        let full = publisher.lane(lobby).next_batch().unwrap();
        assert_eq!(full.len(), MAX_CHATS_PER_CALL);
        assert_eq!(full[0].chat.body, "0");
        let rest = publisher.lane(lobby).next_batch().unwrap();
        assert_eq!(texts(&rest), ["32", "33", "34"]);
    }
}
