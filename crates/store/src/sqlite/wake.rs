//! How a [`super::SqliteStore`]'s watches learn that another process wrote to the file,
//! without polling while nothing happens.
//!
//! One thread per store (started by its first watch) holds one inotify instance on the
//! database file, its WAL and their directory. When they change it reads the store
//! revision once and, only if it moved, wakes every watch stream; a safety poll
//! ([`super::SqliteOptions::poll_interval`], 1 s) catches anything inotify missed.
//!
//! A commit becomes visible to readers only after the writer's fsync, which makes no
//! inotify event: the last page written to the WAL may be seen before the commit is.
//! So every Tabby writer rings a doorbell after each commit, touching the database
//! file's timestamps (`utimensat` by path: opening and closing a descriptor of the
//! file would drop the process's SQLite locks on it), and readers check at once on that
//! event. Pages written without a doorbell following (another program writing the
//! file) are checked 10 ms later and then again with growing pauses for a while.
//!
//! The watchers' own reads write nothing to these files, so they wake nothing. When
//! inotify cannot be used (`max_user_instances` reached, [`Wake::Poll`] chosen) the
//! thread checks every [`super::SqliteOptions::fallback_poll_interval`] instead: still
//! one query per tick for the whole store, not one per watch stream.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, OFlag};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::pipe2;

use super::Inner;

/// The pause before the first look at pages written without a doorbell.
const FIRST_RECHECK: Duration = Duration::from_millis(10);
/// The longest pause between two such looks; after it, the safety poll takes over.
const LAST_RECHECK: Duration = Duration::from_millis(320);

/// How a store's watches learn of writes made by other processes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Wake {
    /// inotify on the store files, with a slow safety poll; falls back to [`Wake::Poll`]
    /// (with a warning) when inotify cannot be set up.
    #[default]
    Inotify,
    /// Check the store revision every `fallback_poll_interval`.
    Poll,
}

/// Work done by a store's watches so far, for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WatchStats {
    /// Reads of the store revision made to find out whether another process wrote.
    pub checks: u64,
    /// Reads of the event log by watch streams.
    pub polls: u64,
    /// How the watches are woken now; `None` before the first watch.
    pub wake: Option<Wake>,
}

/// The counters behind [`WatchStats`].
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) checks: AtomicU64,
    pub(super) polls: AtomicU64,
    /// Set once inotify could not be set up: warn once per store.
    pub(super) warned: AtomicBool,
}

/// What one inotify event says about the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Signal {
    /// A write was committed (a writer's doorbell, or a journal removed by the
    /// process that last used it): check now.
    Committed,
    /// Pages were written: their commit may become visible a little later.
    Written,
    /// The WAL file was created: watch it; pages may follow.
    WalCreated,
    /// The event queue overflowed: anything may have happened.
    Lost,
}

/// When to read the store revision: at once on a commit, a little after pages written
/// without a doorbell (then with doubling pauses up to [`LAST_RECHECK`]), and one
/// safety interval after the last check. Pure: it is told the time.
#[derive(Clone, Debug)]
pub(super) struct Schedule {
    interval: Duration,
    /// The last check, or when the schedule started.
    last_check: Instant,
    /// The next look at unconfirmed pages, and the pause to the one after.
    recheck: Option<(Instant, Duration)>,
}

impl Schedule {
    /// A schedule whose safety poll runs every `interval`.
    pub(super) fn new(interval: Duration, now: Instant) -> Schedule {
        Schedule {
            interval,
            last_check: now,
            recheck: None,
        }
    }

    /// Takes one signal; returns whether to check now.
    pub(super) fn signal(&mut self, signal: Signal, now: Instant) -> bool {
        match signal {
            Signal::Committed => {
                // The doorbell comes after the commit is visible, so pages written
                // before it need no second look.
                self.recheck = None;
                true
            }
            Signal::Written | Signal::WalCreated => {
                self.arm(now);
                false
            }
            Signal::Lost => {
                self.arm(now);
                true
            }
        }
    }

    /// Looks at unconfirmed pages within [`FIRST_RECHECK`]; an armed look is never put
    /// off, so that a stream of writes cannot starve it.
    fn arm(&mut self, now: Instant) {
        let soon = now + FIRST_RECHECK;
        self.recheck = Some(match self.recheck {
            Some((at, _)) if at <= soon => (at, FIRST_RECHECK * 2),
            _ => (soon, FIRST_RECHECK * 2),
        });
    }

    /// When the next timed check is due.
    pub(super) fn deadline(&self) -> Instant {
        let safety = self.last_check + self.interval;
        match self.recheck {
            Some((at, _)) => at.min(safety),
            None => safety,
        }
    }

    /// Whether a timed check is due at `now`; moves the recheck to its next pause.
    pub(super) fn due(&mut self, now: Instant) -> bool {
        let mut due = now >= self.last_check + self.interval;
        if let Some((at, pause)) = self.recheck
            && now >= at
        {
            due = true;
            self.recheck = (pause <= LAST_RECHECK).then(|| (now + pause, pause * 2));
        }
        due
    }

    /// A check was made at `now`: the safety poll starts over.
    pub(super) fn checked(&mut self, now: Instant) {
        self.last_check = now;
    }
}

/// Which watch and which names in the directory stand for what.
#[derive(Clone, Debug)]
pub(super) struct Names {
    pub(super) dir: i32,
    pub(super) db: i32,
    pub(super) wal: Option<i32>,
    pub(super) wal_name: OsString,
    pub(super) journal_name: OsString,
}

impl Names {
    /// What an event (`wd`, `mask`, and `name` for an event in the directory) means.
    pub(super) fn classify(
        &self,
        wd: i32,
        mask: AddWatchFlags,
        name: Option<&OsStr>,
    ) -> Option<Signal> {
        if mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
            return Some(Signal::Lost);
        }
        if wd == self.db || Some(wd) == self.wal {
            if mask.contains(AddWatchFlags::IN_ATTRIB) {
                return Some(Signal::Committed);
            }
            if mask.contains(AddWatchFlags::IN_MODIFY) {
                return Some(Signal::Written);
            }
            return None;
        }
        if wd != self.dir {
            return None;
        }
        let name = name?;
        let appeared = mask.intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO);
        let gone = mask.intersects(AddWatchFlags::IN_DELETE | AddWatchFlags::IN_MOVED_FROM);
        if name == self.wal_name.as_os_str() {
            if appeared {
                return Some(Signal::WalCreated);
            }
            if gone {
                // The last connection checkpointed the WAL into the file and removed it.
                return Some(Signal::Committed);
            }
        }
        if name == self.journal_name.as_os_str() && gone {
            // A writer in rollback-journal mode commits by removing its journal.
            return Some(Signal::Committed);
        }
        None
    }
}

/// One inotify instance watching a store file, its WAL and their directory.
struct FileWatch {
    inotify: Inotify,
    wal: PathBuf,
    names: Names,
}

/// Events on the WAL and the database file themselves.
const FILE_EVENTS: AddWatchFlags = AddWatchFlags::IN_MODIFY.union(AddWatchFlags::IN_ATTRIB);

impl FileWatch {
    /// Sets up the watches on the store file `db` (symbolic links resolved, as SQLite
    /// resolves them to name the WAL).
    fn new(db: &Path) -> io::Result<FileWatch> {
        let (Some(dir), Some(file_name)) = (db.parent(), db.file_name()) else {
            return Err(io::Error::other(format!(
                "{} has no parent directory",
                db.display()
            )));
        };
        let with_suffix = |suffix: &str| {
            let mut name = file_name.to_os_string();
            name.push(suffix);
            name
        };
        let (wal_name, journal_name) = (with_suffix("-wal"), with_suffix("-journal"));
        let wal = dir.join(&wal_name);
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        // The directory first, so that a WAL created from here on is reported.
        let dir_wd = inotify.add_watch(
            dir,
            AddWatchFlags::IN_CREATE
                | AddWatchFlags::IN_DELETE
                | AddWatchFlags::IN_MOVED_FROM
                | AddWatchFlags::IN_MOVED_TO
                | AddWatchFlags::IN_ONLYDIR,
        )?;
        let db_wd = inotify.add_watch(db, FILE_EVENTS)?;
        let wal_wd = watch_wal(&inotify, &wal);
        let names = Names {
            dir: dir_wd.as_raw(),
            db: db_wd.as_raw(),
            wal: wal_wd.map(WatchDescriptor::as_raw),
            wal_name,
            journal_name,
        };
        Ok(FileWatch {
            inotify,
            wal,
            names,
        })
    }

    /// The signals of the events queued so far (none when there are none).
    fn read(&mut self) -> io::Result<Vec<Signal>> {
        let mut signals = Vec::new();
        loop {
            let events = match self.inotify.read_events() {
                Ok(events) => events,
                Err(Errno::EAGAIN) => return Ok(signals),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            for event in &events {
                let Some(signal) =
                    self.names
                        .classify(event.wd.as_raw(), event.mask, event.name.as_deref())
                else {
                    continue;
                };
                if signal == Signal::WalCreated {
                    self.names.wal =
                        watch_wal(&self.inotify, &self.wal).map(WatchDescriptor::as_raw);
                }
                signals.push(signal);
            }
        }
    }
}

/// Watches the WAL when it exists (it is created by the first connection to open the
/// file and removed by the last one to close it).
fn watch_wal(inotify: &Inotify, wal: &Path) -> Option<WatchDescriptor> {
    match inotify.add_watch(wal, FILE_EVENTS) {
        Ok(wd) => Some(wd),
        Err(Errno::ENOENT) => None,
        Err(e) => {
            tracing::debug!(wal = %wal.display(), error = %e, "cannot watch the WAL file");
            None
        }
    }
}

/// Tells readers in other processes that a commit is visible: sets the store file's
/// timestamps to now (by path: see the module docs), which they see as `IN_ATTRIB`.
/// Best effort: a missed doorbell costs them the later look or the safety poll.
pub(super) fn ring_doorbell(path: &Path) {
    if let Err(e) = utimensat(
        AT_FDCWD,
        path,
        &TimeSpec::UTIME_NOW,
        &TimeSpec::UTIME_NOW,
        UtimensatFlags::FollowSymlink,
    ) {
        tracing::debug!(path = %path.display(), error = %e, "cannot touch the store file");
    }
}

/// The thread that wakes a store's watches. A thread rather than a task: it outlives
/// any one Tokio runtime, and waits on the inotify descriptor with plain `poll(2)`.
pub(super) struct Waker {
    /// The write end of a pipe the thread also waits on: dropping it stops the thread.
    _stop: OwnedFd,
    thread: std::thread::JoinHandle<()>,
    pub(super) mode: Wake,
}

impl Waker {
    /// Whether the thread still runs (it ends only with the store, or on a bug).
    pub(super) fn is_running(&self) -> bool {
        !self.thread.is_finished()
    }
}

/// Starts the thread that wakes `inner`'s watches.
pub(super) fn start(inner: &Arc<Inner>) -> io::Result<Waker> {
    let options = &inner.options;
    let files = match options.wake {
        Wake::Poll => None,
        Wake::Inotify => match FileWatch::new(&inner.file) {
            Ok(files) => Some(files),
            Err(e) => {
                if !inner.counters.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        endpoint = %inner.endpoint,
                        error = %e,
                        "cannot watch the store file with inotify \
                         (fs.inotify.max_user_instances reached?); \
                         watches poll every {:?} instead",
                        options.fallback_poll_interval
                    );
                }
                None
            }
        },
    };
    let (mode, every) = match files {
        Some(_) => (Wake::Inotify, options.poll_interval),
        None => (Wake::Poll, options.fallback_poll_interval),
    };
    let (stopped, stop) = pipe2(OFlag::O_CLOEXEC)?;
    let store = Arc::downgrade(inner);
    let thread = std::thread::Builder::new()
        .name("tabby-store-wake".to_string())
        .spawn(move || run(&store, files, &stopped, every))?;
    Ok(Waker {
        _stop: stop,
        thread,
        mode,
    })
}

/// The thread: waits for events, the next timed check or the end of the store;
/// checks when due; repeats.
fn run(store: &Weak<Inner>, mut files: Option<FileWatch>, stopped: &OwnedFd, every: Duration) {
    let mut schedule = Schedule::new(every, Instant::now());
    loop {
        let wait = schedule
            .deadline()
            .saturating_duration_since(Instant::now());
        let mut fds = vec![PollFd::new(stopped.as_fd(), PollFlags::POLLIN)];
        if let Some(watch) = &files {
            fds.push(PollFd::new(watch.inotify.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, timeout(wait)) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                // Not expected with valid descriptors; do not spin on it.
                tracing::warn!(error = %e, "waiting for store file events failed");
                std::thread::sleep(every);
            }
        }
        if fds[0].any().unwrap_or(true) {
            // The store is gone (the pipe's write end was closed).
            return;
        }
        drop(fds);
        let now = Instant::now();
        let mut check = false;
        if let Some(watch) = files.as_mut() {
            match watch.read() {
                Ok(signals) => {
                    for signal in signals {
                        check |= schedule.signal(signal, now);
                    }
                }
                Err(e) => {
                    let Some(inner) = store.upgrade() else { return };
                    let every = inner.options.fallback_poll_interval;
                    tracing::warn!(
                        endpoint = %inner.endpoint,
                        error = %e,
                        "reading inotify events failed; watches poll every {every:?} instead"
                    );
                    files = None;
                    schedule = Schedule::new(every, now);
                    check = true;
                }
            }
        }
        check |= schedule.due(now);
        if check {
            let Some(inner) = store.upgrade() else { return };
            inner.check_blocking();
            drop(inner);
            schedule.checked(Instant::now());
        }
    }
}

/// `wait` as a `poll(2)` timeout, rounded up to whole milliseconds (rounding down would
/// wake just before the deadline and spin until it).
fn timeout(wait: Duration) -> PollTimeout {
    let ms = wait.as_nanos().div_ceil(1_000_000);
    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn idle_checks_only_at_the_safety_interval() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Duration::from_secs(1), t0);
        assert_eq!(s.deadline(), at(t0, 1000));
        assert!(!s.due(at(t0, 999)));
        assert!(s.due(at(t0, 1000)));
        s.checked(at(t0, 1000));
        assert_eq!(s.deadline(), at(t0, 2000));
    }

    #[test]
    fn a_doorbell_checks_at_once_and_confirms_earlier_pages() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Duration::from_secs(1), t0);
        assert!(!s.signal(Signal::Written, at(t0, 1)), "pages alone wait");
        assert_eq!(s.deadline(), at(t0, 11));
        assert!(s.signal(Signal::Committed, at(t0, 3)));
        s.checked(at(t0, 3));
        assert_eq!(
            s.deadline(),
            at(t0, 1003),
            "no second look after a doorbell"
        );
    }

    #[test]
    fn pages_without_a_doorbell_are_looked_at_with_growing_pauses_then_left_to_the_safety_poll() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Duration::from_secs(1), t0);
        s.signal(Signal::Written, t0);
        let mut looks = Vec::new();
        let mut now = t0;
        while s.deadline() < at(t0, 1000) {
            now = s.deadline();
            assert!(s.due(now));
            s.checked(now);
            looks.push(now.duration_since(t0).as_millis());
        }
        assert_eq!(looks, [10, 30, 70, 150, 310, 630]);
        assert_eq!(s.deadline(), now + Duration::from_secs(1));
    }

    #[test]
    fn a_stream_of_writes_cannot_put_the_look_off() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Duration::from_secs(1), t0);
        for ms in 0..9 {
            s.signal(Signal::Written, at(t0, ms));
        }
        assert_eq!(s.deadline(), at(t0, 10));
        assert!(s.due(at(t0, 10)));
        s.checked(at(t0, 10));
        // Writes go on: the next look comes at most 10 ms after the latest.
        s.signal(Signal::Written, at(t0, 11));
        assert_eq!(s.deadline(), at(t0, 21));
    }

    #[test]
    fn a_lost_queue_checks_now_and_looks_again() {
        let t0 = Instant::now();
        let mut s = Schedule::new(Duration::from_secs(1), t0);
        assert!(s.signal(Signal::Lost, t0));
        s.checked(t0);
        assert_eq!(s.deadline(), at(t0, 10));
    }

    fn names() -> Names {
        Names {
            dir: 1,
            db: 2,
            wal: Some(3),
            wal_name: "store.db-wal".into(),
            journal_name: "store.db-journal".into(),
        }
    }

    #[test]
    fn events_are_classified_by_watch_and_name() {
        use AddWatchFlags as F;
        let n = names();
        let wal = Some(OsStr::new("store.db-wal"));
        let journal = Some(OsStr::new("store.db-journal"));
        let other = Some(OsStr::new("agent.log"));
        let cases: [(i32, AddWatchFlags, Option<&OsStr>, Option<Signal>); 14] = [
            (2, F::IN_ATTRIB, None, Some(Signal::Committed)),
            (3, F::IN_ATTRIB, None, Some(Signal::Committed)),
            (2, F::IN_MODIFY, None, Some(Signal::Written)),
            (3, F::IN_MODIFY, None, Some(Signal::Written)),
            (3, F::IN_IGNORED, None, None),
            (1, F::IN_CREATE, wal, Some(Signal::WalCreated)),
            (1, F::IN_MOVED_TO, wal, Some(Signal::WalCreated)),
            (1, F::IN_DELETE, wal, Some(Signal::Committed)),
            (1, F::IN_DELETE, journal, Some(Signal::Committed)),
            (1, F::IN_CREATE, journal, None),
            (1, F::IN_DELETE, other, None),
            (1, F::IN_CREATE, None, None),
            (7, F::IN_MODIFY, None, None),
            (-1, F::IN_Q_OVERFLOW, None, Some(Signal::Lost)),
        ];
        for (wd, mask, name, want) in cases {
            assert_eq!(n.classify(wd, mask, name), want, "{wd} {mask:?} {name:?}");
        }
        let without_wal = Names { wal: None, ..n };
        assert_eq!(without_wal.classify(3, F::IN_MODIFY, None), None);
    }
}
