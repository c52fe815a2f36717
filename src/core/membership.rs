//! Who is in the cluster, at which address, and which ids were ever used: replicated state
//! rebuilt on every node by applying conf-change entries in log order.
//!
//! Addresses travel in the conf change's context, so a node that replays the log (or joins
//! late) learns every member's address from the log alone.

use std::collections::{BTreeMap, BTreeSet};

use raft::eraftpb::{ConfChangeType, ConfChangeV2};
use serde::{Deserialize, Serialize};

use crate::core::entry::Origin;

/// Carried in a conf change entry's context.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeContext {
    /// The client waiting for this change, on the node that proposed it.
    pub origin: Option<Origin>,
    pub node_id: u64,
    /// `host:port` of the node being added (empty on removal).
    pub addr: String,
    /// A voter demoted by `RAFT.DEBUG NODECFG <id> -voting`: the leader does not promote
    /// it back when it catches up, until `+voting`. Encoded last, so contexts written
    /// before it existed still decode (as `false`).
    pub held_as_learner: bool,
}

/// [`ChangeContext`] as logs written before `held_as_learner` carry it.
#[derive(Deserialize)]
struct ChangeContextV1 {
    origin: Option<Origin>,
    node_id: u64,
    addr: String,
}

const MAX_CONTEXT_BYTES: usize = 64 * 1024;

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_CONTEXT_BYTES>()
}

impl ChangeContext {
    pub fn encode(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, bincode_config())
            .expect("encoding a change context into memory cannot fail")
    }

    pub fn decode(bytes: &[u8]) -> Result<ChangeContext, String> {
        match bincode::serde::decode_from_slice(bytes, bincode_config()) {
            Ok((context, _)) => Ok(context),
            Err(error) => bincode::serde::decode_from_slice(bytes, bincode_config())
                .map(|(old, _): (ChangeContextV1, usize)| ChangeContext {
                    origin: old.origin,
                    node_id: old.node_id,
                    addr: old.addr,
                    held_as_learner: false,
                })
                .map_err(|_| format!("invalid conf change context: {error}")),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub addr: String,
    pub voting: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    members: BTreeMap<u64, Member>,
    used_ids: BTreeSet<u64>,
    /// Learners demoted on purpose (`NODECFG -voting`): not promoted when caught up.
    held_learners: BTreeSet<u64>,
}

/// What applying a change did, for the caller's side effects.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    Added {
        id: u64,
        voting: bool,
    },
    Removed {
        id: u64,
    },
    /// Nothing to record (e.g. an unknown change type).
    Ignored,
}

impl Membership {
    /// Applies one committed change. Single-step changes only (one node per entry).
    pub fn apply(&mut self, change: &ConfChangeV2, context: &ChangeContext) -> Applied {
        let Some(step) = change.get_changes().first() else {
            return Applied::Ignored;
        };
        let id = step.node_id;
        match step.get_change_type() {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                let voting = step.get_change_type() == ConfChangeType::AddNode;
                self.used_ids.insert(id);
                let addr = if context.addr.is_empty() {
                    // A promotion may omit the address it already has.
                    self.members
                        .get(&id)
                        .map(|m| m.addr.clone())
                        .unwrap_or_default()
                } else {
                    context.addr.clone()
                };
                self.members.insert(id, Member { id, addr, voting });
                if !voting && context.held_as_learner {
                    self.held_learners.insert(id);
                } else {
                    self.held_learners.remove(&id);
                }
                Applied::Added { id, voting }
            }
            ConfChangeType::RemoveNode => {
                self.used_ids.insert(id);
                self.members.remove(&id);
                self.held_learners.remove(&id);
                Applied::Removed { id }
            }
        }
    }

    /// The membership a snapshot recorded.
    pub fn restore(members: Vec<Member>, used_ids: impl IntoIterator<Item = u64>) -> Membership {
        let mut used_ids: BTreeSet<u64> = used_ids.into_iter().collect();
        used_ids.extend(members.iter().map(|m| m.id));
        let members = members.into_iter().map(|m| (m.id, m)).collect();
        Membership {
            members,
            used_ids,
            held_learners: BTreeSet::new(),
        }
    }

    /// With the held learners a snapshot recorded (ids that are not learners are ignored).
    pub fn with_held_learners(mut self, ids: impl IntoIterator<Item = u64>) -> Membership {
        self.held_learners = ids
            .into_iter()
            .filter(|id| self.members.get(id).is_some_and(|m| !m.voting))
            .collect();
        self
    }

    /// Whether the leader may promote learner `id` once it has caught up.
    pub fn is_held_learner(&self, id: u64) -> bool {
        self.held_learners.contains(&id)
    }

    pub fn held_learners(&self) -> impl Iterator<Item = u64> + '_ {
        self.held_learners.iter().copied()
    }

    /// Raft's view of this membership.
    pub fn conf_state(&self) -> raft::eraftpb::ConfState {
        let voters = self
            .members
            .values()
            .filter(|m| m.voting)
            .map(|m| m.id)
            .collect::<Vec<_>>();
        let learners = self
            .members
            .values()
            .filter(|m| !m.voting)
            .map(|m| m.id)
            .collect::<Vec<_>>();
        raft::eraftpb::ConfState::from((voters, learners))
    }

    pub fn get(&self, id: u64) -> Option<&Member> {
        self.members.get(&id)
    }

    pub fn addr_of(&self, id: u64) -> Option<&str> {
        self.members
            .get(&id)
            .map(|m| m.addr.as_str())
            .filter(|a| !a.is_empty())
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn voting_count(&self) -> usize {
        self.members.values().filter(|m| m.voting).count()
    }

    pub fn is_used(&self, id: u64) -> bool {
        self.used_ids.contains(&id)
    }

    pub fn used_ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.used_ids.iter().copied()
    }

    /// Peers other than `me` with a known address, for the transport.
    pub fn peer_addresses(&self, me: u64) -> Vec<(u64, String)> {
        self.members
            .values()
            .filter(|m| m.id != me && !m.addr.is_empty())
            .map(|m| (m.id, m.addr.clone()))
            .collect()
    }
}

/// A one-node change, as RAFT.NODE ADD / REMOVE and learner promotion propose it.
pub fn single_change(change_type: ConfChangeType, node_id: u64) -> ConfChangeV2 {
    let mut step = raft::eraftpb::ConfChangeSingle::default();
    step.set_change_type(change_type);
    step.node_id = node_id;
    let mut change = ConfChangeV2::default();
    change.set_changes(vec![step].into());
    change
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(id: u64, addr: &str) -> ChangeContext {
        ChangeContext {
            origin: None,
            node_id: id,
            addr: addr.to_string(),
            held_as_learner: false,
        }
    }

    #[test]
    fn add_promote_remove() {
        let mut membership = Membership::default();
        membership.apply(
            &single_change(ConfChangeType::AddNode, 1),
            &context(1, "a:1"),
        );
        membership.apply(
            &single_change(ConfChangeType::AddLearnerNode, 2),
            &context(2, "b:2"),
        );
        assert_eq!(membership.voting_count(), 1);
        // Promotion keeps the address when the context has none.
        membership.apply(&single_change(ConfChangeType::AddNode, 2), &context(2, ""));
        assert_eq!(membership.addr_of(2), Some("b:2"));
        assert_eq!(membership.voting_count(), 2);
        assert_eq!(membership.peer_addresses(1), vec![(2, "b:2".to_string())]);
        membership.apply(
            &single_change(ConfChangeType::RemoveNode, 2),
            &context(2, ""),
        );
        assert_eq!(membership.len(), 1);
        // Removed ids stay used forever.
        assert!(membership.is_used(2));
        assert_eq!(membership.used_ids().collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn context_roundtrip_and_garbage() {
        let original = ChangeContext {
            origin: Some(Origin {
                node_id: 1,
                incarnation: 2,
                request_id: 3,
            }),
            node_id: 9,
            addr: "127.0.0.1:5001".into(),
            held_as_learner: true,
        };
        assert_eq!(ChangeContext::decode(&original.encode()).unwrap(), original);
        assert!(ChangeContext::decode(&[0xff; 3]).is_err());
    }

    /// Logs written before `held_as_learner` existed end their contexts after `addr`.
    #[test]
    fn contexts_without_the_hold_flag_still_decode() {
        let mut old = context(4, "h:4");
        old.held_as_learner = true;
        let mut bytes = old.encode();
        bytes.pop();
        let decoded = ChangeContext::decode(&bytes).unwrap();
        assert_eq!(decoded.addr, "h:4");
        assert!(!decoded.held_as_learner);
    }

    #[test]
    fn a_demoted_voter_stays_held_until_promoted_or_removed() {
        let mut membership = Membership::default();
        for id in [1, 2] {
            membership.apply(
                &single_change(ConfChangeType::AddNode, id),
                &context(id, "a:1"),
            );
        }
        let mut demotion = context(2, "");
        demotion.held_as_learner = true;
        membership.apply(&single_change(ConfChangeType::AddLearnerNode, 2), &demotion);
        assert!(membership.is_held_learner(2));
        assert_eq!(membership.conf_state().learners, vec![2]);
        let restored = Membership::restore(membership.members().cloned().collect(), [1, 2])
            .with_held_learners(membership.held_learners().chain([1]));
        assert!(restored.is_held_learner(2));
        assert!(!restored.is_held_learner(1), "a voter is never held");
        membership.apply(&single_change(ConfChangeType::AddNode, 2), &context(2, ""));
        assert!(!membership.is_held_learner(2));
        membership.apply(&single_change(ConfChangeType::AddLearnerNode, 2), &demotion);
        membership.apply(
            &single_change(ConfChangeType::RemoveNode, 2),
            &context(2, ""),
        );
        assert!(!membership.is_held_learner(2));
    }
}
