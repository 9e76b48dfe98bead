//! A plain reference model of the [`Registry`] and a checker that runs op sequences through
//! both, for property tests, fuzzing and the wasm tests (which run the same seeds as native and
//! must reach the same digest).

use std::collections::{BTreeMap, BTreeSet};

use crate::{Registry, SessionId, SubscribeError, Subscribed, Topic, Unsubscribed};

/// Topic names the ops draw from: few enough to collide often, varied enough to matter.
pub const TOPIC_POOL: [&str; 8] = [
    "auditlog:1",
    "auditlog:2",
    "notification:1",
    "room:lobby",
    "room:é☕",
    "phoenix",
    "a",
    "x:y:z",
];

/// One step of a registry workload. Indices pick among sessions ever allocated (so
/// disconnected ids are exercised too) and among [`TOPIC_POOL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum Op {
    /// Allocate a session.
    Connect,
    /// Forget a session.
    Disconnect {
        /// Which session.
        session: u8,
    },
    /// Subscribe a session to a topic.
    Subscribe {
        /// Which session.
        session: u8,
        /// Which topic.
        topic: u8,
    },
    /// Unsubscribe a session from a topic.
    Unsubscribe {
        /// Which session.
        session: u8,
        /// Which topic.
        topic: u8,
    },
    /// Unsubscribe a session from everything.
    UnsubscribeAll {
        /// Which session.
        session: u8,
    },
    /// Route a message to a topic's subscribers.
    Route {
        /// Which topic.
        topic: u8,
    },
}

/// The plainest possible registry: a map of topics to member sets.
#[derive(Debug, Default)]
pub struct Model {
    /// Topic → subscribers; a topic with no subscriber is absent.
    pub topics: BTreeMap<Topic, BTreeSet<SessionId>>,
    /// Connected sessions.
    pub connected: BTreeSet<SessionId>,
    /// Every id ever allocated, in order.
    pub allocated: Vec<SessionId>,
}

impl Model {
    fn topics_of(&self, session: SessionId) -> BTreeSet<&Topic> {
        self.topics
            .iter()
            .filter(|(_, members)| members.contains(&session))
            .map(|(topic, _)| topic)
            .collect()
    }

    fn remove(&mut self, session: SessionId, topic: &Topic) -> Unsubscribed {
        let Some(members) = self.topics.get_mut(topic) else {
            return Unsubscribed::NotSubscribed;
        };
        if !members.remove(&session) {
            return Unsubscribed::NotSubscribed;
        }
        if members.is_empty() {
            self.topics.remove(topic);
            Unsubscribed::LastLocal
        } else {
            Unsubscribed::Left
        }
    }

    fn remove_all(&mut self, session: SessionId) -> Vec<Topic> {
        let held: Vec<Topic> = self.topics_of(session).into_iter().cloned().collect();
        held.into_iter()
            .filter(|topic| self.remove(session, topic) == Unsubscribed::LastLocal)
            .collect()
    }
}

/// Where the registry and the model disagreed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("step {step} ({op:?}): {what}")]
pub struct Divergence {
    /// Index of the op in the sequence.
    pub step: usize,
    /// The op.
    pub op: Op,
    /// What differed.
    pub what: String,
}

/// Runs `ops` through a [`Registry`] (with `limit` topics per session) and the [`Model`],
/// comparing outcomes and the whole state after every step.
///
/// Returns a digest of every outcome, equal for equal inputs on every platform.
///
/// # Errors
/// The first [`Divergence`].
pub fn check_ops(ops: &[Op], limit: usize) -> Result<u64, Divergence> {
    let mut registry = Registry::with_max_topics_per_session(limit);
    let mut model = Model::default();
    let topics: Vec<Topic> = TOPIC_POOL
        .iter()
        .map(|name| Topic::new(name).expect("pool topics are valid"))
        .collect();
    let mut digest = Digest::default();
    for (step, op) in ops.iter().enumerate() {
        let fail = |what: String| Divergence {
            step,
            op: *op,
            what,
        };
        let pick_session = |index: u8| {
            if model.allocated.is_empty() {
                SessionId::from_raw(u64::from(index) + 1)
            } else {
                model.allocated[usize::from(index) % model.allocated.len()]
            }
        };
        let pick_topic = |index: u8| &topics[usize::from(index) % topics.len()];
        match *op {
            Op::Connect => {
                let id = registry.connect();
                if model.allocated.last().is_some_and(|last| *last >= id) {
                    return Err(fail(format!("id {id} is not above every earlier id")));
                }
                model.allocated.push(id);
                model.connected.insert(id);
                digest.add(id.get());
            }
            Op::Disconnect { session } => {
                let id = pick_session(session);
                let emptied = registry.disconnect(id);
                let expected = model.remove_all(id);
                model.connected.remove(&id);
                if emptied.topics != expected {
                    return Err(fail(format!(
                        "emptied {:?}, model {expected:?}",
                        emptied.topics
                    )));
                }
                digest.add(emptied.topics.len() as u64);
            }
            Op::UnsubscribeAll { session } => {
                let id = pick_session(session);
                let emptied = registry.unsubscribe_all(id);
                let expected = model.remove_all(id);
                if emptied.topics != expected {
                    return Err(fail(format!(
                        "emptied {:?}, model {expected:?}",
                        emptied.topics
                    )));
                }
                digest.add(emptied.topics.len() as u64);
            }
            Op::Subscribe { session, topic } => {
                let (id, topic) = (pick_session(session), pick_topic(topic));
                let expected = if !model.connected.contains(&id) {
                    Err(SubscribeError::UnknownSession(id))
                } else if model.topics.get(topic).is_some_and(|m| m.contains(&id)) {
                    Ok(Subscribed::Already)
                } else if model.topics_of(id).len() >= limit {
                    Err(SubscribeError::TooManyTopics { limit })
                } else if model.topics.contains_key(topic) {
                    Ok(Subscribed::Joined)
                } else {
                    Ok(Subscribed::FirstLocal)
                };
                if let Ok(Subscribed::FirstLocal | Subscribed::Joined) = expected {
                    model.topics.entry(topic.clone()).or_default().insert(id);
                }
                let actual = registry.subscribe(id, topic);
                if actual != expected {
                    return Err(fail(format!("got {actual:?}, model {expected:?}")));
                }
                digest.add(match actual {
                    Ok(Subscribed::FirstLocal) => 1,
                    Ok(Subscribed::Joined) => 2,
                    Ok(_) => 3,
                    Err(SubscribeError::UnknownSession(_)) => 4,
                    Err(_) => 5,
                });
            }
            Op::Unsubscribe { session, topic } => {
                let (id, topic) = (pick_session(session), pick_topic(topic));
                let expected = model.remove(id, topic);
                let actual = registry.unsubscribe(id, topic.as_str());
                if actual != expected {
                    return Err(fail(format!("got {actual:?}, model {expected:?}")));
                }
                digest.add(match actual {
                    Unsubscribed::LastLocal => 6,
                    Unsubscribed::Left => 7,
                    _ => 8,
                });
            }
            Op::Route { topic } => {
                let topic = pick_topic(topic);
                let mut routed: Vec<SessionId> = registry.subscribers(topic.as_str()).collect();
                routed.sort_unstable();
                // The node routes through `for_each_subscriber` and counts first with
                // `subscriber_count`: both must agree with the iterator.
                let mut visited = Vec::new();
                let count = registry.for_each_subscriber(topic.as_str(), |id| visited.push(id));
                visited.sort_unstable();
                if visited != routed || count != routed.len() {
                    return Err(fail(format!(
                        "for_each_subscriber visited {visited:?} (returned {count}), \
                         subscribers {routed:?}"
                    )));
                }
                if registry.subscriber_count(topic.as_str()) != routed.len() {
                    return Err(fail(format!(
                        "subscriber_count {} but {} subscribers",
                        registry.subscriber_count(topic.as_str()),
                        routed.len()
                    )));
                }
                let expected: Vec<SessionId> = model
                    .topics
                    .get(topic)
                    .map(|members| members.iter().copied().collect())
                    .unwrap_or_default();
                if routed != expected {
                    return Err(fail(format!("routed to {routed:?}, model {expected:?}")));
                }
                routed.iter().for_each(|id| digest.add(id.get()));
            }
        }
        compare_state(&registry, &model).map_err(fail)?;
    }
    Ok(digest.0)
}

/// Checks that both indexes of `registry` describe exactly the model's subscriptions.
fn compare_state(registry: &Registry, model: &Model) -> Result<(), String> {
    if model.topics.values().any(BTreeSet::is_empty) {
        return Err("model kept an empty topic".into());
    }
    let registry_topics: BTreeSet<&Topic> = registry.topics().collect();
    let model_topics: BTreeSet<&Topic> = model.topics.keys().collect();
    if registry_topics != model_topics {
        return Err(format!(
            "topics {registry_topics:?}, model {model_topics:?}"
        ));
    }
    for (topic, members) in &model.topics {
        let routed: BTreeSet<SessionId> = registry.subscribers(topic.as_str()).collect();
        if &routed != members {
            return Err(format!(
                "subscribers of {topic:?}: {routed:?}, model {members:?}"
            ));
        }
    }
    let mut pairs = 0;
    for &id in &model.allocated {
        let held: BTreeSet<&Topic> = registry.topics_of(id).collect();
        let expected = model.topics_of(id);
        if held != expected {
            return Err(format!("topics of {id}: {held:?}, model {expected:?}"));
        }
        if registry.is_connected(id) != model.connected.contains(&id) {
            return Err(format!("{id} connected state differs"));
        }
        pairs += held.len();
    }
    let model_pairs: usize = model.topics.values().map(BTreeSet::len).sum();
    let counts = (
        registry.session_count(),
        registry.topic_count(),
        registry.subscription_count(),
    );
    let expected = (model.connected.len(), model.topics.len(), model_pairs);
    if counts != expected || pairs != model_pairs {
        return Err(format!(
            "counts (sessions, topics, subscriptions) {counts:?}, model {expected:?}, session index holds {pairs}"
        ));
    }
    Ok(())
}

/// FNV-1a over outcome numbers: a platform-independent fingerprint of a run.
#[derive(Debug)]
struct Digest(u64);

impl Default for Digest {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Digest {
    fn add(&mut self, value: u64) {
        for byte in value.to_le_bytes() {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A deterministic op sequence from `seed` (SplitMix64), the same on every platform.
#[must_use]
pub fn ops_from_seed(seed: u64, len: usize) -> Vec<Op> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    (0..len)
        .map(|_| {
            let roll = next();
            let [kind, session, topic, ..] = roll.to_le_bytes();
            match kind % 16 {
                0..=1 => Op::Connect,
                2 => Op::Disconnect { session },
                3..=8 => Op::Subscribe { session, topic },
                9..=11 => Op::Unsubscribe { session, topic },
                12 => Op::UnsubscribeAll { session },
                _ => Op::Route { topic },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_sequences_agree_with_the_model() {
        for seed in 0..200 {
            let ops = ops_from_seed(seed, 300);
            check_ops(&ops, 3).unwrap();
        }
    }

    #[test]
    fn seeded_sequences_are_reproducible() {
        assert_eq!(ops_from_seed(7, 50), ops_from_seed(7, 50));
        assert_eq!(
            check_ops(&ops_from_seed(7, 500), 4).unwrap(),
            check_ops(&ops_from_seed(7, 500), 4).unwrap()
        );
    }
}
