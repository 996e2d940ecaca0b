//! Who is where: every client's node, generator process, local address, room and sender
//! index, computed from its global index alone so that every process agrees without talking.
//!
//! Client `g` of `C`:
//! - node `g % nodes` (consecutive clients alternate nodes, so every room spans every node), or,
//!   with a [`Placement`] that keeps rooms together, the node of its room: by a hash of the room
//!   name (as nginx's `hash $arg_room consistent` would) or by confab's partition of the room
//!   (so each node hears only its share of the partitions);
//! - process `(g / nodes) % processes` (each process gets an equal share of every node);
//! - local address `(g / (nodes × processes)) % sources`;
//! - room `g / room_size`;
//! - sender number `s` when `g = ⌊s × C / S⌋` for some `s < S` (senders spread evenly);
//! - typist number `t` when `g = ⌊t × C / T⌋` for some `t < T` (`--typing-fraction`: typists
//!   spread evenly the same way, so 20 % of rooms of 5 is the first client of every room).
//!
//! Sends follow one global schedule: at total rate `R`, message `k` of a step goes at
//! `start + k / R`, from sender `k mod S`. So sender `s` sends its `j`-th message at
//! `start + (j × S + s) / R`: the total rate is exact and evenly spaced however many senders
//! and processes share it.

use serde::{Deserialize, Serialize};

/// Which node a client connects to.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, clap::ValueEnum)]
pub enum Placement {
    /// Consecutive clients alternate nodes: every room spans every node.
    #[default]
    Alternate,
    /// Every client of a room on one node, chosen by a hash of the room's name.
    Room,
    /// Every client of a room on one node, chosen by confab's partition of the room (its Redis
    /// Cluster slot / 128, of 128): each node holds the rooms of a share of the partitions.
    Partition,
}

/// confab's partition of a room name: CRC16/XMODEM of the name, as a Redis Cluster slot,
/// divided into 128 ranges (`src/broker/redis/keys.rs`).
pub fn confab_partition(room: &str) -> u32 {
    u32::from(crc16::State::<crc16::XMODEM>::calculate(room.as_bytes()) % 16_384 / 128)
}

/// The shape of a run: how many clients, how they group into rooms, and who sends.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Layout {
    /// Clients (sockets, one user each).
    pub clients: u32,
    /// Clients per room (the last room may be smaller).
    pub room_size: u32,
    /// Senders, spread evenly over the clients.
    pub senders: u32,
    /// Server nodes.
    pub nodes: u32,
    /// Generator processes.
    pub processes: u32,
    /// Local addresses (1 when none is given: the kernel picks).
    pub sources: u32,
    /// Which node each client connects to.
    pub placement: Placement,
    /// The run's id, part of every room name.
    pub run: u32,
    /// Typists (`--typing-fraction`), spread evenly over the clients: each opens its socket with
    /// `v=2`, sends its chat as a JSON command and a `typing` command every second of a step.
    /// Left out of the JSON when 0, so a run without typing reports as before.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub typists: u32,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's `skip_serializing_if` passes a reference
fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Number `i` when `g = ⌊i × C / N⌋` for some `i < N`: `n` of `clients` picked evenly.
fn spread_index(g: u32, clients: u32, n: u32) -> Option<u32> {
    if n == 0 || g >= clients {
        return None;
    }
    let (c, n) = (u64::from(clients), u64::from(n));
    // The smallest i with ⌊i × C / N⌋ ≥ g.
    let i = (u64::from(g) * n).div_ceil(c);
    (i < n && i * c / n == u64::from(g)).then_some(i as u32)
}

/// How many of `clients` a `--typing-fraction` of `fraction` makes typists (rounded, at most
/// all of them).
pub fn typists_of(clients: u32, fraction: f64) -> u32 {
    (f64::from(clients) * fraction.clamp(0.0, 1.0)).round() as u32
}

impl Layout {
    /// Client `g`'s node.
    pub fn node_of(&self, g: u32) -> u32 {
        match self.placement {
            Placement::Alternate => g % self.nodes,
            Placement::Room => {
                let name = crate::worker::room_name(self.run, self.room_of(g));
                // FNV-1a: any stable hash spreads rooms evenly.
                let hash = name.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
                    (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
                });
                hash % self.nodes
            }
            Placement::Partition => {
                confab_partition(&crate::worker::room_name(self.run, self.room_of(g))) % self.nodes
            }
        }
    }

    /// Client `g`'s generator process.
    pub fn process_of(&self, g: u32) -> u32 {
        (g / self.nodes) % self.processes
    }

    /// Client `g`'s local address.
    pub fn source_of(&self, g: u32) -> u32 {
        (g / (self.nodes * self.processes)) % self.sources
    }

    /// Client `g`'s room.
    pub fn room_of(&self, g: u32) -> u32 {
        g / self.room_size
    }

    /// How many rooms there are.
    pub fn rooms(&self) -> u32 {
        self.clients.div_ceil(self.room_size)
    }

    /// Client `g`'s sender number, if it sends.
    pub fn sender_of(&self, g: u32) -> Option<u32> {
        spread_index(g, self.clients, self.senders)
    }

    /// The client that is sender `s` (the inverse of [`Self::sender_of`]).
    pub fn client_of_sender(&self, s: u32) -> u32 {
        (u64::from(s) * u64::from(self.clients) / u64::from(self.senders.max(1))) as u32
    }

    /// Client `g`'s typist number, if it types (`--typing-fraction`).
    pub fn typist_of(&self, g: u32) -> Option<u32> {
        spread_index(g, self.clients, self.typists)
    }

    /// The clients process `p` runs.
    pub fn clients_of(&self, p: u32) -> impl Iterator<Item = u32> + '_ {
        (0..self.clients).filter(move |&g| self.process_of(g) == p)
    }
}

/// When sender `sender` of `senders` sends its `j`-th message of a step at total rate
/// `rate` (messages a second) starting at `start_ns`: Unix nanoseconds.
pub fn send_time_ns(start_ns: u64, rate: f64, senders: u32, sender: u32, j: u64) -> u64 {
    let k = (j as f64).mul_add(f64::from(senders), f64::from(sender));
    start_ns + (k * 1e9 / rate) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(clients: u32, senders: u32) -> Layout {
        Layout {
            clients,
            room_size: 5,
            senders,
            nodes: 3,
            processes: 2,
            sources: 2,
            placement: Placement::Alternate,
            run: 7,
            typists: 0,
        }
    }

    #[test]
    fn senders_are_spread_and_numbered_once_each() {
        for (clients, senders) in [(10, 10), (10, 3), (1000, 7), (7, 0), (1, 1), (2000, 1999)] {
            let l = layout(clients, senders);
            let numbers: Vec<u32> = (0..clients).filter_map(|g| l.sender_of(g)).collect();
            assert_eq!(
                numbers,
                (0..senders).collect::<Vec<_>>(),
                "{clients}/{senders}"
            );
        }
        let l = layout(100, 4);
        let who: Vec<u32> = (0..100).filter(|&g| l.sender_of(g).is_some()).collect();
        assert_eq!(who, [0, 25, 50, 75]);
    }

    #[test]
    fn typists_are_one_in_five_and_the_first_of_each_room() {
        assert_eq!(typists_of(10_000, 0.2), 2_000);
        assert_eq!(typists_of(10_000, 0.0), 0);
        assert_eq!(typists_of(30, 1.5), 30);
        let l = Layout {
            typists: typists_of(10_000, 0.2),
            ..layout(10_000, 10_000)
        };
        let who: Vec<u32> = (0..10_000).filter(|&g| l.typist_of(g).is_some()).collect();
        assert_eq!(who.len(), 2_000);
        assert!(who.iter().enumerate().all(|(t, &g)| g == t as u32 * 5));
        assert!((0..l.rooms()).all(|room| l.typist_of(room * 5).is_some()));
        assert!((0..100).all(|g| layout(100, 100).typist_of(g).is_none()));
    }

    #[test]
    fn a_sender_number_leads_back_to_its_client() {
        for (clients, senders) in [(10, 10), (10, 3), (1000, 7), (1, 1), (2000, 1999)] {
            let l = layout(clients, senders);
            for g in 0..clients {
                if let Some(s) = l.sender_of(g) {
                    assert_eq!(l.client_of_sender(s), g, "{clients}/{senders}");
                }
            }
        }
    }

    #[test]
    fn a_layout_without_typists_serializes_as_before() {
        let json = serde_json::to_value(layout(10, 10)).unwrap();
        assert!(json.get("typists").is_none(), "{json}");
        let back: Layout = serde_json::from_value(json).unwrap();
        assert_eq!(back.typists, 0);
        let json = serde_json::to_value(Layout {
            typists: 2,
            ..layout(10, 10)
        })
        .unwrap();
        assert_eq!(json["typists"], 2);
    }

    #[test]
    fn processes_share_every_node_and_cover_every_client() {
        let l = layout(60, 60);
        let mut all: Vec<u32> = (0..2).flat_map(|p| l.clients_of(p)).collect();
        all.sort_unstable();
        assert_eq!(all, (0..60).collect::<Vec<_>>());
        for p in 0..2 {
            for node in 0..3 {
                let n = l.clients_of(p).filter(|&g| l.node_of(g) == node).count();
                assert_eq!(n, 10);
            }
        }
        assert_eq!(l.rooms(), 12);
        assert_eq!(l.room_of(59), 11);
        assert!((0..60).all(|g| l.source_of(g) < 2));
    }

    #[test]
    fn rooms_kept_together_have_every_client_on_one_node() {
        for placement in [Placement::Room, Placement::Partition] {
            let l = Layout {
                placement,
                ..layout(3000, 3000)
            };
            let mut per_node = [0; 3];
            for room in 0..l.rooms() {
                let nodes: Vec<u32> = (room * 5..room * 5 + 5).map(|g| l.node_of(g)).collect();
                assert!(
                    nodes.windows(2).all(|pair| pair[0] == pair[1]),
                    "{placement:?}"
                );
                per_node[nodes[0] as usize] += 1;
            }
            assert!(
                per_node.iter().all(|&n| n > 150),
                "{placement:?}: {per_node:?}"
            );
        }
        // The partition of a room is the one confab computes (keys.rs tests the slots).
        assert_eq!(confab_partition("123456789"), 12_739 / 128);
    }

    #[test]
    fn the_schedule_is_evenly_spaced_across_senders() {
        let mut times: Vec<u64> = (0..4)
            .flat_map(|s| (0..5).map(move |j| send_time_ns(1_000, 100.0, 4, s, j)))
            .collect();
        times.sort_unstable();
        for (k, t) in times.iter().enumerate() {
            assert_eq!(*t, 1_000 + k as u64 * 10_000_000);
        }
    }
}
