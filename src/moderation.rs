//! Who may change a chat message after it was sent, and how: `edit` and `delete`, one
//! function each, called by the socket commands (and by anything else that changes messages).
//! Authors may edit and delete their own messages; moderators and admins may delete anyone's
//! (editing someone else's words is not a moderator's job: the message would still carry
//! its author's name).
//!
//! A change reads the message's retained frame, checks it (still there, not deleted, the
//! user's own), rewrites it ([`RetainedChat`]) and hands the broker the old frame, the new one
//! and the announcing `edit`/`delete` frame. The broker applies all three in one atomic step
//! only if the retained frame is still the one read; otherwise the change is read and checked
//! again, so two edits racing on two nodes both land, one after the other, and neither is lost.

use tracing::debug;

use crate::auth::Role;
use crate::broker::{Amendment, Broker, BrokerError};
use crate::protocol::{
    DeleteData, EditData, ErrorCode, EventKind, RetainedChat, RoomName, event_body, now_ms,
};
use crate::user::Identity;

/// How many times a change is read and tried again when the message changed under it.
const ATTEMPTS: usize = 5;

/// Why a change was not made.
#[derive(Debug, thiserror::Error)]
pub enum ChangeRefused {
    /// The message is someone else's.
    #[error("the message is not the user's own")]
    Forbidden,
    /// The room does not retain the message (never sent, deleted, or too old).
    #[error("the room does not retain that message")]
    NotFound,
    /// The broker could not be reached; nothing changed.
    #[error(transparent)]
    Unavailable(#[from] BrokerError),
}

impl ChangeRefused {
    /// The `error` frame code the socket answers with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Forbidden => ErrorCode::Forbidden,
            Self::NotFound => ErrorCode::NotFound,
            Self::Unavailable(_) => ErrorCode::Unavailable,
        }
    }
}

/// Changes the text of `user`'s chat message `id` in `room` to `text` (already checked).
/// Returns the id of the `edit` frame.
///
/// # Errors
/// [`ChangeRefused`]: not the user's, not retained, or the broker unreachable.
pub async fn edit<B: Broker>(
    broker: &B,
    room: &RoomName,
    user: &Identity,
    id: u64,
    text: &str,
) -> Result<u64, ChangeRefused> {
    let event = event_body(
        EventKind::Edit,
        room,
        user.json(),
        &EditData { id, text },
        now_ms(),
    );
    let author_only = |chat: &RetainedChat<'_>| chat.is_by(user.id());
    change(broker, room, id, &event, author_only, |chat| {
        chat.edited_to(text)
    })
    .await
}

/// Takes back chat message `id` in `room`: `user`'s own, or anyone's when `user` is a
/// moderator or admin. Returns the id of the `delete` frame.
///
/// # Errors
/// [`ChangeRefused`]: not the user's, not retained, or the broker unreachable.
pub async fn delete<B: Broker>(
    broker: &B,
    room: &RoomName,
    user: &Identity,
    id: u64,
) -> Result<u64, ChangeRefused> {
    let event = event_body(
        EventKind::Delete,
        room,
        user.json(),
        &DeleteData { id },
        now_ms(),
    );
    let author_or_moderator = |chat: &RetainedChat<'_>| {
        chat.is_by(user.id()) || user.user().role.is_some_and(Role::moderates)
    };
    change(broker, room, id, &event, author_or_moderator, |chat| {
        chat.deleted()
    })
    .await
}

/// The longest ban a kick may carry: a year.
pub const MAX_BAN: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

/// Removes user `user_id` from `room` on every node (their sockets close with 4003) and, with
/// a `ban` above zero (at most [`MAX_BAN`]), refuses their new sockets in the room until it
/// ends. Only moderators and admins may (`by`); `None` is the HTTP API, whose token is trusted.
///
/// # Errors
/// [`ChangeRefused::Forbidden`] for anyone else; [`ChangeRefused::Unavailable`] when the broker
/// is unreachable.
pub async fn kick<B: Broker>(
    broker: &B,
    room: &RoomName,
    by: Option<&Identity>,
    user_id: &str,
    ban: std::time::Duration,
) -> Result<(), ChangeRefused> {
    if by.is_some_and(|user| !user.user().role.is_some_and(Role::moderates)) {
        return Err(ChangeRefused::Forbidden);
    }
    broker.kick(room, user_id, ban.min(MAX_BAN)).await?;
    tracing::info!(room.id = %room, kicked.id = user_id, ban_s = ban.min(MAX_BAN).as_secs(), "user kicked");
    Ok(())
}

/// Reads, checks and rewrites message `id`, and has the broker swap it in and publish
/// `event`, again if the message changed meanwhile.
async fn change<B: Broker>(
    broker: &B,
    room: &RoomName,
    id: u64,
    event: &str,
    allowed: impl Fn(&RetainedChat<'_>) -> bool,
    rewrite: impl Fn(&RetainedChat<'_>) -> String,
) -> Result<u64, ChangeRefused> {
    for _ in 0..ATTEMPTS {
        let Some(expected) = broker.retained(room, id).await? else {
            return Err(ChangeRefused::NotFound);
        };
        let Some(chat) = RetainedChat::parse(&expected).filter(|chat| !chat.deleted) else {
            return Err(ChangeRefused::NotFound);
        };
        if !allowed(&chat) {
            return Err(ChangeRefused::Forbidden);
        }
        let replacement = rewrite(&chat);
        let amendment = Amendment {
            target: id,
            expected: &expected,
            replacement: &replacement,
            event,
        };
        if let Some(event_id) = broker.amend(room, &amendment).await? {
            return Ok(event_id);
        }
        debug!(
            message.id = id,
            "message changed while being changed; reading it again"
        );
    }
    // Changed under us every time: someone is changing it as fast as we can read it.
    Err(ChangeRefused::Unavailable(BrokerError::Reply(
        "the message kept changing",
    )))
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, VecDeque};
    use std::sync::Arc;

    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::broker::MemoryBroker;
    use crate::config::Config;
    use crate::hub::{Hub, SocketLink};
    use crate::metrics::Metrics;
    use crate::protocol::Frame;
    use crate::user::User;

    /// One step of a user's: a chat, or an edit or delete of the n-th chat sent so far
    /// (anyone's: changes of others' messages must be refused).
    #[derive(Debug, Clone)]
    enum Step {
        Chat,
        Edit(usize),
        Delete(usize),
    }

    fn step() -> impl Strategy<Value = (usize, Step)> {
        (
            0..3usize,
            prop_oneof![
                3 => Just(Step::Chat),
                2 => any::<usize>().prop_map(Step::Edit),
                1 => any::<usize>().prop_map(Step::Delete),
            ],
        )
    }

    fn user(n: usize) -> Identity {
        Identity::new(User {
            id: format!("user-{n}"),
            name: format!("user {n}"),
            image: String::new(),
            role: None,
            bot: false,
        })
    }

    /// What a page shows after applying `frames` in order: chat id → its latest state.
    fn applied(frames: &VecDeque<Frame>) -> BTreeMap<u64, Value> {
        let mut state = BTreeMap::new();
        for frame in frames {
            let frame: Value = serde_json::from_str(&frame.text()).unwrap();
            let target = frame["data"]["id"].as_u64();
            match (frame["type"].as_str().unwrap(), target) {
                ("chat", _) => {
                    state.insert(frame["id"].as_u64().unwrap(), frame);
                }
                ("edit", Some(id)) => {
                    let chat: &mut Value = state.get_mut(&id).unwrap();
                    chat["data"] = frame["data"]["text"].clone();
                    chat["edited"] = json!(true);
                }
                ("delete", Some(id)) => {
                    let chat: &mut Value = state.get_mut(&id).unwrap();
                    chat["data"] = json!("");
                    chat["deleted"] = json!(true);
                }
                _ => {}
            }
        }
        state
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the order of chats, edits and deletes from several users, every socket
        /// that applies the frames it got ends with what scrollback and a joining socket's
        /// history show; only authors' changes land.
        #[test]
        fn any_interleaving_ends_in_one_state_everywhere(steps in prop::collection::vec(step(), 1..60)) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let hub = Arc::new(Hub::new(Metrics::new("t")));
                let mut chat = Config::for_tests().chat;
                chat.history = 1000;
                let broker = MemoryBroker::new(hub.clone(), &chat);
                let room = RoomName::lobby();
                let links: Vec<Arc<SocketLink>> = (0..3).map(|_| Arc::new(SocketLink::new(10_000))).collect();
                let _registrations: Vec<_> = links
                    .iter()
                    .enumerate()
                    .map(|(n, link)| hub.register(&room, &user(n), link.clone()))
                    .collect();
                let mut sent: Vec<(u64, usize)> = Vec::new();
                let mut expected: BTreeMap<u64, (String, bool)> = BTreeMap::new();
                for (n, (who, step)) in steps.into_iter().enumerate() {
                    let author = user(who);
                    match step {
                        Step::Chat => {
                            let text = format!("s{n}");
                            let id = broker.publish(&room, &author, &text).await.unwrap();
                            sent.push((id, who));
                            expected.insert(id, (text, false));
                        }
                        Step::Edit(pick) | Step::Delete(pick) if sent.is_empty() => { let _ = pick; }
                        Step::Edit(pick) => {
                            let (id, by) = sent[pick % sent.len()];
                            let text = format!("e{n}");
                            let outcome = edit(&broker, &room, &author, id, &text).await;
                            match (by == who, expected[&id].1) {
                                (true, false) => {
                                    prop_assert!(outcome.is_ok());
                                    expected.insert(id, (text, false));
                                }
                                (true, true) => prop_assert!(matches!(outcome, Err(ChangeRefused::NotFound))),
                                (false, true) => prop_assert!(matches!(outcome, Err(ChangeRefused::NotFound))),
                                (false, false) => prop_assert!(matches!(outcome, Err(ChangeRefused::Forbidden))),
                            }
                        }
                        Step::Delete(pick) => {
                            let (id, by) = sent[pick % sent.len()];
                            let outcome = delete(&broker, &room, &author, id).await;
                            match (by == who, expected[&id].1) {
                                (true, false) => {
                                    prop_assert!(outcome.is_ok());
                                    expected.insert(id, (String::new(), true));
                                }
                                (_, true) => prop_assert!(matches!(outcome, Err(ChangeRefused::NotFound))),
                                (false, false) => prop_assert!(matches!(outcome, Err(ChangeRefused::Forbidden))),
                            }
                        }
                    }
                }
                let mut states = Vec::new();
                for link in &links {
                    let mut frames = VecDeque::new();
                    link.take_queued(&mut frames);
                    states.push(applied(&frames));
                }
                for state in &states {
                    prop_assert_eq!(state, &states[0]);
                }
                let shown: BTreeMap<u64, (String, bool)> = states[0]
                    .iter()
                    .map(|(id, chat)| (*id, (chat["data"].as_str().unwrap().to_owned(), chat["deleted"] == true)))
                    .collect();
                prop_assert_eq!(&shown, &expected);
                let page = broker.scrollback(&room, None, 1000).await.unwrap();
                let paged: BTreeMap<u64, Value> = page
                    .messages
                    .iter()
                    .map(|frame| (frame.id(), serde_json::from_str(&frame.text()).unwrap()))
                    .collect();
                prop_assert_eq!(&paged, &states[0]);
                let snapshot = broker.join(&room, &user(9), None).await.unwrap();
                let replayed: BTreeMap<u64, Value> = snapshot
                    .history
                    .iter()
                    .map(|frame| serde_json::from_str::<Value>(&frame.text()).unwrap())
                    .filter(|frame| frame["type"] == "chat")
                    .map(|frame| (frame["id"].as_u64().unwrap(), frame))
                    .collect();
                prop_assert_eq!(&replayed, &states[0]);
                Ok(())
            })?;
        }
    }
}
