//! A Redis Cluster under chat traffic: a primary killed with SIGKILL and failed over to its
//! replica, and slots moved with `redis-cli --cluster reshard`. Whatever happens to the
//! cluster, no socket ever sees an id go down or a frame twice, every message that reached
//! anyone reaches every socket of its room, and a send either arrives or is answered
//! `unavailable` — never vanishes.

use std::time::Duration;

use confab::broker::redis::keys::{Partition, slot};
use confab::protocol::RoomName;
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::helpers::{TestApp, TestReceiver, TestSocket};
use crate::redis_cluster::RedisCluster;
use crate::redis_server::spawn_node;

/// A room whose partition's slot is served by `primary` (one of `primaries`, by slot range).
async fn room_on(cluster: &RedisCluster, primary: u16, taken: &[String]) -> String {
    for n in 0.. {
        let room = format!("failover-{n}");
        if taken.contains(&room) {
            continue;
        }
        let key = Partition::of(&RoomName::parse(&room).unwrap()).seq_key();
        if cluster.primary_for_slot(slot(&key)).await == primary {
            return room;
        }
    }
    unreachable!()
}

/// What one room's sender saw: the chat frames echoed to it, and how many sends were
/// answered `unavailable`.
struct Sent {
    echoed: Vec<Value>,
    unavailable: usize,
    sends: usize,
}

/// Sends a numbered message every 125 ms (under the rate limit) until `until`, reading its
/// own socket meanwhile; then waits for the echo of a last message that must get through.
fn start_sender(socket: TestSocket, room: String, until: Instant) -> JoinHandle<Sent> {
    let (mut tx, mut rx) = socket.split();
    let reading = tokio::spawn(async move {
        let mut echoed = Vec::new();
        let mut unavailable = 0;
        loop {
            let frame = rx.recv_within(Duration::from_secs(30)).await;
            match frame["type"].as_str() {
                Some("chat") => {
                    let last = frame["data"] == "last";
                    echoed.push(frame);
                    if last {
                        return (echoed, unavailable);
                    }
                }
                Some("error") => {
                    assert_eq!(frame["code"], "unavailable", "{frame}");
                    unavailable += 1;
                }
                _ => {}
            }
        }
    });
    tokio::spawn(async move {
        let mut sends = 0;
        while Instant::now() < until {
            tx.send(&format!("{room}-{sends:03}")).await;
            sends += 1;
            tokio::time::sleep(Duration::from_millis(125)).await;
        }
        // The cluster has recovered by now; keep asking until the last one is through.
        tx.send("last").await;
        let (echoed, unavailable) = reading.await.unwrap();
        Sent {
            echoed,
            unavailable,
            sends: sends + 1,
        }
    })
}

/// Reads a reader's chat frames until "last".
fn start_reader(mut rx: TestReceiver) -> JoinHandle<Vec<Value>> {
    tokio::spawn(async move {
        let mut chats = Vec::new();
        loop {
            let frame = rx.recv_within(Duration::from_secs(30)).await;
            if frame["type"] == "chat" {
                let last = frame["data"] == "last";
                chats.push(frame);
                if last {
                    return chats;
                }
            }
        }
    })
}

/// Three nodes, one room per primary, a reader on every node in every room and a sender in
/// each; runs `disturb` while they chat for `duration`, then checks what every socket saw.
async fn chat_through(
    cluster: &mut RedisCluster,
    duration: Duration,
    disturb: impl AsyncFnOnce(&mut RedisCluster, &[String]),
) {
    let nodes: Vec<TestApp> = vec![
        spawn_node(cluster, "node-a").await,
        spawn_node(cluster, "node-b").await,
        spawn_node(cluster, "node-c").await,
    ];
    let mut rooms: Vec<String> = Vec::new();
    for primary in cluster.primaries().await {
        let room = room_on(cluster, primary, &rooms).await;
        rooms.push(room);
    }
    let until = Instant::now() + duration;
    let mut readers = Vec::new();
    let mut senders = Vec::new();
    for (r, room) in rooms.iter().enumerate() {
        for node in &nodes {
            let user = node.sign_in(&format!("reader-{r}")).await;
            let (socket, _) = node.join(&user, room).await;
            readers.push((room.clone(), socket));
        }
        let node = &nodes[r % nodes.len()];
        let (sender, _) = node.join(&node.sign_in("sender").await, room).await;
        // Every reader has seen the sender's join before anything is sent.
        for (_, reader) in readers
            .iter_mut()
            .filter(|(reader_room, _)| reader_room == room)
        {
            while reader.recv().await["data"] != "sender joined." {}
        }
        senders.push((room.clone(), start_sender(sender, room.clone(), until)));
    }
    let readers: Vec<(String, JoinHandle<Vec<Value>>)> = readers
        .into_iter()
        .map(|(room, socket)| (room, start_reader(socket.split().1)))
        .collect();

    disturb(cluster, &rooms).await;

    let mut sent_by_room = Vec::new();
    for (room, sender) in senders {
        let sent = sender.await.unwrap();
        let echoed_ids: Vec<u64> = sent
            .echoed
            .iter()
            .map(|f| f["id"].as_u64().unwrap())
            .collect();
        assert!(
            echoed_ids.windows(2).all(|pair| pair[0] < pair[1]),
            "{room}: the sender's own frames in strictly increasing id order: {echoed_ids:?}"
        );
        let mut texts: Vec<&str> = sent
            .echoed
            .iter()
            .map(|f| f["data"].as_str().unwrap())
            .collect();
        texts.sort_unstable();
        texts.dedup();
        assert_eq!(
            texts.len(),
            sent.echoed.len(),
            "{room}: no message published twice under two ids (a publish retried after its reply was lost)"
        );
        assert!(
            sent.echoed.len() + sent.unavailable >= sent.sends,
            "{room}: every send was delivered or answered unavailable ({} sent, {} echoed, {} unavailable)",
            sent.sends,
            sent.echoed.len(),
            sent.unavailable
        );
        eprintln!(
            "{room}: {} sent, {} echoed, {} unavailable",
            sent.sends,
            sent.echoed.len(),
            sent.unavailable
        );
        sent_by_room.push((room, echoed_ids));
    }
    for (room, reader) in readers {
        let chats = reader.await.unwrap();
        let (_, expected) = sent_by_room.iter().find(|(r, _)| *r == room).unwrap();
        assert_eq!(
            &chats
                .iter()
                .map(|f| f["id"].as_u64().unwrap())
                .collect::<Vec<_>>(),
            expected,
            "{room}: every reader, on every node, saw exactly what the sender saw, in order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_under_traffic_fails_over_without_loss_reorder_or_duplicate() {
    let mut cluster = RedisCluster::start().await;
    chat_through(
        &mut cluster,
        Duration::from_secs(12),
        async |cluster, rooms| {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let key = Partition::of(&RoomName::parse(&rooms[0]).unwrap()).seq_key();
            let victim = cluster.primary_for_slot(slot(&key)).await;
            cluster.kill(victim);
            let promoted = cluster.wait_for_failover(slot(&key)).await;
            assert_ne!(promoted, victim);
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_resharded_under_traffic_lose_nothing_and_reorder_nothing() {
    let mut cluster = RedisCluster::start().await;
    chat_through(
        &mut cluster,
        Duration::from_secs(10),
        async |cluster, rooms| {
            tokio::time::sleep(Duration::from_secs(1)).await;
            // Move the first room's partition (and the slots before it in that range) to
            // another primary.
            let key = Partition::of(&RoomName::parse(&rooms[0]).unwrap()).seq_key();
            let from = cluster.primary_for_slot(slot(&key)).await;
            let to = *cluster
                .primaries()
                .await
                .iter()
                .find(|&&port| port != from)
                .unwrap();
            cluster.reshard(from, to, 5461).await;
            assert_eq!(
                cluster.primary_for_slot(slot(&key)).await,
                to,
                "the room's slot moved"
            );
        },
    )
    .await;
}
