//! phoenix.js' `Presence.syncState` and `Presence.syncDiff`, ported line for line (from
//! `assets/js/phoenix/presence.js` of the `phoenix` npm package, 1.8), and a client that uses
//! them as phoenix.js' `Presence` class does: diffs that arrive before the state wait for it.
//!
//! The property tests drive a [`TopicPresence`](super::TopicPresence) with random changes,
//! let clients join at random moments, hand them what the node would send, and check that
//! every client's list is the table's after every diff.

use std::collections::HashSet;

use serde_json::{Map, Value};

/// A client's list: `{key: {"metas": [...]}}`.
pub type State = Map<String, Value>;

fn refs(presence: &Value) -> Vec<Value> {
    metas(presence)
        .iter()
        .map(|meta| meta.get("phx_ref").cloned().unwrap_or(Value::Null))
        .collect()
}

fn metas(presence: &Value) -> Vec<Value> {
    presence
        .get("metas")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn with_metas(presence: &Value, metas: Vec<Value>) -> Value {
    let mut presence = presence.clone();
    if let Some(object) = presence.as_object_mut() {
        object.insert("metas".into(), Value::Array(metas));
    }
    presence
}

fn ref_of(meta: &Value) -> Value {
    meta.get("phx_ref").cloned().unwrap_or(Value::Null)
}

/// `Presence.syncState(currentState, newState)`.
#[must_use]
pub fn sync_state(current: &State, new_state: &State) -> State {
    let state = current.clone();
    let mut joins = State::new();
    let mut leaves = State::new();
    for (key, presence) in &state {
        if !new_state.contains_key(key) {
            leaves.insert(key.clone(), presence.clone());
        }
    }
    for (key, new_presence) in new_state {
        if let Some(current_presence) = state.get(key) {
            let new_refs = refs(new_presence);
            let cur_refs = refs(current_presence);
            let joined: Vec<Value> = metas(new_presence)
                .into_iter()
                .filter(|meta| !cur_refs.contains(&ref_of(meta)))
                .collect();
            let left: Vec<Value> = metas(current_presence)
                .into_iter()
                .filter(|meta| !new_refs.contains(&ref_of(meta)))
                .collect();
            if !joined.is_empty() {
                joins.insert(key.clone(), with_metas(new_presence, joined));
            }
            if !left.is_empty() {
                leaves.insert(key.clone(), with_metas(current_presence, left));
            }
        } else {
            joins.insert(key.clone(), new_presence.clone());
        }
    }
    sync_diff(state, &joins, &leaves)
}

/// `Presence.syncDiff(state, {joins, leaves})`: joins first, then leaves.
#[must_use]
pub fn sync_diff(mut state: State, joins: &State, leaves: &State) -> State {
    for (key, new_presence) in joins {
        let current = state.get(key).cloned();
        let mut next = new_presence.clone();
        if let Some(current) = current {
            let joined_refs = refs(&next);
            let mut cur_metas: Vec<Value> = metas(&current)
                .into_iter()
                .filter(|meta| !joined_refs.contains(&ref_of(meta)))
                .collect();
            cur_metas.extend(metas(&next));
            next = with_metas(&next, cur_metas);
        }
        state.insert(key.clone(), next);
    }
    for (key, left_presence) in leaves {
        let Some(current) = state.get(key).cloned() else {
            continue;
        };
        let remove = refs(left_presence);
        let kept: Vec<Value> = metas(&current)
            .into_iter()
            .filter(|meta| !remove.contains(&ref_of(meta)))
            .collect();
        if kept.is_empty() {
            state.remove(key);
        } else {
            state.insert(key.clone(), with_metas(&current, kept));
        }
    }
    state
}

/// A phoenix.js `Presence` on one channel.
#[derive(Debug, Clone, Default)]
pub struct Client {
    /// The list.
    pub state: State,
    synced: bool,
    pending: Vec<Value>,
}

impl Client {
    /// A client whose channel is joining (no state yet).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A `presence_state` push arrived.
    pub fn on_state(&mut self, payload: &str) {
        let new_state: State = serde_json::from_str(payload).unwrap_or_default();
        self.state = sync_state(&self.state, &new_state);
        for diff in std::mem::take(&mut self.pending) {
            self.apply(&diff);
        }
        self.synced = true;
    }

    /// A `presence_diff` broadcast arrived.
    pub fn on_diff(&mut self, payload: &str) {
        let diff: Value = serde_json::from_str(payload).unwrap_or(Value::Null);
        if self.synced {
            self.apply(&diff);
        } else {
            self.pending.push(diff);
        }
    }

    fn apply(&mut self, diff: &Value) {
        let part = |name: &str| -> State {
            diff.get(name)
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default()
        };
        let state = std::mem::take(&mut self.state);
        self.state = sync_diff(state, &part("joins"), &part("leaves"));
    }
}

/// `state` with each key's metas sorted by `phx_ref`, and `phx_ref_prev` dropped: lists that
/// show the same members compare equal whatever order the metas arrived in.
#[must_use]
pub fn normalized(state: &State) -> State {
    state
        .iter()
        .map(|(key, presence)| {
            let mut metas: Vec<Value> = metas(presence)
                .into_iter()
                .map(|mut meta| {
                    if let Some(object) = meta.as_object_mut() {
                        object.remove("phx_ref_prev");
                    }
                    meta
                })
                .collect();
            metas.sort_by_key(|meta| ref_of(meta).to_string());
            (key.clone(), with_metas(presence, metas))
        })
        .collect()
}

/// One step of a presence sequence checked by [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Op {
    /// A member joins (key, meta and node chosen from small sets).
    Track {
        /// Which key.
        key: u8,
        /// Which meta.
        meta: u8,
        /// Which node owns it.
        node: u8,
    },
    /// A member (the `pick`th, if any) leaves.
    Untrack {
        /// Which member.
        pick: u16,
    },
    /// A member (the `pick`th, if any) changes its meta.
    Update {
        /// Which member.
        pick: u16,
        /// The new meta.
        meta: u8,
    },
    /// A node goes away with its members.
    NodeDown {
        /// Which node.
        node: u8,
    },
    /// A snapshot from the backend replaces the members: those `keep` marks stay, `add` joins.
    Resync {
        /// Which current members the backend still has.
        keep: Vec<bool>,
        /// Members it has that this node did not hear of: (key, node).
        add: Vec<(u8, u8)>,
    },
    /// The hub sends the pending diff to every client.
    Flush,
    /// A client joins and gets the state.
    ClientJoins,
    /// Raw bytes arrive as a backend announcement.
    Announce(Vec<u8>),
}

/// The plain model: members by `phx_ref`.
type Plain = std::collections::BTreeMap<String, super::Member>;

fn model_meta(n: u8) -> super::Meta {
    // unwrap: a fixed, valid object.
    super::Meta::parse(&format!(r#"{{"status":"s{}"}}"#, n % 4), "meta").expect("valid meta")
}

fn model_member(key: u8, meta: u8, node: u8) -> super::Member {
    super::Member {
        key: format!("user{}", key % 5),
        meta: model_meta(meta),
        node: format!("node{}", node % 3),
        prev: None,
    }
}

/// `{key: {"metas": [...]}}` of the plain model.
fn plain_state(plain: &Plain) -> State {
    let mut state = State::new();
    for (phx_ref, member) in plain {
        let mut meta: Map<String, Value> =
            serde_json::from_str(member.meta.as_str()).unwrap_or_default();
        meta.insert("phx_ref".into(), Value::String(phx_ref.clone()));
        let entry = state
            .entry(member.key.clone())
            .or_insert_with(|| serde_json::json!({"metas": []}));
        if let Some(metas) = entry.get_mut("metas").and_then(Value::as_array_mut) {
            metas.push(Value::Object(meta));
        }
    }
    normalized(&state)
}

/// What a change does to the plain model (the table's documented semantics, written plainly):
/// `gone` holds the refs that are over (left or replaced).
fn plain_apply(plain: &mut Plain, gone: &mut HashSet<String>, change: super::event::Change) {
    use super::event::Change;
    match change {
        Change::Join { phx_ref, member } => {
            if gone.contains(&phx_ref) {
                return;
            }
            if let Some(prev) = member.prev.as_ref().filter(|prev| **prev != phx_ref) {
                gone.insert(prev.clone());
                plain.remove(prev);
            }
            if gone.contains(&phx_ref) {
                return;
            }
            plain.entry(phx_ref).or_insert(super::Member {
                prev: None,
                ..member
            });
        }
        Change::Leave { phx_ref } => {
            plain.remove(&phx_ref);
            gone.insert(phx_ref);
        }
        Change::NodeDown { node } => plain.retain(|_, member| member.node != node),
    }
}

/// Drives a [`TopicPresence`](super::TopicPresence) with `ops`, next to the plain model and
/// phoenix.js clients, and checks after every step that the table lists what the model does,
/// and after every diff that every client does too.
///
/// # Errors
/// The first broken promise.
pub fn check(ops: &[Op]) -> Result<(), String> {
    let mut table = super::TopicPresence::new();
    let mut plain = Plain::new();
    let mut gone = HashSet::new();
    let mut clients: Vec<Client> = Vec::new();
    let mut next = 0u32;
    for (step, op) in ops.iter().enumerate() {
        let mut new_ref = || {
            next += 1;
            format!("r{next}")
        };
        match op {
            Op::Track { key, meta, node } => {
                // Announcements may have used the ref already: tracking it again is a no-op.
                let phx_ref = new_ref();
                let member = model_member(*key, *meta, *node);
                let known = plain.contains_key(&phx_ref) || gone.contains(&phx_ref);
                if table.track(phx_ref.clone(), member.clone()) == known {
                    return Err(format!("step {step}: track of {phx_ref} said {known}"));
                }
                if !known {
                    plain.insert(phx_ref, member);
                }
            }
            Op::Untrack { pick } => {
                let phx_ref = plain
                    .keys()
                    .nth(usize::from(*pick) % plain.len().max(1))
                    .cloned()
                    .unwrap_or_else(|| "absent".into());
                let was = plain.remove(&phx_ref).is_some();
                gone.insert(phx_ref.clone());
                if table.untrack(&phx_ref) != was {
                    return Err(format!("step {step}: untrack of {phx_ref} said {}", !was));
                }
            }
            Op::Update { pick, meta } => {
                let Some((old, member)) = plain
                    .iter()
                    .nth(usize::from(*pick) % plain.len().max(1))
                    .map(|(r, m)| (r.clone(), m.clone()))
                else {
                    continue;
                };
                let phx_ref = new_ref();
                let updated = super::Member {
                    meta: model_meta(*meta),
                    prev: Some(old.clone()),
                    ..member
                };
                let _ = table.track(phx_ref.clone(), updated.clone());
                plain_apply(
                    &mut plain,
                    &mut gone,
                    super::event::Change::Join {
                        phx_ref,
                        member: updated,
                    },
                );
            }
            Op::NodeDown { node } => {
                let node = format!("node{}", node % 3);
                let owned = plain.values().filter(|m| m.node == node).count();
                if table.untrack_node(&node) != owned {
                    return Err(format!("step {step}: {node} did not own {owned}"));
                }
                plain.retain(|_, member| member.node != node);
            }
            Op::Resync { keep, add } => {
                let mut snapshot: Vec<(String, super::Member)> = plain
                    .iter()
                    .zip(keep.iter().chain(std::iter::repeat(&true)))
                    .filter(|(_, keep)| **keep)
                    .map(|((r, m), _)| (r.clone(), m.clone()))
                    .collect();
                for (key, node) in add {
                    snapshot.push((new_ref(), model_member(*key, 0, *node)));
                }
                table.resync(snapshot.clone());
                // A snapshot lists each ref once; a ref it repeats keeps its first entry; a
                // ref that is over stays out.
                let mut resynced = Plain::new();
                for (phx_ref, member) in snapshot {
                    if !gone.contains(&phx_ref) {
                        resynced.entry(phx_ref).or_insert(member);
                    }
                }
                plain = resynced;
            }
            Op::Flush => {
                if let Some(diff) = table.take_diff() {
                    for client in &mut clients {
                        client.on_diff(diff.get());
                    }
                }
                let expected = plain_state(&plain);
                for (index, client) in clients.iter().enumerate() {
                    if normalized(&client.state) != expected {
                        return Err(format!(
                            "step {step}: client {index} lists {:?}, the model {expected:?}",
                            client.state
                        ));
                    }
                }
            }
            Op::ClientJoins => {
                let mut client = Client::new();
                client.on_state(table.state().get());
                clients.push(client);
            }
            Op::Announce(bytes) => {
                if let Ok(change) = super::event::Change::parse(bytes) {
                    plain_apply(&mut plain, &mut gone, change.clone());
                    change.apply(&mut table);
                }
            }
        }
        let listed: State = serde_json::from_str(table.state().get())
            .map_err(|err| format!("step {step}: the state is not JSON: {err}"))?;
        if normalized(&listed) != plain_state(&plain) {
            return Err(format!(
                "step {step} ({op:?}): the table lists {listed:?}, the model {:?}",
                plain_state(&plain)
            ));
        }
        if table.len() != plain.len() {
            return Err(format!(
                "step {step}: {} members, the model {}",
                table.len(),
                plain.len()
            ));
        }
    }
    Ok(())
}
