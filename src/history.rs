//! The last `CONFAB_HISTORY` chat/join/left/edit/delete frames of a room, as the embedded broker keeps them.
//!
//! A joining socket replays them before its `list` (contract guarantee 2). The Redis broker
//! keeps the same thing in a Redis list; both hand out [`Frame`]s that are shared, not copied.

use std::collections::VecDeque;

use crate::protocol::Frame;

/// A bounded, id-ordered run of a room's most recent frames. Owned by the room's entry in the
/// embedded broker and dropped with it.
#[derive(Debug, Clone)]
pub struct RoomHistory {
    frames: VecDeque<Frame>,
    capacity: usize,
}

impl RoomHistory {
    /// An empty history that keeps at most `capacity` frames (`0` keeps none).
    pub fn new(capacity: usize) -> Self {
        Self {
            frames: VecDeque::with_capacity(capacity.min(16)),
            capacity,
        }
    }

    /// Appends `frame`, whose id must be above every id already held, dropping the oldest frame
    /// when full.
    pub fn push(&mut self, frame: Frame) {
        debug_assert!(frame.id() > self.last_id(), "history ids must increase");
        if self.capacity == 0 {
            return;
        }
        if self.frames.len() == self.capacity {
            self.frames.pop_front();
        }
        self.frames.push_back(frame);
    }

    /// The id of the newest frame held, `0` when empty.
    pub fn last_id(&self) -> u64 {
        self.frames.back().map_or(0, Frame::id)
    }

    /// The frames a socket replays on connect: all held, or only those with an id above `since`.
    pub fn replay(&self, since: Option<u64>) -> Vec<Frame> {
        let since = since.unwrap_or(0);
        let start = self.frames.partition_point(|frame| frame.id() <= since);
        self.frames.range(start..).cloned().collect()
    }

    /// Puts `frame` in place of the held frame with its id (an edited or deleted chat message
    /// shows in its latest state). Returns whether it was held.
    pub fn replace(&mut self, frame: Frame) -> bool {
        match self.frames.binary_search_by_key(&frame.id(), Frame::id) {
            Ok(index) => {
                self.frames[index] = frame;
                true
            }
            Err(_) => false,
        }
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history_of(ids: &[u64], capacity: usize) -> RoomHistory {
        let mut history = RoomHistory::new(capacity);
        for &id in ids {
            history.push(Frame::new(id, format!("{{\"id\":{id}}}")));
        }
        history
    }

    fn ids(frames: &[Frame]) -> Vec<u64> {
        frames.iter().map(Frame::id).collect()
    }

    #[test]
    fn keeps_only_the_newest_frames() {
        let history = history_of(&[1, 2, 3, 4, 5], 3);
        assert_eq!(ids(&history.replay(None)), [3, 4, 5]);
        assert_eq!(history.last_id(), 5);
    }

    #[test]
    fn replays_only_frames_after_since() {
        let history = history_of(&[10, 20, 30, 40], 10);
        let cases = [
            (None, vec![10, 20, 30, 40]),
            (Some(0), vec![10, 20, 30, 40]),
            (Some(20), vec![30, 40]),
            (Some(25), vec![30, 40]),
            (Some(40), vec![]),
            (Some(99), vec![]),
        ];
        for (since, expected) in cases {
            assert_eq!(ids(&history.replay(since)), expected, "since {since:?}");
        }
    }

    #[test]
    fn a_zero_capacity_history_keeps_nothing() {
        let history = history_of(&[1, 2], 0);
        assert!(history.is_empty());
        assert_eq!(history.last_id(), 0);
    }
}
