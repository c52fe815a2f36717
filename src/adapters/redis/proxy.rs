//! `follower-proxy yes`: a follower forwards a client's command to the leader over a
//! peer connection and relays the reply, instead of answering `MOVED`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::adapters::counters::{PROXY_FAILED_REQS, PROXY_OUTSTANDING_REQS, PROXY_REQS};
use crate::adapters::ffi::{self, Answer, RawCtx};
use crate::adapters::redis::main_jobs::run_on_main;
use crate::adapters::redis::settings::with_config;
use crate::adapters::redis::state::with_state;
use crate::core::entry::Argv;
use crate::core::resp::RespValue;

/// Forwards `argv` to the leader at `leader_addr`; the client stays blocked until the
/// leader answers or `proxy-response-timeout` passes. Returns false when there is no
/// transport to forward with (the caller then answers itself).
pub fn forward(ctx: RawCtx, leader_addr: String, argv: Argv) -> bool {
    let timeout_ms = crate::adapters::redis::blocking::proxy_timeout_ms(
        ctx,
        &argv,
        with_config(|config| config.proxy_response_timeout_ms),
    );
    forward_pipeline(ctx, leader_addr, vec![argv], timeout_ms)
}

/// Forwards the commands of an EXEC as one `MULTI ... EXEC` on one connection; the
/// client gets the leader's EXEC reply (the array of replies, or its error).
pub fn forward_transaction(ctx: RawCtx, leader_addr: String, commands: Vec<Argv>) -> bool {
    let mut pipeline = Vec::with_capacity(commands.len() + 2);
    pipeline.push(vec![b"MULTI".to_vec()]);
    pipeline.extend(commands);
    pipeline.push(vec![b"EXEC".to_vec()]);
    forward_pipeline(
        ctx,
        leader_addr,
        pipeline,
        with_config(|config| config.proxy_response_timeout_ms),
    )
}

fn forward_pipeline(
    ctx: RawCtx,
    leader_addr: String,
    commands: Vec<Argv>,
    timeout_ms: u64,
) -> bool {
    let Some(transport) = with_state(|state| state.transport.clone()) else {
        return false;
    };
    let timeout = Duration::from_millis(timeout_ms);
    let client = ffi::block_client(ctx);
    PROXY_REQS.fetch_add(1, Ordering::Relaxed);
    PROXY_OUTSTANDING_REQS.fetch_add(1, Ordering::Relaxed);
    transport.request_pipeline(
        leader_addr,
        commands,
        timeout,
        Box::new(move |result| {
            let answer = match result {
                Ok(value) => to_answer(value),
                Err(e) => {
                    PROXY_FAILED_REQS.fetch_add(1, Ordering::Relaxed);
                    // The leader may have applied it: the outcome is unknown, not failed.
                    Answer::Error(format!("TIMEOUT proxy to leader failed: {e}"))
                }
            };
            let delivered = run_on_main(Box::new(move || {
                PROXY_OUTSTANDING_REQS.fetch_sub(1, Ordering::Relaxed);
                ffi::unblock(client, answer);
            }));
            if !delivered {
                log::warn!("raft: proxy reply could not be handed to the main thread");
            }
        }),
    );
    true
}

fn to_answer(value: RespValue) -> Answer {
    match value {
        RespValue::Simple(text) => Answer::Simple(text),
        RespValue::Error(text) => Answer::Error(text),
        RespValue::Integer(value) => Answer::Integer(value),
        RespValue::Bulk(Some(bytes)) => Answer::Bulk(bytes),
        RespValue::Bulk(None) => Answer::Null,
        // BLPOP's timeout and friends: the null array, as the leader sent it.
        RespValue::Array(None) => Answer::NullArray,
        RespValue::Array(Some(items)) => Answer::Array(items.into_iter().map(to_answer).collect()),
    }
}
