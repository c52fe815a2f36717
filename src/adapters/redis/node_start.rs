//! Starts this node's raft side: builds the raft node from the log (and the snapshot
//! already loaded), the transport, the peer listener and the driver, and hands the
//! channels to the main-thread state.

use std::sync::Arc;
use std::time::Duration;

use raft::eraftpb::ConfState;

use crate::adapters::disk::logio::LogFile;
use crate::adapters::disk::snapshot_files::SnapshotFiles;
use crate::adapters::ffi::RawCtx;
use crate::adapters::network::peer_inbound::PeerGate;
use crate::adapters::network::peer_listener::ListenerConfig;
use crate::adapters::network::snapshot_send::SendJob;
use crate::adapters::network::transport::{Transport, TransportConfig};
use crate::adapters::queue::{bounded, bounded_waking, BoundedSender, HoldingSender};
use crate::adapters::raft_thread::driver::{Driver, DriverInput, DriverParams};
use crate::adapters::raft_thread::driver::{INBOX_BOUND, MAIN_QUEUE_BOUND};
use crate::adapters::redis::settings::{config, with_config};
use crate::adapters::redis::state::{server_config, MainState, NodeState};
use crate::core::config::{RaftConfig, PEER_PORT_OFFSET};
use crate::core::logfile::{NodeMeta, Recovered};
use crate::core::node::{NodeParams, RaftNode};
use crate::core::snapshot::SnapshotMeta;
use crate::core::storage::LogStore;

/// Raft messages queued per peer before the transport drops (raft retransmits).
const PEER_QUEUE_BOUND: usize = 4_096;

/// The address other nodes use for this one: `raft.addr`, else 127.0.0.1:<port>.
pub fn my_addr(ctx: RawCtx) -> String {
    let (addr, tls_enabled) = with_config(|config| (config.addr.clone(), config.tls_enabled));
    if let Some(addr) = addr {
        return addr.to_string();
    }
    // With inter-node TLS, peers must reach this node on its TLS port.
    let port_setting = if tls_enabled { "tls-port" } else { "port" };
    let port = server_config(ctx, port_setting);
    let port = if port.is_empty() {
        "6379".to_string()
    } else {
        port
    };
    format!("127.0.0.1:{port}")
}

/// Binds the raft thread's peer listener on this node's host and starts it on the
/// transport's thread. Returns the sender of its gate and its port; `(None, 0)` when it
/// cannot listen (the port is taken, the address is not local): peers then reach this
/// node on its Redis port, as `RAFT.MSG` commands, which is slower but as safe.
fn start_peer_listener(
    transport: &Transport,
    my_addr: &str,
    settings: &RaftConfig,
    tls: Option<crate::adapters::network::tls::PeerTlsServer>,
    gate: PeerGate,
    to_driver: BoundedSender<DriverInput>,
) -> (Option<tokio::sync::watch::Sender<Arc<PeerGate>>>, u16) {
    let (host, node_port) = match my_addr.rsplit_once(':') {
        Some((host, port)) => (host, port.parse::<u16>().unwrap_or(0)),
        None => (my_addr, 0),
    };
    let Some(port) = settings.peer_listener_port(node_port) else {
        log::warn!(
            "raft: no peer listener: port {node_port} + {PEER_PORT_OFFSET} is not a port \
             (set raft.peer-port); peers use the Redis port"
        );
        return (None, 0);
    };
    let listener = match crate::adapters::network::peer_listener::bind(host, port) {
        Ok(listener) => listener,
        Err(error) => {
            log::warn!(
                "raft: no peer listener: cannot listen on {host}:{port} ({error}); peers use \
                 the Redis port"
            );
            return (None, 0);
        }
    };
    let config = ListenerConfig {
        cluster_user: settings.cluster_user.clone(),
        cluster_password: settings.cluster_password.clone(),
        tls,
        // As the Redis port (the server's default proto-max-bulk-len).
        max_arg_bytes: crate::core::entry::MAX_PAYLOAD_BYTES,
        handshake_timeout: Duration::from_millis(settings.connection_timeout_ms),
    };
    let (gate_sender, gate_receiver) = tokio::sync::watch::channel(Arc::new(gate));
    transport.spawn(crate::adapters::network::peer_listener::run(
        listener,
        config,
        gate_receiver,
        to_driver,
    ));
    log::info!("raft: peers connect to {host}:{port}");
    (Some(gate_sender), port)
}

/// Builds the raft node from what is on disk (or a fresh INIT) and starts the driver.
/// Starts the node. `snapshot`: the snapshot already loaded into the server, if any;
/// the log then continues after it.
pub fn start_node(
    state: &mut MainState,
    log: LogFile,
    recovered: Option<Recovered>,
    meta: NodeMeta,
    snapshot: Option<&SnapshotMeta>,
) -> Result<(), String> {
    let settings = config();
    let tick_ms = settings.periodic_interval_ms.max(1);
    let conf_state = match snapshot {
        Some(snapshot) => ConfState::from((snapshot.voters.clone(), snapshot.learners.clone())),
        None => ConfState::from((meta.bootstrap_voters.clone(), Vec::<u64>::new())),
    };
    let commit_on_disk = recovered
        .as_ref()
        .and_then(|r| r.hard_state)
        .map_or(0, |hs| hs.commit);
    let (mut store, mut applied) = match recovered {
        Some(recovered) => {
            let applied = recovered.compacted.map_or(0, |point| point.index);
            (
                LogStore::from_recovered(recovered, conf_state.clone()),
                applied,
            )
        }
        None => {
            let mut store = LogStore::new();
            store.set_conf_state(conf_state.clone());
            (store, 0)
        }
    };
    // The entry cache keeps the newest log-max-cache-size bytes; older entries (and those
    // recovered without their data) are read back from the log file.
    store.set_reader(Box::new(log.reader()));
    store.set_cache_limit(Some(
        usize::try_from(settings.log_max_cache_size).unwrap_or(usize::MAX),
    ));
    if let Some(snapshot) = snapshot {
        if store.snapshot_point().index > snapshot.index {
            return Err(format!(
                "the log was compacted up to index {} but the snapshot only reaches {}: refusing to start",
                store.snapshot_point().index,
                snapshot.index
            ));
        }
        let log_agrees =
            raft::Storage::term(&store, snapshot.index).is_ok_and(|term| term == snapshot.term);
        if log_agrees || store.last_index() < snapshot.index {
            store.compact_to_snapshot(snapshot.index, snapshot.term, conf_state.clone());
        } else {
            // A crash between installing the leader's snapshot and rewriting the log: the
            // log's entry there is an uncommitted one the snapshot overrides.
            let mut metadata = raft::eraftpb::SnapshotMetadata {
                index: snapshot.index,
                term: snapshot.term,
                ..Default::default()
            };
            metadata.set_conf_state(conf_state.clone());
            store.apply_snapshot(&metadata);
        }
        if store.hard_state().commit < snapshot.index {
            store.set_commit(snapshot.index);
        }
        applied = snapshot.index;
    }
    let params = NodeParams {
        id: meta.node_id,
        election_ticks: settings.election_ticks(),
        heartbeat_ticks: settings.heartbeat_ticks(),
        applied,
        max_append_bytes: settings.append_req_max_size,
        max_inflight_appends: settings.append_req_max_count.max(1) as usize,
    };
    let node = RaftNode::new(&params, store).map_err(|e| format!("cannot start raft: {e}"))?;
    let my_addr = my_addr(state.apply_ctx);
    let source_host = my_addr
        .rsplit_once(':')
        .map(|(host, _)| host.trim_matches(['[', ']']).to_string());
    let tls_configs = crate::adapters::redis::configs::peer_tls_from_server(state.apply_ctx)?;
    let tls = tls_configs.as_ref().map(|configs| configs.client.clone());
    let transport = Transport::start(TransportConfig {
        my_id: meta.node_id,
        my_addr: my_addr.clone(),
        dbid: meta.dbid.clone(),
        source_host: source_host.clone(),
        connection_timeout: Duration::from_millis(settings.connection_timeout_ms),
        response_timeout: Duration::from_millis(settings.response_timeout_ms),
        reconnect_interval: Duration::from_millis(settings.reconnect_interval_ms),
        queue_bound_per_peer: PEER_QUEUE_BOUND,
        max_batch_bytes: settings.append_req_max_size as usize,
        cluster_user: settings.cluster_user.clone(),
        cluster_password: settings.cluster_password.clone(),
        tls: tls.clone(),
    });
    let (to_driver, inbox) = bounded_waking(INBOX_BOUND);
    let (outbox, from_driver) = bounded(MAIN_QUEUE_BOUND);
    let gate = PeerGate {
        dbid: meta.dbid.clone(),
        my_id: meta.node_id,
        membership: state.membership.clone(),
    };
    let (peer_gate, peer_port) = start_peer_listener(
        &transport,
        &my_addr,
        &settings,
        tls_configs.map(|configs| configs.server),
        gate,
        to_driver.clone(),
    );
    state.peer_port = peer_port;
    state.node_election_timeout_ms = params.election_ticks as u64 * tick_ms;
    let driver_params = DriverParams {
        tick: Duration::from_millis(tick_ms),
        fsync: settings.log_fsync,
        read_timeout_ticks: params.election_ticks as u64,
        my_addr: my_addr.clone(),
        snapshot_files: SnapshotFiles::for_log(&crate::adapters::redis::settings::log_path()),
        transfer: SendJob {
            addr: String::new(),
            source_host,
            file: Default::default(),
            message: Default::default(),
            dbid: meta.dbid.clone(),
            my_id: meta.node_id,
            chunk_bytes: settings.snapshot_req_max_size as usize,
            window: settings.snapshot_req_max_count as usize,
            connect_timeout: Duration::from_millis(settings.connection_timeout_ms),
            response_timeout: Duration::from_millis(settings.response_timeout_ms),
            cluster_user: settings.cluster_user.clone(),
            cluster_password: settings.cluster_password.clone(),
            tls,
        },
        inbox_sender: to_driver.clone(),
        peer_gate,
        settings: settings.driver_settings(),
    };
    state.transport = Some(transport.clone());
    let driver = Driver::new(
        node,
        log,
        transport,
        state.membership.clone(),
        inbox,
        outbox,
        crate::adapters::redis::main_jobs::wake_main_thread,
        state.shared.clone(),
        driver_params,
    );
    state.loading_until = commit_on_disk.max(applied);
    state.applied_index = applied;
    state.applied_term = snapshot.map_or(0, |s| s.term);
    state.note_snapshot_time(snapshot.map_or(0, |s| s.applied_time_ms));
    state.node_state = if state.loading_until > applied {
        NodeState::Loading
    } else {
        NodeState::Up
    };
    state.to_driver = Some(HoldingSender::new(to_driver));
    state.from_driver = Some(from_driver);
    state.meta = Some(meta);
    crate::adapters::redis::settings::fix_identity();
    driver.spawn();
    Ok(())
}
