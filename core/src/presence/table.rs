//! One topic's members as this node knows them, and what its watchers have not been told.
//!
//! [`TopicPresence`] is the current list (every node's members) plus the changes since the
//! last [`take_diff`](TopicPresence::take_diff): the hub takes a diff on a short timer and
//! broadcasts it, so many changes cost one frame per watcher. A socket that joins gets
//! [`state`](TopicPresence::state), the *current* list; the diff that follows may repeat some
//! of it, which phoenix.js applies idempotently (a join replaces the meta with the same
//! `phx_ref`, a leave of an absent ref does nothing). That is also why a member that comes and
//! goes within one window appears in the diff's joins *and* leaves instead of in neither: a
//! socket that joined in between was shown it.
//!
//! Every change is idempotent per `phx_ref`: tracking a known ref or untracking an unknown one
//! changes nothing, so the same change arriving twice (from this node directly and back
//! through the backend, in either order) or replayed after a snapshot is harmless. A ref that
//! left, or that an update replaced, is over: a late announcement of its join (it can arrive
//! after the leave this node applied itself) is ignored ([`MAX_GONE`] such refs are
//! remembered per topic). A ref whose node was declared gone can come back (the node writes
//! its members again): its join then cancels its pending leave, because phoenix.js applies a
//! diff's joins before its leaves, and a diff carries each ref's latest join only.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

/// Refs that left or were replaced, remembered per topic so a late join cannot bring them
/// back; the oldest are forgotten past this.
pub const MAX_GONE: usize = 4096;

/// Changes waiting for the next diff, per (key, ref), with the order they happened in.
type Pending = HashMap<(String, String), (u64, Member)>;

use super::meta::push_json_string;
use super::Meta;
use crate::Payload;

/// One member: a socket's presence on the topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The presence key (several members may share one: the same user on two sockets).
    pub key: String,
    /// What phoenix.js shows of it, besides `phx_ref`.
    pub meta: Meta,
    /// The node that owns it (its entries expire with it).
    pub node: String,
    /// For an update: the `phx_ref` this member replaces (`phx_ref_prev`), which leaves as it
    /// joins.
    pub prev: Option<String>,
}

/// One topic's presence: see the module documentation.
#[derive(Debug, Default, Clone)]
pub struct TopicPresence {
    members: HashMap<String, Member>,
    /// Refs per key, in the order they joined.
    by_key: BTreeMap<String, Vec<String>>,
    joins: Pending,
    leaves: Pending,
    /// Refs that are over, oldest first (and as a set).
    gone: VecDeque<String>,
    gone_set: HashSet<String>,
    /// Orders pending changes.
    seq: u64,
    state: Option<Payload>,
}

impl TopicPresence {
    /// No members.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Members now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are no members.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether `phx_ref` is a member now.
    #[must_use]
    pub fn contains(&self, phx_ref: &str) -> bool {
        self.members.contains_key(phx_ref)
    }

    /// Distinct keys now.
    #[must_use]
    pub fn keys(&self) -> usize {
        self.by_key.len()
    }

    /// Whether changes wait for [`take_diff`](Self::take_diff).
    #[must_use]
    pub fn has_changes(&self) -> bool {
        !self.joins.is_empty() || !self.leaves.is_empty()
    }

    /// Every member now, by key then joining order: `(phx_ref, member)`.
    pub fn members(&self) -> impl Iterator<Item = (&str, &Member)> + '_ {
        self.by_key.values().flatten().filter_map(|phx_ref| {
            self.members
                .get(phx_ref)
                .map(|member| (phx_ref.as_str(), member))
        })
    }

    /// Adds `member` as `phx_ref` (an update, when `member.prev` names a member, also removes
    /// that one); whether anything changed.
    pub fn track(&mut self, phx_ref: String, member: Member) -> bool {
        if self.gone_set.contains(&phx_ref) {
            return false;
        }
        // An update replaces `prev` for good, whichever of its announcements comes first.
        let replaced = member
            .prev
            .as_deref()
            .is_some_and(|prev| prev != phx_ref && self.untrack(prev));
        if self.members.contains_key(&phx_ref) {
            return replaced;
        }
        self.by_key
            .entry(member.key.clone())
            .or_default()
            .push(phx_ref.clone());
        self.seq += 1;
        // The ref is back: its pending leave would undo this join (phoenix.js applies joins
        // first). Under another key, the leave still removes it from the old one.
        let pending = (member.key.clone(), phx_ref.clone());
        self.leaves.remove(&pending);
        self.joins.insert(pending, (self.seq, member.clone()));
        self.members.insert(phx_ref, member);
        self.state = None;
        true
    }

    /// Removes the member `phx_ref` for good (it left, or an update replaced it); whether it
    /// was one.
    pub fn untrack(&mut self, phx_ref: &str) -> bool {
        if self.gone_set.insert(phx_ref.to_owned()) {
            self.gone.push_back(phx_ref.to_owned());
            if self.gone.len() > MAX_GONE {
                if let Some(oldest) = self.gone.pop_front() {
                    self.gone_set.remove(&oldest);
                }
            }
        }
        self.remove(phx_ref)
    }

    /// Removes the member `phx_ref` (it may come back); whether it was one.
    fn remove(&mut self, phx_ref: &str) -> bool {
        let Some(member) = self.members.remove(phx_ref) else {
            return false;
        };
        if let Some(refs) = self.by_key.get_mut(&member.key) {
            refs.retain(|other| other != phx_ref);
            if refs.is_empty() {
                self.by_key.remove(&member.key);
            }
        }
        self.seq += 1;
        self.leaves
            .insert((member.key.clone(), phx_ref.to_owned()), (self.seq, member));
        self.state = None;
        true
    }

    /// Removes every member `node` owns (it is gone); how many.
    pub fn untrack_node(&mut self, node: &str) -> usize {
        let refs: Vec<String> = self
            .members
            .iter()
            .filter(|(_, member)| member.node == node)
            .map(|(phx_ref, _)| phx_ref.clone())
            .collect();
        for phx_ref in &refs {
            self.remove(phx_ref);
        }
        refs.len()
    }

    /// Makes the members exactly `snapshot` (the backend's list, read after a reconnect):
    /// members it lacks leave, members it adds join, members it shows otherwise are replaced,
    /// members in both stay untouched. A ref it lists twice keeps its first entry; a ref that
    /// is over (it left, or was replaced) stays out.
    pub fn resync(&mut self, snapshot: Vec<(String, Member)>) {
        let keep: HashSet<&str> = snapshot
            .iter()
            .map(|(phx_ref, _)| phx_ref.as_str())
            .collect();
        let gone: Vec<String> = self
            .members
            .keys()
            .filter(|phx_ref| !keep.contains(phx_ref.as_str()))
            .cloned()
            .collect();
        for phx_ref in &gone {
            self.remove(phx_ref);
        }
        let mut seen = HashSet::new();
        for (phx_ref, member) in snapshot {
            if !seen.insert(phx_ref.clone()) {
                continue;
            }
            // A snapshot lists members, not updates: what it shows is all there is.
            let member = Member {
                prev: None,
                ..member
            };
            let differs = self.members.get(&phx_ref).is_some_and(|known| {
                known.key != member.key || known.meta != member.meta || known.node != member.node
            });
            if differs {
                self.remove(&phx_ref);
            }
            self.track(phx_ref, member);
        }
    }

    /// `{"joins": {...}, "leaves": {...}}` of the changes since the last call, in phoenix.js'
    /// format, or `None` when nothing changed.
    pub fn take_diff(&mut self) -> Option<Payload> {
        if !self.has_changes() {
            return None;
        }
        let joins = in_order(std::mem::take(&mut self.joins));
        let leaves = in_order(std::mem::take(&mut self.leaves));
        let mut out = String::from(r#"{"joins":"#);
        write_grouped(&mut out, joins.iter().map(|(r, m)| (r.as_str(), m)), true);
        out.push_str(r#","leaves":"#);
        write_grouped(&mut out, leaves.iter().map(|(r, m)| (r.as_str(), m)), false);
        out.push('}');
        // unwrap: built from valid JSON strings and metas (tested).
        Some(Payload::from_json_string(out).expect("a diff is valid JSON"))
    }

    /// `{key: {"metas": [...]}}` of every member now: a `presence_state` payload. Built once
    /// per change, however many sockets join.
    pub fn state(&mut self) -> Payload {
        if let Some(state) = &self.state {
            return state.clone();
        }
        let mut out = String::with_capacity(self.members.len() * 64 + 2);
        // Members are kept grouped by key, in key order: written straight out.
        out.push('{');
        for (index, (key, refs)) in self.by_key.iter().enumerate() {
            if index > 0 {
                out.push(',');
            }
            push_json_string(&mut out, key);
            out.push_str(r#":{"metas":["#);
            let metas = refs
                .iter()
                .filter_map(|phx_ref| self.members.get(phx_ref).map(|m| (phx_ref, m)));
            for (index, (phx_ref, member)) in metas.enumerate() {
                if index > 0 {
                    out.push(',');
                }
                member.meta.write_with_refs(&mut out, phx_ref, None);
            }
            out.push_str("]}");
        }
        out.push('}');
        // unwrap: as in take_diff.
        let state = Payload::from_json_string(out).expect("a state is valid JSON");
        self.state = Some(state.clone());
        state
    }
}

/// Pending changes in the order they happened.
fn in_order(pending: Pending) -> Vec<(String, Member)> {
    let mut changes: Vec<(u64, String, Member)> = pending
        .into_iter()
        .map(|((_, phx_ref), (seq, member))| (seq, phx_ref, member))
        .collect();
    changes.sort_unstable_by_key(|(seq, _, _)| *seq);
    changes
        .into_iter()
        .map(|(_, phx_ref, member)| (phx_ref, member))
        .collect()
}

/// Writes `{key: {"metas": [meta, ...]}, ...}`, grouping by key (in key order, each key's
/// metas in the order given); `with_prev` adds `phx_ref_prev` to updates.
fn write_grouped<'a>(
    out: &mut String,
    members: impl Iterator<Item = (&'a str, &'a Member)>,
    with_prev: bool,
) {
    let mut grouped: BTreeMap<&str, Vec<(&str, &Member)>> = BTreeMap::new();
    for (phx_ref, member) in members {
        grouped
            .entry(member.key.as_str())
            .or_default()
            .push((phx_ref, member));
    }
    out.push('{');
    for (index, (key, metas)) in grouped.into_iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        push_json_string(out, key);
        out.push_str(r#":{"metas":["#);
        for (index, (phx_ref, member)) in metas.into_iter().enumerate() {
            if index > 0 {
                out.push(',');
            }
            let prev = if with_prev {
                member.prev.as_deref()
            } else {
                None
            };
            member.meta.write_with_refs(out, phx_ref, prev);
        }
        out.push_str("]}");
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn member(key: &str, meta: &str, node: &str) -> Member {
        Member {
            key: key.into(),
            meta: Meta::parse(meta, "meta").unwrap(),
            node: node.into(),
            prev: None,
        }
    }

    fn value(payload: &Payload) -> Value {
        serde_json::from_str(payload.get()).unwrap()
    }

    #[test]
    fn one_user_on_two_sockets_is_one_key_with_two_metas() {
        let mut table = TopicPresence::new();
        assert!(table.track("r1".into(), member("ada", r#"{"device":"phone"}"#, "n1")));
        assert!(table.track("r2".into(), member("ada", r#"{"device":"laptop"}"#, "n2")));
        assert!(
            !table.track("r2".into(), member("ada", "{}", "n2")),
            "idempotent"
        );
        assert_eq!((table.len(), table.keys()), (2, 1));
        assert_eq!(
            value(&table.state()),
            json!({"ada": {"metas": [
                {"phx_ref": "r1", "device": "phone"},
                {"phx_ref": "r2", "device": "laptop"}
            ]}})
        );
        assert!(table.untrack("r1"));
        assert!(!table.untrack("r1"));
        assert_eq!(
            value(&table.state()),
            json!({"ada": {"metas": [{"phx_ref": "r2", "device": "laptop"}]}})
        );
    }

    #[test]
    fn a_diff_batches_every_change_since_the_last() {
        let mut table = TopicPresence::new();
        assert_eq!(table.take_diff(), None);
        table.track("r1".into(), member("ada", "{}", "n1"));
        table.track("r2".into(), member("bob", "{}", "n1"));
        table.track("r3".into(), member("cy", "{}", "n1"));
        table.untrack("r3");
        assert_eq!(
            value(&table.take_diff().unwrap()),
            json!({
                "joins": {
                    "ada": {"metas": [{"phx_ref": "r1"}]},
                    "bob": {"metas": [{"phx_ref": "r2"}]},
                    "cy": {"metas": [{"phx_ref": "r3"}]}
                },
                "leaves": {"cy": {"metas": [{"phx_ref": "r3"}]}}
            })
        );
        assert_eq!(table.take_diff(), None);
    }

    #[test]
    fn an_update_joins_the_new_meta_and_leaves_the_old() {
        let mut table = TopicPresence::new();
        table.track("r1".into(), member("ada", r#"{"s":"idle"}"#, "n1"));
        let _ = table.take_diff();
        let mut update = member("ada", r#"{"s":"typing"}"#, "n1");
        update.prev = Some("r1".into());
        table.track("r2".into(), update);
        assert_eq!(
            value(&table.take_diff().unwrap()),
            json!({
                "joins": {"ada": {"metas": [{"phx_ref": "r2", "phx_ref_prev": "r1", "s": "typing"}]}},
                "leaves": {"ada": {"metas": [{"phx_ref": "r1", "s": "idle"}]}}
            })
        );
        assert_eq!(
            value(&table.state()),
            json!({"ada": {"metas": [{"phx_ref": "r2", "s": "typing"}]}})
        );
    }

    #[test]
    fn a_nodes_members_leave_with_it_and_a_snapshot_resyncs() {
        let mut table = TopicPresence::new();
        table.track("a".into(), member("ada", "{}", "n1"));
        table.track("b".into(), member("bob", "{}", "n2"));
        table.track("c".into(), member("cy", "{}", "n2"));
        let _ = table.take_diff();
        assert_eq!(table.untrack_node("n2"), 2);
        assert_eq!(table.len(), 1);
        let _ = table.take_diff();
        table.resync(vec![
            ("a".into(), member("ada", "{}", "n1")),
            ("d".into(), member("dee", "{}", "n3")),
        ]);
        let _ = table.take_diff();
        table.resync(vec![("d".into(), member("dee", "{}", "n3"))]);
        assert_eq!(
            value(&table.take_diff().unwrap()),
            json!({"joins": {}, "leaves": {"ada": {"metas": [{"phx_ref": "a"}]}}})
        );
        assert_eq!(
            value(&table.state()),
            json!({"dee": {"metas": [{"phx_ref": "d"}]}})
        );
    }

    #[test]
    fn a_ref_that_comes_back_within_a_window_is_one_join() {
        // A node declared gone writes its members again: phoenix.js applies joins before
        // leaves, so a leave left next to the join would remove the member for good.
        let mut table = TopicPresence::new();
        table.track("a".into(), member("ada", "{}", "n1"));
        let _ = table.take_diff();
        assert_eq!(table.untrack_node("n1"), 1);
        table.track("a".into(), member("ada", r#"{"s":2}"#, "n1"));
        assert_eq!(
            value(&table.take_diff().unwrap()),
            json!({"joins": {"ada": {"metas": [{"phx_ref": "a", "s": 2}]}}, "leaves": {}})
        );
        // Written back, declared gone and written back again within one window: the latest
        // join only.
        table.untrack_node("n1");
        table.track("a".into(), member("ada", r#"{"s":3}"#, "n1"));
        table.untrack_node("n1");
        table.track("a".into(), member("ada", r#"{"s":4}"#, "n1"));
        assert_eq!(
            value(&table.take_diff().unwrap()),
            json!({"joins": {"ada": {"metas": [{"phx_ref": "a", "s": 4}]}}, "leaves": {}})
        );
    }

    #[test]
    fn a_replaced_or_departed_ref_never_comes_back() {
        // On a member's own node, an update's reply and the backend's announcements arrive in
        // no fixed order: the reply for .13 (prev .12) may come before the announcement of
        // .12 (prev .11), and .12 must not stay.
        let mut table = TopicPresence::new();
        let update = |r: &str, prev: &str| Member {
            prev: Some(prev.into()),
            ..member("ada", &format!(r#"{{"v":"{r}"}}"#), "n1")
        };
        table.track("11".into(), member("ada", "{}", "n1"));
        assert!(table.track("13".into(), update("13", "12")));
        assert!(
            !table.track("12".into(), update("12", "11")),
            "12 was replaced"
        );
        assert!(table.track("13".into(), update("13", "12")) || table.contains("13"));
        // .11 is still there: only .12's own announcement replaces it, and it was ignored.
        // The backend's order brings the leave of .11 with the update that replaced it.
        table.untrack("11");
        let refs: Vec<&str> = table.members().map(|(r, _)| r).collect();
        assert_eq!(refs, ["13"]);
        // A leave is final too, even when its join is announced afterwards.
        assert!(table.untrack("13"));
        assert!(!table.track("13".into(), member("ada", "{}", "n1")));
        assert!(table.is_empty());
        // A node declared gone may write its members again.
        table.track("21".into(), member("bob", "{}", "n2"));
        table.untrack_node("n2");
        assert!(table.track("21".into(), member("bob", "{}", "n2")));
    }

    #[test]
    fn keys_are_escaped() {
        let mut table = TopicPresence::new();
        table.track("r\u{1}".into(), member("\"quoted\"\n", "{}", "n"));
        let state = value(&table.state());
        assert_eq!(state["\"quoted\"\n"]["metas"][0]["phx_ref"], "r\u{1}");
    }
}
