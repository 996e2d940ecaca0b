//! The partitioned Redis layout: rooms spread over partitions, each with its own ids, log and
//! channel, and nodes that hear only the partitions their sockets are in.

use confab::broker::redis::keys::{LEGACY_SEQ_KEY, PARTITIONS, Partition};
use confab::broker::redis::{COMMAND_TIMEOUT, LINGER};
use confab::protocol::RoomName;

use crate::helpers::{api_call, chat_texts, eventually, ids};
use crate::redis_cluster::RedisCluster;
use crate::redis_server::{RedisServer, spawn_node, spawn_node_with};

/// `count` room names, each in a partition of its own (none of them the lobby's).
fn rooms_in_distinct_partitions(count: usize) -> Vec<String> {
    let mut seen = vec![Partition::of(&RoomName::lobby())];
    let mut rooms = Vec::new();
    for n in 0.. {
        let name = format!("room-{n}");
        let partition = Partition::of(&RoomName::parse(&name).unwrap());
        if !seen.contains(&partition) {
            seen.push(partition);
            rooms.push(name);
            if rooms.len() == count {
                break;
            }
        }
    }
    rooms
}

fn partition_of(room: &str) -> Partition {
    Partition::of(&RoomName::parse(room).unwrap())
}

#[tokio::test]
async fn ids_are_unique_across_rooms_name_their_partition_and_grow_within_each_room() {
    let redis = RedisServer::start().await;
    let a = spawn_node(&redis, "node-a").await;
    let b = spawn_node(&redis, "node-b").await;
    let rooms = rooms_in_distinct_partitions(2);
    let ann = a.sign_in("ann").await;
    let bob = b.sign_in("bob").await;
    let (mut first, _) = a.join(&ann, &rooms[0]).await;
    let (mut second, _) = b.join(&bob, &rooms[1]).await;
    for n in 0..20 {
        first.send(&format!("first {n}")).await;
        second.send(&format!("second {n}")).await;
    }
    let first_frames = first.recv_chats(20).await;
    let second_frames = second.recv_chats(20).await;
    assert_eq!(
        chat_texts(&first_frames)[19],
        "first 19",
        "only its own room"
    );
    let (first_ids, second_ids) = (ids(&first_frames), ids(&second_frames));
    for (room, room_ids) in [(&rooms[0], &first_ids), (&rooms[1], &second_ids)] {
        assert!(
            room_ids.windows(2).all(|pair| pair[0] < pair[1]),
            "{room}: {room_ids:?}"
        );
        let partition = partition_of(room).index() as u64;
        assert!(
            room_ids
                .iter()
                .all(|id| id % u64::from(PARTITIONS) == partition),
            "{room}'s ids fold in its partition {partition}: {room_ids:?}"
        );
    }
    assert!(
        first_ids.iter().all(|id| !second_ids.contains(id)),
        "no two rooms share an id"
    );
    let now_us = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap();
    let first_id = first_ids[0];
    assert!(
        first_id > now_us - 60_000_000 && first_id < 1 << 53,
        "a new sequence starts near the time in microseconds: {first_id} vs {now_us}"
    );
}

#[tokio::test]
async fn a_node_hears_only_the_partitions_its_sockets_are_in() {
    let redis = RedisServer::start().await;
    let a = spawn_node(&redis, "node-a").await;
    let b = spawn_node(&redis, "node-b").await;
    let rooms = rooms_in_distinct_partitions(2);
    let (mut on_a, _) = a.join(&a.sign_in("ann").await, &rooms[0]).await;
    let (mut on_b, _) = b.join(&b.sign_in("bob").await, &rooms[1]).await;
    assert_eq!(a.metric("confab_broker_partitions_subscribed").await, 1.0);
    assert_eq!(b.metric("confab_broker_partitions_subscribed").await, 1.0);
    let a_before = a.metric("confab_broker_frames_received_total").await;
    // Within the rate limit's burst of 20.
    for n in 0..15 {
        on_b.send(&format!("only b {n}")).await;
    }
    on_b.recv_chats(15).await;
    on_a.send("marker").await;
    assert_eq!(
        chat_texts(&on_a.recv_until_chat("marker").await),
        ["marker"]
    );
    assert_eq!(
        a.metric("confab_broker_frames_received_total").await - a_before,
        1.0,
        "node a received its own room's frame and none of the other partition's 15"
    );
    assert!(b.metric("confab_broker_frames_received_total").await >= 15.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_is_let_go_a_linger_after_its_last_socket_and_taken_up_again() {
    let redis = RedisServer::start().await;
    let a = spawn_node(&redis, "node-a").await;
    let b = spawn_node(&redis, "node-b").await;
    let room = &rooms_in_distinct_partitions(1)[0];
    let ann = a.sign_in("ann").await;
    let (socket, _) = a.join(&ann, room).await;
    assert_eq!(a.metric("confab_broker_partitions_subscribed").await, 1.0);
    socket.close().await;
    tokio::time::sleep(LINGER / 2).await;
    assert_eq!(
        a.metric("confab_broker_partitions_subscribed").await,
        1.0,
        "still subscribed within the linger"
    );
    eventually("the idle partition to be let go", || async {
        a.metric("confab_broker_partitions_subscribed").await == 0.0
    })
    .await;
    // Frames of the partition no longer reach node a...
    let received = a.metric("confab_broker_frames_received_total").await;
    let (mut on_b, _) = b.join(&b.sign_in("bob").await, room).await;
    on_b.send("while a is away").await;
    on_b.recv_until_chat("while a is away").await;
    // ...and a socket back on node a gets history, then live frames, with no gap.
    let (mut back, opening) = a.join(&ann, room).await;
    assert_eq!(
        chat_texts(&opening.history),
        ["while a is away"],
        "the history covers what a did not hear"
    );
    on_b.send("after").await;
    assert_eq!(chat_texts(&back.recv_until_chat("after").await), ["after"]);
    assert!(
        a.metric("confab_broker_frames_received_total").await - received <= 3.0,
        "only the frames after it subscribed again (bob's join, ann's join, after)"
    );
}

#[tokio::test]
async fn ids_keep_growing_past_those_of_the_one_channel_layout() {
    let redis = RedisServer::start().await;
    // What a confab before partitions left behind: its global counter, well ahead of the clock.
    let legacy = 1u64 << 52;
    let _: () = redis
        .command(&["SET", LEGACY_SEQ_KEY, &legacy.to_string()])
        .await;
    let a = spawn_node(&redis, "node-a").await;
    let ann = a.sign_in("ann").await;
    let (mut socket, _) = a.join(&ann, "lobby").await;
    socket.send("after the upgrade").await;
    let frames = socket.recv_until_chat("after the upgrade").await;
    let id = ids(&frames)[frames.len() - 1];
    assert!(id > legacy, "{id} is above the old counter {legacy}");
    assert!(id < 1 << 53);
    // A page resuming with the last id it saw before the upgrade misses nothing new.
    let resumed = a
        .connect(&ann, &format!("?room=lobby&since={legacy}"))
        .await
        .recv_opening()
        .await;
    assert_eq!(chat_texts(&resumed.history), ["after the upgrade"]);
}

#[tokio::test]
async fn publishes_take_one_script_call_each_on_one_connection() {
    let redis = RedisServer::start().await;
    let a = spawn_node(&redis, "node-a").await;
    let (mut socket, _) = a.join(&a.sign_in("ann").await, "lobby").await;
    let _: () = redis.command(&["CONFIG", "RESETSTAT"]).await;
    for n in 0..10 {
        socket.send(&format!("m{n}")).await;
    }
    socket.recv_chats(10).await;
    let stats: String = redis.command(&["INFO", "commandstats"]).await;
    let calls = |command: &str| -> u64 {
        stats
            .lines()
            .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |calls| calls.parse().unwrap())
    };
    // The subscription's own keep-alive may fall in the window; a ping per publish may not.
    assert!(calls("ping") <= 2, "no ping per checkout:\n{stats}");
    assert_eq!(calls("unwatch"), 0, "no unwatch per checkout:\n{stats}");
    assert!(calls("evalsha") >= 10, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_crosses_nodes_on_a_redis_cluster_with_each_primary_publishing_its_partitions() {
    let redis = RedisCluster::start().await;
    let a = spawn_node(&redis, "node-a").await;
    let b = spawn_node(&redis, "node-b").await;
    let rooms = rooms_in_distinct_partitions(6);
    let mut pairs = Vec::new();
    for room in &rooms {
        let (ann_socket, _) = a.join(&a.sign_in("ann").await, room).await;
        let (bob_socket, opening) = b.join(&b.sign_in("bob").await, room).await;
        assert_eq!(opening.names(), ["ann", "bob"], "presence in {room}");
        pairs.push((ann_socket, bob_socket));
    }
    for (room, (ann_socket, bob_socket)) in rooms.iter().zip(&mut pairs) {
        ann_socket.recv().await;
        ann_socket.send(&format!("hello {room}")).await;
        let on_b = bob_socket.recv_until_chat(&format!("hello {room}")).await;
        let on_a = ann_socket.recv_until_chat(&format!("hello {room}")).await;
        assert_eq!(on_a.last(), on_b.last(), "the same frame on both nodes");
    }
    assert_eq!(a.metric("confab_broker_partitions_subscribed").await, 6.0);
}

#[tokio::test]
async fn a_chat_after_its_partitions_counter_was_lost_or_set_back_still_gets_a_higher_id() {
    let redis = RedisServer::start().await;
    let a = spawn_node(&redis, "node-a").await;
    let (mut socket, _) = a.join(&a.sign_in("ann").await, "lobby").await;
    let seq = Partition::of(&RoomName::lobby()).seq_key();
    // The publish script's two rare paths: a counter Redis no longer has (a new sequence,
    // started from the clock) and one behind what the node has seen (started past it).
    let losses: [&[&str]; 3] = [&[], &["DEL", &seq], &["SET", &seq, "5"]];
    let mut last = 0;
    for (n, loss) in losses.into_iter().enumerate() {
        if !loss.is_empty() {
            let _: () = redis.command(loss).await;
        }
        let text = format!("chat {n}");
        socket.send(&text).await;
        let frames = socket.recv_until_chat(&text).await;
        let id = ids(&frames)[frames.len() - 1];
        assert!(id > last, "{text}: id {id} after {last}");
        assert_eq!(Partition::of_id(id), Partition::of(&RoomName::lobby()));
        last = id;
    }
}

/// `count` room names in one partition (not the lobby's).
fn rooms_in_one_partition(count: usize) -> Vec<String> {
    let partition = partition_of("room-0");
    (0..)
        .map(|n| format!("room-{n}"))
        .filter(|room| partition_of(room) == partition)
        .take(count)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chats_that_wait_for_their_partitions_call_go_together_with_ids_in_order() {
    const TOKEN: &str = "api-token-of-the-batching-bot-0123456789";
    let redis = RedisServer::start().await;
    let a = spawn_node_with(&redis, "node-a", |config| {
        config.api_tokens = vec![TOKEN.to_owned().into()];
    })
    .await;
    let rooms = rooms_in_one_partition(2);
    let mut sockets = Vec::new();
    for n in 0..10 {
        let user = a.sign_in(&format!("user{n}")).await;
        sockets.push(a.join(&user, &rooms[n % 2]).await.0);
    }
    let calls_before = a.metric("confab_broker_publish_calls_total").await;

    // Redis holds every script while paused: the first chat's call stays out, and the
    // partition's other chats — ten from sockets, two through the API — wait behind it.
    let _: () = redis.command(&["CLIENT", "PAUSE", "1500", "WRITE"]).await;
    for (n, socket) in sockets.iter_mut().enumerate() {
        socket.send(&format!("chat {n}")).await;
    }
    let post = |n: usize| {
        let (a, path) = (&a, format!("/api/rooms/{}/messages", rooms[n]));
        async move {
            let body = format!(r#"{{"text":"bot {n}","user":{{"id":"bot","name":"Bot"}}}}"#);
            let (status, _, json) = api_call(a, "POST", &path, Some(TOKEN), Some(&body)).await;
            assert_eq!(status, 201, "{json}");
            (format!("bot {n}"), json["id"].as_u64().unwrap())
        }
    };
    let (first_post, second_post, ()) = tokio::join!(post(0), post(1), async {
        eventually(
            "eleven chats waiting behind the first one's call",
            || async { a.metric("confab_broker_publish_queued").await == 11.0 },
        )
        .await;
        let _: () = redis.command(&["CLIENT", "UNPAUSE"]).await;
    });
    let posted = [first_post, second_post];
    let mut seen = std::collections::BTreeMap::new();
    for (n, socket) in sockets.iter_mut().enumerate() {
        let frames: Vec<_> = socket
            .recv_chats(6)
            .await
            .into_iter()
            .filter(|frame| frame["type"] == "chat")
            .collect();
        let room_ids = ids(&frames);
        assert!(
            room_ids.windows(2).all(|pair| pair[0] < pair[1]),
            "{room_ids:?}"
        );
        let mut texts = chat_texts(&frames);
        texts.sort_unstable();
        let mut expected: Vec<String> = (0..10)
            .filter(|m| m % 2 == n % 2)
            .map(|m| format!("chat {m}"))
            .chain([format!("bot {}", n % 2)])
            .collect();
        expected.sort_unstable();
        assert_eq!(
            texts, expected,
            "socket {n} has each of its room's chats once"
        );
        for frame in &frames {
            seen.insert(
                frame["id"].as_u64().unwrap(),
                frame["data"].as_str().unwrap().to_owned(),
            );
        }
    }
    for (text, id) in &posted {
        assert_eq!(
            seen.get(id),
            Some(text),
            "the API answered the id its frame has"
        );
    }
    let all: Vec<u64> = seen.keys().copied().collect();
    assert_eq!(all.len(), 12);
    assert!(
        all.windows(2)
            .all(|pair| pair[1] - pair[0] == u64::from(PARTITIONS)),
        "twelve consecutive counter values of the partition: {all:?}"
    );
    assert_eq!(
        a.metric("confab_broker_publish_calls_total").await - calls_before,
        2.0,
        "the first chat's call, then one of the eleven that waited"
    );
    assert_eq!(a.metric("confab_broker_publish_queued").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chats_waiting_behind_a_call_that_times_out_are_answered_with_it() {
    let redis = RedisServer::start().await;
    let a = spawn_node(&redis, "node-a").await;
    let room = &rooms_in_one_partition(1)[0];
    let mut sockets = Vec::new();
    for n in 0..3 {
        let user = a.sign_in(&format!("user{n}")).await;
        sockets.push(a.join(&user, room).await.0);
    }
    // Redis stops answering scripts: the first chat's call runs out its time limit, and the
    // two chats waiting behind it must not then each wait out a call of their own.
    let _: () = redis.command(&["CLIENT", "PAUSE", "10000", "WRITE"]).await;
    let sent = tokio::time::Instant::now();
    for (n, socket) in sockets.iter_mut().enumerate() {
        socket.send(&format!("chat {n}")).await;
    }
    eventually("two chats waiting behind the first one's call", || async {
        a.metric("confab_broker_publish_queued").await == 2.0
    })
    .await;
    for (n, socket) in sockets.iter_mut().enumerate() {
        let error = loop {
            let frame = socket.recv().await;
            assert_ne!(frame["type"], "chat", "socket {n}: {frame}");
            if frame["type"] == "error" {
                break frame;
            }
        };
        assert_eq!(error["code"], "unavailable", "socket {n}");
    }
    let answered_in = sent.elapsed();
    assert!(
        answered_in < COMMAND_TIMEOUT + COMMAND_TIMEOUT / 2,
        "every sender heard within one call's time limit, not two: {answered_in:?}"
    );
    assert_eq!(a.metric("confab_broker_publish_queued").await, 0.0);
    let _: () = redis.command(&["CLIENT", "UNPAUSE"]).await;
}
