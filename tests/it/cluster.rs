//! Cluster mode: several real nodes on one real `redis-server` per test.

use std::time::Duration;

use confab::broker::redis::keys::Partition;
use confab::protocol::RoomName;
use futures_util::future::join_all;
use serde_json::Value;
use tokio::time::Instant;

use crate::helpers::{TestSocket, api_call, chat_texts, eventually, ids, types};
use crate::redis_server::{
    CLUSTER_SECRET, RedisServer, RedisUnderTest, spawn_node, spawn_node_with,
};
use crate::startup::ConfabProcess;

/// The key of the lobby partition's pending departures.
fn lobby_leaving_key() -> String {
    Partition::of(&RoomName::lobby()).leaving_key()
}

/// Runs the cluster-mode test `$name` twice: on one Redis server and on a Redis Cluster
/// (three primaries with a replica each), as tests `$name::on_one_redis` and
/// `$name::on_a_redis_cluster`.
macro_rules! on_one_redis_and_a_cluster {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_one_redis() {
                super::$name(&crate::redis_server::RedisServer::start().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_a_redis_cluster() {
                super::$name(&crate::redis_cluster::RedisCluster::start().await).await;
            }
        }
    };
}

fn strictly_increasing(ids: &[u64]) -> bool {
    ids.windows(2).all(|pair| pair[0] < pair[1])
}

async fn a_message_sent_on_one_node_reaches_a_socket_on_another_node(redis: &impl RedisUnderTest) {
    let a = spawn_node(redis, "node-a").await;
    let b = spawn_node(redis, "node-b").await;
    let (ann, bob) = (a.sign_in("ann").await, b.sign_in("bob").await);
    let (mut ann_socket, _) = a.join(&ann, "lobby").await;
    let (mut bob_socket, bob_opening) = b.join(&bob, "lobby").await;
    assert_eq!(bob_opening.names(), ["ann", "bob"], "presence is shared");
    assert_eq!(types(&bob_opening.history), ["join", "join"]);
    let bob_join = ann_socket.recv().await;
    assert_eq!(
        bob_join["data"], "bob joined.",
        "a join on node b reaches node a"
    );

    ann_socket.send("hello from a").await;
    let on_b = bob_socket.recv().await;
    let on_a = ann_socket.recv().await;
    assert_eq!(on_b, on_a, "the same frame, byte for byte, on both nodes");
    assert_eq!(on_b["type"], "chat");
    assert_eq!(on_b["data"], "hello from a");
    assert_eq!(on_b["user"]["name"], "ann");
    assert!(on_b["id"].as_u64() > bob_join["id"].as_u64());
}
on_one_redis_and_a_cluster!(a_message_sent_on_one_node_reaches_a_socket_on_another_node);

async fn cookies_signed_on_one_node_are_valid_on_every_node(redis: &impl RedisUnderTest) {
    let a = spawn_node(redis, "node-a").await;
    let b = spawn_node(redis, "node-b").await;
    let ann = a.sign_in("ann").await;
    assert_eq!(b.get_with_cookie("/", &ann.cookie).await.status(), 200);
    b.join(&ann, "lobby").await;
}
on_one_redis_and_a_cluster!(cookies_signed_on_one_node_are_valid_on_every_node);

/// Reads chat frames from `socket` until it has `count` of them; returns every frame.
async fn read_chats(mut socket: TestSocket, count: usize) -> Vec<Value> {
    socket.recv_chats(count).await
}

async fn three_senders_on_three_nodes_give_every_socket_the_same_600_messages_in_order(
    redis: &impl RedisUnderTest,
) {
    let nodes = [
        spawn_node(redis, "node-a").await,
        spawn_node(redis, "node-b").await,
        spawn_node(redis, "node-c").await,
    ];
    // Two readers on each node, then ten sender tabs per node (the rate limit allows a burst of
    // 20 per socket; 10 tabs × 20 = 200 messages per node).
    let mut readers = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for r in 0..2 {
            let user = node.sign_in(&format!("reader-{n}-{r}")).await;
            readers.push(node.join(&user, "lobby").await.0);
        }
    }
    let mut senders = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        let user = node.sign_in(&format!("sender-{n}")).await;
        for _ in 0..10 {
            senders.push((n, node.join(&user, "lobby").await.0.split()));
        }
    }
    // Everyone is in; the joins of the senders are behind us for the readers.
    let mut sending = Vec::new();
    let mut sender_reads = Vec::new();
    for (tab, (n, (mut tx, mut rx))) in senders.into_iter().enumerate() {
        sending.push(tokio::spawn(async move {
            for m in 0..20 {
                tx.send(&format!("{n}-{tab:02}-{m:02}")).await;
            }
        }));
        sender_reads.push(tokio::spawn(async move {
            let mut frames = Vec::new();
            while frames
                .iter()
                .filter(|f: &&Value| f["type"] == "chat")
                .count()
                < 600
            {
                frames.push(rx.recv().await);
            }
            frames
        }));
    }
    let reading: Vec<_> = readers
        .into_iter()
        .map(|socket| tokio::spawn(read_chats(socket, 600)))
        .collect();
    join_all(sending).await;

    let mut sequences = Vec::new();
    for frames in join_all(reading)
        .await
        .into_iter()
        .chain(join_all(sender_reads).await)
    {
        let chats: Vec<Value> = frames
            .unwrap()
            .into_iter()
            .filter(|f| f["type"] == "chat")
            .collect();
        assert_eq!(chats.len(), 600);
        let chat_ids = ids(&chats);
        assert!(
            strictly_increasing(&chat_ids),
            "ids strictly increase on every socket"
        );
        sequences.push(chat_ids);
    }
    assert!(
        sequences.windows(2).all(|pair| pair[0] == pair[1]),
        "the same sequence on every socket of every node"
    );
    let _ = CLUSTER_SECRET;
}
on_one_redis_and_a_cluster!(
    three_senders_on_three_nodes_give_every_socket_the_same_600_messages_in_order
);

async fn history_and_since_work_across_nodes(redis: &impl RedisUnderTest) {
    let a = spawn_node(redis, "node-a").await;
    let b = spawn_node(redis, "node-b").await;
    let ann = a.sign_in("ann").await;
    let (mut ann_socket, _) = a.join(&ann, "lobby").await;
    for n in 1..=3 {
        ann_socket.send(&format!("m{n}")).await;
    }
    let sent = ann_socket.recv_until_chat("m3").await;
    let m1 = sent[0]["id"].as_u64().unwrap();

    let bob = b.sign_in("bob").await;
    let (_, opening) = b.join(&bob, "lobby").await;
    assert_eq!(
        types(&opening.history),
        ["join", "chat", "chat", "chat", "join"]
    );
    assert_eq!(
        &opening.history[1..4],
        &sent[..],
        "node b replays node a's frames byte for byte"
    );

    let mut resumed = b.connect(&bob, &format!("?room=lobby&since={m1}")).await;
    let opening = resumed.recv_opening().await;
    assert_eq!(chat_texts(&opening.history), ["m2", "m3"]);
    assert_eq!(opening.list["id"], opening.history.last().unwrap()["id"]);
}
on_one_redis_and_a_cluster!(history_and_since_work_across_nodes);

async fn the_seam_holds_across_nodes_while_others_send(redis: &impl RedisUnderTest) {
    let a = spawn_node_with(redis, "node-a", |config| config.chat.history = 1000).await;
    let b = spawn_node_with(redis, "node-b", |config| config.chat.history = 1000).await;
    let (observer_socket, observer_opening) = a.join(&a.sign_in("observer").await, "lobby").await;
    let mut sender_tabs = Vec::new();
    let sender = a.sign_in("sender").await;
    for _ in 0..5 {
        sender_tabs.push(a.join(&sender, "lobby").await.0.split());
    }
    let mut drains = Vec::new();
    let mut sends = Vec::new();
    for (s, (mut tx, mut rx)) in sender_tabs.into_iter().enumerate() {
        sends.push(tokio::spawn(async move {
            for n in 0..20 {
                tx.send(&format!("s{s}-{n:02}")).await;
                tokio::task::yield_now().await;
            }
            tx
        }));
        drains.push(tokio::spawn(async move {
            loop {
                if rx.recv().await["data"] == "end" {
                    return;
                }
            }
        }));
    }
    // Joiners on the other node arrive while the senders send.
    let mut joiners = Vec::new();
    for j in 0..5 {
        let user = b.sign_in(&format!("joiner{j}")).await;
        let (socket, opening) = b.join(&user, "lobby").await;
        joiners.push((socket, opening.history));
    }
    let mut txs = Vec::new();
    for send in sends {
        txs.push(send.await.unwrap());
    }
    // Everything sent is in before the observer's last word, so "end" comes after it all.
    let mut observer = observer_socket;
    let mut expected = observer_opening.history;
    expected.extend(observer.recv_chats(100).await);
    observer.send("end").await;
    expected.extend(observer.recv_until_chat("end").await);
    let expected_ids = ids(&expected);
    assert!(strictly_increasing(&expected_ids));
    assert_eq!(chat_texts(&expected).len(), 101);
    for (j, (mut socket, history)) in joiners.into_iter().enumerate() {
        let mut seen = history;
        seen.extend(socket.recv_until_chat("end").await);
        assert_eq!(
            ids(&seen),
            expected_ids,
            "joiner {j} on node b saw exactly the observer's sequence"
        );
    }
    join_all(drains).await;
}
on_one_redis_and_a_cluster!(the_seam_holds_across_nodes_while_others_send);

async fn a_user_with_tabs_on_two_nodes_is_listed_once_and_left_only_after_the_last(
    redis: &impl RedisUnderTest,
) {
    let a = spawn_node(redis, "node-a").await;
    let b = spawn_node(redis, "node-b").await;
    let (mut observer, _) = a.join(&a.sign_in("observer").await, "lobby").await;
    let ann = a.sign_in("ann").await;
    let (tab_a, _) = a.join(&ann, "lobby").await;
    let (tab_b, opening_b) = b.join(&ann, "lobby").await;
    assert_eq!(opening_b.names(), ["ann", "observer"], "ann is listed once");

    tab_a.close().await;
    observer.send("after the first tab").await;
    let frames = observer.recv_until_chat("after the first tab").await;
    assert_eq!(
        types(&frames),
        ["join", "chat"],
        "one join, and no left while a tab is open elsewhere"
    );

    tab_b.close().await;
    let left = observer.recv().await;
    assert_eq!(
        (left["type"].as_str(), left["data"].as_str()),
        (Some("left"), Some("ann left."))
    );
    observer.send("marker").await;
    assert_eq!(
        types(&observer.recv_until_chat("marker").await),
        ["chat"],
        "left is announced once"
    );
}
on_one_redis_and_a_cluster!(
    a_user_with_tabs_on_two_nodes_is_listed_once_and_left_only_after_the_last
);

async fn a_reconnect_to_another_node_within_the_grace_announces_nothing(
    redis: &impl RedisUnderTest,
) {
    let grace = Duration::from_millis(1500);
    let a = spawn_node_with(redis, "node-a", |config| config.chat.leave_grace = grace).await;
    let b = spawn_node_with(redis, "node-b", |config| config.chat.leave_grace = grace).await;
    let (mut observer, _) = a.join(&a.sign_in("observer").await, "lobby").await;
    let ann = a.sign_in("ann").await;
    let (tab, _) = a.join(&ann, "lobby").await;
    assert_eq!(observer.recv().await["type"], "join");
    tab.close().await;
    let (_back, opening) = b.join(&ann, "lobby").await;
    assert_eq!(opening.names(), ["ann", "observer"]);
    // Nothing can announce that nothing happened: wait out the grace and a sweep, then look.
    tokio::time::sleep(grace * 2).await;
    observer.send("marker").await;
    assert_eq!(types(&observer.recv_until_chat("marker").await), ["chat"]);
}
on_one_redis_and_a_cluster!(a_reconnect_to_another_node_within_the_grace_announces_nothing);

/// A node in its own process, in cluster mode.
async fn start_node_process(redis: &impl RedisUnderTest, node_id: &str) -> ConfabProcess {
    let url = redis.url();
    let process = ConfabProcess::start(&[
        ("CONFAB_REDIS_URL", &url),
        ("CONFAB_SECRET", CLUSTER_SECRET),
        ("CONFAB_NODE_ID", node_id),
    ])
    .await;
    let client = reqwest::Client::new();
    eventually("the node process to be ready", || async {
        client
            .get(format!("http://{}/readyz", process.addr))
            .send()
            .await
            .is_ok_and(|response| response.status() == 200)
    })
    .await;
    process
}

async fn a_node_killed_with_sigkill_has_its_users_announced_left_once_within_30_seconds(
    redis: &impl RedisUnderTest,
) {
    let survivor = spawn_node(redis, "survivor").await;
    let mut doomed = start_node_process(redis, "doomed").await;
    let (mut observer, _) = survivor
        .join(&survivor.sign_in("observer").await, "lobby")
        .await;
    let victim_app = doomed.client();
    let victim = victim_app.sign_in("victim").await;
    let (_victim_socket, _) = victim_app.join(&victim, "lobby").await;
    let join = observer.recv().await;
    assert_eq!(join["data"], "victim joined.");

    doomed.signal("KILL");
    doomed.wait().await;
    let killed = Instant::now();
    let left = observer.recv_within(Duration::from_secs(30)).await;
    assert_eq!(
        (left["type"].as_str(), left["data"].as_str()),
        (Some("left"), Some("victim left."))
    );
    assert!(killed.elapsed() < Duration::from_secs(30));
    observer.send("marker").await;
    assert_eq!(
        types(&observer.recv_until_chat("marker").await),
        ["chat"],
        "left is announced once"
    );
    let (_, opening) = survivor
        .join(&survivor.sign_in("late").await, "lobby")
        .await;
    assert_eq!(
        opening.names(),
        ["late", "observer"],
        "no ghost in the list"
    );
    assert!(survivor.metric("confab_presence_reaped_total").await >= 1.0);
}
on_one_redis_and_a_cluster!(
    a_node_killed_with_sigkill_has_its_users_announced_left_once_within_30_seconds
);

/// Sends `text` from `socket` until the echo arrives, tolerating `unavailable` answers while
/// the cluster recovers; fails after `within`.
async fn send_until_delivered(socket: &mut TestSocket, text: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        assert!(
            Instant::now() < deadline,
            "{text:?} was not delivered within {within:?}"
        );
        socket.send(text).await;
        let frame = socket.recv().await;
        if frame["type"] == "error" {
            assert_eq!(frame["code"], "unavailable");
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        }
        let mut frame = frame;
        while !(frame["type"] == "chat" && frame["data"] == text) {
            frame = socket.recv().await;
        }
        return frame;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_empty_lets_the_same_sockets_chat_again_with_higher_ids() {
    let mut redis = RedisServer::start().await;
    let a = spawn_node(&redis, "node-a").await;
    let b = spawn_node(&redis, "node-b").await;
    let (ann, bob) = (a.sign_in("ann").await, b.sign_in("bob").await);
    let (mut ann_socket, _) = a.join(&ann, "lobby").await;
    let (mut bob_socket, _) = b.join(&bob, "lobby").await;
    ann_socket.send("before").await;
    let before = bob_socket.recv_until_chat("before").await.last().unwrap()["id"]
        .as_u64()
        .unwrap();
    ann_socket.recv_until_chat("before").await;

    redis.kill();
    ann_socket.send("during").await;
    let error = ann_socket.recv().await;
    assert_eq!(
        (error["type"].as_str(), error["code"].as_str()),
        (Some("error"), Some("unavailable"))
    );
    eventually("the outage to show in confab_broker_up", || async {
        a.metric("confab_broker_up").await == 0.0
    })
    .await;
    assert_eq!(
        a.get("/readyz").await.status(),
        200,
        "a Redis outage does not take the node out of the load balancer"
    );

    redis.restart().await;
    let restarted = Instant::now();
    let after = send_until_delivered(&mut ann_socket, "after", Duration::from_secs(15)).await;
    let on_b = bob_socket.recv_until_chat("after").await;
    assert!(restarted.elapsed() < Duration::from_secs(15));
    assert_eq!(
        on_b.last().unwrap(),
        &after,
        "cross-node delivery resumed on the same sockets"
    );
    assert!(
        after["id"].as_u64().unwrap() > before,
        "ids never go backwards"
    );
    assert!(
        !chat_texts(&on_b).contains(&"during"),
        "the refused message reached nobody"
    );
    eventually("the broker to be up again on node b", || async {
        b.metric("confab_broker_up").await == 1.0
    })
    .await;
    assert_eq!(b.get("/readyz").await.status(), 200);

    // Presence was re-registered: a newcomer sees both users.
    let (_, opening) = b.join(&b.sign_in("cid").await, "lobby").await;
    assert_eq!(opening.names(), ["ann", "bob", "cid"]);
}

async fn a_killed_subscription_loses_nothing_and_repeats_nothing(redis: &impl RedisUnderTest) {
    let a = spawn_node(redis, "node-a").await;
    let b = spawn_node(redis, "node-b").await;
    let (reader, _) = b.join(&b.sign_in("reader").await, "lobby").await;
    let sender = a.sign_in("sender").await;
    let mut tabs = Vec::new();
    for _ in 0..10 {
        tabs.push(a.join(&sender, "lobby").await.0.split());
    }
    let mut tasks = Vec::new();
    for (t, (mut tx, mut rx)) in tabs.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            for m in 0..20 {
                tx.send(&format!("{t:02}-{m:02}")).await;
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            let mut chats = 0;
            while chats < 200 {
                chats += usize::from(rx.recv().await["type"] == "chat");
            }
        }));
    }
    // Cut every subscription (both nodes') a few times while the messages flow.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        redis.kill_subscriptions().await;
    }
    let frames = read_chats(reader, 200).await;
    let chats: Vec<&Value> = frames.iter().filter(|f| f["type"] == "chat").collect();
    let chat_ids: Vec<u64> = chats.iter().map(|f| f["id"].as_u64().unwrap()).collect();
    assert_eq!(chats.len(), 200);
    assert!(
        strictly_increasing(&chat_ids),
        "in order and without duplicates"
    );
    join_all(tasks).await;
    assert!(b.metric("confab_broker_reconnects_total").await >= 1.0);
}
on_one_redis_and_a_cluster!(a_killed_subscription_loses_nothing_and_repeats_nothing);

async fn a_kick_reaches_a_node_whose_subscription_was_down_when_it_was_sent(
    redis: &impl RedisUnderTest,
) {
    const TOKEN: &str = "api-token-of-the-moderation-backend-0123";
    let a = spawn_node_with(redis, "node-a", |config| {
        config.api_tokens = vec![TOKEN.to_owned().into()];
    })
    .await;
    let b = spawn_node(redis, "node-b").await;
    let ann = b.sign_in("ann").await;
    let (mut ann_socket, _) = b.join(&ann, "lobby").await;

    // Cut every subscription, and kick ann through node a before node b is back (it waits
    // at least 50 ms before reconnecting): node b must find the kick in the partition's log.
    redis.kill_subscriptions().await;
    let kick = serde_json::json!({"user_id": ann.user.id}).to_string();
    let (status, _, _) = api_call(
        &a,
        "POST",
        "/api/rooms/lobby/kicks",
        Some(TOKEN),
        Some(&kick),
    )
    .await;
    assert_eq!(status, 204);
    let (code, reason, frames) = ann_socket.recv_close().await;
    assert_eq!((code, reason.as_str()), (4003, "Kicked"));
    assert!(
        frames.iter().all(|frame| frame["type"] != "kick"),
        "the notice reaches no socket: {frames:?}"
    );
}
on_one_redis_and_a_cluster!(a_kick_reaches_a_node_whose_subscription_was_down_when_it_was_sent);

async fn sigterm_of_one_node_moves_its_users_without_noise_while_others_keep_serving(
    redis: &impl RedisUnderTest,
) {
    let grace = Duration::from_secs(2);
    let a = spawn_node_with(redis, "node-a", |config| config.chat.leave_grace = grace).await;
    let b = spawn_node_with(redis, "node-b", |config| config.chat.leave_grace = grace).await;
    let (mut observer, _) = a.join(&a.sign_in("observer").await, "lobby").await;
    let ann = b.sign_in("ann").await;
    let (mut ann_socket, _) = b.join(&ann, "lobby").await;
    assert_eq!(observer.recv().await["type"], "join");
    observer.send("before the restart").await;
    let last_seen = ann_socket
        .recv_until_chat("before the restart")
        .await
        .last()
        .unwrap()["id"]
        .clone();
    observer.recv().await;

    b.begin_stop();
    let (code, _, _) = ann_socket.recv_close().await;
    assert_eq!(code, 1012);
    ann_socket.close().await;
    observer.send("while ann moves").await;
    let moving = observer.recv_until_chat("while ann moves").await;
    assert_eq!(types(&moving), ["chat"], "no left while ann moves");
    // The page reconnects, through the load balancer, to a live node with `since`.
    let mut moved = a
        .connect(&ann, &format!("?room=lobby&since={last_seen}"))
        .await;
    let opening = moved.recv_opening().await;
    assert_eq!(
        chat_texts(&opening.history),
        ["while ann moves"],
        "no gap, no duplicate"
    );
    assert_eq!(opening.names(), ["ann", "observer"]);
    b.stop().await.unwrap();

    // Past the grace: ann never left, and never joined again, as far as the room knows.
    tokio::time::sleep(grace + Duration::from_secs(1)).await;
    observer.send("marker").await;
    let frames = observer.recv_until_chat("marker").await;
    assert_eq!(types(&frames), ["chat"], "no left/join noise");
}
on_one_redis_and_a_cluster!(
    sigterm_of_one_node_moves_its_users_without_noise_while_others_keep_serving
);

async fn a_quiet_node_keeps_its_subscription_and_stays_ready(redis: &impl RedisUnderTest) {
    let a = spawn_node(redis, "node-a").await;
    // Several ping periods of the subscription connection, with nothing else going on.
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        assert_eq!(
            a.get("/readyz").await.status(),
            200,
            "readiness never flaps"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(a.metric("confab_broker_reconnects_total").await, 0.0);
}
on_one_redis_and_a_cluster!(a_quiet_node_keeps_its_subscription_and_stays_ready);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_within_the_grace_when_redis_restarts_empty_still_gets_left() {
    let mut redis = RedisServer::start().await;
    let grace = Duration::from_secs(3);
    let a = spawn_node_with(&redis, "node-a", |config| config.chat.leave_grace = grace).await;
    let b = spawn_node_with(&redis, "node-b", |config| config.chat.leave_grace = grace).await;
    let (mut observer, _) = b.join(&b.sign_in("observer").await, "lobby").await;
    let (ann_socket, _) = a.join(&a.sign_in("ann").await, "lobby").await;
    assert_eq!(observer.recv().await["data"], "ann joined.");
    ann_socket.close().await;
    // ann's `left` is pending in Redis when Redis loses everything.
    eventually("ann's departure to be pending", || async {
        redis.command::<u64>(&["ZCARD", &lobby_leaving_key()]).await == 1
    })
    .await;
    redis.restart().await;
    let left = observer.recv_within(Duration::from_secs(20)).await;
    assert_eq!(
        (left["type"].as_str(), left["data"].as_str()),
        (Some("left"), Some("ann left."))
    );
    b.wait_ready().await;
    let (_, opening) = b.join(&b.sign_in("late").await, "lobby").await;
    assert_eq!(opening.names(), ["late", "observer"], "no ghost of ann");
    assert_eq!(
        a.metric("confab_broker_frames_lost_total").await,
        0.0,
        "a new sequence is not a loss"
    );
    assert_eq!(b.metric("confab_broker_frames_lost_total").await, 0.0);
}

async fn two_live_processes_with_one_node_id_are_reported(redis: &impl RedisUnderTest) {
    let first = start_node_process(redis, "twin").await;
    let second = start_node_process(redis, "twin").await;
    eventually("the conflict to be logged", || async {
        let logs = first.output() + &second.output();
        std::future::ready(logs.contains("another live process uses this CONFAB_NODE_ID")).await
    })
    .await;
}
on_one_redis_and_a_cluster!(two_live_processes_with_one_node_id_are_reported);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departure_due_during_a_long_outage_is_still_announced_after_redis_restarts_empty() {
    let mut redis = RedisServer::start().await;
    let grace = Duration::from_secs(2);
    let a = spawn_node_with(&redis, "node-a", |config| config.chat.leave_grace = grace).await;
    let b = spawn_node_with(&redis, "node-b", |config| config.chat.leave_grace = grace).await;
    let (mut observer, _) = b.join(&b.sign_in("observer").await, "lobby").await;
    let (ann_socket, _) = a.join(&a.sign_in("ann").await, "lobby").await;
    assert_eq!(observer.recv().await["data"], "ann joined.");
    ann_socket.close().await;
    eventually("ann's departure to be pending", || async {
        redis.command::<u64>(&["ZCARD", &lobby_leaving_key()]).await == 1
    })
    .await;
    redis.kill();
    // The outage outlasts ann's grace: no sweep could announce her meanwhile.
    tokio::time::sleep(grace + Duration::from_secs(1)).await;
    redis.restart().await;
    let left = observer.recv_within(Duration::from_secs(20)).await;
    assert_eq!(
        (left["type"].as_str(), left["data"].as_str()),
        (Some("left"), Some("ann left."))
    );
    observer.send("marker").await;
    assert_eq!(
        types(&observer.recv_until_chat("marker").await),
        ["chat"],
        "announced once"
    );
}
