//! Cancelling a fetch blocked on its socket.
//!
//! `Transfer::cancel()` sets a flag the fetch looks at between reads, but a
//! read waiting on a silent server only returns at its timeout (the stall
//! window, 30 s by default). So every connection of a Fetcher's agent is
//! made through [`InterruptibleConnector`], which keeps the connection's
//! socket handles (ureq's `ShutdownHandle`, the same that `Agent::shutdown`
//! uses); while a fetch runs, the connection it uses hands them to the
//! fetch's [`Interrupt`], and `Interrupt::cancel` shuts that socket down
//! from the cancelling thread: the blocked read (or write, or TLS
//! handshake) returns at once, and the server sees the connection close.
//! A TCP connect in progress is not interrupted (ureq cannot): it keeps to
//! the connect timeout.
//!
//! Which fetch a connection serves is only known when it is used (pooled
//! connections serve one fetch after another), and a fetch runs on one
//! thread: the fetch marks its thread ([`Interrupt::enter`]), and the
//! connection attaches itself to the marked fetch at each read and write.

use std::cell::RefCell;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, DefaultConnector, NextTimeout, ShutdownHandle, Transport,
};

type Handles = Vec<Weak<dyn ShutdownHandle>>;

/// The cancel flag of one Transfer, and the sockets its fetch is using.
#[derive(Default)]
pub struct Interrupt {
    cancelled: AtomicBool,
    sockets: Mutex<Handles>,
}

impl fmt::Debug for Interrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Interrupt")
            .field("cancelled", &self.cancelled())
            .finish_non_exhaustive()
    }
}

/// Each fetch on a thread gets a new mark, so that a connection attaches
/// again to a Transfer used for a second fetch (a retry after a 401).
static MARKS: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static CURRENT: RefCell<Option<(Arc<Interrupt>, u64)>> = const { RefCell::new(None) };
}

impl Interrupt {
    pub fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Set the flag and shut down the sockets in use by the fetch.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        let sockets = std::mem::take(&mut *self.lock());
        shut(&sockets);
    }

    /// Mark this thread as running a fetch for `this` until the guard drops;
    /// then the sockets it used are forgotten (they go back to the pool, to
    /// serve other fetches that a later cancel of this one must not touch).
    pub fn enter(this: &Arc<Interrupt>) -> Entered {
        let mark = MARKS.fetch_add(1, Ordering::Relaxed);
        let outer = CURRENT.with(|c| c.borrow_mut().replace((this.clone(), mark)));
        Entered {
            interrupt: this.clone(),
            outer,
        }
    }

    fn attach(&self, handles: &[Weak<dyn ShutdownHandle>]) {
        self.lock().extend(handles.iter().cloned());
        // A cancel between the flag's check and the push above saw none of
        // these: shut them here (SeqCst: one of the two sees the other).
        if self.cancelled() {
            shut(&std::mem::take(&mut *self.lock()));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Handles> {
        // A panic elsewhere leaves a list of weak handles, still usable.
        self.sockets.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn shut(sockets: &[Weak<dyn ShutdownHandle>]) {
    for handle in sockets.iter().filter_map(Weak::upgrade) {
        handle.shutdown();
    }
}

/// While alive, the connections used on this thread attach to a fetch's
/// [`Interrupt`] (see [`Interrupt::enter`]).
pub struct Entered {
    interrupt: Arc<Interrupt>,
    outer: Option<(Arc<Interrupt>, u64)>,
}

impl Drop for Entered {
    fn drop(&mut self) {
        CURRENT.with(|c| *c.borrow_mut() = self.outer.take());
        self.interrupt.lock().clear();
    }
}

/// The fetch running on this thread, if any, and its mark.
fn current() -> Option<(Arc<Interrupt>, u64)> {
    CURRENT.with(|c| c.borrow().clone())
}

/// ureq's default connector, keeping each connection's socket handles so
/// that the fetch using it can shut it down.
#[derive(Debug, Default)]
pub struct InterruptibleConnector {
    inner: DefaultConnector,
}

impl Connector<()> for InterruptibleConnector {
    type Out = InterruptibleTransport;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<()>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        let handles: Arc<Mutex<Handles>> = Arc::default();
        let agent_register = details.register_shutdown.clone();
        let kept = handles.clone();
        let register = Arc::new(move |handle: Weak<dyn ShutdownHandle>| {
            kept.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(handle.clone());
            // The connect and TLS handshake run on the fetch's thread: a
            // cancel meanwhile shuts the new socket too.
            if let Some((interrupt, _)) = current() {
                interrupt.attach(std::slice::from_ref(&handle));
            }
            agent_register(handle)
        });
        let ours = ConnectionDetails {
            uri: details.uri,
            addrs: details.addrs.clone(),
            config: details.config,
            request_level: details.request_level,
            resolver: details.resolver,
            now: details.now,
            timeout: details.timeout,
            current_time: details.current_time.clone(),
            run_connector: details.run_connector.clone(),
            register_shutdown: register,
        };
        let Some(inner) = self.inner.connect(&ours, chained)? else {
            return Ok(None);
        };
        let handles = std::mem::take(&mut *handles.lock().unwrap_or_else(|e| e.into_inner()));
        // Attached to this thread's fetch already, at registration.
        let attached = current().map_or(0, |(_, mark)| mark);
        Ok(Some(InterruptibleTransport {
            inner,
            handles,
            attached,
        }))
    }
}

/// A connection that, at each read and write, makes sure the fetch running
/// on the thread can shut it down.
pub struct InterruptibleTransport {
    inner: Box<dyn Transport>,
    handles: Handles,
    /// The mark of the fetch it last attached to (0: none).
    attached: u64,
}

impl fmt::Debug for InterruptibleTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InterruptibleTransport")
            .field("inner", &self.inner)
            .field("attached", &self.attached)
            .finish_non_exhaustive()
    }
}

impl InterruptibleTransport {
    fn attach(&mut self) {
        if let Some((interrupt, mark)) = current() {
            if mark != self.attached {
                self.attached = mark;
                interrupt.attach(&self.handles);
            }
        }
    }
}

impl Transport for InterruptibleTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.inner.buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.attach();
        self.inner.transmit_output(amount, timeout)
    }

    fn maybe_await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.attach();
        self.inner.maybe_await_input(timeout)
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.attach();
        self.inner.await_input(timeout)
    }

    fn is_open(&mut self) -> bool {
        self.inner.is_open()
    }

    fn is_tls(&self) -> bool {
        self.inner.is_tls()
    }
}
