//! Stages of a layer's pipeline moved to spare cores.
//!
//! A layer writer decompresses and hashes on its download thread (layer.rs):
//! with as many layers in flight as cores that is fastest, as a thread per
//! stage then only adds copies and wake-ups. With fewer (the last layer of a
//! pull, a pull of one layer, a machine with many cores) cores would idle
//! while one thread does everything, so a stage (the decoder, the hash of the
//! tar) moves to a thread of its own, fed in order through a bounded channel
//! of recycled buffers. The count of busy pipeline threads is process-wide:
//! concurrent pulls share the cores too.
//!
//! Measured (benches/bench_layers.py image: 10 layers, 1 GB gzip, 2.7 GB of
//! tar; 2 cores): one layer at a time, 7.4-8.0 s a pull inline, 4.9-5.2 s
//! with stages; three at a time (the default), the same or better.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::OnceLock;
use std::thread::{self, JoinHandle};

/// Bytes handed over at a time, and how many such buffers a stage may hold.
const BATCH: usize = 256 * 1024;
const DEPTH: usize = 8;

/// A consumer of a byte stream that can run on any thread.
pub(crate) trait Feed: Send + 'static {
    fn feed(&mut self, data: &[u8]);
}

/// Threads now working on layer pipelines: threads streaming a download
/// into a layer writer (fetch.rs), and stage threads.
static BUSY: AtomicUsize = AtomicUsize::new(0);

/// One busy pipeline thread, counted while this lives.
pub(crate) struct Busy(());

impl Busy {
    pub(crate) fn enter() -> Busy {
        BUSY.fetch_add(1, Ordering::Relaxed);
        Busy(())
    }

    /// Counts one more thread only if a core would otherwise idle. One more
    /// than the cores is allowed: a download thread waits on the socket and
    /// the disk part of the time, and a stage on the stage before it.
    fn spare() -> Option<Busy> {
        #[cfg(test)]
        if tests::FORCE.load(Ordering::Relaxed) {
            return Some(Busy::enter());
        }
        let limit = limit()?;
        BUSY.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < limit).then_some(n + 1)
        })
        .ok()
        .map(|_| Busy(()))
    }

    /// Gives this count back if more threads are busy than spare() allows
    /// (layers started after a stage moved away), atomically: of several
    /// stages seeing a crowd at once, only as many return as are too many.
    fn leave_if_crowded(self) -> Result<(), Busy> {
        #[cfg(test)]
        if tests::FORCE.load(Ordering::Relaxed) {
            return Err(self);
        }
        let limit = limit();
        let left = BUSY.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            limit.is_none_or(|limit| n > limit).then(|| n - 1)
        });
        match left {
            Ok(_) => {
                std::mem::forget(self); // counted down already
                Ok(())
            }
            Err(_) => Err(self),
        }
    }
}

/// Busy threads allowed, None on one core (a second thread only adds copies).
fn limit() -> Option<usize> {
    static CORES: OnceLock<usize> = OnceLock::new();
    let cores = *CORES.get_or_init(|| thread::available_parallelism().map_or(1, |n| n.get()));
    (cores > 1).then_some(cores + 1)
}

impl Drop for Busy {
    fn drop(&mut self) {
        BUSY.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A stage run here, or on a thread of its own once a core was spare.
pub(crate) struct Stage<T: Feed> {
    state: State<T>,
}

enum State<T> {
    Here(T),
    Away(Away<T>),
    /// Only while moving between Here and Away.
    Moving,
}

struct Away<T> {
    /// The stage thread's count; None once given back (see Stage::feed).
    busy: Option<Busy>,
    /// Filled up to BATCH, then sent.
    buf: Vec<u8>,
    tx: SyncSender<Vec<u8>>,
    /// Buffers the stage is done with.
    back: Receiver<Vec<u8>>,
    /// Buffers in existence (at most DEPTH).
    made: usize,
    thread: JoinHandle<Option<T>>,
}

impl<T: Feed> Stage<T> {
    pub(crate) fn new(inner: T) -> Stage<T> {
        Stage {
            state: State::Here(inner),
        }
    }

    pub(crate) fn feed(&mut self, data: &[u8]) {
        match &mut self.state {
            State::Here(_) => {
                if let Some(busy) = Busy::spare() {
                    self.move_away(busy);
                }
            }
            State::Away(away) => {
                if let Some(busy) = away.busy.take() {
                    match busy.leave_if_crowded() {
                        Ok(()) => self.come_back(),
                        Err(busy) => away.busy = Some(busy),
                    }
                }
            }
            State::Moving => unreachable!(),
        }
        match &mut self.state {
            State::Here(inner) => inner.feed(data),
            State::Away(away) => away.push(data),
            State::Moving => unreachable!(),
        }
    }

    /// Everything fed so far consumed; the stage back.
    pub(crate) fn into_inner(self) -> T {
        match self.state {
            State::Here(inner) => inner,
            State::Away(away) => away.finish(),
            State::Moving => unreachable!(),
        }
    }

    /// Waits for the stage thread to drain what it was sent (at most
    /// DEPTH batches) and goes on here.
    fn come_back(&mut self) {
        let State::Away(away) = std::mem::replace(&mut self.state, State::Moving) else {
            unreachable!()
        };
        self.state = State::Here(away.finish());
    }

    fn move_away(&mut self, busy: Busy) {
        let State::Here(inner) = std::mem::replace(&mut self.state, State::Moving) else {
            unreachable!()
        };
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(DEPTH);
        let (back_tx, back) = mpsc::sync_channel::<Vec<u8>>(DEPTH);
        // The stage itself is handed over once the thread exists: a refused
        // spawn (a limit on threads) leaves it here, to go on as before.
        let (hand_tx, hand_rx) = mpsc::sync_channel::<T>(1);
        let spawned = thread::Builder::new()
            .name("imgpull-stage".into())
            .spawn(move || {
                let mut inner = hand_rx.recv().ok()?;
                for chunk in rx {
                    inner.feed(&chunk);
                    // The owner dropped the stage (a discarded stream: a
                    // truncate, an error): the rest is not worth working on.
                    if back_tx.send(chunk).is_err() {
                        break;
                    }
                }
                Some(inner)
            });
        self.state = match spawned {
            Ok(thread) => {
                hand_tx
                    .send(inner)
                    .expect("the stage thread waits for its stage");
                State::Away(Away {
                    busy: Some(busy),
                    buf: Vec::with_capacity(BATCH),
                    tx,
                    back,
                    made: 1,
                    thread,
                })
            }
            // No thread to be had (a limit on threads): go on here (`busy`
            // is dropped, counted down).
            Err(_) => State::Here(inner),
        };
    }
}

impl<T> Away<T> {
    fn push(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let n = data.len().min(BATCH - self.buf.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() == BATCH {
                self.send();
            }
        }
    }

    fn send(&mut self) {
        let mut next = match self.back.try_recv() {
            Ok(buf) => buf,
            Err(_) if self.made < DEPTH => {
                self.made += 1;
                Vec::with_capacity(BATCH)
            }
            // All buffers queued or in use: wait for the stage (backpressure).
            Err(_) => self
                .back
                .recv()
                .unwrap_or_else(|_| Vec::with_capacity(BATCH)),
        };
        next.clear();
        let full = std::mem::replace(&mut self.buf, next);
        // The stage thread only ends when tx is dropped (or it panicked,
        // which finish() reports).
        let _ = self.tx.send(full);
    }

    fn finish(mut self) -> T {
        if !self.buf.is_empty() {
            self.send();
        }
        drop(self.tx);
        match self.thread.join() {
            Ok(inner) => inner.expect("the stage was handed over"),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::{Busy, Feed, Stage, BATCH, DEPTH};

    /// Every stage moves away at its first feed, whatever the cores: set by
    /// tests that check the threaded form (others that run meanwhile only
    /// take that form too, which must not change their results).
    pub(crate) static FORCE: AtomicBool = AtomicBool::new(false);

    /// One forcing (or inline) test at a time: another's end must not unset ours.
    static ONE: Mutex<()> = Mutex::new(());

    pub(crate) fn forced<R>(f: impl FnOnce() -> R) -> R {
        let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
        struct Unset;
        impl Drop for Unset {
            fn drop(&mut self) {
                FORCE.store(false, Ordering::Relaxed); // also when f panics
            }
        }
        let _unset = Unset;
        FORCE.store(true, Ordering::Relaxed);
        f()
    }

    /// Every stage stays on the thread feeding it meanwhile, as when all
    /// cores are busy (tests that run meanwhile see that too, which must not
    /// change their results).
    pub(crate) fn inline<R>(f: impl FnOnce() -> R) -> R {
        let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
        let _busy: Vec<Busy> = (0..super::limit().unwrap_or(0))
            .map(|_| Busy::enter())
            .collect();
        f()
    }

    #[derive(Default)]
    struct Collect {
        got: Vec<u8>,
        feeds: usize,
        thread: Option<String>,
    }

    impl Feed for Collect {
        fn feed(&mut self, data: &[u8]) {
            self.got.extend_from_slice(data);
            self.feeds += 1;
            self.thread = std::thread::current().name().map(str::to_owned);
        }
    }

    #[test]
    fn away_keeps_order_and_every_byte() {
        let data: Vec<u8> = (0..(DEPTH * 3 + 1) * BATCH + 123)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let got = forced(|| {
            let mut stage = Stage::new(Collect::default());
            // Pieces smaller than, equal to and larger than a batch.
            let mut rest = &data[..];
            for size in [1, 100, BATCH, 3 * BATCH + 5, 17].iter().cycle() {
                if rest.is_empty() {
                    break;
                }
                let n = (*size).min(rest.len());
                stage.feed(&rest[..n]);
                rest = &rest[n..];
            }
            stage.into_inner()
        });
        assert!(got.got == data, "bytes lost or reordered");
        assert_eq!(got.thread.as_deref(), Some("imgpull-stage"));
        // Batched: far fewer hand-overs than pieces fed.
        assert_eq!(got.feeds, data.len().div_ceil(BATCH));
    }

    #[test]
    fn a_stage_comes_back_and_moves_away_again() {
        let data: Vec<u8> = (0..10 * BATCH).map(|i| (i % 253) as u8).collect();
        let (a, rest) = data.split_at(3 * BATCH + 9);
        let (b, c) = rest.split_at(BATCH / 2);
        let got = forced(|| {
            let mut stage = Stage::new(Collect::default());
            stage.feed(a);
            assert!(matches!(stage.state, super::State::Away(_)));
            stage.come_back(); // as when crowded
            assert!(matches!(stage.state, super::State::Here(_)));
            // Fed here while Here: the move happens at the next feed.
            if let super::State::Here(inner) = &mut stage.state {
                inner.feed(b);
            }
            stage.feed(c);
            assert!(matches!(stage.state, super::State::Away(_)));
            stage.into_inner()
        });
        assert!(got.got == data, "bytes lost or reordered");
    }

    #[test]
    fn a_stage_never_fed_stays_here() {
        let stage = Stage::new(Collect::default());
        let got = stage.into_inner();
        assert!(got.got.is_empty() && got.thread.is_none());
    }

    #[test]
    fn dropping_an_away_stage_stops_its_thread() {
        struct Slow(Arc<AtomicUsize>);
        impl Feed for Slow {
            fn feed(&mut self, _data: &[u8]) {
                std::thread::sleep(Duration::from_millis(50));
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let fed = Arc::new(AtomicUsize::new(0));
        let stage = forced(|| {
            let mut stage = Stage::new(Slow(Arc::clone(&fed)));
            stage.feed(&vec![1u8; DEPTH * BATCH]);
            stage
        });
        // A discarded stream (a truncate, an error): no hang, no panic, and
        // the batches still queued are not worked on.
        drop(stage);
        std::thread::sleep(Duration::from_millis(100 * DEPTH as u64));
        let n = fed.load(Ordering::SeqCst);
        assert!(
            n < DEPTH - 2,
            "{n} of {DEPTH} batches worked on after the drop"
        );
    }
}
