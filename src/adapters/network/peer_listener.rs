//! The raft thread's own peer listener: peers send `RAFT.MSG` here instead of to the
//! Redis port, so raft traffic is decoded and checked on the transport's thread and
//! handed to the driver in one parcel per batch, without waking the Redis main thread.
//!
//! It speaks just enough RESP for the transport: `AUTH [user] password` (required when
//! `raft.cluster-password` is set, and then only the cluster user passes), `RAFT.MSG`
//! (the same checks and replies as on the Redis port, `peer_inbound::admit`) and `PING`.
//! With `raft.tls-enabled` every connection is TLS with the server's `tls-*` files.
//! Requests are bounded (argument count and size, connections, time to authenticate).
//! See docs/TRANSPORT.md.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::TrySendError;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::adapters::network::peer_guard;
use crate::adapters::network::peer_inbound::{self, PeerGate, PeerInput};
use crate::adapters::network::transport::{decode_raft_msg, RAFT_MSG_COMMAND};
use crate::adapters::queue::BoundedSender;
use crate::core::peer_check::peer_auth_matches;
use crate::core::resp::{encode_value, parse_command, RespLimits, RespValue};

/// Connections served at once; each peer opens two (its data and control lanes).
const MAX_CONNECTIONS: usize = 256;
/// Arguments of one command: RAFT.MSG carries at most the transport's batch count.
const MAX_ARGS: usize = 1_024 + 3;
const READ_RESERVE_BYTES: usize = 64 * 1024;
/// Replies are small; a connection that will not read them is cut past this.
const MAX_PENDING_REPLY_BYTES: usize = 1024 * 1024;

pub const ERR_NOAUTH: &str = "NOAUTH Authentication required.";
pub const ERR_WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";
pub const ERR_DRIVER_BUSY: &str = "BUSY raft request queue is full, retry later";

pub struct ListenerConfig {
    pub cluster_user: String,
    /// Empty: no AUTH needed (as with Redis' passwordless default user). Never logged.
    pub cluster_password: String,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Largest argument: one raft message, i.e. one append of up to the record limit.
    pub max_arg_bytes: usize,
    /// Time a new connection has for its TLS handshake and, when a password is set, AUTH.
    pub handshake_timeout: Duration,
}

/// The latest gate the driver published.
pub type GateReceiver = watch::Receiver<Arc<PeerGate>>;

/// Binds `host:port` for peers (port 0: any free port). The caller reports failure.
pub fn bind(host: &str, port: u16) -> io::Result<std::net::TcpListener> {
    let host = host.trim_matches(['[', ']']);
    let listener = std::net::TcpListener::bind((host, port))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Accepts peers until the runtime running it stops.
pub async fn run<I: From<PeerInput> + Send + 'static>(
    listener: std::net::TcpListener,
    config: ListenerConfig,
    gate: GateReceiver,
    to_driver: BoundedSender<I>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            log::warn!("raft: the peer listener cannot start: {error}");
            return;
        }
    };
    let config = Arc::new(config);
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors and the like: wait rather than spin.
                log::warn!("raft: the peer listener could not accept a connection: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if open.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            open.fetch_sub(1, Ordering::AcqRel);
            peer_guard::refused(format!("listener:{}", peer.ip()), || {
                format!("refused a peer connection from {peer}: {MAX_CONNECTIONS} are open")
            });
            continue;
        }
        let _ = stream.set_nodelay(true);
        let (config, gate, to_driver, open) = (
            config.clone(),
            gate.clone(),
            to_driver.clone(),
            open.clone(),
        );
        tokio::spawn(async move {
            if let Err(reason) = accept(stream, peer, &config, gate, to_driver).await {
                log::debug!("raft: peer connection from {peer} ended: {reason}");
            }
            open.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

async fn accept<I: From<PeerInput>>(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    config: &ListenerConfig,
    gate: GateReceiver,
    to_driver: BoundedSender<I>,
) -> Result<(), String> {
    match &config.tls {
        Some(tls) => {
            let handshake = tokio_rustls::TlsAcceptor::from(tls.clone()).accept(stream);
            let stream = tokio::time::timeout(config.handshake_timeout, handshake)
                .await
                .map_err(|_| "TLS handshake timed out".to_string())?
                .map_err(|error| {
                    peer_guard::refused(format!("listener:{}", peer.ip()), || {
                        format!("refused a peer connection from {peer}: TLS handshake: {error}")
                    });
                    format!("TLS handshake: {error}")
                })?;
            Connection::new(peer, config, gate, to_driver)
                .serve(stream)
                .await
        }
        None => {
            Connection::new(peer, config, gate, to_driver)
                .serve(stream)
                .await
        }
    }
}

struct Connection<'a, I> {
    peer: SocketAddr,
    config: &'a ListenerConfig,
    gate: GateReceiver,
    to_driver: BoundedSender<I>,
    authenticated: bool,
}

/// What one command asks of the connection after its reply.
enum After {
    Continue,
    Close,
}

impl<'a, I: From<PeerInput>> Connection<'a, I> {
    fn new(
        peer: SocketAddr,
        config: &'a ListenerConfig,
        gate: GateReceiver,
        to_driver: BoundedSender<I>,
    ) -> Self {
        Connection {
            peer,
            config,
            gate,
            to_driver,
            authenticated: config.cluster_password.is_empty(),
        }
    }

    async fn serve(
        mut self,
        mut stream: impl AsyncRead + AsyncWrite + Unpin,
    ) -> Result<(), String> {
        let limits = RespLimits {
            max_bulk_bytes: self.config.max_arg_bytes,
            max_array_len: MAX_ARGS,
            max_depth: 1,
            max_line_bytes: 64,
        };
        let mut buffer: Vec<u8> = Vec::new();
        let mut replies = Vec::new();
        loop {
            let mut used = 0;
            let mut close = false;
            loop {
                let parsed = parse_command(&buffer[used..], &limits);
                let (args, length) = match parsed {
                    Ok(Some(parsed)) => parsed,
                    Ok(None) => break,
                    Err(error) => {
                        let reply = format!("ERR Protocol error: {error}");
                        encode_value(&RespValue::Error(reply.clone()), &mut replies);
                        let _ = stream.write_all(&replies).await;
                        return Err(reply);
                    }
                };
                used += length;
                let (reply, after) = self.command(&args);
                encode_value(&reply, &mut replies);
                if matches!(after, After::Close) || replies.len() > MAX_PENDING_REPLY_BYTES {
                    close = true;
                    break;
                }
            }
            if !replies.is_empty() {
                stream
                    .write_all(&replies)
                    .await
                    .map_err(|error| format!("write failed: {error}"))?;
                replies.clear();
            }
            if close {
                return Err("closed after a refusal".into());
            }
            buffer.drain(..used);
            buffer.reserve(READ_RESERVE_BYTES);
            let read = stream.read_buf(&mut buffer);
            let read = if self.authenticated {
                read.await
            } else {
                tokio::time::timeout(self.config.handshake_timeout, read)
                    .await
                    .map_err(|_| "no AUTH in time".to_string())?
            };
            match read {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(error) => return Err(format!("read failed: {error}")),
            }
        }
    }

    fn command(&mut self, args: &[&[u8]]) -> (RespValue, After) {
        let Some((name, rest)) = args.split_first() else {
            return error("ERR empty command", After::Continue);
        };
        if name.eq_ignore_ascii_case(b"AUTH") {
            return self.auth(rest);
        }
        if !self.authenticated {
            return error(ERR_NOAUTH, After::Continue);
        }
        if name.eq_ignore_ascii_case(RAFT_MSG_COMMAND.as_bytes()) {
            return self.raft_msg(rest);
        }
        if name.eq_ignore_ascii_case(b"PING") {
            return (RespValue::Simple("PONG".into()), After::Continue);
        }
        let name = String::from_utf8_lossy(&name[..name.len().min(64)]).into_owned();
        error(
            &format!("ERR unknown command '{name}' on the raft peer port"),
            After::Continue,
        )
    }

    fn auth(&mut self, args: &[&[u8]]) -> (RespValue, After) {
        let config = self.config;
        if config.cluster_password.is_empty() {
            // As Redis answers AUTH when the default user needs no password.
            return (RespValue::Simple("OK".into()), After::Continue);
        }
        if peer_auth_matches(args, &config.cluster_user, &config.cluster_password) {
            self.authenticated = true;
            return (RespValue::Simple("OK".into()), After::Continue);
        }
        let peer = self.peer;
        peer_guard::refused(format!("listener:{}", peer.ip()), || {
            format!("refused a peer connection from {peer}: wrong cluster user or password")
        });
        // One guess per connection: a client guessing passwords must reconnect each time.
        error(ERR_WRONGPASS, After::Close)
    }

    fn raft_msg(&mut self, args: &[&[u8]]) -> (RespValue, After) {
        let decoded = match decode_raft_msg(args) {
            Ok(decoded) => decoded,
            Err(reply) => {
                let peer = self.peer;
                peer_guard::refused("malformed".into(), || {
                    format!("refused a malformed {RAFT_MSG_COMMAND} from {peer}: {reply}")
                });
                return error(&reply, After::Continue);
            }
        };
        let gate = self.gate.borrow().clone();
        let inputs = match peer_inbound::admit(decoded, &gate) {
            Ok(inputs) => inputs,
            Err(reply) => return error(&reply, After::Continue),
        };
        match self
            .to_driver
            .try_send_all(inputs.into_iter().map(I::from).collect())
        {
            Ok(()) => (RespValue::Simple("OK".into()), After::Continue),
            // Raft resends what still matters once the driver catches up.
            Err(TrySendError::Full(_)) => error(ERR_DRIVER_BUSY, After::Continue),
            Err(TrySendError::Disconnected(_)) => error("ERR the node is stopping", After::Close),
        }
    }
}

fn error(text: &str, after: After) -> (RespValue, After) {
    (RespValue::Error(text.to_string()), after)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    use protobuf::Message as _;
    use raft::eraftpb::{Message, MessageType};

    use super::*;
    use crate::adapters::queue::{bounded, BoundedReceiver};
    use crate::core::membership::{Member, Membership};
    use crate::core::resp::{encode_command, parse_value};

    const DBID: &str = "0123456789abcdef0123456789abcdef";
    const WAIT: Duration = Duration::from_secs(10);

    /// A listener on its own runtime thread, for node 1 of a cluster with node 2.
    struct Listening {
        port: u16,
        inbox: BoundedReceiver<PeerInput>,
        _runtime: std::thread::JoinHandle<()>,
        _stop: tokio::sync::oneshot::Sender<()>,
    }

    fn listen(password: &str, inbox_bound: usize) -> Listening {
        let listener = bind("127.0.0.1", 0).unwrap();
        let port = listener.local_addr().unwrap().port();
        let members = [1, 2].map(|id| Member {
            id,
            addr: format!("127.0.0.1:{id}"),
            voting: true,
        });
        let gate = PeerGate {
            dbid: DBID.into(),
            my_id: 1,
            membership: Membership::restore(members.to_vec(), [1, 2, 3]),
        };
        let (_gate_sender, gate_receiver) = watch::channel(Arc::new(gate));
        let (to_driver, inbox) = bounded(inbox_bound);
        let config = ListenerConfig {
            cluster_user: "raft".into(),
            cluster_password: password.into(),
            tls: None,
            max_arg_bytes: 1024 * 1024,
            handshake_timeout: WAIT,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let _gate_sender = _gate_sender;
                tokio::select! {
                    _ = run(listener, config, gate_receiver, to_driver) => {}
                    _ = stopped => {}
                }
            });
        });
        Listening {
            port,
            inbox,
            _runtime: runtime,
            _stop: stop,
        }
    }

    struct Client {
        stream: std::net::TcpStream,
        buffer: Vec<u8>,
    }

    impl Client {
        fn connect(port: u16) -> Client {
            let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            stream.set_read_timeout(Some(WAIT)).unwrap();
            Client {
                stream,
                buffer: Vec::new(),
            }
        }

        fn send(&mut self, argv: &[&[u8]]) {
            let mut frame = Vec::new();
            encode_command(argv, &mut frame);
            self.stream.write_all(&frame).unwrap();
        }

        /// The next reply, or `None` once the listener closed the connection.
        fn reply(&mut self) -> Option<RespValue> {
            loop {
                if let Some((reply, used)) =
                    parse_value(&self.buffer, &RespLimits::default()).unwrap()
                {
                    self.buffer.drain(..used);
                    return Some(reply);
                }
                let mut chunk = [0u8; 4096];
                match self.stream.read(&mut chunk) {
                    Ok(0) | Err(_) => return None,
                    Ok(read) => self.buffer.extend_from_slice(&chunk[..read]),
                }
            }
        }

        fn call(&mut self, argv: &[&[u8]]) -> Option<RespValue> {
            self.send(argv);
            self.reply()
        }
    }

    fn heartbeat(from: u64, to: u64, commit: u64) -> Vec<u8> {
        encoded(MessageType::MsgHeartbeat, from, to, commit)
    }

    fn encoded(kind: MessageType, from: u64, to: u64, commit: u64) -> Vec<u8> {
        let mut message = Message::default();
        message.set_msg_type(kind);
        message.from = from;
        message.to = to;
        message.commit = commit;
        message.write_to_bytes().unwrap()
    }

    fn ok() -> Option<RespValue> {
        Some(RespValue::Simple("OK".into()))
    }

    fn error_text(reply: Option<RespValue>) -> String {
        match reply {
            Some(RespValue::Error(text)) => text,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    fn next_peer_message(inbox: &BoundedReceiver<PeerInput>) -> Message {
        match inbox.recv_timeout(WAIT) {
            Ok(PeerInput::Message(message)) => *message,
            Ok(_) => panic!("expected a peer message"),
            Err(e) => panic!("nothing reached the driver: {e}"),
        }
    }

    #[test]
    fn a_member_s_messages_reach_the_driver_in_order() {
        let node = listen("", 64);
        let mut client = Client::connect(node.port);
        assert_eq!(
            client.call(&[b"PING"]),
            Some(RespValue::Simple("PONG".into()))
        );
        let (first, second) = (heartbeat(2, 1, 5), heartbeat(2, 1, 6));
        assert_eq!(
            client.call(&[b"RAFT.MSG", DBID.as_bytes(), b"2", &first, &second]),
            ok()
        );
        assert_eq!(next_peer_message(&node.inbox).commit, 5);
        assert_eq!(next_peer_message(&node.inbox).commit, 6);
        // Without a password, AUTH is answered as Redis does for a passwordless user.
        assert_eq!(client.call(&[b"AUTH", b"anything"]), ok());
    }

    #[test]
    fn a_password_is_required_and_checked_once_per_connection() {
        let node = listen("secret", 64);
        let message = heartbeat(2, 1, 1);
        let raft_msg: [&[u8]; 4] = [b"RAFT.MSG", DBID.as_bytes(), b"2", &message];
        let mut client = Client::connect(node.port);
        assert_eq!(error_text(client.call(&raft_msg)), ERR_NOAUTH);
        assert_eq!(error_text(client.call(&[b"PING"])), ERR_NOAUTH);
        assert_eq!(
            error_text(client.call(&[b"AUTH", b"raft", b"wrong"])),
            ERR_WRONGPASS
        );
        assert_eq!(
            client.reply(),
            None,
            "a wrong password closes the connection"
        );
        let mut client = Client::connect(node.port);
        assert_eq!(client.call(&[b"AUTH", b"raft", b"secret"]), ok());
        assert_eq!(client.call(&raft_msg), ok());
        assert_eq!(next_peer_message(&node.inbox).from, 2);
        assert!(node.inbox.try_recv().is_err());
    }

    #[test]
    fn strangers_and_malformed_batches_are_refused_with_nothing_handed_to_raft() {
        let node = listen("", 64);
        let mut client = Client::connect(node.port);
        // A vote answer, not leader traffic (which an unknown new leader may send).
        let from_stranger = encoded(MessageType::MsgRequestVoteResponse, 9, 1, 1);
        let refused =
            error_text(client.call(&[b"RAFT.MSG", DBID.as_bytes(), b"9", &from_stranger]));
        assert!(refused.contains("not a member"), "{refused}");
        let other_cluster = heartbeat(2, 1, 1);
        let refused =
            error_text(client.call(&[b"RAFT.MSG", b"another-dbid", b"2", &other_cluster]));
        assert!(refused.contains("another cluster"), "{refused}");
        let removed = encoded(MessageType::MsgRequestVoteResponse, 3, 1, 1);
        let refused = error_text(client.call(&[b"RAFT.MSG", DBID.as_bytes(), b"3", &removed]));
        assert!(refused.starts_with("REMOVED"), "{refused}");
        let for_someone_else = heartbeat(2, 7, 1);
        let refused =
            error_text(client.call(&[b"RAFT.MSG", DBID.as_bytes(), b"2", &for_someone_else]));
        assert!(refused.contains("another node"), "{refused}");
        let refused = error_text(client.call(&[b"RAFT.MSG", DBID.as_bytes(), b"2", b"\xff\xff"]));
        assert!(refused.contains("invalid raft message"), "{refused}");
        let refused = error_text(client.call(&[b"CONFIG", b"GET", b"*"]));
        assert!(refused.contains("unknown command"), "{refused}");
        // Still serving this connection after refusals.
        assert_eq!(
            client.call(&[b"PING"]),
            Some(RespValue::Simple("PONG".into()))
        );
        assert!(node.inbox.try_recv().is_err());
        // Not RESP arrays: an error, then the connection is closed.
        client.stream.write_all(b"PING\r\n").unwrap();
        assert!(error_text(client.reply()).contains("Protocol error"));
        assert_eq!(client.reply(), None);
    }

    #[test]
    fn oversized_arguments_are_refused_before_they_are_buffered() {
        let node = listen("", 64);
        let mut client = Client::connect(node.port);
        client
            .stream
            .write_all(b"*4\r\n$8\r\nRAFT.MSG\r\n$32\r\n0123456789abcdef0123456789abcdef\r\n$1\r\n2\r\n$2000000\r\n")
            .unwrap();
        assert!(error_text(client.reply()).contains("Protocol error"));
        assert_eq!(client.reply(), None);
    }

    #[test]
    fn a_full_driver_inbox_answers_busy_and_hands_over_nothing_of_the_batch() {
        let node = listen("", 2);
        let mut client = Client::connect(node.port);
        let messages: Vec<Vec<u8>> = (1..=3).map(|commit| heartbeat(2, 1, commit)).collect();
        let mut argv: Vec<&[u8]> = vec![b"RAFT.MSG", DBID.as_bytes(), b"2"];
        argv.extend(messages.iter().map(Vec::as_slice));
        assert_eq!(error_text(client.call(&argv)), ERR_DRIVER_BUSY);
        assert!(node.inbox.try_recv().is_err());
        assert_eq!(client.call(&argv[..5]), ok());
        assert_eq!(next_peer_message(&node.inbox).commit, 1);
        assert_eq!(next_peer_message(&node.inbox).commit, 2);
    }
}
