//! Which partitions this node listens to, and the highest id it has seen in each.
//!
//! A node subscribes to a partition's channel only while it has a socket in one of its rooms:
//! a joining socket [`acquire`](PartitionTable::acquire)s its partition and waits until the
//! subscriber has subscribed and taken the partition's starting point
//! ([`wait_ready`](PartitionTable::wait_ready)), so no frame after the join's snapshot can be
//! missed; a closing one [`release`](PartitionTable::release)s it. The subscriber task
//! reconciles the subscriptions with the counts here, and lets a partition go only
//! [`LINGER`] after its last socket left, so churn (a page reload) does not resubscribe.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::keys::{PARTITIONS, Partition};

/// How long a node stays subscribed to a partition after its last socket there closed.
pub const LINGER: Duration = Duration::from_secs(10);

/// This node's partitions: socket counts, subscription state and id floors.
pub(super) struct PartitionTable {
    slots: Mutex<Vec<Slot>>,
    /// The highest id this node has seen in each partition: the floor of new ids there.
    floors: Vec<AtomicU64>,
    /// Wakes the subscriber task: a partition is wanted that is not subscribed.
    pub(super) changed: Notify,
    /// Wakes the joins waiting for their partition.
    ready: Notify,
}

#[derive(Debug, Default, Clone, Copy)]
struct Slot {
    /// Sockets of this node in the partition's rooms (joining or joined).
    sockets: u32,
    /// Subscribed, and the starting point taken: joins may proceed.
    ready: bool,
    /// When `sockets` last fell to 0.
    idle_since: Option<Instant>,
}

/// What the subscriber should change.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Plan {
    /// Wanted and not ready: subscribe (or finish subscribing).
    pub(super) subscribe: Vec<Partition>,
    /// Ready, with no socket for [`LINGER`]: unsubscribe.
    pub(super) unsubscribe: Vec<Partition>,
}

impl PartitionTable {
    pub(super) fn new() -> Self {
        Self {
            slots: Mutex::new(vec![Slot::default(); usize::from(PARTITIONS)]),
            floors: (0..PARTITIONS).map(|_| AtomicU64::new(0)).collect(),
            changed: Notify::new(),
            ready: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Slot>> {
        // Held for a few field updates only; nothing under it panics.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One more socket in `partition`; asks the subscriber to subscribe if it is not.
    pub(super) fn acquire(&self, partition: Partition) {
        let mut slots = self.lock();
        let slot = &mut slots[partition.index()];
        slot.sockets += 1;
        slot.idle_since = None;
        let ready = slot.ready;
        drop(slots);
        if !ready {
            self.changed.notify_one();
        }
    }

    /// One socket fewer in `partition`.
    pub(super) fn release(&self, partition: Partition) {
        let mut slots = self.lock();
        let slot = &mut slots[partition.index()];
        slot.sockets = slot.sockets.saturating_sub(1);
        if slot.sockets == 0 {
            slot.idle_since = Some(Instant::now());
        }
    }

    /// Waits until `partition` is subscribed and its starting point taken, at most `timeout`.
    /// Returns whether it is.
    pub(super) async fn wait_ready(&self, partition: Partition, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_ready(partition) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.is_ready(partition);
            }
        }
    }

    pub(super) fn is_ready(&self, partition: Partition) -> bool {
        self.lock()[partition.index()].ready
    }

    /// The subscriber subscribed to `partitions` and took their starting points.
    pub(super) fn mark_ready(&self, partitions: &[Partition]) {
        let mut slots = self.lock();
        for partition in partitions {
            slots[partition.index()].ready = true;
        }
        drop(slots);
        self.ready.notify_waiters();
    }

    /// The subscriber unsubscribed from `partition` (or lost every subscription, for all).
    pub(super) fn mark_unsubscribed(&self, partitions: impl IntoIterator<Item = Partition>) {
        let mut slots = self.lock();
        for partition in partitions {
            slots[partition.index()].ready = false;
        }
    }

    /// What the subscriber should change now. A partition to unsubscribe is no longer ready
    /// from this moment: a socket that joins it afterwards waits for a new subscription.
    pub(super) fn plan(&self, now: Instant) -> Plan {
        let mut slots = self.lock();
        let mut plan = Plan::default();
        for (partition, slot) in Partition::all().zip(slots.iter_mut()) {
            if slot.sockets > 0 && !slot.ready {
                plan.subscribe.push(partition);
            } else if slot.ready
                && slot.sockets == 0
                && slot
                    .idle_since
                    .is_none_or(|since| now.duration_since(since) >= LINGER)
            {
                slot.ready = false;
                plan.unsubscribe.push(partition);
            }
        }
        plan
    }

    /// The partitions subscribed now.
    pub(super) fn subscribed(&self) -> Vec<Partition> {
        let slots = self.lock();
        Partition::all()
            .zip(slots.iter())
            .filter(|(_, slot)| slot.ready)
            .map(|(partition, _)| partition)
            .collect()
    }

    /// Records that `id` exists in its partition, raising that partition's floor.
    pub(super) fn saw(&self, id: u64) {
        self.floors[Partition::of_id(id).index()].fetch_max(id, Ordering::AcqRel);
    }

    /// Raises every partition's floor to `id` (ids given out by the one-channel layout).
    pub(super) fn saw_everywhere(&self, id: u64) {
        for floor in &self.floors {
            floor.fetch_max(id, Ordering::AcqRel);
        }
    }

    /// The highest id seen in `partition`.
    pub(super) fn floor(&self, partition: Partition) -> u64 {
        self.floors[partition.index()].load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::redis::keys::ID_STEP;

    fn partition(index: u16) -> Partition {
        Partition::new(index).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_partition_is_subscribed_while_wanted_and_let_go_after_the_linger() {
        let table = PartitionTable::new();
        let p = partition(7);
        table.acquire(p);
        assert_eq!(table.plan(Instant::now()).subscribe, [p]);
        table.mark_ready(&[p]);
        assert_eq!(table.plan(Instant::now()), Plan::default());
        table.release(p);
        assert!(table.plan(Instant::now()).unsubscribe.is_empty(), "lingers");
        table.acquire(p);
        table.release(p);
        tokio::time::advance(LINGER / 2).await;
        assert_eq!(
            table.plan(Instant::now()),
            Plan::default(),
            "a socket back within the linger starts it again"
        );
        tokio::time::advance(LINGER / 2).await;
        assert_eq!(table.plan(Instant::now()).unsubscribe, [p]);
        assert!(!table.is_ready(p), "not ready from the moment it is let go");
        table.acquire(p);
        assert_eq!(
            table.plan(Instant::now()).subscribe,
            [p],
            "a socket after that subscribes again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_join_waits_for_its_partition_and_no_longer() {
        let table = std::sync::Arc::new(PartitionTable::new());
        let p = partition(3);
        table.acquire(p);
        assert!(!table.wait_ready(p, Duration::from_secs(1)).await);
        let waiter = tokio::spawn({
            let table = table.clone();
            async move { table.wait_ready(p, Duration::from_secs(5)).await }
        });
        tokio::task::yield_now().await;
        table.mark_ready(&[p]);
        assert!(waiter.await.unwrap());
    }

    #[test]
    fn floors_are_per_partition() {
        let table = PartitionTable::new();
        let id = 1_000 * ID_STEP + 5;
        table.saw(id);
        assert_eq!(table.floor(partition(5)), id);
        assert_eq!(table.floor(partition(6)), 0);
        table.saw_everywhere(7);
        assert_eq!(table.floor(partition(6)), 7);
        assert_eq!(table.floor(partition(5)), id);
    }
}
