//! A room's retained chat messages, as the embedded broker keeps them: the last
//! `CONFAB_RETAIN_MESSAGES` chat frames, none older than `CONFAB_RETAIN_DAYS`, each in its
//! latest state. Scrollback pages back through them; an edit or delete finds its message here.
//! The Redis broker keeps the same in a sorted set per room (`docs/redis.md`).

use std::collections::VecDeque;
use std::time::Duration;

use crate::protocol::Frame;

/// One page of scrollback: chat frames oldest first, and whether older ones remain.
#[derive(Debug, Clone, Default)]
pub struct ScrollbackPage {
    /// The frames, oldest first.
    pub messages: Vec<Frame>,
    /// Whether the room retains messages older than the first one.
    pub more: bool,
}

/// A bounded, id-ordered run of a room's chat frames with the time each was sent.
#[derive(Debug, Clone)]
pub struct RetainedMessages {
    messages: VecDeque<(Frame, u64)>,
    capacity: usize,
    max_age_ms: u64,
}

impl RetainedMessages {
    /// Keeps at most `capacity` messages, none older than `max_age`.
    pub fn new(capacity: usize, max_age: Duration) -> Self {
        Self {
            messages: VecDeque::new(),
            capacity,
            max_age_ms: max_age.as_millis() as u64,
        }
    }

    /// Appends a chat `frame` sent at `ts_ms`, whose id is above every id held, dropping the
    /// oldest beyond the capacity and the age limit.
    pub fn push(&mut self, frame: Frame, ts_ms: u64) {
        debug_assert!(
            self.messages
                .back()
                .is_none_or(|(last, _)| last.id() < frame.id())
        );
        if self.capacity == 0 {
            return;
        }
        if self.messages.len() == self.capacity {
            self.messages.pop_front();
        }
        self.messages.push_back((frame, ts_ms));
        self.expire(ts_ms);
    }

    /// Drops the messages older than the age limit at `now_ms`.
    pub fn expire(&mut self, now_ms: u64) {
        let oldest_kept = now_ms.saturating_sub(self.max_age_ms);
        while self
            .messages
            .front()
            .is_some_and(|(_, ts)| *ts < oldest_kept)
        {
            self.messages.pop_front();
        }
        if self.messages.is_empty() {
            self.messages.shrink_to_fit();
        }
    }

    /// The message with this id, if retained and not older than the age limit at `now_ms`.
    pub fn get(&self, id: u64, now_ms: u64) -> Option<&Frame> {
        let index = self.index_of(id)?;
        let (frame, ts) = &self.messages[index];
        (*ts >= now_ms.saturating_sub(self.max_age_ms)).then_some(frame)
    }

    /// Puts `frame` in place of the message with its id. Returns whether it was there.
    pub fn replace(&mut self, frame: Frame) -> bool {
        match self.index_of(frame.id()) {
            Some(index) => {
                self.messages[index].0 = frame;
                true
            }
            None => false,
        }
    }

    /// Up to `limit` messages with ids below `before` (all when `None`), oldest first, none
    /// older than the age limit at `now_ms`.
    pub fn page(&self, before: Option<u64>, limit: usize, now_ms: u64) -> ScrollbackPage {
        let oldest_kept = now_ms.saturating_sub(self.max_age_ms);
        let end = before.map_or(self.messages.len(), |before| {
            self.messages
                .partition_point(|(frame, _)| frame.id() < before)
        });
        let fresh = self.messages.partition_point(|(_, ts)| *ts < oldest_kept);
        let start = end.saturating_sub(limit).max(fresh);
        ScrollbackPage {
            messages: self
                .messages
                .range(start..end.max(start))
                .map(|(frame, _)| frame.clone())
                .collect(),
            more: start > fresh,
        }
    }

    /// Whether nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// The time the newest message was sent, if any.
    pub fn newest_ts(&self) -> Option<u64> {
        self.messages.back().map(|(_, ts)| *ts)
    }

    fn index_of(&self, id: u64) -> Option<usize> {
        self.messages
            .binary_search_by_key(&id, |(frame, _)| frame.id())
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_MS: u64 = 24 * 3600 * 1000;

    fn retained(ids_and_ts: &[(u64, u64)], capacity: usize) -> RetainedMessages {
        let mut retained = RetainedMessages::new(capacity, Duration::from_millis(DAY_MS));
        for &(id, ts) in ids_and_ts {
            retained.push(Frame::new(id, format!("{{\"id\":{id}}}")), ts);
        }
        retained
    }

    fn ids(page: &ScrollbackPage) -> Vec<u64> {
        page.messages.iter().map(Frame::id).collect()
    }

    #[test]
    fn pages_go_back_from_before_oldest_first() {
        let retained = retained(&[(1, 0), (2, 0), (3, 0), (4, 0), (5, 0)], 10);
        let page = retained.page(None, 2, 0);
        assert_eq!((ids(&page), page.more), (vec![4, 5], true));
        let page = retained.page(Some(4), 2, 0);
        assert_eq!((ids(&page), page.more), (vec![2, 3], true));
        let page = retained.page(Some(2), 2, 0);
        assert_eq!((ids(&page), page.more), (vec![1], false));
        let page = retained.page(Some(1), 2, 0);
        assert_eq!((ids(&page), page.more), (vec![], false));
        let page = retained.page(Some(99), 10, 0);
        assert_eq!((ids(&page), page.more), (vec![1, 2, 3, 4, 5], false));
    }

    #[test]
    fn keeps_the_newest_up_to_capacity() {
        let retained = retained(&[(1, 0), (2, 0), (3, 0)], 2);
        assert_eq!(ids(&retained.page(None, 10, 0)), [2, 3]);
        assert!(retained.get(1, 0).is_none());
        assert!(retained.get(2, 0).is_some());
    }

    #[test]
    fn messages_past_the_age_limit_are_neither_listed_nor_found() {
        let mut retained = retained(&[(1, 0), (2, DAY_MS / 2), (3, DAY_MS)], 10);
        let now = DAY_MS + DAY_MS / 4;
        let page = retained.page(None, 10, now);
        assert_eq!((ids(&page), page.more), (vec![2, 3], false));
        assert!(retained.get(1, now).is_none());
        retained.expire(now);
        assert_eq!(ids(&retained.page(None, 10, 0)), [2, 3]);
        retained.expire(3 * DAY_MS);
        assert!(retained.is_empty());
    }

    #[test]
    fn a_replaced_message_keeps_its_place() {
        let mut retained = retained(&[(1, 0), (2, 0)], 10);
        assert!(retained.replace(Frame::new(1, "edited")));
        assert!(!retained.replace(Frame::new(7, "nothing")));
        assert_eq!(retained.get(1, 0).unwrap().text(), "edited");
        assert_eq!(ids(&retained.page(None, 10, 0)), [1, 2]);
    }
}
