//! One topic's presence list on a [`LocalServer`](super::LocalServer): its members and the
//! changes its watchers have not been told, written as `presence_state` and `presence_diff`
//! payloads.

use crate::presence::meta::push_json_string;
use crate::presence::Meta;
use crate::Payload;

/// One member of a [`List`]: a socket's presence on a topic.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) phx_ref: String,
    pub(super) key: String,
    pub(super) meta: Meta,
    /// For an update: the `phx_ref` it replaced (`phx_ref_prev` in its diff).
    pub(super) prev: Option<String>,
}

/// One topic's members and the changes its watchers have not been told, for one server: the
/// core's [`TopicPresence`](crate::presence::TopicPresence) without what several nodes need
/// (announcements arriving twice or late, snapshots, nodes going away), in lists rather than
/// maps, which keeps the WebAssembly module about 10 KB smaller gzipped. It writes the same
/// `presence_state` and `presence_diff` payloads for the same changes (a test drives both with
/// random changes and compares them byte for byte): keys in order, each key's metas in the
/// order they joined (in a diff, the order the changes happened), a member that came and went
/// within one diff in both its joins and its leaves.
#[derive(Debug, Default)]
pub(super) struct List {
    /// Members now, in the order they joined.
    pub(super) members: Vec<Entry>,
    /// Joins and leaves since the last diff, in the order they happened. A `phx_ref` is never
    /// used twice, so each is in each list at most once.
    pub(super) joins: Vec<Entry>,
    pub(super) leaves: Vec<Entry>,
}

impl List {
    pub(super) fn len(&self) -> usize {
        self.members.len()
    }

    pub(super) fn has_changes(&self) -> bool {
        !self.joins.is_empty() || !self.leaves.is_empty()
    }

    /// Adds `entry` (an update, naming `prev`, also removes that member).
    pub(super) fn track(&mut self, entry: Entry) {
        if let Some(prev) = &entry.prev {
            self.untrack(prev);
        }
        self.joins.push(entry.clone());
        self.members.push(entry);
    }

    /// Removes member `phx_ref`, if it is one.
    pub(super) fn untrack(&mut self, phx_ref: &str) {
        if let Some(index) = self.members.iter().position(|m| m.phx_ref == phx_ref) {
            let entry = self.members.remove(index);
            self.leaves.push(entry);
        }
    }

    /// The `presence_state` payload: every member now.
    pub(super) fn state(&self) -> Payload {
        let mut out = String::new();
        write_grouped(&mut out, &self.members, false);
        // unwrap: built from JSON strings and metas (tested).
        Payload::from_json_string(out).expect("a state is valid JSON")
    }

    /// The `presence_diff` payload of the changes since the last call, if any.
    pub(super) fn take_diff(&mut self) -> Option<Payload> {
        if !self.has_changes() {
            return None;
        }
        let mut out = String::from(r#"{"joins":"#);
        write_grouped(&mut out, &std::mem::take(&mut self.joins), true);
        out.push_str(r#","leaves":"#);
        write_grouped(&mut out, &std::mem::take(&mut self.leaves), false);
        out.push('}');
        // unwrap: as in `state`.
        Some(Payload::from_json_string(out).expect("a diff is valid JSON"))
    }
}

/// Writes `{key: {"metas": [meta, ...]}, ...}`: keys in order, each key's metas in the order
/// given; `with_prev` adds `phx_ref_prev` to updates. Finding each next key by a scan instead
/// of sorting costs time quadratic in the keys, which a test server's lists can afford, and
/// no sort or map in the module.
fn write_grouped(out: &mut String, entries: &[Entry], with_prev: bool) {
    out.push('{');
    let mut last: Option<&str> = None;
    while let Some(key) = entries
        .iter()
        .map(|entry| entry.key.as_str())
        .filter(|key| last.is_none_or(|last| *key > last))
        .min()
    {
        if last.is_some() {
            out.push(',');
        }
        push_json_string(out, key);
        out.push_str(r#":{"metas":["#);
        let mut first = true;
        for entry in entries.iter().filter(|entry| entry.key == key) {
            if !first {
                out.push(',');
            }
            first = false;
            let prev = if with_prev {
                entry.prev.as_deref()
            } else {
                None
            };
            entry.meta.write_with_refs(out, &entry.phx_ref, prev);
        }
        out.push_str("]}");
        last = Some(key);
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---- the presence list against the core's table -----------------------------------------

    #[derive(Debug, Clone)]
    enum ListOp {
        Track { key: u8, meta: u8 },
        Untrack { member: usize },
        Update { member: usize, meta: u8 },
        Diff,
    }

    fn list_op() -> impl proptest::strategy::Strategy<Value = ListOp> {
        use proptest::prelude::*;
        prop_oneof![
            (0..4_u8, 0..3_u8).prop_map(|(key, meta)| ListOp::Track { key, meta }),
            (0..8_usize).prop_map(|member| ListOp::Untrack { member }),
            (0..8_usize, 0..3_u8).prop_map(|(member, meta)| ListOp::Update { member, meta }),
            Just(ListOp::Diff),
        ]
    }

    proptest::proptest! {
        /// The list writes what the core's table writes, for any changes a server makes.
        #[test]
        fn the_list_writes_what_the_cores_table_writes(
            ops in proptest::collection::vec(list_op(), 0..60)
        ) {
            use crate::presence::{Member, TopicPresence};
            let keys = ["ada", "bob", "\"q\"", "Zed"];
            let metas = ["{}", r#"{"s":1}"#, r#"{"a":[1],"s":"x"}"#];
            let meta = |n: u8| Meta::parse(metas[usize::from(n)], "meta").unwrap();
            let mut list = List::default();
            let mut table = TopicPresence::new();
            let mut next = 0;
            for op in ops {
                match op {
                    ListOp::Track { key, meta: m } => {
                        next += 1;
                        let (phx_ref, key) = (format!("n.{next}"), keys[usize::from(key)]);
                        list.track(Entry {
                            phx_ref: phx_ref.clone(),
                            key: key.to_owned(),
                            meta: meta(m),
                            prev: None,
                        });
                        let member = Member {
                            key: key.to_owned(),
                            meta: meta(m),
                            node: "n".into(),
                            prev: None,
                        };
                        table.track(phx_ref, member);
                    }
                    ListOp::Untrack { member } => {
                        if let Some(entry) = list.members.get(member).cloned() {
                            list.untrack(&entry.phx_ref);
                            table.untrack(&entry.phx_ref);
                        }
                    }
                    ListOp::Update { member, meta: m } => {
                        if let Some(old) = list.members.get(member).cloned() {
                            next += 1;
                            let phx_ref = format!("n.{next}");
                            list.track(Entry {
                                phx_ref: phx_ref.clone(),
                                key: old.key.clone(),
                                meta: meta(m),
                                prev: Some(old.phx_ref.clone()),
                            });
                            let member = Member {
                                key: old.key,
                                meta: meta(m),
                                node: "n".into(),
                                prev: Some(old.phx_ref),
                            };
                            table.track(phx_ref, member);
                        }
                    }
                    ListOp::Diff => {
                        proptest::prop_assert_eq!(list.take_diff(), table.take_diff());
                    }
                }
                proptest::prop_assert_eq!(list.len(), table.len());
                proptest::prop_assert_eq!(list.has_changes(), table.has_changes());
                proptest::prop_assert_eq!(list.state(), table.state());
            }
        }
    }
}
