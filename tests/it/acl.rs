//! The least-privilege Redis ACL user that `docs/redis.md` prints is enough for everything a
//! node does: the test reads the `ACL SETUSER` lines from the document itself, so the two
//! cannot drift apart. Nodes run as that user through chat, typing, edit, delete, scrollback
//! and leave, and Redis's `ACL LOG` stays empty.

use serde_json::{Value, json};

use crate::helpers::TestApp;
use crate::redis_cluster::RedisCluster;
use crate::redis_server::{RedisServer, RedisUnderTest, spawn_node};

const PASSWORD: &str = "confab-acl-test-password";

/// The `ACL SETUSER` line of `docs/redis.md` for one server (`sharded` false) or a cluster,
/// split into arguments, with the test's password.
fn documented_acl(sharded: bool) -> Vec<String> {
    let doc = include_str!("../../docs/redis.md");
    let line = doc
        .lines()
        .filter(|line| line.starts_with("ACL SETUSER confab"))
        .find(|line| line.contains("+spublish") == sharded)
        .expect("docs/redis.md has the ACL line");
    line.split_whitespace()
        .map(|word| word.replace(">PASSWORD", &format!(">{PASSWORD}")))
        .collect()
}

/// A Redis seen through the ACL user's credentials.
struct AsConfabUser {
    url: String,
}

impl RedisUnderTest for AsConfabUser {
    fn url(&self) -> String {
        self.url.clone()
    }

    async fn kill_subscriptions(&self) {}
}

fn with_user(url: &str) -> String {
    url.split(',')
        .map(|seed| seed.replacen("redis://", &format!("redis://confab:{PASSWORD}@"), 1))
        .collect::<Vec<_>>()
        .join(",")
}

/// Everything a user does, on two nodes.
async fn exercise(a: &TestApp, b: &TestApp) {
    let (ann, bob) = (a.sign_in("ann").await, b.sign_in("bob").await);
    let mut ann_socket = a.connect(&ann, "?room=acl&v=2").await;
    ann_socket.recv_opening().await;
    let mut bob_socket = b.connect(&bob, "?room=acl&v=2").await;
    bob_socket.recv_opening().await;
    ann_socket.recv().await; // bob's join
    bob_socket
        .send(&json!({"type": "typing"}).to_string())
        .await;
    assert_eq!(ann_socket.recv().await["type"], "typing");
    ann_socket
        .send(&json!({"type": "chat", "data": "hi"}).to_string())
        .await;
    let chat = bob_socket.recv().await;
    let id = chat["id"].as_u64().unwrap();
    ann_socket.recv().await;
    ann_socket
        .send(&json!({"type": "edit", "id": id, "data": "hello"}).to_string())
        .await;
    assert_eq!(bob_socket.recv().await["type"], "edit");
    ann_socket
        .send(&json!({"type": "delete", "id": id}).to_string())
        .await;
    assert_eq!(bob_socket.recv().await["type"], "delete");
    let page: Value = serde_json::from_str(
        &b.get_with_cookie("/api/rooms/acl/messages", &bob.cookie)
            .await
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(page["messages"][0]["deleted"], true);
    ann_socket.close().await;
    let left = bob_socket.recv().await;
    assert_eq!(left["type"], "left", "{left}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_acl_user_is_enough_on_one_server() {
    let redis = RedisServer::start().await;
    let acl = documented_acl(false);
    let args: Vec<&str> = acl.iter().map(String::as_str).collect();
    let _: String = redis.command(&args).await;
    let as_user = AsConfabUser {
        url: with_user(&redis.url()),
    };
    let a = spawn_node(&as_user, "node-a").await;
    let b = spawn_node(&as_user, "node-b").await;
    exercise(&a, &b).await;
    let log: Vec<redis::Value> = redis.command(&["ACL", "LOG"]).await;
    assert!(log.is_empty(), "ACL LOG: {log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_acl_user_is_enough_on_a_redis_cluster() {
    let cluster = RedisCluster::start().await;
    let acl = documented_acl(true);
    let args: Vec<&str> = acl.iter().map(String::as_str).collect();
    for port in cluster.ports() {
        let _: String = cluster.command_on(port, &args).await;
    }
    let as_user = AsConfabUser {
        url: with_user(&cluster.url()),
    };
    let a = spawn_node(&as_user, "node-a").await;
    let b = spawn_node(&as_user, "node-b").await;
    exercise(&a, &b).await;
    for port in cluster.ports() {
        let log: Vec<redis::Value> = cluster.command_on(port, &["ACL", "LOG"]).await;
        assert!(log.is_empty(), "ACL LOG on {port}: {log:?}");
    }
}
