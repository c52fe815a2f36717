//! Membership commands: RAFT.CLUSTER JOIN, RAFT.NODE ADD/REMOVE, RAFT.TRANSFER_LEADER,
//! RAFT.TIMEOUT_NOW, and RAFT.MSG (raft messages from peers).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use raft::eraftpb::ConfChangeType;
use redis_module::{Context, RedisError, RedisResult, RedisString, RedisValue};

use crate::adapters::disk::logio::LogFile;
use crate::adapters::ffi::{self, Answer, BlockedClient, RawCtx};
use crate::adapters::network::peer_guard;
use crate::adapters::network::peer_inbound;
use crate::adapters::network::transport::{decode_raft_msg, Transport, TransportConfig};
use crate::adapters::raft_thread::driver::DriverInput;
use crate::adapters::redis::main_jobs::run_on_main;
use crate::adapters::redis::node_start::{my_addr, start_node};
use crate::adapters::redis::random_ids::{pick_node_id, random_node_id};
use crate::adapters::redis::settings::log_path;
use crate::adapters::redis::settings::{config, with_config};
use crate::adapters::redis::state::{self, with_state, NodeState, Waiter};
use crate::core::config::parse_addr;
use crate::core::entry::Origin;
use crate::core::logfile::NodeMeta;
use crate::core::membership::{single_change, ChangeContext};
use crate::core::peer_check::{check_peer_user, Refusal};
use crate::core::resp::RespValue;

/// Removing the only voter would leave a cluster that can never elect a leader.
pub const ERR_LAST_VOTER: &str = "ERR cannot remove the last voting node of the cluster";
const ERR_JOIN_FAILED: &str = "ERR failed to connect to cluster for join, please check logs";
/// Pause between join rounds while the cluster has no leader or is busy with a change.
const JOIN_RETRY_INTERVAL: Duration = Duration::from_millis(500);

fn error(message: &str) -> RedisResult {
    Err(RedisError::String(message.to_string()))
}

/// Errors for commands only the leader can run.
fn leader_check() -> Result<(), String> {
    with_state(|state| {
        if state.node_state != NodeState::Up {
            return Err("NOCLUSTER No Raft Cluster".to_string());
        }
        if state.is_leader_ready() {
            return Ok(());
        }
        Err(state.not_leader_error())
    })
}

/// `RAFT.CLUSTER JOIN host:port [host:port ...]`
pub fn cluster_join(ctx: &Context, args: &[RedisString]) -> RedisResult {
    if args.is_empty() {
        return Err(RedisError::WrongArity);
    }
    let mut targets = VecDeque::new();
    for arg in args {
        let text = arg.to_string_lossy();
        parse_addr("join", &text)
            .map_err(|e| RedisError::String(format!("ERR invalid address: {e}")))?;
        targets.push_back(text);
    }
    if with_state(|state| state.node_state != NodeState::Uninitialized) {
        return error("ERR Already cluster member");
    }
    let keys_present =
        state::call_locally(ctx.ctx, &[b"DBSIZE".to_vec()], false).map_or(0, |r| r.integer());
    if keys_present > 0 {
        return error("ERR the database is not empty: RAFT.CLUSTER JOIN needs an empty dataset");
    }
    let node_id = pick_node_id();
    let my_addr = my_addr(ctx.ctx);
    let settings = config();
    let id_is_random = settings.id == 0;
    let tls = match crate::adapters::redis::configs::peer_tls_from_server(ctx.ctx) {
        Ok(tls) => tls.map(|configs| configs.client),
        Err(message) => return error(&format!("ERR {message}")),
    };
    with_state(|state| {
        state.node_state = NodeState::Joining;
        state.removed = false;
    });
    let client = ffi::block_client(ctx.ctx);
    let transport = Transport::start(TransportConfig {
        my_id: node_id,
        my_addr: String::new(),
        dbid: String::new(),
        source_host: my_addr
            .rsplit_once(':')
            .map(|(host, _)| host.trim_matches(['[', ']']).to_string()),
        connection_timeout: Duration::from_millis(settings.connection_timeout_ms),
        response_timeout: Duration::from_millis(settings.response_timeout_ms),
        reconnect_interval: Duration::from_millis(settings.reconnect_interval_ms),
        queue_bound_per_peer: 1,
        max_batch_bytes: 1,
        cluster_user: settings.cluster_user.clone(),
        cluster_password: settings.cluster_password.clone(),
        tls,
    });
    let deadline = Instant::now() + Duration::from_millis(settings.join_timeout_ms);
    let request_timeout =
        Duration::from_millis(settings.connection_timeout_ms + settings.response_timeout_ms * 5);
    std::thread::Builder::new()
        .name("raft-join".into())
        .spawn(move || {
            let outcome = ask_to_join(
                &transport,
                targets,
                node_id,
                &my_addr,
                id_is_random,
                deadline,
                request_timeout,
            );
            transport.shutdown();
            run_on_main(Box::new(move || finish_join(client, outcome)));
        })
        .map_err(|e| RedisError::String(format!("ERR cannot start join: {e}")))?;
    Ok(RedisValue::NoReply)
}

/// Asks the listed nodes, following MOVED to the leader, until one adds us or time is up.
/// Returns the id the cluster accepted and the cluster's dbid.
fn ask_to_join(
    transport: &Transport,
    mut targets: VecDeque<String>,
    mut node_id: u64,
    my_addr: &str,
    id_is_random: bool,
    deadline: Instant,
    request_timeout: Duration,
) -> Result<(u64, String), String> {
    let seeds: Vec<String> = targets.iter().cloned().collect();
    let mut moves = 0;
    while Instant::now() < deadline {
        let Some(target) = targets.pop_front() else {
            std::thread::sleep(JOIN_RETRY_INTERVAL);
            targets.extend(seeds.iter().cloned());
            continue;
        };
        let argv = vec![
            b"RAFT.NODE".to_vec(),
            b"ADD".to_vec(),
            node_id.to_string().into_bytes(),
            my_addr.as_bytes().to_vec(),
        ];
        match transport.request_blocking(target.clone(), argv, request_timeout) {
            Ok(RespValue::Array(Some(items))) if items.len() == 2 => {
                if let (RespValue::Integer(id), RespValue::Simple(dbid)) =
                    (&items[0], to_text(&items[1]))
                {
                    let id = *id as u64;
                    log::info!("raft: joined cluster {dbid} through {target} as node {id}");
                    return Ok((id, dbid));
                }
                log::warn!("raft: join: unexpected reply from {target}: {items:?}");
            }
            Ok(RespValue::Error(message)) => {
                if let Some(leader) = message.strip_prefix("MOVED 0 ") {
                    moves += 1;
                    if moves < 100 {
                        targets.push_front(leader.trim().to_string());
                        continue;
                    }
                }
                if message.contains("already been used") {
                    if !id_is_random {
                        return Err(format!("{target} refused node id {node_id}: {message}"));
                    }
                    // Our random id collided with one used before: draw another.
                    node_id = random_node_id();
                    targets.push_front(target);
                    continue;
                }
                log::info!("raft: join: {target} answered {message}; retrying");
            }
            Ok(other) => log::warn!("raft: join: unexpected reply from {target}: {other:?}"),
            Err(e) => log::info!("raft: join: {target}: {e}; retrying"),
        }
        if targets.is_empty() {
            std::thread::sleep(JOIN_RETRY_INTERVAL);
        }
    }
    Err("join timed out".into())
}

/// Normalizes simple and bulk strings to the same shape for matching.
fn to_text(value: &RespValue) -> RespValue {
    match value {
        RespValue::Bulk(Some(bytes)) => {
            RespValue::Simple(String::from_utf8_lossy(bytes).to_string())
        }
        other => other.clone(),
    }
}

fn finish_join(client: BlockedClient, outcome: Result<(u64, String), String>) {
    let result = outcome.and_then(|(node_id, dbid)| {
        let meta = NodeMeta {
            dbid,
            node_id,
            bootstrap_voters: Vec::new(),
        };
        let log = LogFile::create(&log_path(), &meta)?;
        with_state(|state| start_node(state, log, None, meta, None))
    });
    match result {
        Ok(()) => ffi::unblock(client, Answer::Simple("OK".into())),
        Err(e) => {
            log::warn!("raft: join failed: {e}");
            with_state(|state| state.node_state = NodeState::Uninitialized);
            ffi::unblock(client, Answer::Error(ERR_JOIN_FAILED.into()));
        }
    }
}

/// `RAFT.NODE ADD <id or 0> host:port` / `RAFT.NODE REMOVE <id>`
pub fn raft_node(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    let sub = args
        .get(1)
        .map(|a| a.to_string_lossy().to_ascii_lowercase());
    let (change_type, node_id, addr) = match (sub.as_deref(), args.len()) {
        (Some("add"), 4) => {
            let id = args[2]
                .parse_unsigned_integer()
                .map_err(|_| RedisError::Str("ERR invalid node id"))?;
            let addr = args[3].to_string_lossy();
            parse_addr("addr", &addr)
                .map_err(|e| RedisError::String(format!("ERR invalid address: {e}")))?;
            (ConfChangeType::AddLearnerNode, id, addr)
        }
        (Some("remove"), 3) => {
            let id = args[2]
                .parse_unsigned_integer()
                .map_err(|_| RedisError::Str("ERR invalid node id"))?;
            (ConfChangeType::RemoveNode, id, String::new())
        }
        (Some("add" | "remove"), _) => return Err(RedisError::WrongArity),
        _ => return error("ERR RAFT.NODE supports ADD / REMOVE"),
    };
    if let Err(message) = leader_check() {
        return error(&message);
    }
    let checked = with_state(|state| {
        let dbid = state
            .meta
            .as_ref()
            .map(|m| m.dbid.clone())
            .unwrap_or_default();
        if change_type == ConfChangeType::RemoveNode {
            if state.membership.get(node_id).is_none() {
                return Err("ERR node id does not exist");
            }
            // The leader may remove itself: once the change is applied it hands leadership
            // to another voter and leaves (driver `start_handover`). Raft cannot run
            // without a voter, so the last one stays.
            if node_id == state.my_id() && state.membership.voting_count() <= 1 {
                return Err(ERR_LAST_VOTER);
            }
            return Ok((node_id, Answer::Simple("OK".into()), false));
        }
        let id = if node_id == 0 {
            unused_random_id(state)
        } else {
            node_id
        };
        if state
            .membership
            .get(id)
            .is_some_and(|member| member.addr == addr)
        {
            // A retried JOIN whose first NODE ADD committed but whose reply was lost: the
            // node is already in, so tell it so instead of refusing its id.
            return Ok((
                id,
                Answer::Array(vec![Answer::Integer(id as i64), Answer::Simple(dbid)]),
                true,
            ));
        }
        if state.membership.is_used(id) {
            return Err("ERR node id has already been used in this cluster");
        }
        Ok((
            id,
            Answer::Array(vec![Answer::Integer(id as i64), Answer::Simple(dbid)]),
            false,
        ))
    });
    let (node_id, conf_reply) = match checked {
        Ok((_, reply, true)) => {
            ffi::reply_answer(ctx.ctx, &reply);
            return Ok(RedisValue::NoReply);
        }
        Ok((id, reply, false)) => (id, reply),
        Err(message) => return error(message),
    };
    propose_change(ctx, change_type, node_id, addr, false, conf_reply)
}

/// Proposes a one-node change for the client of `ctx`, which gets `conf_reply` once it is
/// applied (or an error).
fn propose_change(
    ctx: &Context,
    change_type: ConfChangeType,
    node_id: u64,
    addr: String,
    held_as_learner: bool,
    conf_reply: Answer,
) -> RedisResult {
    let client = ffi::block_client(ctx.ctx);
    let sent = with_state(|state| {
        let request_id = state.new_request_id();
        let origin = Origin {
            node_id: state.my_id(),
            incarnation: state.incarnation,
            request_id,
        };
        let context = ChangeContext {
            origin: Some(origin),
            node_id,
            addr,
            held_as_learner,
        };
        let input = DriverInput::ConfChange {
            request_id: Some(request_id),
            change: single_change(change_type, node_id),
            context: context.encode(),
        };
        state.waiters.insert(
            request_id,
            Waiter {
                client,
                resp3: false,
                read: None,
                conf_reply: Some(conf_reply),
                user: None,
                blocking: None,
                asking: false,
            },
        );
        state.send_to_driver(input).map_err(|e| (request_id, e))
    });
    if let Err((request_id, message)) = sent {
        with_state(|state| state.answer_waiter(request_id, Answer::Error(message.into())));
    }
    Ok(RedisValue::NoReply)
}

/// `RAFT.DEBUG NODECFG <id> <"+voting -voting +active -active">`: the original flips its
/// raft library's local view of a node; raft-rs only changes a node's role through the
/// log, so `-voting` demotes a voter to a learner the leader keeps as such (a replicated
/// change) and `+voting` promotes it again. Members are always active: `+active` is
/// accepted and `-active` refused (`RAFT.NODE REMOVE` takes a node out).
pub fn node_cfg(ctx: &Context, args: &[RedisString]) -> RedisResult {
    if args.len() < 4 {
        return Err(RedisError::WrongArity);
    }
    let node_id = args[2]
        .parse_unsigned_integer()
        .map_err(|_| RedisError::Str("ERR invalid node id"))?;
    let mut voting = None;
    for arg in &args[3..] {
        for token in arg.to_string_lossy().split_ascii_whitespace() {
            match token.to_ascii_lowercase().as_str() {
                "+voting" => voting = Some(true),
                "-voting" => voting = Some(false),
                "+active" => {}
                "-active" => {
                    return error(
                        "ERR -active is not supported: members are always active, RAFT.NODE REMOVE takes a node out",
                    )
                }
                _ => return error(&format!("ERR invalid nodecfg option '{token}'")),
            }
        }
    }
    if let Err(message) = leader_check() {
        return error(&message);
    }
    let checked = with_state(|state| {
        let Some(member) = state.membership.get(node_id) else {
            return Err("ERR node id does not exist");
        };
        let held = state.membership.is_held_learner(node_id);
        match voting {
            None => Ok(None),
            Some(true) if member.voting => Ok(None),
            Some(true) => Ok(Some(ConfChangeType::AddNode)),
            Some(false) if !member.voting && held => Ok(None),
            Some(false) if node_id == state.my_id() => {
                Err("ERR the leader cannot be demoted: transfer leadership first")
            }
            Some(false) if member.voting && state.membership.voting_count() <= 1 => {
                Err(ERR_LAST_VOTER)
            }
            Some(false) => Ok(Some(ConfChangeType::AddLearnerNode)),
        }
    });
    match checked {
        Err(message) => error(message),
        Ok(None) => Ok(RedisValue::SimpleStringStatic("OK")),
        Ok(Some(change_type)) => {
            let held = change_type == ConfChangeType::AddLearnerNode;
            propose_change(
                ctx,
                change_type,
                node_id,
                String::new(),
                held,
                Answer::Simple("OK".into()),
            )
        }
    }
}

fn unused_random_id(state: &state::MainState) -> u64 {
    loop {
        let id = random_node_id();
        if !state.membership.is_used(id) {
            return id;
        }
    }
}

/// `RAFT.TRANSFER_LEADER [id]`: replies once the target leads, or after an election timeout.
pub fn transfer_leader(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    // The original's wording, which its users' scripts match on.
    const INVALID_NODE: &str = "ERR invalid node id";
    let target = match args.get(1) {
        Some(arg) => Some(
            arg.parse_unsigned_integer()
                .map_err(|_| RedisError::Str(INVALID_NODE))?,
        ),
        None => None,
    };
    match leader_check() {
        Ok(()) => {}
        Err(message) if message.starts_with("NOCLUSTER") => return error(&message),
        Err(_) => return error("ERR not leader"),
    }
    let invalid = with_state(|state| {
        target.is_some_and(|id| {
            id == state.my_id() || !state.membership.get(id).is_some_and(|m| m.voting)
        })
    });
    if invalid {
        return error(INVALID_NODE);
    }
    if let Err(e) = with_state(|state| state.send_to_driver(DriverInput::TransferLeader { target }))
    {
        return error(e);
    }
    let client = ffi::block_client(ctx.ctx);
    let (shared, me, election_timeout_ms) = with_state(|state| {
        (
            state.shared.clone(),
            state.my_id(),
            state.node_election_timeout_ms,
        )
    });
    let deadline = Instant::now() + Duration::from_millis(election_timeout_ms * 2);
    std::thread::spawn(move || {
        let answer = loop {
            let leader = shared.leader_id.load(Ordering::Relaxed);
            if leader != 0 && leader != me {
                break match target {
                    Some(wanted) if wanted != leader => {
                        Answer::Error("ERR different node elected leader".into())
                    }
                    _ => Answer::Simple("OK".into()),
                };
            }
            if Instant::now() >= deadline {
                break Answer::Error("ERR transfer timed out".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        run_on_main(Box::new(move || ffi::unblock(client, answer)));
    });
    Ok(RedisValue::NoReply)
}

/// `RAFT.NODESHUTDOWN <id>`: what the original's leader sends a node it removed. This
/// node shuts its server down if `id` is its own (or the one it had before its removal).
pub fn node_shutdown(_ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    if args.len() != 2 {
        return Err(RedisError::WrongArity);
    }
    let id = args[1]
        .parse_unsigned_integer()
        .map_err(|_| RedisError::Str("ERR invalid node id"))?;
    let mine = with_state(|state| {
        state
            .meta
            .as_ref()
            .map(|meta| meta.node_id)
            .or(state.former_id)
    });
    if mine != Some(id) {
        return error("ERR invalid node id");
    }
    log::warn!("raft: RAFT.NODESHUTDOWN {id}: this node shuts down");
    // On the next event-loop iteration, once this reply has been written.
    let scheduled = run_on_main(Box::new(|| std::process::exit(0)));
    if !scheduled {
        return error("ERR cannot schedule the shutdown");
    }
    Ok(RedisValue::SimpleStringStatic("OK"))
}

/// `RAFT.TIMEOUT_NOW`: this node starts an election right away.
pub fn timeout_now(_ctx: &Context, _args: Vec<RedisString>) -> RedisResult {
    with_state(|state| {
        if state.node_state != NodeState::Up {
            return error("NOCLUSTER No Raft Cluster");
        }
        state
            .send_to_driver(DriverInput::Campaign)
            .map_err(|e| RedisError::String(e.into()))?;
        Ok(RedisValue::SimpleStringStatic("OK"))
    })
}

/// `RAFT._PEER_PORT`: the port of this node's raft peer listener (0: none), which a peer
/// asks for on this node's Redis port before it connects there.
pub fn peer_port(ctx: &Context, _args: Vec<RedisString>) -> RedisResult {
    check_peer_caller(
        ctx.ctx,
        crate::adapters::network::transport::PEER_PORT_COMMAND,
    )?;
    // Before the node runs, as RAFT.MSG would: the peer retries instead of settling for
    // the Redis port.
    let port = with_state(|state| match (&state.node_state, &state.transport) {
        (NodeState::Up | NodeState::Loading, Some(_)) => Ok(state.peer_port),
        _ => Err(RedisError::Str("NOCLUSTER No Raft Cluster")),
    })?;
    Ok(RedisValue::Integer(i64::from(port)))
}

/// `RAFT.MSG <dbid> <sender id>[@addr] <message>...`: raft messages from a peer.
///
/// Refused, with nothing handed to raft, unless the caller is the cluster user, every
/// message decodes, is from the sender and for this node, the dbid is ours and the sender
/// is a member (or a leader this node does not know yet): see `core::peer_check`.
pub fn raft_msg(ctx: &Context, args: Vec<RedisString>) -> RedisResult {
    check_peer_caller(ctx.ctx, "RAFT.MSG")?;
    let raw_args: Vec<&[u8]> = args[1..].iter().map(|a| a.as_slice()).collect();
    let decoded = decode_raft_msg(&raw_args).map_err(|e| {
        let client = ffi::data::client_id(ctx.ctx);
        peer_guard::refused("malformed".into(), || {
            format!("refused a malformed RAFT.MSG from client {client}: {e}")
        });
        RedisError::String(e)
    })?;
    with_state(|state| {
        match state.node_state {
            NodeState::Up | NodeState::Loading => {}
            _ => return error("NOCLUSTER No Raft Cluster"),
        }
        let my_dbid = state.meta.as_ref().map_or("", |m| m.dbid.as_str());
        let inputs =
            peer_inbound::admit_against(decoded, my_dbid, state.my_id(), &state.membership)
                .map_err(RedisError::String)?;
        for input in inputs {
            if let Err(e) = state.send_to_driver(DriverInput::from(input)) {
                return error(e);
            }
        }
        Ok(RedisValue::SimpleStringStatic("OK"))
    })
}

/// The error for a refused sender, after counting and logging the refusal (rate-limited).
pub fn refuse_sender(refusal: Refusal, sender: u64, dbid: &str) -> RedisError {
    RedisError::String(peer_inbound::refusal_reply(refusal, sender, dbid))
}

/// Internal peer commands are for the cluster user only (`raft.cluster-user` when
/// `raft.cluster-password` is set, else `default`): anyone else gets Redis' NOPERM.
pub fn check_peer_caller(ctx: RawCtx, command: &str) -> Result<(), RedisError> {
    let user = ffi::data::current_user_name(ctx);
    let verdict = {
        with_config(|config| {
            check_peer_user(
                user.as_deref(),
                &config.cluster_user,
                &config.cluster_password,
                command,
            )
        })
    };
    verdict.map_err(|message| {
        let user = user.unwrap_or_default();
        let client = ffi::data::client_id(ctx);
        peer_guard::refused(format!("user:{user}"), || {
            format!("refused {command} from client {client} authenticated as user '{user}': only the cluster user may send peer messages")
        });
        RedisError::String(message)
    })
}
