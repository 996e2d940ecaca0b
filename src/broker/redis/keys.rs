//! Every Redis key and channel confab uses, each spelled once, and the partitions of rooms.
//!
//! Rooms are spread over [`PARTITIONS`] partitions by a hash of their name. Every key of a
//! room, and the channel its frames travel on, carries its partition's hash tag
//! (`confab:{p3.41}:…`), so on a Redis Cluster a partition lives in one slot: one script on
//! that slot gives a frame its id, keeps it and publishes it. The tags are chosen so that
//! partition `p` falls in slots `p × 128 … p × 128 + 127`: whatever contiguous slot ranges a
//! cluster's primaries hold (as `redis-cli --cluster create` hands them out), each holds its
//! share of the partitions, to within one.
//!
//! Keys that are not a room's (the node registry and liveness keys) share the tag `{nodes}`:
//! they are written once per heartbeat, never per message.
//!
//! `docs/redis.md` lists every key with its type, writers, readers and lifetime.

use std::fmt;
use std::sync::LazyLock;

use crate::protocol::RoomName;

/// How many partitions rooms are spread over. Part of the id layout (ids are
/// `counter × PARTITIONS + partition`): changing it changes every key and id.
pub const PARTITIONS: u16 = 128;

/// How far apart the ids of consecutive counter values of one partition are.
pub const ID_STEP: u64 = PARTITIONS as u64;

/// Redis Cluster's number of hash slots.
const SLOTS: u16 = 16_384;

/// Slots per partition: partition `p` has a tag hashing into `p × SPAN .. (p + 1) × SPAN`.
const SPAN: u16 = SLOTS / PARTITIONS;

/// The prefix of every key and channel.
pub const KEY_PREFIX: &str = "confab:";

/// The id counter of the one-channel layout that came before partitions. Never written any
/// more; read once at start so that ids keep growing past the ones it gave out.
pub const LEGACY_SEQ_KEY: &str = "confab:seq";

/// The Redis Cluster hash slot of `key` (CRC16/XMODEM of its hash tag, or of the whole key).
pub fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &bytes[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .map(|close| &rest[..close])
        })
        .filter(|tag| !tag.is_empty())
        .unwrap_or(bytes);
    crc16::State::<crc16::XMODEM>::calculate(tagged) % SLOTS
}

/// One partition of rooms: a number below [`PARTITIONS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Partition(u16);

impl Partition {
    /// The partition `room` belongs to: its slot's range. Stable across versions and nodes.
    pub fn of(room: &RoomName) -> Self {
        Self(slot(room.as_str()) / SPAN)
    }

    /// The partition an id was given out in (ids fold their partition in).
    pub fn of_id(id: u64) -> Self {
        Self((id % ID_STEP) as u16)
    }

    /// Partition number `index`, if below [`PARTITIONS`].
    pub fn new(index: u16) -> Option<Self> {
        (index < PARTITIONS).then_some(Self(index))
    }

    /// Every partition, in order.
    pub fn all() -> impl Iterator<Item = Self> {
        (0..PARTITIONS).map(Self)
    }

    /// The partition whose key or channel `key` is (`confab:{p3.41}:…`), if any.
    pub fn of_key(key: &str) -> Option<Self> {
        let tag = key.strip_prefix(KEY_PREFIX)?.strip_prefix('{')?;
        let tag = &tag[..tag.find('}')?];
        let index: u16 = tag.strip_prefix('p')?.split('.').next()?.parse().ok()?;
        Self::new(index).filter(|partition| partition.tag() == tag)
    }

    /// The id given out by the partition's counter value `counter`.
    pub fn id(self, counter: u64) -> u64 {
        counter * ID_STEP + u64::from(self.0)
    }

    /// Its bit in a set of partitions kept as one `u128`.
    pub fn bit(self) -> u128 {
        1 << self.0
    }

    /// Its number, `0..PARTITIONS`.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    /// Its hash tag, without braces (`p3.41`).
    pub fn tag(self) -> &'static str {
        &TAGS[self.index()]
    }

    /// `confab:{tag}:`, the start of every key of the partition.
    pub fn prefix(self) -> String {
        format!("{KEY_PREFIX}{{{}}}:", self.tag())
    }

    /// The id counter: the newest counter value given out (`INCR`).
    pub fn seq_key(self) -> String {
        format!("{}seq", self.prefix())
    }

    /// The first counter value of the current sequence (values below it were never given out).
    pub fn seq_start_key(self) -> String {
        format!("{}seq_start", self.prefix())
    }

    /// The list of the partition's newest frames, oldest first, for gap repair.
    pub fn log_key(self) -> String {
        format!("{}log", self.prefix())
    }

    /// The pub/sub channel of the partition's frames.
    pub fn channel(self) -> String {
        format!("{}events", self.prefix())
    }

    /// Departures whose leave grace is running (sorted set by deadline).
    pub fn leaving_key(self) -> String {
        format!("{}leaving", self.prefix())
    }

    /// `node`'s open sockets in this partition's rooms, by `<room> <uid>`.
    pub fn node_sockets_key(self, node: &str) -> String {
        format!("{}node:{node}:sockets", self.prefix())
    }

    /// The room's retained chat frames (list, in id order), each in its latest state: its
    /// scrollback, and with [`Partition::events_key`] its history.
    pub fn chats_key(self, room: &RoomName) -> String {
        self.room_key(room, "chats")
    }

    /// The room's newest frames other than chats (list, in id order): `join`, `left`, `edit`,
    /// `delete`. A joining socket's history is the newest of these and the chats together.
    pub fn events_key(self, room: &RoomName) -> String {
        self.room_key(room, "events")
    }

    /// The room's online users' JSON, by user id (hash).
    pub fn users_key(self, room: &RoomName) -> String {
        self.room_key(room, "users")
    }

    /// `room`'s key named `part` (`presence.lua`'s `room_key`).
    fn room_key(self, room: &RoomName, part: &str) -> String {
        format!("{}room:{room}:{part}", self.prefix())
    }

    /// Set for [`crate::broker::TYPING_INTERVAL`] when `user_id`'s `typing` in `room` went
    /// out: the next one waits for it to expire.
    pub fn typing_key(self, room: &RoomName, user_id: &str) -> String {
        format!("{}room:{room}:typing:{user_id}", self.prefix())
    }

    /// Set while `user_id` is banned from `room` (its lifetime is the ban's).
    pub fn ban_key(self, room: &RoomName, user_id: &str) -> String {
        format!("{}room:{room}:ban:{user_id}", self.prefix())
    }

    /// Every key of `room` that presence scripts touch (`presence.lua`'s `room_key`): its
    /// socket counts, online set, users, farewells, events and chats (read for the history).
    pub fn room_keys(self, room: &RoomName) -> [String; 6] {
        ["sockets", "online", "users", "farewell", "events", "chats"]
            .map(|part| self.room_key(room, part))
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Each partition's hash tag: `p<partition>.<n>`, with the first `n` whose slot lies in the
/// partition's range. Found once per process (about 16,000 CRC16s in all).
static TAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    Partition::all()
        .map(|partition| {
            let range = partition.0 * SPAN..(partition.0 + 1) * SPAN;
            (0u32..)
                .map(|n| format!("p{partition}.{n}"))
                .find(|tag| range.contains(&slot(tag)))
                .expect("some tag hashes into any range of 128 slots")
        })
        .collect()
});

/// The node registry and liveness keys, all under the tag `{nodes}`.
pub mod registry {
    /// The start of every registry key.
    pub const PREFIX: &str = "confab:{nodes}:";
    /// The set of node ids holding presence in Redis.
    pub const NODES: &str = "confab:{nodes}:registry";
    /// Nodes declared dead whose sockets are still being released, partition by partition.
    pub const REAPING: &str = "confab:{nodes}:reaping";
    /// A random token naming this Redis data set: a new one means Redis lost its data.
    pub const EPOCH: &str = "confab:{nodes}:epoch";

    /// `node`'s liveness key: its process token, expiring unless renewed.
    pub fn alive(node: &str) -> String {
        format!("confab:{{nodes}}:alive:{node}")
    }

    /// Set when other nodes declared `node` dead, so it learns it on return.
    pub fn reaped(node: &str) -> String {
        format!("confab:{{nodes}}:reaped:{node}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis_cluster() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(slot("123456789"), 12_739);
        assert_eq!(slot("foo"), 12_182);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(
            slot("foo{}{bar}"),
            slot("foo{}{bar}"),
            "an empty tag hashes the key"
        );
        assert_eq!(slot("{nodes}"), slot(registry::NODES));
    }

    #[test]
    fn every_partition_has_a_tag_in_its_own_slot_range() {
        for partition in Partition::all() {
            let slot = slot(&partition.seq_key());
            assert_eq!(
                slot / SPAN,
                partition.0,
                "partition {partition}'s keys hash to slot {slot}"
            );
            assert_eq!(slot, super::slot(&partition.channel()));
            assert_eq!(slot, super::slot(&partition.chats_key(&RoomName::lobby())));
        }
    }

    #[test]
    fn three_primaries_hold_a_third_of_the_partitions_each() {
        // `redis-cli --cluster create` with three primaries: 0-5460, 5461-10922, 10923-16383.
        let mut counts = [0; 3];
        for partition in Partition::all() {
            let slot = slot(&partition.seq_key());
            counts[usize::from(slot / 5461).min(2)] += 1;
        }
        assert!(counts.iter().all(|&n| (42..=43).contains(&n)), "{counts:?}");
    }

    #[test]
    fn room_keys_are_spelled_as_the_presence_scripts_build_them() {
        let room = RoomName::parse("general").unwrap();
        let partition = Partition::of(&room);
        let keys = partition.room_keys(&room);
        assert_eq!(keys[2], partition.users_key(&room));
        assert_eq!(keys[4], partition.events_key(&room));
        assert_eq!(keys[5], partition.chats_key(&room));
        // presence.lua: PREFIX .. 'room:' .. room .. ':' .. part
        assert_eq!(
            keys[0],
            format!("{}room:general:sockets", partition.prefix())
        );
        assert!(
            include_str!("lua/presence.lua").contains("PREFIX .. 'room:' .. room .. ':' .. part")
        );
    }

    #[test]
    fn keys_name_their_partition() {
        for partition in Partition::all() {
            assert_eq!(Partition::of_key(&partition.channel()), Some(partition));
        }
        assert_eq!(
            Partition::of_key("confab:{p3.0}:events"),
            None,
            "a tag of another layout"
        );
        assert_eq!(Partition::of_key(registry::NODES), None);
        assert_eq!(Partition::of_key("confab:events"), None);
    }

    #[test]
    fn ids_name_their_partition() {
        let room = RoomName::parse("general").unwrap();
        let partition = Partition::of(&room);
        let id = partition.id(12_345);
        assert_eq!(id, 12_345 * ID_STEP + partition.index() as u64);
        assert_eq!(Partition::of_id(id), partition);
    }
}
