//! Checks a chaos history against the final state of the healed cluster.
//!
//! List-append keys (the final list, identical on every node, is the one true order):
//! - no duplicates in the final list; every element was appended by some invoked operation
//!   on that key and that operation did not fail;
//! - every acknowledged append is in the final list exactly once, at the position its
//!   RPUSH reply (the new length) names;
//! - every successful read is a prefix of the final list (so: no duplicates, no value of a
//!   failed append, the one order), contains every append acknowledged before the read was
//!   invoked, nothing appended after the read completed, and is at least as long as any read
//!   that completed before it was invoked;
//! - an append acknowledged before another append was invoked comes first in the list.
//!
//! Queues (LPUSH by the clients, BLPOP by consumers, some of which go away while blocked):
//! every value popped or left in the final queue was pushed to that key by an operation
//! that did not fail, and is delivered once at most (popped by one acknowledged BLPOP, or
//! still queued); an acknowledged push that is neither popped nor queued was popped for
//! nobody, which only a consumer that went away with its attempt already in the log may
//! cause: more of them than such consumers (abandoned or `unknown` BLPOPs) is a violation.
//!
//! Registers (SET / GET / INCR): per key a Wing-Gong-Lowe linearizability search (with
//! Lowe's memoization of (linearized set, state)); `unknown` writes may take effect at any
//! point after their invocation or never; the value every node holds at the end is a read
//! after everything. Values read are traced back to the SET they grew from, so a value of a
//! failed or never-issued SET is named directly.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use super::history::{Call, Op, Outcome, Reply, VALUE_STRIDE};

/// Findings of a check.
#[derive(Default, Debug)]
pub struct Findings {
    /// Consistency violations: any of these fails the run.
    pub violations: Vec<String>,
    /// Things worth knowing that are not violations (e.g. a search that hit its budget).
    pub notes: Vec<String>,
    /// Counters for the summary.
    pub stats: BTreeMap<String, u64>,
}

impl Findings {
    fn bump(&mut self, key: &str, by: u64) {
        *self.stats.entry(key.to_string()).or_default() += by;
    }
}

fn secs(ns: u64) -> String {
    format!("{:.3}s", ns as f64 / 1e9)
}

// ---------------------------------------------------------------------------------------
// Queues

/// `finals`: every queue key's final list (the same on every node), parsed as numbers.
pub fn check_queues(ops: &[Op], finals: &BTreeMap<String, Vec<u64>>, out: &mut Findings) {
    let mut pushes: HashMap<(&str, u64), &Op> = HashMap::new();
    for op in ops {
        if let Call::Enqueue { key, value } = &op.call {
            pushes.insert((key.as_str(), *value), op);
        }
    }
    // Where each value went: popped by which acknowledged BLPOPs, or left queued.
    let mut delivered: HashMap<(&str, u64), Vec<String>> = HashMap::new();
    let mut unsure_pops = 0u64;
    for op in ops {
        let Call::Dequeue { key, .. } = &op.call else {
            continue;
        };
        match (&op.outcome, &op.reply) {
            (Outcome::Ok, Some(Reply::Popped(Some(value)))) => delivered
                .entry((key.as_str(), *value))
                .or_default()
                .push(op.describe()),
            // An abandoned BLPOP of a trap key cannot take a shared queue's value.
            (Outcome::Unknown, _) if !key.starts_with("trap-") => unsure_pops += 1,
            _ => {}
        }
    }
    for (key, list) in finals {
        for value in list {
            delivered
                .entry((key.as_str(), *value))
                .or_default()
                .push(format!("still in {key}"));
        }
    }
    for ((key, value), places) in &delivered {
        match pushes.get(&(*key, *value)) {
            None => out.violations.push(format!(
                "queue {key}: phantom: {value} was delivered ({}) but never pushed to it",
                places.join("; ")
            )),
            Some(push) if push.outcome == Outcome::Fail => out.violations.push(format!(
                "queue {key}: failed write took effect: {value} delivered ({}), its push \
                 failed: {}",
                places.join("; "),
                push.describe()
            )),
            _ => {}
        }
        if places.len() > 1 {
            out.violations.push(format!(
                "queue {key}: {value} delivered {} times: {}",
                places.len(),
                places.join("; ")
            ));
        }
    }
    let lost: Vec<String> = pushes
        .iter()
        .filter(|(at, push)| push.outcome == Outcome::Ok && !delivered.contains_key(*at))
        .map(|(_, push)| push.describe())
        .collect();
    // A trap key's only consumer left before its one push: nothing may take that value.
    let (trapped, lost): (Vec<String>, Vec<String>) = lost
        .into_iter()
        .partition(|described| described.contains(" trap-"));
    for described in &trapped {
        out.violations.push(format!(
            "queue: popped for nobody: {described} was pushed after the only consumer of \
             its key went away, and is gone"
        ));
    }
    out.bump("trap pushes popped for nobody", trapped.len() as u64);
    out.bump(
        "queue pushes acknowledged",
        pushes.values().filter(|p| p.outcome == Outcome::Ok).count() as u64,
    );
    out.bump("queue values delivered", delivered.len() as u64);
    out.bump("queue pops of unknown outcome", unsure_pops);
    out.bump("queue values popped for nobody", lost.len() as u64);
    if lost.len() as u64 > unsure_pops {
        out.violations.push(format!(
            "queues: {} acknowledged pushes were popped for nobody, more than the {unsure_pops} \
             consumers that left with an attempt possibly in the log; e.g. {}",
            lost.len(),
            lost.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
        ));
    }
}

// ---------------------------------------------------------------------------------------
// Lists

/// `finals`: the list every node holds at the end, per key (elements parsed as numbers).
pub fn check_lists(ops: &[Op], finals: &BTreeMap<String, Vec<u64>>, out: &mut Findings) {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        if matches!(op.call, Call::Append { .. } | Call::Read { .. }) {
            by_key.entry(op.call.key()).or_default().push(op);
        }
    }
    for key in finals.keys() {
        by_key.entry(key.as_str()).or_default();
    }
    let empty = Vec::new();
    for (key, key_ops) in by_key {
        let final_list = finals.get(key).unwrap_or(&empty);
        check_list_key(key, &key_ops, final_list, out);
    }
}

fn check_list_key(key: &str, ops: &[&Op], final_list: &[u64], out: &mut Findings) {
    let mut v = Vec::new();
    out.bump("list keys", 1);
    out.bump("list final elements", final_list.len() as u64);

    // Positions in the true order.
    let mut pos: HashMap<u64, usize> = HashMap::new();
    for (i, &value) in final_list.iter().enumerate() {
        if let Some(first) = pos.insert(value, i) {
            v.push(format!(
                "list {key}: duplicate: value {value} at positions {first} and {i} of the final list"
            ));
            pos.insert(value, first);
        }
    }
    let appends: HashMap<u64, &Op> = ops
        .iter()
        .filter_map(|op| match op.call {
            Call::Append { value, .. } => Some((value, *op)),
            _ => None,
        })
        .collect();

    // Every element of the final list was appended, by an operation that did not fail.
    for (i, value) in final_list.iter().enumerate() {
        match appends.get(value) {
            None => v.push(format!(
                "list {key}: phantom: final list holds {value} at {i}, never appended to this key"
            )),
            Some(op) if op.outcome == Outcome::Fail => v.push(format!(
                "list {key}: failed write took effect: {value} at position {i} of the final list, \
                 its append failed: {}",
                op.describe()
            )),
            _ => {}
        }
    }

    // Every acknowledged append is there, where its reply said.
    for op in ops {
        let Call::Append { value, .. } = op.call else {
            continue;
        };
        if op.outcome == Outcome::Unknown {
            out.bump("appends unknown", 1);
            if pos.contains_key(&value) {
                out.bump("appends unknown that took effect", 1);
            }
        }
        if op.outcome != Outcome::Ok {
            continue;
        }
        match pos.get(&value) {
            None => v.push(format!(
                "list {key}: lost write: acknowledged append of {value} is not in the final list \
                 ({} elements): {}",
                final_list.len(),
                op.describe()
            )),
            Some(&p) => {
                if let Some(Reply::Int(len)) = op.reply {
                    if len < 1 || len as usize != p + 1 {
                        v.push(format!(
                            "list {key}: RPUSH of {value} replied length {len}, but the value is \
                             at position {p} (length {} when appended): {}",
                            p + 1,
                            op.describe()
                        ));
                    }
                }
            }
        }
    }

    // Reads.
    let mut reads: Vec<(&Op, &Vec<u64>)> = ops
        .iter()
        .filter_map(|op| match (&op.call, &op.reply) {
            (Call::Read { .. }, Some(Reply::List(list))) if op.outcome == Outcome::Ok => {
                Some((*op, list))
            }
            _ => None,
        })
        .collect();
    out.bump("list reads ok", reads.len() as u64);
    out.bump(
        "list reads failed",
        ops.iter()
            .filter(|op| matches!(op.call, Call::Read { .. }) && op.outcome != Outcome::Ok)
            .count() as u64,
    );
    for (op, list) in &reads {
        let n = list.len().min(final_list.len());
        if let Some(i) = (0..n).find(|&i| list[i] != final_list[i]) {
            v.push(format!(
                "list {key}: read is not a prefix of the final order: element {i} is {} in the \
                 read, {} in the final list: {}",
                list[i],
                final_list[i],
                op.describe()
            ));
        } else if list.len() > final_list.len() {
            v.push(format!(
                "list {key}: read is longer ({}) than the final list ({}): extra {:?}: {}",
                list.len(),
                final_list.len(),
                &list[final_list.len()..list.len().min(final_list.len() + 5)],
                op.describe()
            ));
        }
        let mut seen = HashSet::new();
        for (i, value) in list.iter().enumerate() {
            if !seen.insert(value) {
                v.push(format!(
                    "list {key}: read holds {value} twice (again at {i}): {}",
                    op.describe()
                ));
            }
            match appends.get(value) {
                None => v.push(format!(
                    "list {key}: read saw {value}, never appended to this key: {}",
                    op.describe()
                )),
                Some(a) if a.outcome == Outcome::Fail => v.push(format!(
                    "list {key}: read saw the value of a failed append: {} ; the append: {}",
                    op.describe(),
                    a.describe()
                )),
                Some(a) if a.invoke_ns > op.complete_ns => v.push(format!(
                    "list {key}: read saw {value} before its append was invoked: {} ; the \
                     append: {}",
                    op.describe(),
                    a.describe()
                )),
                _ => {}
            }
        }
    }

    // Stale reads: a read must contain every append acknowledged before it was invoked.
    let mut acked: Vec<(u64, usize, &Op)> = ops
        .iter()
        .filter(|op| op.outcome == Outcome::Ok && matches!(op.call, Call::Append { .. }))
        .filter_map(|op| match op.call {
            Call::Append { value, .. } => pos.get(&value).map(|&p| (op.complete_ns, p, *op)),
            _ => None,
        })
        .collect();
    acked.sort_by_key(|a| a.0);
    reads.sort_by_key(|(op, _)| op.invoke_ns);
    {
        let mut i = 0;
        let mut need: Option<(usize, &Op)> = None;
        for (op, list) in &reads {
            while i < acked.len() && acked[i].0 < op.invoke_ns {
                if need.is_none_or(|(p, _)| acked[i].1 > p) {
                    need = Some((acked[i].1, acked[i].2));
                }
                i += 1;
            }
            if let Some((p, a)) = need {
                if list.len() <= p {
                    v.push(format!(
                        "list {key}: stale read: {} elements, but the append at position {p} was \
                         acknowledged before the read began: read {} ; append {}",
                        list.len(),
                        op.describe(),
                        a.describe()
                    ));
                }
            }
        }
    }
    // Reads never go back in time: a read invoked after another completed is no shorter.
    {
        let mut done: Vec<(u64, usize, &Op)> = reads
            .iter()
            .map(|(op, list)| (op.complete_ns, list.len(), *op))
            .collect();
        done.sort_by_key(|d| d.0);
        let mut i = 0;
        let mut longest: Option<(usize, &Op)> = None;
        for (op, list) in &reads {
            while i < done.len() && done[i].0 < op.invoke_ns {
                if longest.is_none_or(|(l, _)| done[i].1 > l) {
                    longest = Some((done[i].1, done[i].2));
                }
                i += 1;
            }
            if let Some((l, earlier)) = longest {
                if list.len() < l {
                    v.push(format!(
                        "list {key}: stale read: {} elements after an earlier read saw {l}: \
                         read {} ; earlier {}",
                        list.len(),
                        op.describe(),
                        earlier.describe()
                    ));
                }
            }
        }
    }
    // Real-time order of appends: acknowledged before another was invoked → comes first.
    {
        let mut present: Vec<(&Op, usize)> = ops
            .iter()
            .filter_map(|op| match op.call {
                Call::Append { value, .. } => pos.get(&value).map(|&p| (*op, p)),
                _ => None,
            })
            .collect();
        present.sort_by_key(|(op, _)| op.invoke_ns);
        let mut i = 0;
        let mut latest: Option<(usize, &Op)> = None;
        for (op, p) in &present {
            while i < acked.len() && acked[i].0 < op.invoke_ns {
                if latest.is_none_or(|(q, _)| acked[i].1 > q) {
                    latest = Some((acked[i].1, acked[i].2));
                }
                i += 1;
            }
            if let Some((q, a)) = latest {
                if *p < q {
                    v.push(format!(
                        "list {key}: order: append at position {p} was invoked after the append \
                         at position {q} was acknowledged: {} ; earlier {}",
                        op.describe(),
                        a.describe()
                    ));
                }
            }
        }
    }
    let shown = v.len().min(20);
    if v.len() > shown {
        let more = v.len() - shown;
        v.truncate(shown);
        v.push(format!("list {key}: ... and {more} more violations"));
    }
    out.violations.extend(v);
}

// ---------------------------------------------------------------------------------------
// Registers

/// A register operation as the search sees it.
#[derive(Clone, Debug)]
struct RegOp {
    /// Index into the key's op list (for reports); `usize::MAX` for the final read.
    source: usize,
    kind: RegKind,
    invoke: u64,
    /// `None`: unknown outcome, may take effect any time after `invoke`, or never.
    complete: Option<u64>,
}

#[derive(Clone, Copy, Debug)]
enum RegKind {
    Set(i64),
    Get(Option<i64>),
    /// `None`: result unknown.
    Incr(Option<i64>),
}

fn step(state: Option<i64>, kind: RegKind) -> Option<Option<i64>> {
    match kind {
        RegKind::Set(v) => Some(Some(v)),
        RegKind::Get(r) => (r == state).then_some(state),
        RegKind::Incr(r) => {
            let next = state.unwrap_or(0) + 1;
            match r {
                Some(r) if r != next => None,
                _ => Some(Some(next)),
            }
        }
    }
}

/// Result of one key's search.
pub enum Linearizable {
    Yes,
    No(String),
    /// The search hit its budget: neither proven nor refuted.
    Unknown(String),
}

/// Search budget per key (steps).
const WGL_BUDGET: u64 = 5_000_000;

/// `finals`: the value every node holds at the end (`None`: no key), per register key.
pub fn check_registers(
    ops: &[Op],
    finals: &BTreeMap<String, Option<i64>>,
    end_ns: u64,
    out: &mut Findings,
) {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        if matches!(
            op.call,
            Call::Set { .. } | Call::Get { .. } | Call::Incr { .. }
        ) {
            by_key.entry(op.call.key()).or_default().push(op);
        }
    }
    for key in finals.keys() {
        by_key.entry(key.as_str()).or_default();
    }
    for (key, key_ops) in by_key {
        let final_value = finals.get(key).copied().flatten();
        check_register_key(key, &key_ops, final_value, end_ns, out);
    }
}

fn check_register_key(
    key: &str,
    ops: &[&Op],
    final_value: Option<i64>,
    end_ns: u64,
    out: &mut Findings,
) {
    out.bump("register keys", 1);
    // Trace observed values back to their SET.
    let sets: HashMap<i64, &Op> = ops
        .iter()
        .filter_map(|op| match op.call {
            Call::Set { value, .. } => Some((value, *op)),
            _ => None,
        })
        .collect();
    let mut observed_bases: HashSet<i64> = HashSet::new();
    let mut trace = |value: i64, what: String, v: &mut Vec<String>| {
        let base = value - value.rem_euclid(VALUE_STRIDE);
        observed_bases.insert(base);
        if base == 0 {
            return; // INCRs on a missing key
        }
        match sets.get(&base) {
            None => v.push(format!(
                "register {key}: {what} saw {value}, which no SET of this key wrote (base {base})"
            )),
            Some(set) if set.outcome == Outcome::Fail => v.push(format!(
                "register {key}: failed write took effect: {what} saw {value}, from a SET that \
                 failed: {}",
                set.describe()
            )),
            _ => {}
        }
    };
    let mut v = Vec::new();
    for op in ops {
        match (&op.call, &op.reply) {
            (Call::Get { .. }, Some(Reply::Value(Some(x)))) => {
                trace(*x, format!("read {}", op.describe()), &mut v)
            }
            (Call::Incr { .. }, Some(Reply::Int(x))) => {
                trace(*x, format!("incr {}", op.describe()), &mut v)
            }
            _ => {}
        }
    }
    if let Some(x) = final_value {
        trace(x, "the final value".to_string(), &mut v);
    }

    // The operations the search must place.
    let mut reg_ops = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let kind = match (&op.call, op.outcome, &op.reply) {
            (_, Outcome::Fail, _) => continue,
            (Call::Get { .. }, Outcome::Unknown, _) => continue,
            (Call::Get { .. }, Outcome::Ok, Some(Reply::Value(r))) => RegKind::Get(*r),
            (Call::Set { value, .. }, Outcome::Unknown, _) => {
                // A SET nobody ever observed may as well never have happened: later
                // observations all follow another SET (INCRs stay within the stride).
                if !observed_bases.contains(value) {
                    continue;
                }
                RegKind::Set(*value)
            }
            (Call::Set { value, .. }, _, _) => RegKind::Set(*value),
            (Call::Incr { .. }, Outcome::Unknown, _) => RegKind::Incr(None),
            (Call::Incr { .. }, Outcome::Ok, Some(Reply::Int(r))) => RegKind::Incr(Some(*r)),
            (call, outcome, reply) => {
                v.push(format!(
                    "register {key}: unexpected reply {reply:?} to {call:?} ({outcome:?})"
                ));
                continue;
            }
        };
        reg_ops.push(RegOp {
            source: i,
            kind,
            invoke: op.invoke_ns,
            complete: (op.outcome == Outcome::Ok).then_some(op.complete_ns),
        });
    }
    reg_ops.push(RegOp {
        source: usize::MAX,
        kind: RegKind::Get(final_value),
        invoke: end_ns,
        complete: Some(end_ns),
    });
    out.bump("register ops searched", reg_ops.len() as u64);
    match wgl(&reg_ops) {
        Linearizable::Yes => {}
        Linearizable::Unknown(why) => out.notes.push(format!(
            "register {key}: linearizability not decided: {why}"
        )),
        Linearizable::No(why) => {
            let mut text =
                format!("register {key}: not linearizable: {why}\n    history of {key}:");
            for op in ops {
                write!(text, "\n      {}", op.describe()).unwrap();
            }
            write!(text, "\n      final value on every node: {final_value:?}").unwrap();
            v.push(text);
        }
    }
    out.violations.extend(v);
}

/// Wing & Gong's search with Lowe's memoization, as in Porcupine: walk the time-ordered
/// list of call / return events; linearize a call if the model allows it and the
/// (linearized set, state) pair is new; on a return whose operation is not linearized yet,
/// backtrack. Operations with unknown outcome have no return event, so they may be
/// linearized anywhere after their call, or never.
fn wgl(ops: &[RegOp]) -> Linearizable {
    const NONE: usize = usize::MAX;
    const HEAD: usize = 0;
    struct Event {
        op: usize,
        is_call: bool,
        partner: usize,
    }
    // Events: calls before returns at equal times (more permissive).
    let mut order: Vec<(u64, u8, usize)> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        order.push((op.invoke, 0, i));
        if let Some(c) = op.complete {
            order.push((c, 1, i));
        }
    }
    order.sort();
    let m = order.len();
    let mut events: Vec<Event> = Vec::with_capacity(m + 1);
    events.push(Event {
        op: NONE,
        is_call: false,
        partner: NONE,
    });
    let mut call_event = vec![NONE; ops.len()];
    for &(_, kind, i) in &order {
        let idx = events.len();
        if kind == 0 {
            call_event[i] = idx;
            events.push(Event {
                op: i,
                is_call: true,
                partner: NONE,
            });
        } else {
            events[call_event[i]].partner = idx;
            events.push(Event {
                op: i,
                is_call: false,
                partner: call_event[i],
            });
        }
    }
    let mut next: Vec<usize> = (0..=m).map(|i| if i < m { i + 1 } else { NONE }).collect();
    let mut prev: Vec<usize> = (0..=m).map(|i| if i == 0 { NONE } else { i - 1 }).collect();
    let unlink = |x: usize, next: &mut Vec<usize>, prev: &mut Vec<usize>| {
        let (p, n) = (prev[x], next[x]);
        next[p] = n;
        if n != NONE {
            prev[n] = p;
        }
    };
    let relink = |x: usize, next: &mut Vec<usize>, prev: &mut Vec<usize>| {
        let (p, n) = (prev[x], next[x]);
        next[p] = x;
        if n != NONE {
            prev[n] = x;
        }
    };

    let words = ops.len().div_ceil(64);
    let mut bits = vec![0u64; words];
    let mut state: Option<i64> = None;
    let mut cache: HashSet<(Vec<u64>, Option<i64>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<i64>)> = Vec::new();
    let mut steps: u64 = 0;
    // Deepest point reached, for the report.
    let mut best_depth = 0usize;
    let mut best_stuck = NONE;
    let mut best_state = None;

    let mut entry = next[HEAD];
    loop {
        steps += 1;
        if steps > WGL_BUDGET {
            return Linearizable::Unknown(format!(
                "{} operations, budget of {WGL_BUDGET} steps exhausted",
                ops.len()
            ));
        }
        if entry == NONE {
            return Linearizable::Yes;
        }
        let ev = &events[entry];
        if ev.is_call {
            let op = ev.op;
            if let Some(new_state) = step(state, ops[op].kind) {
                let mut nb = bits.clone();
                nb[op / 64] |= 1 << (op % 64);
                if cache.insert((nb.clone(), new_state)) {
                    stack.push((entry, state));
                    state = new_state;
                    bits = nb;
                    unlink(entry, &mut next, &mut prev);
                    if ev.partner != NONE {
                        unlink(ev.partner, &mut next, &mut prev);
                    }
                    entry = next[HEAD];
                    continue;
                }
            }
            entry = next[entry];
        } else {
            if stack.len() >= best_depth {
                best_depth = stack.len();
                best_stuck = ev.op;
                best_state = Some(state);
            }
            let Some((call, old_state)) = stack.pop() else {
                let stuck = &ops[best_stuck];
                return Linearizable::No(format!(
                    "at most {best_depth} of {} operations linearize; then nothing explains \
                     the completion of {} ({:?}, [{}..{}]) from state {:?}",
                    ops.len(),
                    if stuck.source == usize::MAX {
                        "the final read".to_string()
                    } else {
                        format!("operation {} of the key", stuck.source)
                    },
                    stuck.kind,
                    secs(stuck.invoke),
                    stuck.complete.map(secs).unwrap_or_default(),
                    best_state.flatten()
                ));
            };
            let op = events[call].op;
            let partner = events[call].partner;
            if partner != NONE {
                relink(partner, &mut next, &mut prev);
            }
            relink(call, &mut next, &mut prev);
            bits[op / 64] &= !(1 << (op % 64));
            state = old_state;
            entry = next[call];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Via;

    fn queue_op(id: usize, call: Call, outcome: Outcome, popped: Option<Option<u64>>) -> Op {
        let reply = match (&call, popped) {
            (Call::Dequeue { .. }, Some(popped)) => Some(Reply::Popped(popped)),
            (Call::Enqueue { .. }, _) if outcome == Outcome::Ok => Some(Reply::Int(1)),
            _ => None,
        };
        list_op(id, call, outcome, reply, (id as u64, id as u64 + 1))
    }

    fn push(id: usize, value: u64, outcome: Outcome) -> Op {
        let call = Call::Enqueue {
            key: "q".into(),
            value,
        };
        queue_op(id, call, outcome, None)
    }

    fn pop(id: usize, outcome: Outcome, popped: Option<Option<u64>>, abandoned: bool) -> Op {
        let call = Call::Dequeue {
            key: "q".into(),
            abandoned,
        };
        queue_op(id, call, outcome, popped)
    }

    fn queue_violations(ops: &[Op], final_queue: &[u64]) -> Vec<String> {
        let mut finals = BTreeMap::new();
        finals.insert("q".to_string(), final_queue.to_vec());
        let mut out = Findings::default();
        check_queues(ops, &finals, &mut out);
        out.violations
    }

    #[test]
    fn queue_values_are_delivered_once_and_only_unsure_consumers_lose_one() {
        let ops = vec![
            push(0, 1, Outcome::Ok),
            push(1, 2, Outcome::Ok),
            push(2, 3, Outcome::Ok),
            pop(3, Outcome::Ok, Some(Some(1)), false),
            pop(4, Outcome::Unknown, None, true),
        ];
        // 2 went to the consumer that left; 3 is still queued.
        assert!(queue_violations(&ops, &[3]).is_empty());
        // Without that consumer, 2 was popped for nobody.
        assert_eq!(queue_violations(&ops[..4], &[3]).len(), 1);
        // Delivered twice: popped and still queued.
        assert_eq!(queue_violations(&ops, &[1, 3]).len(), 1);
        // A value nobody pushed, and one whose push failed.
        let mut failed = ops.clone();
        failed.push(push(5, 9, Outcome::Fail));
        let found = queue_violations(&failed, &[3, 7, 9]);
        assert!(found.iter().any(|v| v.contains("phantom")), "{found:?}");
        assert!(
            found.iter().any(|v| v.contains("failed write")),
            "{found:?}"
        );
    }

    #[test]
    fn a_value_pushed_after_its_consumer_left_must_stay() {
        let trap = queue_op(
            0,
            Call::Dequeue {
                key: "trap-0-1".into(),
                abandoned: true,
            },
            Outcome::Unknown,
            None,
        );
        let push = queue_op(
            1,
            Call::Enqueue {
                key: "trap-0-1".into(),
                value: 5,
            },
            Outcome::Ok,
            None,
        );
        let ops = vec![trap, push];
        let mut finals = BTreeMap::new();
        finals.insert("trap-0-1".to_string(), vec![5]);
        let mut out = Findings::default();
        check_queues(&ops, &finals, &mut out);
        assert!(out.violations.is_empty(), "{:?}", out.violations);
        // Gone, though the abandoned BLPOP counts as a pop of unknown outcome.
        finals.insert("trap-0-1".to_string(), vec![]);
        let mut out = Findings::default();
        check_queues(&ops, &finals, &mut out);
        assert_eq!(out.violations.len(), 1, "{:?}", out.violations);
        assert!(out.violations[0].contains("popped for nobody"));
    }

    fn list_op(id: usize, call: Call, outcome: Outcome, reply: Option<Reply>, t: (u64, u64)) -> Op {
        Op {
            id,
            process: 0,
            call,
            outcome,
            reply,
            error: None,
            node: None,
            invoke_ns: t.0,
            complete_ns: t.1,
        }
    }

    fn append(id: usize, value: u64, outcome: Outcome, len: i64, t: (u64, u64)) -> Op {
        let reply = (outcome == Outcome::Ok).then_some(Reply::Int(len));
        list_op(
            id,
            Call::Append {
                key: "l".into(),
                value,
                via: Via::Command,
            },
            outcome,
            reply,
            t,
        )
    }

    fn read(id: usize, list: &[u64], t: (u64, u64)) -> Op {
        list_op(
            id,
            Call::Read { key: "l".into() },
            Outcome::Ok,
            Some(Reply::List(list.to_vec())),
            t,
        )
    }

    fn list_violations(ops: &[Op], final_list: &[u64]) -> Vec<String> {
        let mut finals = BTreeMap::new();
        finals.insert("l".to_string(), final_list.to_vec());
        let mut out = Findings::default();
        check_lists(ops, &finals, &mut out);
        out.violations
    }

    #[test]
    fn list_checker_accepts_a_valid_history() {
        let ops = [
            append(0, 1, Outcome::Ok, 1, (0, 10)),
            append(1, 2, Outcome::Unknown, 0, (5, 50)),
            read(2, &[1], (12, 20)),
            append(3, 3, Outcome::Ok, 3, (30, 40)),
            append(4, 4, Outcome::Fail, 0, (31, 32)),
            read(5, &[1, 2, 3], (41, 45)),
        ];
        assert_eq!(list_violations(&ops, &[1, 2, 3]), Vec::<String>::new());
    }

    #[test]
    fn list_checker_finds_each_anomaly() {
        let one = |ops: &[Op], fin: &[u64], what: &str| {
            let v = list_violations(ops, fin);
            assert!(
                v.iter().any(|v| v.contains(what)),
                "expected {what:?} in {v:#?}"
            );
        };
        // Lost acknowledged append.
        one(&[append(0, 1, Outcome::Ok, 1, (0, 10))], &[], "lost write");
        // Duplicate.
        one(
            &[append(0, 1, Outcome::Unknown, 0, (0, 10))],
            &[1, 1],
            "duplicate",
        );
        // Failed append took effect.
        one(
            &[append(0, 1, Outcome::Fail, 0, (0, 10))],
            &[1],
            "failed write",
        );
        // Stale read: append acknowledged before the read began, read misses it.
        one(
            &[
                append(0, 1, Outcome::Ok, 1, (0, 10)),
                read(1, &[], (20, 30)),
            ],
            &[1],
            "stale read",
        );
        // Read not a prefix.
        one(
            &[
                append(0, 1, Outcome::Ok, 1, (0, 10)),
                append(1, 2, Outcome::Ok, 2, (0, 10)),
                read(2, &[2], (20, 30)),
            ],
            &[1, 2],
            "not a prefix",
        );
        // Reads going back in time.
        one(
            &[
                append(0, 1, Outcome::Unknown, 0, (0, 10)),
                read(1, &[1], (20, 30)),
                read(2, &[], (40, 50)),
            ],
            &[1],
            "after an earlier read",
        );
        // Wrong RPUSH length.
        one(
            &[append(0, 1, Outcome::Ok, 2, (0, 10))],
            &[1],
            "replied length",
        );
        // Real-time order of appends.
        one(
            &[
                append(0, 1, Outcome::Ok, 2, (0, 10)),
                append(1, 2, Outcome::Ok, 1, (20, 30)),
            ],
            &[2, 1],
            "order",
        );
    }

    fn op(kind: RegKind, invoke: u64, complete: Option<u64>) -> RegOp {
        RegOp {
            source: 0,
            kind,
            invoke,
            complete,
        }
    }

    #[test]
    fn wgl_accepts_concurrent_and_rejects_stale() {
        // SET 1000 [0,10], GET → 1000 [5,15]: fine (concurrent).
        let ok = [
            op(RegKind::Set(1000), 0, Some(10)),
            op(RegKind::Get(Some(1000)), 5, Some(15)),
        ];
        assert!(matches!(wgl(&ok), Linearizable::Yes));
        // SET 1000 [0,10], then GET → nil [20,30]: stale.
        let stale = [
            op(RegKind::Set(1000), 0, Some(10)),
            op(RegKind::Get(None), 20, Some(30)),
        ];
        assert!(matches!(wgl(&stale), Linearizable::No(_)));
        // Unknown SET may take effect late: GET → nil then GET → 2000.
        let late = [
            op(RegKind::Set(2000), 0, None),
            op(RegKind::Get(None), 20, Some(30)),
            op(RegKind::Get(Some(2000)), 40, Some(50)),
        ];
        assert!(matches!(wgl(&late), Linearizable::Yes));
        // ... but not before its invocation.
        let early = [
            op(RegKind::Get(Some(2000)), 0, Some(10)),
            op(RegKind::Set(2000), 20, None),
        ];
        assert!(matches!(wgl(&early), Linearizable::No(_)));
        // INCR results must chain.
        let incr = [
            op(RegKind::Set(1000), 0, Some(10)),
            op(RegKind::Incr(Some(1001)), 20, Some(30)),
            op(RegKind::Incr(None), 35, None),
            op(RegKind::Incr(Some(1003)), 40, Some(50)),
        ];
        assert!(matches!(wgl(&incr), Linearizable::Yes));
        let bad_incr = [
            op(RegKind::Set(1000), 0, Some(10)),
            op(RegKind::Incr(Some(1001)), 20, Some(30)),
            op(RegKind::Incr(Some(1001)), 40, Some(50)),
        ];
        assert!(matches!(wgl(&bad_incr), Linearizable::No(_)));
    }
}
