//! The look-ahead schedule of one window encoding: which frame indices go out now, given the
//! session's [`Timeline`], the window length and the present. Pure arithmetic, no actor and no
//! bytes: the session actor ([`super::Session`]) asks it on every tick and publishes what it
//! answers (docs/PROTOCOL.md, "Window").
//!
//! Windows are cut on the grid of 40 ms display slots counted from the timeline's anchor. When
//! an epoch starts, one window covers two window lengths from the present slot on; after that,
//! each next window goes out once the display reaches the first slot of the last one sent, so
//! a client always holds between one and two window lengths of what comes next.

use std::time::{Duration, Instant};

use crate::clock::TICK;

use super::timeline::Timeline;

/// Where the schedule of the current epoch stands.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Display slots per window (at least one).
    window_slots: u64,
    /// The epoch being scheduled; `None` until the first window, and after [`Self::reset`].
    epoch: Option<u64>,
    /// The first slot not yet sent.
    next_slot: u64,
    /// Nothing more is due in this epoch: the last frame, or the paused frame, went out.
    done: bool,
}

/// What [`Schedule::due`] answers: the windows to send now, oldest first, each as the frame
/// indices it holds (increasing).
#[derive(Debug, Default, PartialEq)]
pub struct Due {
    /// The schedule started over (a new epoch, or it fell behind the present): what was sent
    /// before belongs to the past.
    pub restarted: bool,
    pub windows: Vec<Vec<u32>>,
}

impl Schedule {
    /// A schedule of windows `window` long (rounded down to whole 40 ms slots, at least one).
    pub fn new(window: Duration) -> Self {
        Self {
            window_slots: (window.as_micros() / TICK.as_micros()).max(1) as u64,
            epoch: None,
            next_slot: 0,
            done: false,
        }
    }

    /// The timeline changed: the next [`Self::due`] starts a fresh window at the present.
    pub fn reset(&mut self) {
        self.epoch = None;
    }

    /// The windows due by `now`: when the epoch is new, the present and one more window
    /// length at once (paused: the one frame shown); then one window length each time the
    /// display reaches the start of the last window sent.
    pub fn due(&mut self, timeline: &Timeline, now: Instant) -> Due {
        let mut due = Due::default();
        let epoch = timeline.epoch();
        let present = timeline.slot_at(now);
        // Restart in a new epoch, or when nobody asked for a while and the schedule fell behind.
        let behind = timeline.playing() && self.next_slot <= present;
        if self.epoch != Some(epoch) || behind {
            self.epoch = Some(epoch);
            self.next_slot = present;
            self.done = false;
            due.restarted = true;
            if !timeline.playing() {
                self.done = true;
                due.windows.push(vec![timeline.frame_at(now)]);
                return due;
            }
            due.windows
                .push(self.take(timeline, present + 2 * self.window_slots));
        }
        while !self.done
            && timeline.playing()
            && self.next_slot >= self.window_slots
            && now >= timeline.slot_start(self.next_slot - self.window_slots)
        {
            due.windows
                .push(self.take(timeline, self.next_slot + self.window_slots));
        }
        due
    }

    /// The frames shown in display slots `next_slot..to`, once each; the schedule moves on to
    /// `to`, or is done if the last frame is among them.
    fn take(&mut self, timeline: &Timeline, to: u64) -> Vec<u32> {
        let last = timeline.last_frame();
        let from = self.next_slot;
        let mut indices: Vec<u32> = Vec::with_capacity((to - from) as usize);
        for slot in from..to {
            let frame = timeline.slot_frame(slot);
            if indices.last() != Some(&frame) {
                indices.push(frame);
            }
            if frame >= last {
                self.done = true;
                break;
            }
        }
        self.next_slot = to;
        indices
    }
}

#[cfg(test)]
mod tests {
    use super::super::command::Command;
    use super::*;

    const WINDOW: Duration = Duration::from_secs(1);

    /// `slots` display slots after `t0`.
    fn at(t0: Instant, slots: u32) -> Instant {
        t0 + TICK * slots
    }

    fn playing_at(speed: f64, total_frames: u32, t0: Instant) -> Timeline {
        let mut timeline = Timeline::new(total_frames, true, t0);
        timeline.apply(&Command::Speed(speed), t0);
        timeline
    }

    #[test]
    fn a_new_epoch_sends_two_window_lengths_then_one_per_window_length() {
        let t0 = Instant::now();
        let timeline = playing_at(1.0, 10_000, t0);
        let mut schedule = Schedule::new(WINDOW);
        let first = schedule.due(&timeline, t0);
        assert!(first.restarted);
        assert_eq!(first.windows, [(0..50).collect::<Vec<u32>>()]);
        // Nothing more until the display reaches the second half of what was sent.
        for slot in [0, 1, 12, 24] {
            assert_eq!(
                schedule.due(&timeline, at(t0, slot)),
                Due::default(),
                "slot {slot}"
            );
        }
        let next = schedule.due(&timeline, at(t0, 25));
        assert!(!next.restarted);
        assert_eq!(next.windows, [(50..75).collect::<Vec<u32>>()]);
        assert_eq!(schedule.due(&timeline, at(t0, 49)), Due::default());
        assert_eq!(
            schedule.due(&timeline, at(t0, 50)).windows,
            [(75..100).collect::<Vec<u32>>()]
        );
    }

    #[test]
    fn a_new_epoch_restarts_at_the_present() {
        let t0 = Instant::now();
        let mut timeline = playing_at(1.0, 10_000, t0);
        let mut schedule = Schedule::new(WINDOW);
        schedule.due(&timeline, t0);
        let later = at(t0, 30);
        timeline.apply(&Command::Seek(5000), later);
        let due = schedule.due(&timeline, later);
        assert!(due.restarted);
        assert_eq!(due.windows, [(5000..5050).collect::<Vec<u32>>()]);
        // A reset (what the session does on every state change) restarts even in one epoch.
        schedule.reset();
        let again = schedule.due(&timeline, later);
        assert!(again.restarted);
        assert_eq!(again.windows, due.windows);
    }

    #[test]
    fn a_schedule_nobody_asked_for_a_while_starts_over_at_the_present() {
        let t0 = Instant::now();
        let timeline = playing_at(1.0, 10_000, t0);
        let mut schedule = Schedule::new(WINDOW);
        schedule.due(&timeline, t0);
        let due = schedule.due(&timeline, at(t0, 200));
        assert!(due.restarted);
        assert_eq!(due.windows, [(200..250).collect::<Vec<u32>>()]);
    }

    #[test]
    fn paused_sends_the_one_frame_and_nothing_more() {
        let t0 = Instant::now();
        let mut timeline = playing_at(1.0, 10_000, t0);
        timeline.apply(&Command::Seek(321), t0);
        timeline.apply(&Command::Pause, t0);
        let mut schedule = Schedule::new(WINDOW);
        let due = schedule.due(&timeline, at(t0, 3));
        assert!(due.restarted);
        assert_eq!(due.windows, [vec![321]]);
        for slot in [4, 25, 50, 1000] {
            assert_eq!(
                schedule.due(&timeline, at(t0, slot)),
                Due::default(),
                "slot {slot}"
            );
        }
    }

    #[test]
    fn a_quarter_speed_window_holds_each_frame_once() {
        let t0 = Instant::now();
        let timeline = playing_at(0.25, 10_000, t0);
        let mut schedule = Schedule::new(WINDOW);
        // Fifty slots at 0.25x show frames 0 to 12, each for four slots (12 for two).
        assert_eq!(
            schedule.due(&timeline, t0).windows,
            [(0..=12).collect::<Vec<u32>>()]
        );
        // Slots 50 to 74: frames 12 (slot 50 still shows it) to 18.
        assert_eq!(
            schedule.due(&timeline, at(t0, 25)).windows,
            [(12..=18).collect::<Vec<u32>>()]
        );
    }

    #[test]
    fn a_sixteen_times_window_holds_every_sixteenth_frame() {
        let t0 = Instant::now();
        let timeline = playing_at(16.0, 100_000, t0);
        let mut schedule = Schedule::new(WINDOW);
        let first = schedule.due(&timeline, t0).windows;
        assert_eq!(first, [(0..50).map(|j| j * 16).collect::<Vec<u32>>()]);
        let next = schedule.due(&timeline, at(t0, 25)).windows;
        assert_eq!(next, [(50..75).map(|j| j * 16).collect::<Vec<u32>>()]);
    }

    #[test]
    fn the_last_frame_ends_the_schedule() {
        let t0 = Instant::now();
        let timeline = playing_at(1.0, 60, t0);
        let mut schedule = Schedule::new(WINDOW);
        assert_eq!(
            schedule.due(&timeline, t0).windows,
            [(0..50).collect::<Vec<u32>>()]
        );
        assert_eq!(
            schedule.due(&timeline, at(t0, 25)).windows,
            [(50..60).collect::<Vec<u32>>()],
            "the last window stops at the last frame"
        );
        for slot in [26, 50, 74] {
            assert_eq!(
                schedule.due(&timeline, at(t0, slot)),
                Due::default(),
                "slot {slot}"
            );
        }
    }

    #[test]
    fn a_window_shorter_than_a_slot_is_one_slot() {
        let t0 = Instant::now();
        let timeline = playing_at(1.0, 100, t0);
        let mut schedule = Schedule::new(Duration::from_millis(1));
        assert_eq!(schedule.due(&timeline, t0).windows, [vec![0, 1]]);
        assert_eq!(schedule.due(&timeline, at(t0, 1)).windows, [vec![2]]);
    }
}
