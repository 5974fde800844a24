//! Hardware that may be absent (GPUs, temperature sensors): found by a probe, and
//! when the probe finds nothing, looked for again only after a bound, so a host
//! without the device pays nothing for it on each request while one that gains it
//! later (a driver loaded, a card attached after the agent started) shows it soon.
//!
//! Why a time bound rather than a hotplug signal: the sysfs class directories
//! (`/sys/class/hwmon`, `/sys/class/drm`) keep the mtime of their first lookup when
//! devices are added (kernfs updates a parent's times only once they were set
//! explicitly, fs/kernfs/dir.c `kernfs_add_one`), so a `stat` of them misses new
//! devices; kernel uevents (a `NETLINK_KOBJECT_UEVENT` socket) reach only the
//! initial network namespace, not an agent in a container reading its host's
//! `/sys`, and say nothing of a mounted or fake sysfs root.

use std::time::{Duration, Instant};

/// How long a probe that found nothing stands. A probe of an absent device lists a
/// directory or two (a few µs, on a blocking thread); once a minute that is nothing,
/// and a device that appears is shown within a minute.
pub(crate) const REPROBE_AFTER: Duration = Duration::from_secs(60);

/// A device found by a probe, or none and when to probe again.
#[derive(Debug)]
pub(crate) struct Probed<T> {
    state: State<T>,
    reprobe_after: Duration,
}

#[derive(Debug)]
enum State<T> {
    Found(T),
    Absent { next_probe: Instant },
}

impl<T> Probed<T> {
    /// Probes now.
    pub(crate) fn first(now: Instant, reprobe_after: Duration, probe: impl FnOnce() -> Option<T>) -> Self {
        let mut probed = Self { state: State::Absent { next_probe: now }, reprobe_after };
        probed.probe(now, probe);
        probed
    }

    /// The device, after probing again when none was found and the bound has passed.
    pub(crate) fn get(&mut self, now: Instant, probe: impl FnOnce() -> Option<T>) -> Option<&mut T> {
        if matches!(self.state, State::Absent { next_probe } if now >= next_probe) {
            self.probe(now, probe);
        }
        self.found_mut()
    }

    /// True when [`get`](Self::get) at `now` touches nothing: no device, no probe due.
    pub(crate) fn is_idle_at(&self, now: Instant) -> bool {
        matches!(self.state, State::Absent { next_probe } if now < next_probe)
    }

    /// The device, without probing.
    pub(crate) fn found(&self) -> Option<&T> {
        match &self.state {
            State::Found(device) => Some(device),
            State::Absent { .. } => None,
        }
    }

    /// The device, without probing.
    fn found_mut(&mut self) -> Option<&mut T> {
        match &mut self.state {
            State::Found(device) => Some(device),
            State::Absent { .. } => None,
        }
    }

    /// Probes now, whatever the state: a found device that went away is searched
    /// again at once (a driver reload renumbers hwmon devices).
    pub(crate) fn probe(&mut self, now: Instant, probe: impl FnOnce() -> Option<T>) {
        self.state = match probe() {
            Some(device) => State::Found(device),
            None => State::Absent { next_probe: now + self.reprobe_after },
        };
    }
}

/// The instant a collector's `never_waits` judged at. The collection that follows
/// uses it, so a probe cannot fall due between the two and run on the async worker.
#[derive(Debug, Default)]
pub(crate) struct JudgedAt(Option<Instant>);

impl JudgedAt {
    /// Now, remembered for the next [`take`](Self::take).
    pub(crate) fn judge(&mut self) -> Instant {
        *self.0.insert(Instant::now())
    }

    /// The instant judged at, or now when nothing was judged since the last call.
    pub(crate) fn take(&mut self) -> Instant {
        self.0.take().unwrap_or_else(Instant::now)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    const BOUND: Duration = Duration::from_secs(60);

    #[test]
    fn absent_device_is_probed_again_only_after_the_bound() {
        let start = Instant::now();
        let probes = Cell::new(0);
        let absent = || {
            probes.set(probes.get() + 1);
            None::<u32>
        };
        let mut probed = Probed::first(start, BOUND, absent);
        for seconds in [0, 1, 30, 59] {
            let now = start + Duration::from_secs(seconds);
            assert!(probed.is_idle_at(now));
            assert_eq!(probed.get(now, absent), None);
        }
        assert_eq!(probes.get(), 1);
        let due = start + BOUND;
        assert!(!probed.is_idle_at(due));
        assert_eq!(probed.get(due, || Some(7)), Some(&mut 7));
        assert!(!probed.is_idle_at(due + BOUND), "a found device is read, so never idle");
    }

    #[test]
    fn found_device_is_not_probed_again_unless_asked() {
        let start = Instant::now();
        let mut probed = Probed::first(start, BOUND, || Some(1));
        assert_eq!(probed.get(start + BOUND * 2, || panic!("a found device is not probed")), Some(&mut 1));
        probed.probe(start + BOUND * 2, || None);
        assert_eq!(probed.found_mut(), None);
        assert!(probed.is_idle_at(start + BOUND * 2) && !probed.is_idle_at(start + BOUND * 3));
    }

    #[test]
    fn judged_instant_is_used_once() {
        let mut judged = JudgedAt::default();
        let at = judged.judge();
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(judged.take(), at);
        assert!(judged.take() > at);
    }
}
