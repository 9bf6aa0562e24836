//! Every socket and timer of the speaker, each a small tokio task feeding the
//! instance's single event loop through one channel:
//!
//! ```text
//!  tcp_listener ─┐   connect ─┐   reader(peer) ─┐   timer(peer, t) ─┐   bfd ─┐
//!                └────────────┴─────────────────┴───────────────────┴────────┴─> instance
//!  instance ─> writer(peer) ─> TCP
//!  instance ─> bfd client ─> tabby-bfd instance (UDP 3784/4784)
//! ```
//! The BFD client starts a `tabby-bfd` instance when the first peer asks
//! for BFD, keeps one session per such peer and reports their state
//! changes back as [`IoEvent::BfdState`].
//! Socket options (source address, TCP MD5, TTL, GTSM) are applied here.
//! What is queued for a writer is counted in bytes ([`SendState`]): the
//! instance stops producing output for a peer above [`SEND_QUEUE_HIGH`] and
//! the writer tells it when the queue is back under [`SEND_QUEUE_LOW`]; a
//! writer that cannot write anything for the send hold time (RFC 9687)
//! reports it and exits, freeing its queue.

use crate::neighbor::fsm::Timer;
use crate::packet::error::DecodeError;
use crate::packet::message::Message;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Inputs from the I/O tasks to the instance.
#[derive(Debug)]
pub enum IoEvent {
    /// An inbound connection was accepted.
    Accepted(TcpStream, SocketAddr),
    /// An outbound connection attempt finished.
    Connected {
        /// Peer address.
        peer: IpAddr,
        /// Attempt id, to ignore stale results.
        attempt: u64,
        /// The stream, or why it failed.
        result: io::Result<TcpStream>,
    },
    /// Complete message frames (headers included) back to back, as many
    /// as one read brought in: one event and one buffer for all of them.
    Frames {
        /// Peer address.
        peer: IpAddr,
        /// Connection id.
        conn: u64,
        /// The frames, each checked by [`Message::frame_len_max`].
        frames: Vec<u8>,
    },
    /// A frame whose header is broken: the session must be reset.
    FrameError {
        /// Peer address.
        peer: IpAddr,
        /// Connection id.
        conn: u64,
        /// The header error.
        error: DecodeError,
    },
    /// The connection was closed by the peer or failed.
    Closed {
        /// Peer address.
        peer: IpAddr,
        /// Connection id.
        conn: u64,
    },
    /// The writer's queue fell under [`SEND_QUEUE_LOW`] after the instance
    /// asked to hear about it ([`SendState::want_drain`]).
    Drained {
        /// Peer address.
        peer: IpAddr,
        /// Connection id.
        conn: u64,
    },
    /// The writer could not write anything for the send hold time; it has
    /// exited and dropped its queue.
    SendStalled {
        /// Peer address.
        peer: IpAddr,
        /// Connection id.
        conn: u64,
    },
    /// A peer's graceful restart (stale routes) timer fired.
    RestartTimer {
        /// Peer address.
        peer: IpAddr,
        /// Generation, to ignore timers restarted since.
        generation: u64,
    },
    /// A timer fired.
    Timer {
        /// Peer address.
        peer: IpAddr,
        /// Which timer.
        timer: Timer,
        /// Generation, to ignore timers restarted since.
        generation: u64,
    },
    /// The BFD session with a peer changed state, or was just configured
    /// (then `old == new`).
    BfdState {
        /// Peer address.
        peer: IpAddr,
        /// State before.
        old: tabby_bfd::State,
        /// State now.
        new: tabby_bfd::State,
        /// A failure a client must act on (RFC 5882: not the peer's
        /// AdminDown).
        failure: bool,
        /// The local diagnostic.
        diag: tabby_bfd::Diag,
    },
    /// The BFD session with a peer cannot run.
    BfdError {
        /// Peer address.
        peer: IpAddr,
        /// Why.
        error: String,
    },
}

/// What the instance asks of its BFD client.
#[derive(Debug)]
pub enum BfdCommand {
    /// Protect `peer` with a BFD session of these options, bound to
    /// `local`; `None` removes it.
    Set {
        /// Peer address.
        peer: IpAddr,
        /// Local address.
        local: Option<IpAddr>,
        /// Options, or no session.
        opts: Option<tabby_bfd::SessionOpts>,
    },
    /// Take every session AdminDown (so peers do not see a failure), stop,
    /// and say so on `done`.
    Shutdown(oneshot::Sender<()>),
}

/// Starts a BFD instance: single hop and multihop, IPv6 as well where the
/// host has it.
async fn start_bfd() -> Result<tabby_bfd::BfdHandle, tabby_bfd::ApiError> {
    let mut cfg = tabby_bfd::InstanceConfig {
        single_hop: true,
        multihop: true,
        ipv6: true,
    };
    match tabby_bfd::start(cfg.clone()).await {
        Ok(h) => Ok(h),
        Err(_) => {
            cfg.ipv6 = false;
            tabby_bfd::start(cfg).await
        }
    }
}

/// Spawns the speaker's BFD client: it applies [`BfdCommand`]s in order
/// (so a peer removed and added again ends with a session) and forwards
/// every session's state changes to the instance.
pub fn spawn_bfd_client(
    mut cmds: mpsc::UnboundedReceiver<BfdCommand>,
    io: mpsc::Sender<IoEvent>,
) -> JoinHandle<()> {
    use std::collections::HashMap;
    use tabby_bfd::SessionOpts;
    tokio::spawn(async move {
        let mut handle: Option<tabby_bfd::BfdHandle> = None;
        let mut forwarder: Option<JoinHandle<()>> = None;
        let mut have: HashMap<IpAddr, (Option<IpAddr>, SessionOpts)> = HashMap::new();
        let error = |peer, error: String| IoEvent::BfdError { peer, error };
        let done = loop {
            let Some(cmd) = cmds.recv().await else {
                break None;
            };
            let (peer, local, opts) = match cmd {
                BfdCommand::Shutdown(done) => break Some(done),
                BfdCommand::Set { peer, local, opts } => (peer, local, opts),
            };
            let Some(opts) = opts else {
                if have.remove(&peer).is_some()
                    && let Some(h) = &handle
                    && let Err(e) = h.remove_session(peer).await
                {
                    tracing::warn!(%peer, error = %e, "removing the BFD session failed");
                }
                continue;
            };
            if handle.is_none() {
                match start_bfd().await {
                    Ok(h) => {
                        // Subscribed before any session exists: no change is missed.
                        let mut rx = h.subscribe();
                        let io = io.clone();
                        forwarder = Some(tokio::spawn(async move {
                            use tokio::sync::broadcast::error::RecvError;
                            loop {
                                let c = match rx.recv().await {
                                    Ok(c) => c,
                                    Err(RecvError::Lagged(n)) => {
                                        tracing::warn!(missed = n, "BFD state changes lost");
                                        continue;
                                    }
                                    Err(RecvError::Closed) => return,
                                };
                                let ev = IoEvent::BfdState {
                                    peer: c.peer,
                                    old: c.old,
                                    new: c.new,
                                    failure: c.is_failure(),
                                    diag: c.diag,
                                };
                                if io.send(ev).await.is_err() {
                                    return;
                                }
                            }
                        }));
                        handle = Some(h);
                    }
                    Err(e) => {
                        let _ = io.send(error(peer, format!("cannot start: {e}"))).await;
                        continue;
                    }
                }
            }
            let Some(h) = &handle else { continue };
            let r = match have.get(&peer) {
                Some((l, o)) if *l == local && *o == opts => Ok(()),
                Some((l, o)) if *l == local && o.multihop == opts.multihop => {
                    h.update_session(peer, opts.clone()).await
                }
                Some(_) => {
                    let _ = h.remove_session(peer).await;
                    h.add_session(peer, local, opts.clone()).await
                }
                None => h.add_session(peer, local, opts.clone()).await,
            };
            match r {
                Ok(()) => {
                    have.insert(peer, (local, opts));
                    // The state now: a peer configured again finds its
                    // session already Up.
                    let now = h
                        .sessions()
                        .await
                        .ok()
                        .and_then(|all| all.into_iter().find(|s| s.peer == peer));
                    if let Some(s) = now {
                        let ev = IoEvent::BfdState {
                            peer,
                            old: s.state,
                            new: s.state,
                            failure: false,
                            diag: s.diag,
                        };
                        let _ = io.send(ev).await;
                    }
                }
                Err(e) => {
                    have.remove(&peer);
                    let _ = io.send(error(peer, e.to_string())).await;
                }
            }
        };
        if let Some(h) = handle {
            let _ = h.shutdown().await;
        }
        if let Some(f) = forwarder {
            f.abort();
        }
        if let Some(done) = done {
            let _ = done.send(());
        }
    })
}

/// Socket options of one peer's connections.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SocketOptions {
    /// Local address to bind outbound connections to.
    pub source: Option<IpAddr>,
    /// TCP MD5 key.
    pub md5_key: Option<String>,
    /// TTL of sent packets (multihop eBGP).
    pub ttl: Option<u8>,
    /// GTSM: send with TTL 255 and accept only packets at most this many
    /// hops away.
    pub ttl_security_hops: Option<u8>,
}

fn apply_ttl<S: AsFd>(sock: &S, ipv6: bool, opts: &SocketOptions) -> io::Result<()> {
    let s = socket2::SockRef::from(sock);
    let ttl = if opts.ttl_security_hops.is_some() {
        Some(255)
    } else {
        opts.ttl
    };
    if let Some(ttl) = ttl {
        if ipv6 {
            s.set_unicast_hops_v6(u32::from(ttl))?;
        } else {
            s.set_ttl_v4(u32::from(ttl))?;
        }
    }
    if let Some(hops) = opts.ttl_security_hops {
        let min = 256u16.saturating_sub(u16::from(hops.max(1))) as u8;
        tabby_sys::tcp::set_min_ttl(sock.as_fd(), ipv6, min)?;
    }
    Ok(())
}

/// Binds the BGP listener.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(128)
}

/// Sets or clears (empty key) the MD5 key for connections from `peer` on
/// the listener.
pub fn set_listener_md5(listener: &TcpListener, peer: IpAddr, key: &str) -> io::Result<()> {
    // A dual-stack IPv6 listener sees IPv4 peers as v4-mapped addresses and
    // only takes keys given that way.
    let peer = match (listener.local_addr()?.is_ipv6(), peer) {
        (true, IpAddr::V4(a)) => IpAddr::V6(a.to_ipv6_mapped()),
        _ => peer,
    };
    tabby_sys::tcp::set_tcp_md5sig(listener.as_fd(), peer, key.as_bytes())
}

/// Applies TTL/GTSM options to an accepted stream.
pub fn configure_accepted(stream: &TcpStream, opts: &SocketOptions) -> io::Result<()> {
    let ipv6 = stream.peer_addr()?.is_ipv6();
    stream.set_nodelay(true)?;
    apply_ttl(stream, ipv6, opts)
}

/// Spawns the accept loop.
pub fn spawn_listener(
    listener: std::sync::Arc<TcpListener>,
    tx: mpsc::Sender<IoEvent>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, addr)) => {
                    if tx.send(IoEvent::Accepted(stream, addr)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    })
}

/// Opens an outbound connection with the peer's socket options.
pub async fn connect(remote: SocketAddr, opts: &SocketOptions) -> io::Result<TcpStream> {
    let sock = if remote.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(src) = opts.source {
        sock.bind(SocketAddr::new(src, 0))?;
    }
    if let Some(key) = &opts.md5_key {
        tabby_sys::tcp::set_tcp_md5sig(sock.as_fd(), remote.ip(), key.as_bytes())?;
    }
    apply_ttl(&sock, remote.is_ipv6(), opts)?;
    let stream = sock.connect(remote).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Spawns an outbound connection attempt reporting to the instance.
pub fn spawn_connect(
    peer: IpAddr,
    remote: SocketAddr,
    opts: SocketOptions,
    attempt: u64,
    timeout: Duration,
    tx: mpsc::Sender<IoEvent>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let result = match tokio::time::timeout(timeout, connect(remote, &opts)).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connecting to {remote} timed out"),
            )),
        };
        let _ = tx
            .send(IoEvent::Connected {
                peer,
                attempt,
                result,
            })
            .await;
    })
}

/// Bytes read per system call at most (what stays allocated per reader).
const READ_CHUNK: usize = 32 * 1024;

/// Reads frames from the socket until it closes or breaks framing. Frames
/// may be up to `max_len` bytes, read before each frame: the instance raises
/// it to 65535 once extended messages are negotiated (RFC 8654), before the
/// peer can send a long one.
pub fn spawn_reader(
    peer: IpAddr,
    conn: u64,
    mut rd: OwnedReadHalf,
    max_len: Arc<AtomicUsize>,
    tx: mpsc::Sender<IoEvent>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        // One buffer: frames are cut from its front, reads land in its spare
        // capacity.
        let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
        let mut start = 0;
        loop {
            // Hand out every complete frame already buffered, together.
            let mut end = start;
            let mut error = None;
            let max = max_len.load(Ordering::Acquire);
            loop {
                match Message::frame_len_max(&buf[end..], max) {
                    Ok(Some(len)) if buf.len() - end >= len => end += len,
                    Ok(_) => break,
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                }
            }
            if end > start {
                let frames = buf[start..end].to_vec();
                start = end;
                if tx
                    .send(IoEvent::Frames { peer, conn, frames })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if let Some(error) = error {
                let _ = tx.send(IoEvent::FrameError { peer, conn, error }).await;
                return;
            }
            buf.drain(..start);
            start = 0;
            // A long frame grew it: give the memory back once it is read.
            if buf.is_empty() && buf.capacity() > 4 * READ_CHUNK {
                buf = Vec::with_capacity(READ_CHUNK);
            }
            buf.reserve(READ_CHUNK);
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = tx.send(IoEvent::Closed { peer, conn }).await;
                    return;
                }
                Ok(_) => {}
            }
        }
    })
}

/// Encoded messages queued for a writer; shared between the peers that get
/// the same UPDATE.
pub type Bytes = std::sync::Arc<[u8]>;

/// Bytes queued for one peer above which the instance produces no more
/// output for it (what is owed is remembered, not queued).
pub const SEND_QUEUE_HIGH: usize = 4 << 20;

/// Bytes queued under which a writer asked to ([`SendState::want_drain`])
/// tells the instance to produce more.
pub const SEND_QUEUE_LOW: usize = SEND_QUEUE_HIGH / 4;

/// Send hold time when the session has no hold timer (RFC 9687 section 3:
/// 8 minutes).
pub const SEND_HOLD_WITHOUT_HOLD_TIMER: u32 = 480;

/// What the instance and a writer share about its queue.
#[derive(Debug)]
pub struct SendState {
    /// Bytes handed to the writer and not yet written.
    pub queued: AtomicUsize,
    /// The instance holds back output: report [`IoEvent::Drained`] once
    /// `queued` is at most [`SEND_QUEUE_LOW`].
    pub want_drain: AtomicBool,
    /// Seconds without any byte written before the writer gives up.
    pub send_hold_secs: AtomicU32,
}

impl SendState {
    /// A fresh state with the send hold time `secs`.
    pub fn new(secs: u32) -> Arc<SendState> {
        Arc::new(SendState {
            queued: AtomicUsize::new(0),
            want_drain: AtomicBool::new(false),
            send_hold_secs: AtomicU32::new(secs),
        })
    }

    /// Bytes queued now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}

/// Most queued messages handed to one `writev`.
const WRITE_SLICES: usize = 64;

/// Writes queued messages with `writev`, several per system call and
/// straight from the (possibly shared) encoded buffers; closing the queue
/// flushes and shuts the socket. Every message handed over must have been
/// counted in `state.queued`. When no byte can be written for the send hold
/// time it reports [`IoEvent::SendStalled`] and exits, dropping the queue.
pub fn spawn_writer(
    peer: IpAddr,
    conn: u64,
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    state: Arc<SendState>,
    tx: mpsc::Sender<IoEvent>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut pending: std::collections::VecDeque<Bytes> = std::collections::VecDeque::new();
        // Bytes of the first pending message already written.
        let mut offset = 0;
        loop {
            if pending.is_empty() {
                match rx.recv().await {
                    Some(b) => pending.push_back(b),
                    None => break,
                }
            }
            while pending.len() < WRITE_SLICES {
                match rx.try_recv() {
                    Ok(b) => pending.push_back(b),
                    Err(_) => break,
                }
            }
            let slices: Vec<std::io::IoSlice<'_>> = pending
                .iter()
                .enumerate()
                .map(|(i, b)| std::io::IoSlice::new(if i == 0 { &b[offset..] } else { b }))
                .collect();
            let hold = Duration::from_secs(u64::from(state.send_hold_secs.load(Ordering::Relaxed)));
            let n = match tokio::time::timeout(hold, wr.write_vectored(&slices)).await {
                Ok(Ok(n)) if n > 0 => n,
                Ok(_) => return,
                Err(_) => {
                    let _ = tx.send(IoEvent::SendStalled { peer, conn }).await;
                    // Dropping the receiver frees everything still queued.
                    return;
                }
            };
            drop(slices);
            let mut left = n;
            while let Some(first) = pending.front() {
                let rest = first.len() - offset;
                if left < rest {
                    offset += left;
                    break;
                }
                left -= rest;
                offset = 0;
                pending.pop_front();
            }
            let queued = state.queued.fetch_sub(n, Ordering::AcqRel) - n;
            if queued <= SEND_QUEUE_LOW && state.want_drain.swap(false, Ordering::AcqRel) {
                let _ = tx.send(IoEvent::Drained { peer, conn }).await;
            }
        }
        let _ = wr.shutdown().await;
    })
}

/// Spawns a one-shot timer.
pub fn spawn_timer(
    peer: IpAddr,
    timer: Timer,
    generation: u64,
    after: Duration,
    tx: mpsc::Sender<IoEvent>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        let _ = tx
            .send(IoEvent::Timer {
                peer,
                timer,
                generation,
            })
            .await;
    })
}

/// Spawns the graceful restart timer of a peer.
pub fn spawn_restart_timer(
    peer: IpAddr,
    generation: u64,
    after: Duration,
    tx: mpsc::Sender<IoEvent>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        let _ = tx.send(IoEvent::RestartTimer { peer, generation }).await;
    })
}

/// Sends one message on a stream we are about to drop (collision loser).
pub fn spawn_reject(stream: TcpStream, bytes: Vec<u8>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut stream = stream;
        let _ = stream.write_all(&bytes).await;
        let _ = stream.shutdown().await;
    })
}
