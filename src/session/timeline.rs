//! The pure maths of a session's timeline: which frame shows at an instant, which frame each
//! 40 ms display slot shows, and how a command or a timeline from another replica re-anchors it.
//! No actor, no I/O: the session actor ([`super::Session`]) owns one and asks it.

use std::time::{Duration, Instant};

use crate::clock::{wall_ms, TICK};
use crate::encode::PlayState;
use crate::race::FPS;
use crate::replication::{SharedTimeline, TimelineRefused};

use super::command::Command;

/// A session's play state, anchored in time: the current frame is computed from the clock
/// (anchor frame + elapsed × speed × 25), so late timer ticks never slow playback down.
#[derive(Debug, Clone)]
pub struct Timeline {
    playing: bool,
    speed: f64,
    anchor_frame: u32,
    /// The anchor on this process's monotonic clock, for computing frames.
    anchor_at: Instant,
    /// The same anchor in wall-clock Unix milliseconds, the clock replicas share.
    anchor_ms: i64,
    epoch: u64,
    last_frame: u32,
}

impl Timeline {
    pub fn new(total_frames: u32, playing: bool, now: Instant) -> Self {
        Self {
            playing,
            speed: 1.0,
            anchor_frame: 0,
            anchor_at: now,
            anchor_ms: wall_ms(),
            epoch: 1,
            last_frame: total_frames.saturating_sub(1),
        }
    }

    /// A timeline over `total_frames` that plays `shared` (already checked, or it starts paused
    /// at the first frame).
    pub fn joined(total_frames: u32, shared: &SharedTimeline, now: Instant) -> Self {
        let mut timeline = Self::new(total_frames, false, now);
        if let Err(reason) = timeline.adopt(shared) {
            tracing::debug!(%reason, "shared timeline refused");
        }
        timeline
    }

    /// This timeline as replicas share it.
    pub fn shared(&self) -> SharedTimeline {
        SharedTimeline {
            playing: self.playing,
            speed: self.speed,
            anchor_frame: self.anchor_frame,
            anchor_ms: self.anchor_ms,
            epoch: self.epoch,
        }
    }

    /// Takes over a timeline set elsewhere, converting its wall-clock anchor to this
    /// process's monotonic clock once. Refuses (and leaves this timeline as it was) one that
    /// fails [`SharedTimeline::check`].
    pub fn adopt(&mut self, shared: &SharedTimeline) -> Result<(), TimelineRefused> {
        shared.check()?;
        let (now, now_ms) = (Instant::now(), wall_ms());
        let offset = Duration::from_millis(now_ms.abs_diff(shared.anchor_ms));
        self.anchor_at = if shared.anchor_ms <= now_ms {
            now.checked_sub(offset).unwrap_or(now)
        } else {
            now.checked_add(offset).unwrap_or(now)
        };
        self.anchor_ms = shared.anchor_ms;
        self.playing = shared.playing;
        self.speed = shared.speed;
        self.anchor_frame = shared.anchor_frame.min(self.last_frame);
        self.epoch = shared.epoch;
        Ok(())
    }

    /// The frame to show at `now`, clamped to the last frame.
    pub fn frame_at(&self, now: Instant) -> u32 {
        if !self.playing {
            return self.anchor_frame;
        }
        let elapsed = now.saturating_duration_since(self.anchor_at).as_secs_f64();
        let advanced = (elapsed * self.speed * f64::from(FPS)).floor();
        (f64::from(self.anchor_frame) + advanced).min(f64::from(self.last_frame)) as u32
    }

    pub fn state(&self, now: Instant) -> PlayState {
        PlayState {
            playing: self.playing,
            speed: self.speed,
            frame: self.frame_at(now),
            epoch: self.epoch,
            anchor_frame: self.anchor_frame,
            anchor_ms: self.anchor_ms,
        }
    }

    pub fn playing(&self) -> bool {
        self.playing
    }

    /// The 40 ms display slot (counted from the anchor) that `now` falls in.
    pub fn slot_at(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.anchor_at).as_micros() / TICK.as_micros()) as u64
    }

    /// When display slot `slot` begins.
    pub fn slot_start(&self, slot: u64) -> Instant {
        self.anchor_at + Duration::from_micros(slot.saturating_mul(TICK.as_micros() as u64))
    }

    /// The frame shown during display slot `slot`: at speed s each slot advances s frames.
    /// Whole-number arithmetic on the slot keeps 1× exact (no float drift onto a neighbour).
    pub fn slot_frame(&self, slot: u64) -> u32 {
        if !self.playing {
            return self.anchor_frame;
        }
        let advanced = (slot as f64 * self.speed + 1e-9).floor();
        (f64::from(self.anchor_frame) + advanced).min(f64::from(self.last_frame)) as u32
    }

    pub fn last_frame(&self) -> u32 {
        self.last_frame
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// True once playback has reached the last frame and should stop there.
    pub fn at_end(&self, now: Instant) -> bool {
        self.playing && self.frame_at(now) >= self.last_frame
    }

    /// Applies a command: re-anchors at the current frame and starts a new epoch.
    pub fn apply(&mut self, command: &Command, now: Instant) {
        let frame = self.frame_at(now);
        match *command {
            // Playing from the last frame restarts the race rather than doing nothing.
            Command::Play => {
                self.playing = true;
                self.anchor_frame = if frame >= self.last_frame { 0 } else { frame };
            }
            Command::Pause => {
                self.playing = false;
                self.anchor_frame = frame;
            }
            Command::Seek(target) => self.anchor_frame = target.min(self.last_frame),
            Command::Speed(speed) => {
                self.speed = speed;
                self.anchor_frame = frame;
            }
        }
        self.anchor_ms = wall_ms() - now.elapsed().as_millis() as i64;
        self.anchor_at = now;
        self.epoch += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_timelines_from_elsewhere_are_checked_before_they_are_adopted() {
        let t0 = Instant::now();
        let mut tl = Timeline::new(1000, true, t0);
        let good = tl.shared();
        assert_eq!(good.check(), Ok(()));
        for (bad, what) in [
            (SharedTimeline { speed: 0.0, ..good }, "speed 0"),
            (
                SharedTimeline {
                    speed: -1.0,
                    ..good
                },
                "speed -1",
            ),
            (
                SharedTimeline {
                    speed: f64::NAN,
                    ..good
                },
                "speed NaN",
            ),
            (
                SharedTimeline {
                    speed: 1e300,
                    ..good
                },
                "speed 1e300",
            ),
            (
                SharedTimeline {
                    anchor_ms: i64::MAX,
                    ..good
                },
                "anchor_ms",
            ),
            (
                SharedTimeline {
                    anchor_ms: i64::MIN,
                    ..good
                },
                "anchor_ms",
            ),
            (
                SharedTimeline {
                    anchor_ms: 0,
                    ..good
                },
                "anchor_ms",
            ),
            (SharedTimeline { epoch: 0, ..good }, "epoch"),
        ] {
            let err = tl.adopt(&bad).unwrap_err().to_string();
            assert!(
                err.contains(what.split(' ').next().unwrap()),
                "{what}: {err}"
            );
            assert_eq!(tl.shared(), good, "{what}: left as it was");
        }
        let later = SharedTimeline {
            speed: 2.0,
            epoch: 9,
            ..good
        };
        tl.adopt(&later).unwrap();
        assert_eq!(tl.shared(), later);
    }

    #[test]
    fn frame_follows_the_clock_not_the_ticks() {
        let t0 = Instant::now();
        let mut tl = Timeline::new(1000, true, t0);
        assert_eq!(tl.frame_at(t0), 0);
        assert_eq!(tl.frame_at(t0 + Duration::from_millis(1000)), 25);
        tl.apply(&Command::Speed(4.0), t0 + Duration::from_secs(1));
        assert_eq!(tl.frame_at(t0 + Duration::from_secs(2)), 125);
        assert_eq!(tl.epoch(), 2);
    }

    #[test]
    fn pause_holds_and_seek_reanchors() {
        let t0 = Instant::now();
        let mut tl = Timeline::new(1000, true, t0);
        tl.apply(&Command::Pause, t0 + Duration::from_secs(2));
        assert_eq!(tl.frame_at(t0 + Duration::from_secs(60)), 50);
        tl.apply(&Command::Seek(900), t0 + Duration::from_secs(61));
        assert_eq!(tl.frame_at(t0 + Duration::from_secs(70)), 900);
        tl.apply(&Command::Play, t0 + Duration::from_secs(70));
        assert_eq!(
            tl.frame_at(t0 + Duration::from_secs(80)),
            999,
            "clamped at the end"
        );
        assert!(tl.at_end(t0 + Duration::from_secs(80)));
    }

    #[test]
    fn a_shared_timeline_gives_the_same_frames_elsewhere() {
        let t0 = Instant::now();
        let mut here = Timeline::new(100_000, true, t0);
        here.apply(&Command::Seek(5000), t0);
        here.apply(&Command::Speed(2.0), t0);
        let mut there = Timeline::new(100_000, false, Instant::now());
        there.adopt(&here.shared()).unwrap();
        assert_eq!(there.shared(), here.shared());
        let later = Instant::now() + Duration::from_secs(3);
        let (a, b) = (here.frame_at(later), there.frame_at(later));
        assert!(a.abs_diff(b) <= 1, "{a} vs {b}");
        assert!(a >= 5000 + 150 - 1, "playing at 2x: {a}");
    }

    #[test]
    fn play_at_the_end_restarts() {
        let t0 = Instant::now();
        let mut tl = Timeline::new(100, false, t0);
        tl.apply(&Command::Seek(99), t0);
        tl.apply(&Command::Play, t0);
        assert_eq!(tl.frame_at(t0), 0);
    }
}
