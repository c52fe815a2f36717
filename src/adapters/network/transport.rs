//! Peer transport: raft messages travel to other nodes as ordinary Redis commands,
//! `RAFT.MSG <dbid> <sender_id> <msg>...`, on each node's normal Redis port.
//!
//! One thread ("raft") runs a tokio current-thread runtime: the driver's task (see
//! `raft_thread::driver`), the peer listener, and the peer connections. Each peer has a
//! bounded queue and one task that connects, optionally authenticates, then batches queued
//! messages into pipelined `RAFT.MSG` commands while the other half of the connection reads
//! the replies. Delivery is best effort: raft retransmits, so on trouble the transport drops
//! messages, reconnects with backoff, and reports the peer as unreachable so the driver can
//! tell raft. See docs/TRANSPORT.md.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpSocket;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, Notify};

use crate::adapters::network::tls::{self, PeerTls};
use crate::core::resp::{encode_command, parse_value, RespLimits, RespValue};

pub const RAFT_MSG_COMMAND: &str = "RAFT.MSG";
/// Asked on a peer's Redis port: the port of its own peer listener (0: none).
pub const PEER_PORT_COMMAND: &str = "RAFT._PEER_PORT";
/// A member answers `REMOVED ...` to messages from a node whose removal it applied.
pub const REMOVED_ERROR_PREFIX: &str = "REMOVED";

/// Batches written but not yet answered, per peer; beyond this the writer waits.
const MAX_BATCHES_IN_FLIGHT: usize = 64;
/// Messages per `RAFT.MSG`, whatever their size.
const MAX_MESSAGES_PER_BATCH: usize = 1_024;
/// Framing bytes per argument (`$<len>\r\n` + `\r\n`) counted against `max_batch_bytes`.
const ARG_OVERHEAD_BYTES: usize = 16;
const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(2);
/// A zero reconnect interval must not turn a dead peer into a busy loop.
const MIN_RECONNECT_BACKOFF: Duration = Duration::from_millis(10);
/// Per-peer log lines are throttled to one per this interval.
const PEER_LOG_INTERVAL: Duration = Duration::from_secs(10);
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Capacity the write buffer of a peer connection keeps between batches.
const RETAINED_FRAME_BYTES: usize = 64 * 1024;
/// Slowest transfer rate a healthy peer link is assumed to sustain: a reply may take
/// `response_timeout` plus the time to push the batch at this rate.
const MIN_LINK_BYTES_PER_SEC: u64 = 1024 * 1024;
/// How long stopping waits for DNS lookups still running on the blocking pool.
const RUNTIME_SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

pub struct TransportConfig {
    pub my_id: u64,
    /// Our `host:port`, sent as `<id>@<host:port>` so a node that does not know us yet
    /// (it just joined) can answer; empty to send the bare id.
    pub my_addr: String,
    pub dbid: String,
    /// Local address outgoing sockets bind to before connecting, so that firewall rules on
    /// node addresses also cut node-to-node traffic. Host only, no port.
    pub source_host: Option<String>,
    pub connection_timeout: Duration,
    pub response_timeout: Duration,
    pub reconnect_interval: Duration,
    pub queue_bound_per_peer: usize,
    /// Bytes per `RAFT.MSG` command (a single larger message still goes alone).
    pub max_batch_bytes: usize,
    pub cluster_user: String,
    /// When non-empty, every connection starts with `AUTH`. Never logged.
    pub cluster_password: String,
    /// `Some`: every connection is TLS (`raft.tls-enabled yes`).
    pub tls: Option<PeerTls>,
}

impl fmt::Debug for TransportConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportConfig")
            .field("my_id", &self.my_id)
            .field("dbid", &self.dbid)
            .field("source_host", &self.source_host)
            .field("connection_timeout", &self.connection_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("reconnect_interval", &self.reconnect_interval)
            .field("queue_bound_per_peer", &self.queue_bound_per_peer)
            .field("max_batch_bytes", &self.max_batch_bytes)
            .field("cluster_user", &self.cluster_user)
            .field("cluster_password", &"<hidden>")
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    UnknownPeer,
    QueueFull,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::UnknownPeer => write!(f, "unknown peer"),
            SendError::QueueFull => write!(f, "peer queue is full"),
        }
    }
}

impl std::error::Error for SendError {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStats {
    pub id: u64,
    pub addr: String,
    pub connected: bool,
    /// Seconds since the current connection was established, 0 when not connected.
    pub last_conn_secs: u64,
    pub conn_errors: u64,
    pub conn_oks: u64,
    pub messages_sent: u64,
    /// Dropped because the queue was full or the peer was unreachable.
    pub messages_dropped: u64,
    /// `RAFT.MSG` batches the peer answered with an error.
    pub error_replies: u64,
}

/// Callback of [`Transport::request`].
pub type RequestDone = Box<dyn FnOnce(Result<RespValue, String>) + Send>;

#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<TransportConfig>,
    runtime: tokio::runtime::Handle,
    peers: Mutex<HashMap<u64, PeerEntry>>,
    unreachable: Arc<Mutex<BTreeSet<u64>>>,
    /// A peer answered that this node's removal is committed.
    told_removed: Arc<AtomicBool>,
    stop: Arc<Notify>,
    stopped: AtomicBool,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.notify_one();
    }
}

/// Each peer has two connections ("lanes"): appends travel on the data lane, everything
/// else (heartbeats, votes, responses, ReadIndex) on the control lane, so a large entry
/// being written never delays a heartbeat behind it (which would cost the leader its
/// quorum, check-quorum, with short election timeouts). Raft tolerates the reordering
/// between lanes; within a lane order is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lane {
    Data,
    Control,
}

impl Lane {
    fn of(message: &Message) -> Lane {
        match message.get_msg_type() {
            MessageType::MsgAppend | MessageType::MsgSnapshot => Lane::Data,
            _ => Lane::Control,
        }
    }
}

struct PeerEntry {
    addr: String,
    data_queue: mpsc::Sender<Message>,
    control_queue: mpsc::Sender<Message>,
    counters: Arc<PeerCounters>,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl PeerEntry {
    fn abort(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[derive(Default)]
struct PeerCounters {
    connected_at: Mutex<Option<Instant>>,
    conn_errors: AtomicU64,
    conn_oks: AtomicU64,
    messages_sent: AtomicU64,
    messages_dropped: AtomicU64,
    error_replies: AtomicU64,
    /// Payload bytes of the messages waiting in this peer's queue.
    queued_bytes: AtomicU64,
}

/// Bound on the payload bytes queued for one peer. Raft resends what is dropped, but a
/// follower slow to take a huge entry would otherwise get it queued again on every
/// heartbeat answer, each copy read back from the log file: memory without bound.
const MAX_QUEUED_BYTES_PER_PEER: u64 = 64 * 1024 * 1024;

/// Entry and snapshot payload bytes a message carries.
fn payload_bytes(message: &Message) -> u64 {
    let entries: usize = message
        .get_entries()
        .iter()
        .map(|entry| entry.data.len() + entry.context.len())
        .sum();
    (entries + message.get_snapshot().data.len()) as u64
}

impl PeerCounters {
    /// Fresh counters for a new connection task that keep the history of the old one.
    fn carried_from(old: &PeerCounters) -> PeerCounters {
        let carry = |counter: &AtomicU64| AtomicU64::new(counter.load(Ordering::Relaxed));
        PeerCounters {
            connected_at: Mutex::new(None),
            conn_errors: carry(&old.conn_errors),
            conn_oks: carry(&old.conn_oks),
            messages_sent: carry(&old.messages_sent),
            messages_dropped: carry(&old.messages_dropped),
            error_replies: carry(&old.error_replies),
            queued_bytes: AtomicU64::new(0),
        }
    }

    fn stats(&self, id: u64, addr: &str) -> PeerStats {
        let connected_at = *lock(&self.connected_at);
        PeerStats {
            id,
            addr: addr.to_string(),
            connected: connected_at.is_some(),
            last_conn_secs: connected_at.map_or(0, |at| at.elapsed().as_secs()),
            conn_errors: self.conn_errors.load(Ordering::Relaxed),
            conn_oks: self.conn_oks.load(Ordering::Relaxed),
            messages_sent: self.messages_sent.load(Ordering::Relaxed),
            messages_dropped: self.messages_dropped.load(Ordering::Relaxed),
            error_replies: self.error_replies.load(Ordering::Relaxed),
        }
    }
}

/// A poisoned lock only means another thread panicked mid-update of plain data.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Transport {
    pub fn start(config: TransportConfig) -> Transport {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("could not build the raft transport runtime");
        let stop = Arc::new(Notify::new());
        let inner = Inner {
            config: Arc::new(config),
            runtime: runtime.handle().clone(),
            peers: Mutex::new(HashMap::new()),
            unreachable: Arc::new(Mutex::new(BTreeSet::new())),
            told_removed: Arc::new(AtomicBool::new(false)),
            stop: stop.clone(),
            stopped: AtomicBool::new(false),
            thread: Mutex::new(None),
        };
        let thread = std::thread::Builder::new()
            .name("raft".into())
            .spawn(move || {
                runtime.block_on(stop.notified());
                runtime.shutdown_timeout(RUNTIME_SHUTDOWN_GRACE);
            })
            .expect("could not start the raft transport thread");
        *lock(&inner.thread) = Some(thread);
        Transport {
            inner: Arc::new(inner),
        }
    }

    /// Runs `task` on the transport's thread until the transport stops (the peer
    /// listener runs here, beside the outgoing connections).
    pub fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        if !self.inner.stopped.load(Ordering::Acquire) {
            self.inner.runtime.spawn(task);
        }
    }

    /// Makes the peer set exactly `peers` (this node's own id is ignored): new peers get a
    /// connection task, removed peers' tasks end, a changed address reconnects.
    pub fn set_peers(&self, peers: &[(u64, String)]) {
        if self.inner.stopped.load(Ordering::Acquire) {
            return;
        }
        let mut current = lock(&self.inner.peers);
        current.retain(|id, entry| {
            let keep = peers.iter().any(|(wanted, _)| wanted == id);
            if !keep {
                entry.abort();
            }
            keep
        });
        for (id, addr) in peers {
            if *id == self.inner.config.my_id {
                continue;
            }
            let counters = match current.get(id) {
                Some(entry) if entry.addr == *addr => continue,
                Some(entry) => {
                    entry.abort();
                    PeerCounters::carried_from(&entry.counters)
                }
                None => PeerCounters::default(),
            };
            let entry = self.spawn_peer(*id, addr.clone(), Arc::new(counters));
            current.insert(*id, entry);
        }
    }

    fn spawn_peer(&self, id: u64, addr: String, counters: Arc<PeerCounters>) -> PeerEntry {
        let bound = self.inner.config.queue_bound_per_peer.max(1);
        let spawn_lane = |lane: Lane| {
            let (queue, queue_rx) = mpsc::channel(bound);
            let link = PeerLink {
                id,
                addr: addr.clone(),
                lane,
                config: self.inner.config.clone(),
                counters: counters.clone(),
                unreachable: self.inner.unreachable.clone(),
                told_removed: self.inner.told_removed.clone(),
            };
            (queue, self.inner.runtime.spawn(run_peer(link, queue_rx)))
        };
        let (data_queue, data_task) = spawn_lane(Lane::Data);
        let (control_queue, control_task) = spawn_lane(Lane::Control);
        PeerEntry {
            addr,
            data_queue,
            control_queue,
            counters,
            tasks: [data_task, control_task],
        }
    }

    /// Queues `message` for peer `to`. Never blocks. A full queue drops the message and
    /// marks the peer unreachable.
    pub fn send(&self, to: u64, message: Message) -> Result<(), SendError> {
        let peers = lock(&self.inner.peers);
        self.queue_locked(&peers, to, message)
    }

    /// Queues every message for its `to` peer under one lock, e.g. all messages of a Ready.
    /// Returns how many could not be queued (unknown peer or full queue).
    pub fn send_all(&self, messages: Vec<Message>) -> usize {
        let peers = lock(&self.inner.peers);
        let mut not_queued = 0;
        for message in messages {
            let to = message.to;
            if self.queue_locked(&peers, to, message).is_err() {
                not_queued += 1;
            }
        }
        not_queued
    }

    fn queue_locked(
        &self,
        peers: &HashMap<u64, PeerEntry>,
        to: u64,
        message: Message,
    ) -> Result<(), SendError> {
        let entry = peers.get(&to).ok_or(SendError::UnknownPeer)?;
        let size = payload_bytes(&message);
        let queued = entry.counters.queued_bytes.load(Ordering::Relaxed);
        // One message always fits in an empty queue, however large.
        let too_many_bytes = queued > 0 && queued + size > MAX_QUEUED_BYTES_PER_PEER;
        let sent = if too_many_bytes {
            Err(TrySendError::Full(message))
        } else {
            match Lane::of(&message) {
                Lane::Data => entry.data_queue.try_send(message),
                Lane::Control => entry.control_queue.try_send(message),
            }
        };
        match sent {
            Ok(()) => {
                entry
                    .counters
                    .queued_bytes
                    .fetch_add(size, Ordering::Relaxed);
                Ok(())
            }
            Err(TrySendError::Full(_)) => {
                entry
                    .counters
                    .messages_dropped
                    .fetch_add(1, Ordering::Relaxed);
                lock(&self.inner.unreachable).insert(to);
                Err(SendError::QueueFull)
            }
            // The task only ends when the transport stops.
            Err(TrySendError::Closed(_)) => Err(SendError::UnknownPeer),
        }
    }

    /// Peers whose connection failed or whose messages were dropped since the last call.
    pub fn take_unreachable(&self) -> Vec<u64> {
        std::mem::take(&mut *lock(&self.inner.unreachable))
            .into_iter()
            .collect()
    }

    /// Whether a peer answered, since the last call, that this node was removed.
    pub fn take_told_removed(&self) -> bool {
        self.inner.told_removed.swap(false, Ordering::AcqRel)
    }

    /// One entry per peer, ordered by id.
    pub fn peer_stats(&self) -> Vec<PeerStats> {
        let peers = lock(&self.inner.peers);
        let mut stats: Vec<PeerStats> = peers
            .iter()
            .map(|(id, entry)| entry.counters.stats(*id, &entry.addr))
            .collect();
        stats.sort_by_key(|peer| peer.id);
        stats
    }

    /// One-off request to `addr` (`host:port`) on a fresh connection bound to
    /// `source_host`, authenticated like peer traffic. `done` gets the reply, including
    /// error replies as `Ok(RespValue::Error)`; `Err` means no reply (connect failure,
    /// protocol error, timeout, shutdown). `done` runs on the transport thread, except
    /// when the transport is already stopped: then it runs at once on the caller's thread.
    pub fn request(&self, addr: String, argv: Vec<Vec<u8>>, timeout: Duration, done: RequestDone) {
        self.request_pipeline(addr, vec![argv], timeout, done);
    }

    /// [`Transport::request`] for a plain thread: waits for the reply (at most `timeout`
    /// and a second).
    pub fn request_blocking(
        &self,
        addr: String,
        argv: Vec<Vec<u8>>,
        timeout: Duration,
    ) -> Result<RespValue, String> {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        self.request(
            addr,
            argv,
            timeout,
            Box::new(move |reply| {
                let _ = done_tx.send(reply);
            }),
        );
        done_rx
            .recv_timeout(timeout + Duration::from_secs(1))
            .unwrap_or_else(|_| Err("no answer".into()))
    }

    /// As [`Transport::request`], with `commands` on the one connection; `done` gets the
    /// last command's reply (EXEC's, for a forwarded MULTI block). The first command is
    /// sent alone and, if it is refused, its error is the reply and nothing else is sent;
    /// the others follow pipelined.
    pub fn request_pipeline(
        &self,
        addr: String,
        commands: Vec<Vec<Vec<u8>>>,
        timeout: Duration,
        done: RequestDone,
    ) {
        assert!(!commands.is_empty(), "a request sends at least one command");
        let reply = ReplyOnce(Some(done));
        if self.inner.stopped.load(Ordering::Acquire) {
            reply.finish(Err("raft transport is shut down".into()));
            return;
        }
        let config = self.inner.config.clone();
        // A task dropped by shutdown still answers: ReplyOnce's Drop reports the error.
        self.inner.runtime.spawn(async move {
            let result =
                match tokio::time::timeout(timeout, one_request(&config, &addr, &commands)).await {
                    Ok(result) => result,
                    Err(_) => Err(format!(
                        "no reply from {addr} within {} ms",
                        timeout.as_millis()
                    )),
                };
            reply.finish(result);
        });
    }

    /// Stops every task and the thread; later sends fail with `UnknownPeer` and requests
    /// fail at once. Waits for the thread unless called from it.
    pub fn shutdown(&self) {
        self.inner.stopped.store(true, Ordering::Release);
        for (_, entry) in lock(&self.inner.peers).drain() {
            entry.abort();
        }
        self.inner.stop.notify_one();
        let thread = lock(&self.inner.thread).take();
        if let Some(thread) = thread {
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

/// Calls the request callback exactly once, with an error if the task is dropped first.
struct ReplyOnce(Option<RequestDone>);

impl ReplyOnce {
    fn finish(mut self, result: Result<RespValue, String>) {
        if let Some(done) = self.0.take() {
            done(result);
        }
    }
}

impl Drop for ReplyOnce {
    fn drop(&mut self) {
        if let Some(done) = self.0.take() {
            done(Err("raft transport shut down before the reply".into()));
        }
    }
}

/// What a peer's task knows; cheap to share between its writer and reader halves.
struct PeerLink {
    id: u64,
    addr: String,
    lane: Lane,
    config: Arc<TransportConfig>,
    counters: Arc<PeerCounters>,
    unreachable: Arc<Mutex<BTreeSet<u64>>>,
    told_removed: Arc<AtomicBool>,
}

impl PeerLink {
    /// A message left the queue: its bytes no longer count against the bound.
    fn dequeued(&self, message: Message) -> Message {
        self.counters
            .queued_bytes
            .fetch_sub(payload_bytes(&message), Ordering::Relaxed);
        message
    }

    /// Connection counts and state in INFO are the data lane's (one connection per peer,
    /// as operators expect); the control lane's failures still mark the peer unreachable.
    fn counts_connections(&self) -> bool {
        self.lane == Lane::Data
    }

    fn lane_label(&self) -> &'static str {
        match self.lane {
            Lane::Data => "",
            Lane::Control => " (control link)",
        }
    }

    fn mark_unreachable(&self) {
        lock(&self.unreachable).insert(self.id);
    }

    fn count_dropped(&self, messages: u64) {
        self.counters
            .messages_dropped
            .fetch_add(messages, Ordering::Relaxed);
    }
}

enum ConnectionEnd {
    /// The queue closed: the peer was removed or the transport stopped.
    PeerRemoved,
    Failed {
        reason: String,
        /// At least one batch was accepted, so the next failure starts a fresh backoff.
        was_healthy: bool,
    },
}

/// The life of one peer: connect, serve, and after a failure wait with exponential
/// backoff (dropping what raft queues meanwhile), until the peer is removed.
async fn run_peer(link: PeerLink, mut queue: mpsc::Receiver<Message>) {
    let first_backoff = link.config.reconnect_interval.max(MIN_RECONNECT_BACKOFF);
    let mut backoff = first_backoff;
    let mut log = LogThrottle::default();
    loop {
        let end = match connect_peer(&link, &mut log).await {
            Ok(connection) => {
                if let Some(bind_error) = connection.bind_error {
                    log.line(
                        log::Level::Warn,
                        format_args!(
                            "raft transport: node {} ({}): connecting unbound, {bind_error}",
                            link.id, link.addr
                        ),
                    );
                }
                if link.counts_connections() {
                    link.counters.conn_oks.fetch_add(1, Ordering::Relaxed);
                    *lock(&link.counters.connected_at) = Some(Instant::now());
                }
                log.line(
                    log::Level::Info,
                    format_args!(
                        "raft transport: connected to node {} at {}{}{}",
                        link.id,
                        link.addr,
                        match connection.peer_port {
                            Some(port) => format!(", raft peer port {port}"),
                            None => " (its Redis port)".to_string(),
                        },
                        link.lane_label()
                    ),
                );
                let end = serve(&link, connection.stream, &mut queue, &mut log).await;
                if link.counts_connections() {
                    *lock(&link.counters.connected_at) = None;
                }
                end
            }
            Err(error) => ConnectionEnd::Failed {
                reason: format!("cannot connect: {error}"),
                was_healthy: false,
            },
        };
        let ConnectionEnd::Failed {
            reason,
            was_healthy,
        } = end
        else {
            return;
        };
        if link.counts_connections() {
            link.counters.conn_errors.fetch_add(1, Ordering::Relaxed);
        }
        link.mark_unreachable();
        log.line(
            log::Level::Warn,
            format_args!(
                "raft transport: node {} ({}){}: {reason}",
                link.id,
                link.addr,
                link.lane_label()
            ),
        );
        if was_healthy {
            backoff = first_backoff;
        }
        if !discard_queue_for(&link, &mut queue, backoff).await {
            return;
        }
        backoff = (backoff * 2).min(MAX_RECONNECT_BACKOFF.max(first_backoff));
    }
}

/// Connects to a peer's raft peer port, which its Redis port names (`RAFT._PEER_PORT`,
/// after AUTH), so that its Redis main thread never sees our messages. A peer without one
/// (no listener, or an older version), or whose peer port cannot be reached, is served on
/// the Redis connection, as `RAFT.MSG` commands.
async fn connect_peer(link: &PeerLink, log: &mut LogThrottle) -> io::Result<Connection> {
    let mut connection = connect(&link.addr, &link.config).await?;
    let config = &link.config;
    let Some(port) = with_timeout(
        config.response_timeout,
        ask_peer_port(&mut connection.stream, config),
    )
    .await?
    else {
        return Ok(connection);
    };
    let addr = with_port(&link.addr, port);
    match connect(&addr, config).await {
        Ok(mut direct) => {
            direct.peer_port = Some(port);
            Ok(direct)
        }
        Err(error) => {
            log.line(
                log::Level::Warn,
                format_args!(
                    "raft transport: node {} ({}): its raft peer port {port} is unreachable \
                     ({error}); using its Redis port",
                    link.id, link.addr
                ),
            );
            Ok(connection)
        }
    }
}

/// `Some(port)` when the peer answers `RAFT._PEER_PORT` with a port.
async fn ask_peer_port(
    stream: &mut PeerStream,
    config: &TransportConfig,
) -> io::Result<Option<u16>> {
    let mut frame = Vec::new();
    let authenticates = encode_auth(config, &mut frame);
    encode_command(&[PEER_PORT_COMMAND.as_bytes()], &mut frame);
    stream.write_all(&frame).await?;
    let mut replies = ReplyReader::default();
    let as_io = |error: String| io::Error::other(error);
    if authenticates {
        let auth = replies.next(stream, "peer").await.map_err(as_io)?;
        if let Some(error) = auth.as_error() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("authentication refused: {error}"),
            ));
        }
    }
    let reply = replies.next(stream, "peer").await.map_err(as_io)?;
    if let Some(error) = reply.as_error().filter(|e| e.starts_with("NOCLUSTER")) {
        // Not running its raft node yet (e.g. still joining): ask again later rather than
        // stay on its Redis port.
        return Err(io::Error::other(format!("peer not started: {error}")));
    }
    Ok(match reply {
        RespValue::Integer(port) => u16::try_from(port).ok().filter(|port| *port != 0),
        _ => None,
    })
}

/// `addr` (`host:port`, IPv6 hosts bracketed) with its port replaced.
fn with_port(addr: &str, port: u16) -> String {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    format!("{host}:{port}")
}

/// Waits `pause` while dropping whatever raft queues: by the time the peer is back those
/// messages are stale, and raft resends what still matters. False once the peer is removed.
async fn discard_queue_for(
    link: &PeerLink,
    queue: &mut mpsc::Receiver<Message>,
    pause: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + pause;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return true,
            message = queue.recv() => match message {
                Some(message) => {
                    // Its bytes leave the queue's count too, or the per-peer byte bound
                    // would refuse every large message later (a 100 MB entry, forever).
                    link.dequeued(message);
                    link.count_dropped(1);
                    link.mark_unreachable();
                }
                None => return false,
            },
        }
    }
}

struct InFlight {
    /// Counted from before the write, so a peer that stops reading is detected too.
    reply_deadline: tokio::time::Instant,
    kind: InFlightKind,
}

impl InFlight {
    fn new(config: &TransportConfig, frame_bytes: usize, kind: InFlightKind) -> InFlight {
        let transfer_allowance =
            Duration::from_millis(frame_bytes as u64 * 1000 / MIN_LINK_BYTES_PER_SEC);
        InFlight {
            reply_deadline: tokio::time::Instant::now()
                + config.response_timeout
                + transfer_allowance,
            kind,
        }
    }
}

enum InFlightKind {
    Auth,
    Batch,
}

/// Runs one connection until it fails or the peer is removed: the writer batches the
/// queue into `RAFT.MSG` commands, the reader matches replies to them in order.
async fn serve(
    link: &PeerLink,
    stream: PeerStream,
    queue: &mut mpsc::Receiver<Message>,
    log: &mut LogThrottle,
) -> ConnectionEnd {
    let (read_half, write_half) = tokio::io::split(stream);
    // Bounded: the writer waits once MAX_BATCHES_IN_FLIGHT batches await a reply.
    let (in_flight, in_flight_rx) = mpsc::channel(MAX_BATCHES_IN_FLIGHT);
    let mut was_healthy = false;
    let result = tokio::select! {
        result = write_batches(link, write_half, queue, in_flight) => result,
        result = read_replies(link, read_half, in_flight_rx, &mut was_healthy, log) => result,
    };
    match result {
        Ok(()) => ConnectionEnd::PeerRemoved,
        Err(reason) => ConnectionEnd::Failed {
            reason,
            was_healthy,
        },
    }
}

async fn write_batches(
    link: &PeerLink,
    mut writer: WriteHalf<PeerStream>,
    queue: &mut mpsc::Receiver<Message>,
    in_flight: mpsc::Sender<InFlight>,
) -> Result<(), String> {
    let reader_gone = |_| "reply reader stopped".to_string();
    let write_failed = |error: io::Error| format!("write failed: {error}");
    let mut frame = Vec::new();
    if encode_auth(&link.config, &mut frame) {
        in_flight
            .send(InFlight::new(&link.config, frame.len(), InFlightKind::Auth))
            .await
            .map_err(reader_gone)?;
        writer.write_all(&frame).await.map_err(write_failed)?;
    }
    let sender_id = if link.config.my_addr.is_empty() {
        link.config.my_id.to_string()
    } else {
        format!("{}@{}", link.config.my_id, link.config.my_addr)
    };
    let mut carried = None;
    loop {
        let first = match carried.take() {
            Some(encoded) => encoded,
            None => match queue.recv().await {
                Some(message) => match encode_message(link, &link.dequeued(message)) {
                    Some(encoded) => encoded,
                    None => continue,
                },
                None => return Ok(()),
            },
        };
        let batch = fill_batch(
            first,
            &mut carried,
            || loop {
                let message = link.dequeued(queue.try_recv().ok()?);
                if let Some(encoded) = encode_message(link, &message) {
                    return Some(encoded);
                }
            },
            link.config.max_batch_bytes,
        );
        frame.clear();
        let mut argv: Vec<&[u8]> = Vec::with_capacity(3 + batch.len());
        argv.push(RAFT_MSG_COMMAND.as_bytes());
        argv.push(link.config.dbid.as_bytes());
        argv.push(sender_id.as_bytes());
        argv.extend(batch.iter().map(Vec::as_slice));
        encode_command(&argv, &mut frame);
        in_flight
            .send(InFlight::new(
                &link.config,
                frame.len(),
                InFlightKind::Batch,
            ))
            .await
            .map_err(reader_gone)?;
        writer.write_all(&frame).await.map_err(write_failed)?;
        link.counters
            .messages_sent
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        // A large batch must not pin its buffer for the connection's life (2 MiB per lane
        // and peer with the default append-req-max-size): keep what small batches need.
        frame.clear();
        frame.shrink_to(RETAINED_FRAME_BYTES);
    }
}

fn encode_message(link: &PeerLink, message: &Message) -> Option<Vec<u8>> {
    match message.write_to_bytes() {
        Ok(encoded) => Some(encoded),
        Err(error) => {
            // Cannot happen for messages raft built; drop rather than kill the connection.
            log::warn!(
                "raft transport: cannot encode a message for node {}: {error}",
                link.id
            );
            link.count_dropped(1);
            None
        }
    }
}

/// Greedily fills one `RAFT.MSG`: `first` always goes (raft already bounds one message),
/// then messages from `next` while the batch stays within `max_batch_bytes`. The message
/// that does not fit is left in `carried` for the next batch.
fn fill_batch(
    first: Vec<u8>,
    carried: &mut Option<Vec<u8>>,
    mut next: impl FnMut() -> Option<Vec<u8>>,
    max_batch_bytes: usize,
) -> Vec<Vec<u8>> {
    let mut batch_bytes = first.len() + ARG_OVERHEAD_BYTES;
    let mut batch = vec![first];
    while batch.len() < MAX_MESSAGES_PER_BATCH {
        let Some(encoded) = next() else { break };
        let message_bytes = encoded.len() + ARG_OVERHEAD_BYTES;
        if batch_bytes + message_bytes > max_batch_bytes {
            *carried = Some(encoded);
            break;
        }
        batch_bytes += message_bytes;
        batch.push(encoded);
    }
    batch
}

/// Limits for peer replies, which are short status lines.
fn peer_reply_limits() -> RespLimits {
    RespLimits {
        max_bulk_bytes: 64 * 1024,
        max_array_len: 1_024,
        max_depth: 8,
        max_line_bytes: 64 * 1024,
    }
}

async fn read_replies(
    link: &PeerLink,
    mut reader: ReadHalf<PeerStream>,
    mut in_flight: mpsc::Receiver<InFlight>,
    was_healthy: &mut bool,
    log: &mut LogThrottle,
) -> Result<(), String> {
    let limits = peer_reply_limits();
    let mut buffer = Vec::new();
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let mut awaiting: Option<InFlight> = None;
    loop {
        while let Some((reply, used)) =
            parse_value(&buffer, &limits).map_err(|error| format!("bad reply: {error}"))?
        {
            buffer.drain(..used);
            let request = awaiting
                .take()
                .or_else(|| in_flight.try_recv().ok())
                .ok_or("reply to no request")?;
            match (request.kind, reply.as_error()) {
                (InFlightKind::Auth, Some(error)) => {
                    return Err(format!("authentication refused: {error}"));
                }
                (InFlightKind::Batch, Some(error)) => {
                    link.counters.error_replies.fetch_add(1, Ordering::Relaxed);
                    if error.starts_with(REMOVED_ERROR_PREFIX) {
                        link.told_removed.store(true, Ordering::Release);
                    }
                    log.line(
                        log::Level::Warn,
                        format_args!(
                            "raft transport: node {} ({}) refused {RAFT_MSG_COMMAND}: {error}",
                            link.id, link.addr
                        ),
                    );
                }
                (InFlightKind::Batch, None) => *was_healthy = true,
                (InFlightKind::Auth, None) => {}
            }
        }
        if awaiting.is_none() {
            awaiting = in_flight.try_recv().ok();
        }
        let deadline = awaiting.as_ref().map(|request| request.reply_deadline);
        tokio::select! {
            request = in_flight.recv(), if awaiting.is_none() => match request {
                Some(request) => awaiting = Some(request),
                None => return Ok(()),
            },
            read = reader.read(&mut chunk) => match read {
                Ok(0) => return Err("connection closed by peer".into()),
                Ok(read_bytes) => buffer.extend_from_slice(&chunk[..read_bytes]),
                Err(error) => return Err(format!("read failed: {error}")),
            },
            _ = sleep_until_if_some(deadline) => {
                return Err(format!(
                    "no reply within {} ms (plus transfer time)",
                    link.config.response_timeout.as_millis()
                ));
            }
        }
    }
}

async fn sleep_until_if_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Appends the AUTH command when a password is configured; true if it did.
fn encode_auth(config: &TransportConfig, out: &mut Vec<u8>) -> bool {
    if config.cluster_password.is_empty() {
        return false;
    }
    let password = config.cluster_password.as_bytes();
    if config.cluster_user.is_empty() {
        encode_command(&[b"AUTH", password], out);
    } else {
        encode_command(&[b"AUTH", config.cluster_user.as_bytes(), password], out);
    }
    true
}

async fn one_request(
    config: &TransportConfig,
    addr: &str,
    commands: &[Vec<Vec<u8>>],
) -> Result<RespValue, String> {
    let connection = connect(addr, config)
        .await
        .map_err(|error| format!("cannot connect to {addr}: {error}"))?;
    if let Some(bind_error) = connection.bind_error {
        log::warn!("raft transport: request to {addr}: connecting unbound, {bind_error}");
    }
    let mut stream = connection.stream;
    let mut replies = ReplyReader::default();
    let mut frame = Vec::new();
    if encode_auth(config, &mut frame) {
        // Not pipelined: if AUTH were refused, a command sent behind it would still run,
        // as whatever user the connection has by default.
        stream
            .write_all(&frame)
            .await
            .map_err(|error| format!("cannot send to {addr}: {error}"))?;
        let auth = replies.next(&mut stream, addr).await?;
        if let Some(error) = auth.as_error() {
            return Err(format!("authentication to {addr} refused: {error}"));
        }
        frame.clear();
    }
    // The first command goes alone, as AUTH does: were a forwarded MULTI refused, the
    // commands pipelined behind it would run one by one instead of as a transaction.
    let (first, rest) = commands.split_first().expect("at least one command");
    let mut last = send_and_read(&mut stream, &mut replies, &mut frame, addr, &[first]).await?;
    if !rest.is_empty() && last.as_error().is_none() {
        let rest: Vec<&Vec<Vec<u8>>> = rest.iter().collect();
        last = send_and_read(&mut stream, &mut replies, &mut frame, addr, &rest).await?;
    }
    Ok(last)
}

/// Sends `commands` pipelined and returns the last one's reply.
async fn send_and_read(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    replies: &mut ReplyReader,
    frame: &mut Vec<u8>,
    addr: &str,
    commands: &[&Vec<Vec<u8>>],
) -> Result<RespValue, String> {
    for argv in commands {
        let args: Vec<&[u8]> = argv.iter().map(Vec::as_slice).collect();
        encode_command(&args, frame);
    }
    stream
        .write_all(frame)
        .await
        .map_err(|error| format!("cannot send to {addr}: {error}"))?;
    frame.clear();
    let mut last = None;
    for _ in commands {
        last = Some(replies.next(stream, addr).await?);
    }
    Ok(last.expect("at least one command"))
}

#[derive(Default)]
struct ReplyReader {
    buffer: Vec<u8>,
    limits: RespLimits,
}

impl ReplyReader {
    async fn next(
        &mut self,
        stream: &mut (impl AsyncRead + Unpin),
        addr: &str,
    ) -> Result<RespValue, String> {
        let mut chunk = vec![0u8; READ_CHUNK_BYTES];
        loop {
            let parsed = parse_value(&self.buffer, &self.limits)
                .map_err(|error| format!("bad reply from {addr}: {error}"))?;
            if let Some((reply, used)) = parsed {
                self.buffer.drain(..used);
                return Ok(reply);
            }
            match stream.read(&mut chunk).await {
                Ok(0) => return Err(format!("{addr} closed the connection")),
                Ok(read_bytes) => self.buffer.extend_from_slice(&chunk[..read_bytes]),
                Err(error) => return Err(format!("cannot read from {addr}: {error}")),
            }
        }
    }
}

/// A peer connection: plain TCP, or TLS over it.
pub trait PeerIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> PeerIo for T {}
type PeerStream = Box<dyn PeerIo>;

struct Connection {
    stream: PeerStream,
    /// Set when binding to the source host failed and the socket connected unbound.
    bind_error: Option<String>,
    /// The peer's raft peer port when connected there, `None` on its Redis port.
    peer_port: Option<u16>,
}

/// Connects to `addr` (and completes the TLS handshake when configured), from
/// `config.source_host` when given so traffic leaves from this node's own address.
async fn connect(addr: &str, config: &TransportConfig) -> io::Result<Connection> {
    let attempt = async {
        let (stream, bind_error) = connect_tcp(addr, config.source_host.as_deref()).await?;
        let stream: PeerStream = match &config.tls {
            Some(tls) => Box::new(
                tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(tls::server_name(addr), stream)
                    .await
                    .map_err(|error| {
                        io::Error::new(error.kind(), format!("TLS handshake: {error}"))
                    })?,
            ),
            None => Box::new(stream),
        };
        Ok(Connection {
            stream,
            bind_error,
            peer_port: None,
        })
    };
    with_timeout(config.connection_timeout, attempt).await
}

async fn with_timeout<T>(
    timeout: Duration,
    attempt: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("timed out after {} ms", timeout.as_millis()),
            ))
        })
}

/// A TCP connection to `addr` from `source_host`. A source that cannot be bound (e.g. a
/// NAT address) falls back to an unbound socket rather than cutting the node off; the
/// second value says why.
async fn connect_tcp(
    addr: &str,
    source_host: Option<&str>,
) -> io::Result<(tokio::net::TcpStream, Option<String>)> {
    let targets: Vec<SocketAddr> = tokio::net::lookup_host(addr).await?.collect();
    let source_ip = match source_host {
        Some(host) => resolve_source(host).await,
        None => None,
    };
    let target = source_ip
        .and_then(|ip| targets.iter().find(|t| t.is_ipv4() == ip.is_ipv4()))
        .or_else(|| targets.first())
        .copied()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "address resolves to nothing"))?;
    let mut bind_error = None;
    let socket = match source_ip.filter(|ip| ip.is_ipv4() == target.is_ipv4()) {
        Some(ip) => match bound_socket(SocketAddr::new(ip, 0)) {
            Ok(socket) => socket,
            Err(error) => {
                bind_error = Some(format!("cannot bind to {ip}: {error}"));
                new_socket(&target)?
            }
        },
        None => new_socket(&target)?,
    };
    let stream = socket.connect(target).await?;
    // Raft messages are small and latency-bound.
    stream.set_nodelay(true)?;
    Ok((stream, bind_error))
}

/// A blocking peer connection (plain or TLS) for a plain thread.
pub trait BlockingPeerIo: io::Read + io::Write + Send {}
impl<T: io::Read + io::Write + Send> BlockingPeerIo for T {}

/// A connected blocking stream and the local address it left from.
pub struct BlockingConnection {
    pub stream: Box<dyn BlockingPeerIo>,
    pub local_addr: String,
}

/// [`connect`] for a plain thread (the snapshot sender): the same source binding,
/// fallback and TLS, returning a blocking stream whose reads time out after
/// `read_timeout`.
pub fn connect_blocking(
    addr: &str,
    source_host: Option<&str>,
    tls: Option<&PeerTls>,
    timeout: Duration,
    read_timeout: Duration,
) -> io::Result<BlockingConnection> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let (stream, bind_error) = runtime.block_on(async {
        let (stream, bind_error) = with_timeout(timeout, connect_tcp(addr, source_host)).await?;
        io::Result::Ok((stream.into_std()?, bind_error))
    })?;
    if let Some(bind_error) = bind_error {
        log::warn!("raft: snapshot transfer to {addr}: connecting unbound, {bind_error}");
    }
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(read_timeout))?;
    stream.set_write_timeout(Some(read_timeout))?;
    let local_addr = stream
        .local_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    let stream: Box<dyn BlockingPeerIo> = match tls {
        Some(tls) => {
            let connection = rustls::ClientConnection::new(tls.clone(), tls::server_name(addr))
                .map_err(io::Error::other)?;
            let mut stream = rustls::StreamOwned::new(connection, stream);
            stream.sock.set_read_timeout(Some(timeout))?;
            while stream.conn.is_handshaking() {
                stream.conn.complete_io(&mut stream.sock).map_err(|error| {
                    io::Error::new(error.kind(), format!("TLS handshake: {error}"))
                })?;
            }
            stream.sock.set_read_timeout(Some(read_timeout))?;
            Box::new(stream)
        }
        None => Box::new(stream),
    };
    Ok(BlockingConnection { stream, local_addr })
}

fn new_socket(target: &SocketAddr) -> io::Result<TcpSocket> {
    if target.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
}

fn bound_socket(source: SocketAddr) -> io::Result<TcpSocket> {
    let socket = new_socket(&source)?;
    // Lets frequent reconnects reuse ports still in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(source)?;
    Ok(socket)
}

async fn resolve_source(host: &str) -> Option<IpAddr> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse() {
        return Some(ip);
    }
    let mut resolved = tokio::net::lookup_host((host, 0)).await.ok()?;
    resolved.next().map(|addr| addr.ip())
}

/// At most one log line per interval; counts what it holds back.
#[derive(Default)]
struct LogThrottle {
    last_line_at: Option<Instant>,
    suppressed: u64,
}

impl LogThrottle {
    fn line(&mut self, level: log::Level, line: fmt::Arguments<'_>) {
        let now = Instant::now();
        if self
            .last_line_at
            .is_some_and(|at| now.duration_since(at) < PEER_LOG_INTERVAL)
        {
            self.suppressed += 1;
            return;
        }
        if self.suppressed > 0 {
            log::log!(level, "{line} ({} more lines suppressed)", self.suppressed);
        } else {
            log::log!(level, "{line}");
        }
        self.last_line_at = Some(now);
        self.suppressed = 0;
    }
}

/// The arguments of a `RAFT.MSG` after the command name, decoded.
#[derive(Debug, PartialEq)]
pub struct RaftMsg {
    pub dbid: String,
    pub sender_id: u64,
    /// The sender's `host:port`, when it sent one.
    pub sender_addr: Option<String>,
    pub messages: Vec<Message>,
}

/// Decodes `<dbid> <sender_id> <msg>...` (the arguments after `RAFT.MSG`). Every message
/// must claim to come from `sender_id`. Checking the dbid and the sender's membership is
/// the receiver's job. Errors are ready to send as replies.
pub fn decode_raft_msg<A: AsRef<[u8]>>(args: &[A]) -> Result<RaftMsg, String> {
    let [dbid, sender_id, messages @ ..] = args else {
        return Err(format!(
            "ERR wrong number of arguments for '{RAFT_MSG_COMMAND}' command"
        ));
    };
    if messages.is_empty() {
        return Err(format!(
            "ERR wrong number of arguments for '{RAFT_MSG_COMMAND}' command"
        ));
    }
    let dbid = std::str::from_utf8(dbid.as_ref())
        .map_err(|_| "ERR invalid dbid".to_string())?
        .to_string();
    let sender =
        std::str::from_utf8(sender_id.as_ref()).map_err(|_| "ERR invalid sender id".to_string())?;
    let (sender_id, sender_addr) = match sender.split_once('@') {
        Some((id, addr)) if !addr.is_empty() => (id, Some(addr.to_string())),
        _ => (sender, None),
    };
    let sender_id: u64 = sender_id
        .parse()
        .map_err(|_| "ERR invalid sender id".to_string())?;
    let messages = messages
        .iter()
        .map(|encoded| {
            let message = crate::core::peer_check::parse_protobuf::<Message>(encoded.as_ref())
                .map_err(|error| format!("ERR invalid raft message: {error}"))?;
            if message.from != sender_id {
                return Err(format!(
                    "ERR raft message from node {} sent by node {sender_id}",
                    message.from
                ));
            }
            Ok(message)
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(RaftMsg {
        dbid,
        sender_id,
        sender_addr,
        messages,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::mpsc as std_mpsc;

    use raft::eraftpb::MessageType;
    use tokio::net::TcpListener;

    use super::*;
    use crate::core::resp::encode_value;

    const DBID: &str = "0123456789abcdef0123456789abcdef";
    const WAIT: Duration = Duration::from_secs(10);

    #[derive(Clone, Copy, PartialEq)]
    enum Behavior {
        /// `+OK` to AUTH and RAFT.MSG, any other command echoed back as an array.
        Answer,
        Silent,
        RejectAuth,
        RefuseMessages,
        /// As `Answer`, but MULTI is refused.
        RefuseMulti,
        /// As `Answer`, and RAFT._PEER_PORT names this port.
        PeerPortAt(u16),
        /// As `Answer`, but RAFT._PEER_PORT answers NOCLUSTER (raft not started yet).
        NotStarted,
    }

    struct Received {
        peer: SocketAddr,
        connection: u64,
        argv: Vec<Vec<u8>>,
    }

    /// A stand-in for a Redis node: records every command it receives.
    struct FakeNode {
        addr: SocketAddr,
        received: std_mpsc::Receiver<Received>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl FakeNode {
        fn start(bind: &str, behavior: Behavior) -> FakeNode {
            let (addr_tx, addr_rx) = std_mpsc::channel();
            let (received_tx, received) = std_mpsc::channel();
            let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let bind = bind.to_string();
            let thread = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let listener = TcpListener::bind(&bind).await.unwrap();
                    addr_tx.send(listener.local_addr().unwrap()).unwrap();
                    let accept_loop = async {
                        for connection in 1.. {
                            let (stream, peer) = listener.accept().await.unwrap();
                            let received = received_tx.clone();
                            tokio::spawn(serve_fake_connection(
                                stream, peer, connection, behavior, received,
                            ));
                        }
                    };
                    tokio::select! {
                        _ = stop_rx => {}
                        _ = accept_loop => {}
                    }
                });
                // Dropping the runtime drops every connection task, closing its socket.
            });
            FakeNode {
                addr: addr_rx.recv().unwrap(),
                received,
                stop: Some(stop),
                thread: Some(thread),
            }
        }

        fn next_command(&self) -> Received {
            self.received
                .recv_timeout(WAIT)
                .expect("the fake node received nothing")
        }

        /// Reads RAFT.MSG commands until `count` messages arrived; returns them decoded.
        fn receive_messages(&self, count: usize) -> Vec<(RaftMsg, Received)> {
            let mut commands = Vec::new();
            let mut messages = 0;
            while messages < count {
                let command = self.next_command();
                if command.argv[0] != b"RAFT.MSG" {
                    continue;
                }
                let decoded = decode_raft_msg(&command.argv[1..]).unwrap();
                messages += decoded.messages.len();
                commands.push((decoded, command));
            }
            commands
        }
    }

    impl Drop for FakeNode {
        fn drop(&mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            if let Some(thread) = self.thread.take() {
                thread.join().unwrap();
            }
        }
    }

    async fn serve_fake_connection(
        mut stream: tokio::net::TcpStream,
        peer: SocketAddr,
        connection: u64,
        behavior: Behavior,
        received: std_mpsc::Sender<Received>,
    ) {
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            while let Ok(Some((command, used))) = parse_value(&buffer, &RespLimits::default()) {
                buffer.drain(..used);
                let RespValue::Array(Some(items)) = command else {
                    return;
                };
                let argv: Vec<Vec<u8>> = items
                    .into_iter()
                    .map(|item| match item {
                        RespValue::Bulk(Some(bytes)) => bytes,
                        _ => Vec::new(),
                    })
                    .collect();
                let ok = Some(RespValue::Simple("OK".into()));
                let reply = match (behavior, argv[0].as_slice()) {
                    (Behavior::Silent, _) => None,
                    (Behavior::RejectAuth, b"AUTH") => Some(RespValue::Error(
                        "WRONGPASS invalid username-password pair".into(),
                    )),
                    (Behavior::RefuseMessages, b"RAFT.MSG") => {
                        Some(RespValue::Error("ERR wrong dbid".into()))
                    }
                    (Behavior::RefuseMulti, b"MULTI") => {
                        Some(RespValue::Error("NOPERM no MULTI".into()))
                    }
                    (Behavior::PeerPortAt(port), b"RAFT._PEER_PORT") => {
                        Some(RespValue::Integer(i64::from(port)))
                    }
                    (Behavior::NotStarted, b"RAFT._PEER_PORT") => {
                        Some(RespValue::Error("NOCLUSTER No Raft Cluster".into()))
                    }
                    (_, b"AUTH" | b"RAFT.MSG") => ok,
                    _ => Some(RespValue::Array(Some(
                        argv.iter()
                            .map(|arg| RespValue::Bulk(Some(arg.clone())))
                            .collect(),
                    ))),
                };
                let _ = received.send(Received {
                    peer,
                    connection,
                    argv,
                });
                if let Some(reply) = reply {
                    let mut out = Vec::new();
                    encode_value(&reply, &mut out);
                    if stream.write_all(&out).await.is_err() {
                        return;
                    }
                }
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(read_bytes) => buffer.extend_from_slice(&chunk[..read_bytes]),
            }
        }
    }

    fn test_config() -> TransportConfig {
        TransportConfig {
            my_id: 1,
            my_addr: String::new(),
            dbid: DBID.into(),
            source_host: None,
            connection_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            reconnect_interval: Duration::from_millis(20),
            queue_bound_per_peer: 1_024,
            max_batch_bytes: 1024 * 1024,
            cluster_user: "default".into(),
            cluster_password: String::new(),
            tls: None,
        }
    }

    /// A message for the data lane (whose connection the INFO counters describe).
    fn append(index: u64) -> Message {
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgAppend);
        message.from = 1;
        message.to = 2;
        message.index = index;
        message
    }

    fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn stats_of(transport: &Transport, id: u64) -> PeerStats {
        transport
            .peer_stats()
            .into_iter()
            .find(|peer| peer.id == id)
            .expect("peer is known")
    }

    fn request_and_wait(
        transport: &Transport,
        addr: String,
        argv: &[&str],
        timeout: Duration,
    ) -> (Result<RespValue, String>, Option<String>) {
        let (reply_tx, reply_rx) = std_mpsc::channel();
        let argv = argv.iter().map(|arg| arg.as_bytes().to_vec()).collect();
        transport.request(
            addr,
            argv,
            timeout,
            Box::new(move |reply| {
                let thread = std::thread::current().name().map(String::from);
                let _ = reply_tx.send((reply, thread));
            }),
        );
        reply_rx.recv_timeout(WAIT).expect("the callback never ran")
    }

    #[test]
    fn a_batch_fills_up_to_the_byte_limit_and_carries_the_rest() {
        let mut source = (0..10u8).map(|tag| vec![tag; 10]);
        let mut carried = None;
        // Each message costs 10 + ARG_OVERHEAD_BYTES = 26 bytes.
        let batch = fill_batch(vec![99; 10], &mut carried, || source.next(), 80);
        assert_eq!(batch, vec![vec![99; 10], vec![0; 10], vec![1; 10]]);
        assert_eq!(carried, Some(vec![2; 10]));
        assert_eq!(source.next(), Some(vec![3; 10]), "nothing else was taken");
    }

    #[test]
    fn an_oversized_message_goes_alone_and_batches_stop_at_the_count_limit() {
        let mut carried = None;
        let mut source = std::iter::repeat_with(|| vec![1u8]);
        let batch = fill_batch(vec![0; 1000], &mut carried, || source.next(), 100);
        assert_eq!(batch.len(), 1);
        assert_eq!(carried, Some(vec![1]));

        let mut carried = None;
        let batch = fill_batch(vec![0], &mut carried, || source.next(), usize::MAX);
        assert_eq!(batch.len(), MAX_MESSAGES_PER_BATCH);
        assert_eq!(carried, None);
    }

    #[test]
    fn decode_raft_msg_checks_its_arguments() {
        let encoded = append(7).write_to_bytes().unwrap();
        let decoded = decode_raft_msg(&[DBID.as_bytes(), b"1", &encoded]).unwrap();
        assert_eq!(decoded.dbid, DBID);
        assert_eq!(decoded.sender_id, 1);
        assert_eq!(decoded.messages, vec![append(7)]);

        let no_messages: &[&[u8]] = &[DBID.as_bytes(), b"1"];
        assert!(decode_raft_msg(no_messages)
            .unwrap_err()
            .starts_with("ERR wrong number of arguments"));
        let bad_sender: &[&[u8]] = &[DBID.as_bytes(), b"x", &encoded];
        assert_eq!(
            decode_raft_msg(bad_sender).unwrap_err(),
            "ERR invalid sender id"
        );
        let garbage: &[&[u8]] = &[DBID.as_bytes(), b"1", b"\xff\xff\xff"];
        assert!(decode_raft_msg(garbage)
            .unwrap_err()
            .starts_with("ERR invalid raft message"));
        let spoofed: &[&[u8]] = &[DBID.as_bytes(), b"3", &encoded];
        assert_eq!(
            decode_raft_msg(spoofed).unwrap_err(),
            "ERR raft message from node 1 sent by node 3"
        );
    }

    #[test]
    fn messages_arrive_decoded_in_order_within_the_batch_limit() {
        let fake = FakeNode::start("127.0.0.1:0", Behavior::Answer);
        let max_batch_bytes = 200;
        let transport = Transport::start(TransportConfig {
            max_batch_bytes,
            ..test_config()
        });
        transport.set_peers(&[(1, "ignored:1".into()), (2, fake.addr.to_string())]);
        assert_eq!(transport.peer_stats().len(), 1, "own id is not a peer");
        let count = 300;
        for index in 1..=count {
            transport.send(2, append(index)).unwrap();
        }
        let commands = fake.receive_messages(count as usize);
        let mut indexes = Vec::new();
        for (decoded, command) in &commands {
            assert_eq!(decoded.dbid, DBID);
            assert_eq!(decoded.sender_id, 1);
            let message_bytes: usize = command.argv[3..]
                .iter()
                .map(|encoded| encoded.len() + ARG_OVERHEAD_BYTES)
                .sum();
            assert!(message_bytes <= max_batch_bytes, "{message_bytes} bytes");
            indexes.extend(decoded.messages.iter().map(|message| message.index));
        }
        assert_eq!(indexes, (1..=count).collect::<Vec<_>>());
        assert!(commands.len() < count as usize, "messages were batched");
        let connection = commands[0].1.connection;
        assert!(commands
            .iter()
            .all(|(_, command)| command.connection == connection));
        wait_until("every reply is read", || {
            stats_of(&transport, 2).messages_sent == count
        });
        let stats = stats_of(&transport, 2);
        assert!(stats.connected);
        assert_eq!((stats.conn_oks, stats.conn_errors), (1, 0));
        assert!(transport.take_unreachable().is_empty());
        transport.shutdown();
    }

    #[test]
    fn heartbeats_and_votes_travel_beside_appends_not_behind_them() {
        let fake = FakeNode::start("127.0.0.1:0", Behavior::Answer);
        let transport = Transport::start(test_config());
        transport.set_peers(&[(2, fake.addr.to_string())]);
        let mut heartbeat = append(7);
        heartbeat.set_msg_type(MessageType::MsgHeartbeat);
        let mut vote = append(8);
        vote.set_msg_type(MessageType::MsgRequestPreVote);
        transport.send(2, append(1)).unwrap();
        transport.send(2, heartbeat).unwrap();
        transport.send(2, vote).unwrap();
        transport.send(2, append(2)).unwrap();
        let mut connection_of = HashMap::new();
        for (decoded, command) in fake.receive_messages(4) {
            for message in decoded.messages {
                connection_of.insert(message.get_msg_type(), command.connection);
            }
        }
        let data = connection_of[&MessageType::MsgAppend];
        let control = connection_of[&MessageType::MsgHeartbeat];
        assert_ne!(data, control, "a heartbeat would wait behind appends");
        assert_eq!(connection_of[&MessageType::MsgRequestPreVote], control);
        assert_eq!(Lane::of(&Message::default()), Lane::Control);
        transport.shutdown();
    }

    #[test]
    fn send_all_routes_by_recipient() {
        let fake = FakeNode::start("127.0.0.1:0", Behavior::Answer);
        let transport = Transport::start(test_config());
        transport.set_peers(&[(2, fake.addr.to_string())]);
        let mut stray = append(3);
        stray.to = 9;
        assert_eq!(transport.send_all(vec![append(1), stray, append(2)]), 1);
        let commands = fake.receive_messages(2);
        let indexes: Vec<u64> = commands
            .iter()
            .flat_map(|(decoded, _)| decoded.messages.iter().map(|message| message.index))
            .collect();
        assert_eq!(indexes, vec![1, 2]);
        transport.shutdown();
    }

    #[test]
    fn big_batches_get_time_to_transfer_before_their_reply_is_due() {
        let config = test_config();
        let before = tokio::time::Instant::now();
        let small = InFlight::new(&config, 100, InFlightKind::Batch);
        let big = InFlight::new(&config, 4 * 1024 * 1024, InFlightKind::Batch);
        let small_wait = small.reply_deadline - before;
        assert!(small_wait >= config.response_timeout);
        assert!(small_wait < config.response_timeout + Duration::from_millis(50));
        assert!(big.reply_deadline - before >= config.response_timeout + Duration::from_secs(4));
    }

    #[test]
    fn a_message_larger_than_the_batch_limit_still_goes_through() {
        let fake = FakeNode::start("127.0.0.1:0", Behavior::Answer);
        let transport = Transport::start(TransportConfig {
            max_batch_bytes: 1024,
            ..test_config()
        });
        transport.set_peers(&[(2, fake.addr.to_string())]);
        let mut big = append(1);
        big.set_context(vec![7u8; 3 * 1024 * 1024].into());
        transport.send(2, big.clone()).unwrap();
        transport.send(2, append(2)).unwrap();
        let commands = fake.receive_messages(2);
        assert_eq!(commands[0].0.messages, vec![big]);
        assert_eq!(commands[1].0.messages, vec![append(2)]);
        transport.shutdown();
    }

    #[test]
    fn a_peer_that_restarts_is_reconnected() {
        let fake = FakeNode::start("127.0.0.1:0", Behavior::Answer);
        let addr = fake.addr;
        let transport = Transport::start(test_config());
        transport.set_peers(&[(2, addr.to_string())]);
        transport.send(2, append(1)).unwrap();
        fake.receive_messages(1);
        wait_until("connected", || stats_of(&transport, 2).connected);

        drop(fake);
        wait_until("the lost connection is noticed", || {
            let stats = stats_of(&transport, 2);
            !stats.connected && stats.conn_errors >= 1
        });
        assert_eq!(transport.take_unreachable(), vec![2]);
        assert_eq!(stats_of(&transport, 2).last_conn_secs, 0);

        let restarted = FakeNode::start(&addr.to_string(), Behavior::Answer);
        wait_until("reconnected", || {
            let stats = stats_of(&transport, 2);
            stats.connected && stats.conn_oks >= 2
        });
        transport.send(2, append(2)).unwrap();
        let (decoded, _) = restarted.receive_messages(1).remove(0);
        assert_eq!(decoded.messages[0].index, 2);
        transport.shutdown();
    }

    #[test]
    fn messages_go_to_the_peer_port_the_redis_port_names() {
        let listener = FakeNode::start("127.0.0.1:0", Behavior::Answer);
        let redis = FakeNode::start("127.0.0.1:0", Behavior::PeerPortAt(listener.addr.port()));
        let transport = Transport::start(TransportConfig {
            cluster_password: "secret".into(),
            ..test_config()
        });
        transport.set_peers(&[(2, redis.addr.to_string())]);
        transport.send(2, append(1)).unwrap();
        let mut before = Vec::new();
        let message = loop {
            let command = listener.next_command();
            if command.argv[0] == b"RAFT.MSG" {
                break command;
            }
            before.push(command);
        };
        let decoded = decode_raft_msg(&message.argv[1..]).unwrap();
        assert_eq!(decoded.messages[0].index, 1);
        // The peer port gets AUTH first too, on the connection that carries the messages.
        assert_eq!(
            before
                .iter()
                .find(|c| c.connection == message.connection)
                .map(|c| c.argv[0].clone()),
            Some(b"AUTH".to_vec())
        );
        // Each lane asked the Redis port (after AUTH), and sent it nothing else.
        let mut asked: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
        for _ in 0..4 {
            let command = redis.next_command();
            asked
                .entry(command.connection)
                .or_default()
                .push(command.argv[0].clone());
        }
        assert_eq!(asked.len(), 2);
        for commands in asked.values() {
            assert_eq!(
                commands,
                &vec![b"AUTH".to_vec(), b"RAFT._PEER_PORT".to_vec()]
            );
        }
        assert!(redis.received.try_recv().is_err());
        transport.shutdown();
    }

    #[test]
    fn an_unreachable_peer_port_falls_back_to_the_redis_port() {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_port = free.local_addr().unwrap().port();
        drop(free);
        let redis = FakeNode::start("127.0.0.1:0", Behavior::PeerPortAt(closed_port));
        let transport = Transport::start(test_config());
        transport.set_peers(&[(2, redis.addr.to_string())]);
        transport.send(2, append(7)).unwrap();
        let (decoded, _) = redis.receive_messages(1).remove(0);
        assert_eq!(decoded.messages[0].index, 7);
        transport.shutdown();
    }

    #[test]
    fn a_peer_not_started_yet_is_asked_again_rather_than_sent_to_its_redis_port() {
        let redis = FakeNode::start("127.0.0.1:0", Behavior::NotStarted);
        let transport = Transport::start(TransportConfig {
            reconnect_interval: Duration::from_millis(10),
            ..test_config()
        });
        transport.set_peers(&[(2, redis.addr.to_string())]);
        transport.send(2, append(1)).unwrap();
        wait_until("the peer is asked again", || {
            stats_of(&transport, 2).conn_errors >= 3
        });
        transport.shutdown();
        while let Ok(command) = redis.received.try_recv() {
            assert_eq!(command.argv[0], b"RAFT._PEER_PORT");
        }
    }

    #[test]
    fn messages_dropped_while_waiting_to_reconnect_leave_the_byte_count() {
        let redis = FakeNode::start("127.0.0.1:0", Behavior::NotStarted);
        let transport = Transport::start(TransportConfig {
            reconnect_interval: Duration::from_millis(200),
            ..test_config()
        });
        transport.set_peers(&[(2, redis.addr.to_string())]);
        wait_until("a first failed attempt", || {
            stats_of(&transport, 2).conn_errors >= 1
        });
        for index in 1..=20 {
            let mut message = append(index);
            message.entries = vec![raft::eraftpb::Entry {
                index,
                data: vec![7u8; 1000].into(),
                ..Default::default()
            }]
            .into();
            let _ = transport.send(2, message);
        }
        wait_until("the messages are dropped", || {
            stats_of(&transport, 2).messages_dropped >= 20
        });
        let queued = lock(&transport.inner.peers)[&2]
            .counters
            .queued_bytes
            .load(Ordering::Relaxed);
        assert_eq!(queued, 0, "dropped messages still counted as queued");
        transport.shutdown();
    }

    #[test]
    fn a_silent_peer_times_out_and_is_retried() {
        let fake = FakeNode::start("127.0.0.1:0", Behavior::Silent);
        let transport = Transport::start(TransportConfig {
            response_timeout: Duration::from_millis(200),
            ..test_config()
        });
        transport.set_peers(&[(2, fake.addr.to_string())]);
        transport.send(2, append(1)).unwrap();
        // It never answers which peer port to use: every attempt times out and is retried.
        wait_until("the missing reply drops the connection", || {
            stats_of(&transport, 2).conn_errors >= 2
        });
        assert_eq!(stats_of(&transport, 2).conn_oks, 0);
        assert_eq!(transport.take_unreachable(), vec![2]);
        transport.shutdown();
    }

    #[test]
    fn a_full_queue_refuses_and_marks_the_peer_unreachable() {
        // A peer that never answers stalls the writer once its in-flight window is full.
        let fake = FakeNode::start("127.0.0.1:0", Behavior::Silent);
        let transport = Transport::start(TransportConfig {
            queue_bound_per_peer: 4,
            response_timeout: Duration::from_secs(60),
            ..test_config()
        });
        transport.set_peers(&[(2, fake.addr.to_string())]);
        let limit = MAX_BATCHES_IN_FLIGHT + 100;
        let refused = (1..=limit as u64).find(|&index| {
            let result = transport.send(2, append(index));
            if result.is_err() {
                assert_eq!(result, Err(SendError::QueueFull));
            }
            result.is_err()
        });
        assert!(refused.is_some(), "queue never filled");
        assert_eq!(transport.take_unreachable(), vec![2]);
        assert!(
            transport.take_unreachable().is_empty(),
            "taking clears the set"
        );
        assert!(stats_of(&transport, 2).messages_dropped >= 1);
        transport.shutdown();
    }

    #[test]
    fn peers_can_be_removed_and_moved() {
        let old_home = FakeNode::start("127.0.0.1:0", Behavior::Answer);
        let new_home = FakeNode::start("127.0.0.1:0", Behavior::Answer);
        let transport = Transport::start(test_config());
        assert_eq!(transport.send(2, append(1)), Err(SendError::UnknownPeer));

        transport.set_peers(&[
            (2, old_home.addr.to_string()),
            (3, old_home.addr.to_string()),
        ]);
        transport.send(2, append(1)).unwrap();
        old_home.receive_messages(1);
        wait_until("connected", || stats_of(&transport, 2).conn_oks == 1);

        transport.set_peers(&[(2, new_home.addr.to_string())]);
        assert_eq!(transport.send(3, append(1)), Err(SendError::UnknownPeer));
        transport.send(2, append(2)).unwrap();
        let (decoded, _) = new_home.receive_messages(1).remove(0);
        assert_eq!(decoded.messages[0].index, 2);
        let stats = stats_of(&transport, 2);
        assert_eq!(stats.addr, new_home.addr.to_string());
        assert_eq!(stats.conn_oks, 2, "history survives the move");
        assert_eq!(transport.peer_stats().len(), 1);
        transport.shutdown();
    }

    #[test]
    fn auth_is_sent_first_on_every_connection() {
        let fake = FakeNode::start("127.0.0.1:0", Behavior::Answer);
        let transport = Transport::start(TransportConfig {
            cluster_user: "raft".into(),
            cluster_password: "s3cret".into(),
            ..test_config()
        });
        transport.set_peers(&[(2, fake.addr.to_string())]);
        transport.send(2, append(1)).unwrap();
        // Both lanes connect; each connection's first command is AUTH.
        let mut first_commands = HashMap::new();
        loop {
            let command = fake.next_command();
            let first = first_commands
                .entry(command.connection)
                .or_insert_with(|| command.argv.clone());
            assert_eq!(*first, [&b"AUTH"[..], b"raft", b"s3cret"]);
            if command.argv[0] == b"RAFT.MSG" {
                break;
            }
        }

        let (reply, _) = request_and_wait(
            &transport,
            fake.addr.to_string(),
            &["PING"],
            Duration::from_secs(5),
        );
        assert!(reply.is_ok());
        let mut first_commands = HashMap::new();
        let ping = loop {
            let command = fake.next_command();
            first_commands
                .entry(command.connection)
                .or_insert_with(|| command.argv[0].clone());
            if command.argv[0] == b"PING" {
                break command;
            }
        };
        assert_eq!(first_commands[&ping.connection], b"AUTH");
        transport.shutdown();
    }

    #[test]
    fn refused_auth_is_a_connection_error() {
        let fake = FakeNode::start("127.0.0.1:0", Behavior::RejectAuth);
        let transport = Transport::start(TransportConfig {
            cluster_password: "wrong".into(),
            ..test_config()
        });
        transport.set_peers(&[(2, fake.addr.to_string())]);
        wait_until("the refusal counts as a failure", || {
            stats_of(&transport, 2).conn_errors >= 1
        });
        let (reply, _) = request_and_wait(
            &transport,
            fake.addr.to_string(),
            &["PING"],
            Duration::from_secs(5),
        );
        assert!(reply.unwrap_err().contains("WRONGPASS"));
        transport.shutdown();
        // The request was never sent behind the refused AUTH (it would have run as the
        // connection's default user).
        let commands: Vec<Vec<u8>> = fake
            .received
            .try_iter()
            .map(|received| received.argv[0].clone())
            .collect();
        assert!(
            !commands.iter().any(|name| name == b"PING"),
            "sent behind a refused AUTH: {commands:?}"
        );
    }

    #[test]
    fn error_replies_are_counted_and_keep_the_connection() {
        let fake = FakeNode::start("127.0.0.1:0", Behavior::RefuseMessages);
        let transport = Transport::start(test_config());
        transport.set_peers(&[(2, fake.addr.to_string())]);
        transport.send(2, append(1)).unwrap();
        let (_, first) = fake.receive_messages(1).remove(0);
        wait_until("the error reply is counted", || {
            stats_of(&transport, 2).error_replies == 1
        });
        transport.send(2, append(2)).unwrap();
        let (_, command) = fake.receive_messages(1).remove(0);
        assert_eq!(command.connection, first.connection);
        let stats = stats_of(&transport, 2);
        assert_eq!(stats.conn_errors, 0);
        assert!(stats.connected);
        transport.shutdown();
    }

    #[test]
    fn request_returns_the_parsed_reply_on_the_transport_thread() {
        let fake = FakeNode::start("127.0.0.1:0", Behavior::Answer);
        let transport = Transport::start(test_config());
        let (reply, thread) = request_and_wait(
            &transport,
            fake.addr.to_string(),
            &["RAFT.NODE", "ADD", "0", "127.0.0.1:5001"],
            Duration::from_secs(5),
        );
        let bulk = |text: &str| RespValue::Bulk(Some(text.as_bytes().to_vec()));
        assert_eq!(
            reply,
            Ok(RespValue::Array(Some(vec![
                bulk("RAFT.NODE"),
                bulk("ADD"),
                bulk("0"),
                bulk("127.0.0.1:5001"),
            ])))
        );
        assert_eq!(thread.as_deref(), Some("raft"));
        transport.shutdown();
    }

    fn pipeline_and_wait(
        transport: &Transport,
        addr: String,
        commands: &[&[&str]],
    ) -> Result<RespValue, String> {
        let (reply_tx, reply_rx) = std_mpsc::channel();
        let commands = commands
            .iter()
            .map(|argv| argv.iter().map(|arg| arg.as_bytes().to_vec()).collect())
            .collect();
        transport.request_pipeline(
            addr,
            commands,
            Duration::from_secs(5),
            Box::new(move |reply| {
                let _ = reply_tx.send(reply);
            }),
        );
        reply_rx.recv_timeout(WAIT).expect("the callback never ran")
    }

    /// The last command's reply comes back; a refused first command (a forwarded MULTI)
    /// is the reply and the commands behind it are never sent, so they cannot run alone.
    #[test]
    fn a_pipelined_request_stops_at_a_refused_first_command() {
        let fake = FakeNode::start("127.0.0.1:0", Behavior::Answer);
        let transport = Transport::start(test_config());
        let reply = pipeline_and_wait(
            &transport,
            fake.addr.to_string(),
            &[&["MULTI"], &["SET", "k", "v"], &["EXEC"]],
        );
        let bulk = |text: &str| RespValue::Bulk(Some(text.as_bytes().to_vec()));
        assert_eq!(reply, Ok(RespValue::Array(Some(vec![bulk("EXEC")]))));
        for expected in ["MULTI", "SET", "EXEC"] {
            assert_eq!(fake.next_command().argv[0], expected.as_bytes());
        }

        let refusing = FakeNode::start("127.0.0.1:0", Behavior::RefuseMulti);
        let reply = pipeline_and_wait(
            &transport,
            refusing.addr.to_string(),
            &[&["MULTI"], &["SET", "k", "v"], &["EXEC"]],
        );
        assert_eq!(reply, Ok(RespValue::Error("NOPERM no MULTI".into())));
        assert_eq!(refusing.next_command().argv[0], b"MULTI");
        assert!(
            refusing
                .received
                .recv_timeout(Duration::from_millis(500))
                .is_err(),
            "a command was sent behind the refused MULTI"
        );
        transport.shutdown();
    }

    #[test]
    fn request_times_out_against_a_peer_that_never_answers() {
        let fake = FakeNode::start("127.0.0.1:0", Behavior::Silent);
        let transport = Transport::start(test_config());
        let started = Instant::now();
        let (reply, _) = request_and_wait(
            &transport,
            fake.addr.to_string(),
            &["PING"],
            Duration::from_millis(300),
        );
        let error = reply.unwrap_err();
        assert!(error.contains("within 300 ms"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(3));
        transport.shutdown();
    }

    #[test]
    fn request_reports_a_refused_connection() {
        let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let transport = Transport::start(test_config());
        let (reply, _) = request_and_wait(
            &transport,
            closed_port.to_string(),
            &["PING"],
            Duration::from_secs(5),
        );
        assert!(reply.unwrap_err().starts_with("cannot connect"));
        transport.shutdown();
    }

    #[test]
    fn outgoing_connections_leave_from_the_source_host() {
        let fake = FakeNode::start("127.0.0.1:0", Behavior::Answer);
        let transport = Transport::start(TransportConfig {
            source_host: Some("127.0.0.2".into()),
            ..test_config()
        });
        transport.set_peers(&[(2, fake.addr.to_string())]);
        transport.send(2, append(1)).unwrap();
        let (_, command) = fake.receive_messages(1).remove(0);
        assert_eq!(command.peer.ip().to_string(), "127.0.0.2");

        let (reply, _) = request_and_wait(
            &transport,
            fake.addr.to_string(),
            &["PING"],
            Duration::from_secs(5),
        );
        assert!(reply.is_ok());
        assert_eq!(fake.next_command().peer.ip().to_string(), "127.0.0.2");
        transport.shutdown();
    }

    #[test]
    fn shutdown_stops_sends_and_answers_requests_at_once() {
        let fake = FakeNode::start("127.0.0.1:0", Behavior::Answer);
        let transport = Transport::start(test_config());
        transport.set_peers(&[(2, fake.addr.to_string())]);
        transport.shutdown();
        assert_eq!(transport.send(2, append(1)), Err(SendError::UnknownPeer));
        let (reply, thread) = request_and_wait(
            &transport,
            fake.addr.to_string(),
            &["PING"],
            Duration::from_secs(5),
        );
        assert!(reply.unwrap_err().contains("shut down"));
        assert_ne!(thread.as_deref(), Some("raft"));
        transport.shutdown();
    }

    #[test]
    fn the_password_never_shows_in_debug_output() {
        let config = TransportConfig {
            cluster_password: "s3cret".into(),
            ..test_config()
        };
        assert!(!format!("{config:?}").contains("s3cret"));
    }
}
