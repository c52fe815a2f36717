//! Deterministic simulation of the core: see docs/SIMULATION.md.
// A failure carries the whole reproduction report; it is returned once per run.
#![allow(clippy::result_large_err)]

pub mod disk;
pub mod entropy;
pub mod model;
pub mod rng;
pub mod world;

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

pub use world::{Bootstrap, Mutation, Outcome, Params, Stats};

/// A run that broke a property (or panicked inside raft-rs or the core).
pub struct Failure {
    pub params: Params,
    pub time: u64,
    pub message: String,
    pub events: Vec<String>,
    pub nodes: String,
    pub faults: String,
}

impl Failure {
    /// The exact command that replays this run.
    pub fn repro(&self) -> String {
        let p = &self.params;
        let mut env = format!(
            "SIM_SEED={} SIM_STEPS={} SIM_NODES={}",
            p.seed, p.steps, p.nodes
        );
        match p.bootstrap {
            Bootstrap::InitAddsSelf => {}
            Bootstrap::InitAddsSelfOnce => env.push_str(" SIM_BOOTSTRAP=init-adds-self-once"),
            Bootstrap::EmptyJoiners => env.push_str(" SIM_BOOTSTRAP=empty-joiners"),
        }
        if !p.kills {
            env.push_str(" SIM_KILLS=0");
        }
        if !p.open_syncs {
            env.push_str(" SIM_OPEN_SYNCS=0");
        }
        if p.campaign_non_voters {
            env.push_str(" SIM_CAMPAIGN_ANY=1");
        }
        if p.partial_header_then_zeros {
            env.push_str(" SIM_TORN_HEADERS=1");
        }
        match p.mutation {
            world::Mutation::None => {}
            world::Mutation::AckBeforeFsync => env.push_str(" SIM_MUTATION=ack-before-fsync"),
            world::Mutation::NoFsync => env.push_str(" SIM_MUTATION=no-fsync"),
            world::Mutation::ForgetVote => env.push_str(" SIM_MUTATION=forget-vote"),
        }
        if !p.snapshots {
            env.push_str(" SIM_SNAPSHOTS=0");
        }
        if p.received_one_name {
            env.push_str(" SIM_RECEIVED_ONE_NAME=1");
        }
        if !p.check_conf {
            env.push_str(" SIM_NO_CONF_CHECK=1");
        }
        format!("{env} cargo test --test simulation replay -- --nocapture")
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        writeln!(
            f,
            "simulation seed {} failed at time {}: {}",
            self.params.seed, self.time, self.message
        )?;
        writeln!(f, "faults: {}", self.faults)?;
        writeln!(f, "nodes at the failure:\n{}", self.nodes)?;
        writeln!(f, "last events:")?;
        for line in &self.events {
            writeln!(f, "  {line}")?;
        }
        write!(f, "reproduce with:\n  {}", self.repro())
    }
}

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Panics on simulation threads are recorded (message and location) for the failure
/// report instead of being printed; other threads keep the default hook.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let on_sim_thread = std::thread::current()
                .name()
                .is_some_and(|name| name.starts_with("sim-seed-"));
            if on_sim_thread {
                let location = info
                    .location()
                    .map(|l| format!(" at {}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                let message = info
                    .payload()
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "non-string panic".to_string());
                LAST_PANIC.with(|last| *last.borrow_mut() = Some(format!("{message}{location}")));
            } else {
                default_hook(info);
            }
        }));
    });
}

/// Runs one seed on a fresh thread whose `getrandom` is deterministic (see entropy.rs),
/// turning panics inside raft-rs or the core into a `Failure` at the step they hit.
pub fn run(params: Params) -> Result<Outcome, Failure> {
    install_panic_hook();
    let thread_params = params.clone();
    let handle = std::thread::Builder::new()
        .name(format!("sim-seed-{}", params.seed))
        .stack_size(32 * 1024 * 1024)
        .spawn(move || {
            entropy::make_thread_deterministic(thread_params.seed);
            let mut world = world::World::new(thread_params.clone());
            let result = catch_unwind(AssertUnwindSafe(|| world.run()));
            let message = match result {
                Ok(Ok(outcome)) => return Ok(outcome),
                Ok(Err(message)) => message,
                Err(_) => {
                    let text = LAST_PANIC
                        .with(|last| last.borrow_mut().take())
                        .unwrap_or_else(|| "unknown panic".to_string());
                    format!("panic inside raft-rs / the core: {text}")
                }
            };
            Err(Failure {
                params: thread_params,
                time: world.now(),
                message,
                events: world.recent_events(),
                nodes: world.describe_nodes(),
                faults: world.describe_faults(),
            })
        })
        .expect("spawn a simulation thread");
    handle.join().unwrap_or_else(|_| {
        Err(Failure {
            params,
            time: 0,
            message: "the simulation thread died".to_string(),
            events: Vec::new(),
            nodes: String::new(),
            faults: String::new(),
        })
    })
}
