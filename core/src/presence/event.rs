//! The presence changes a backend announces on a topic's presence channel, and the entries it
//! lists.
//!
//! Every node publishes its members' changes through the backend's functions (Redis
//! `switchboard_presence_*`, PostgreSQL `switchboard_presence_*`), which store the entry and
//! announce it in one atomic step. The announcements are JSON objects:
//!
//! ```text
//! {"op":"join","ref":"<phx_ref>","node":"<node>","key":"<key>","meta":{...},"prev":"<phx_ref>"}
//! {"op":"leave","ref":"<phx_ref>"}
//! {"op":"node_down","node":"<node>"}
//! ```
//!
//! (`prev` only for an update.) A stored entry is the join's `node`, `key` and `meta`.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::table::{Member, TopicPresence};
use super::Meta;

/// One announced change.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// A member joined (or, with `prev`, replaced one).
    Join {
        /// Its `phx_ref`.
        phx_ref: String,
        /// The member.
        member: Member,
    },
    /// A member left.
    Leave {
        /// Its `phx_ref`.
        phx_ref: String,
    },
    /// A node is gone (it stopped refreshing its liveness): every member it owned left.
    NodeDown {
        /// The node.
        node: String,
    },
}

/// Why an announcement or an entry could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid presence change: {0}")]
pub struct InvalidChange(String);

#[derive(Deserialize)]
struct Wire<'a> {
    op: &'a str,
    #[serde(rename = "ref")]
    phx_ref: Option<String>,
    node: Option<String>,
    key: Option<String>,
    #[serde(borrow)]
    meta: Option<&'a RawValue>,
    prev: Option<String>,
}

impl Change {
    /// Reads an announcement.
    ///
    /// # Errors
    /// [`InvalidChange`] for anything but the shapes in the module documentation.
    pub fn parse(body: &[u8]) -> Result<Self, InvalidChange> {
        let wire: Wire<'_> =
            serde_json::from_slice(body).map_err(|err| InvalidChange(err.to_string()))?;
        let missing = |field: &str| InvalidChange(format!("{} without {field}", wire.op));
        match wire.op {
            "join" => {
                let phx_ref = wire.phx_ref.clone().ok_or_else(|| missing("ref"))?;
                let node = wire.node.clone().ok_or_else(|| missing("node"))?;
                let key = wire.key.clone().ok_or_else(|| missing("key"))?;
                let meta = wire.meta.ok_or_else(|| missing("meta"))?;
                let meta = Meta::parse(meta.get(), "meta")
                    .map_err(|err| InvalidChange(err.to_string()))?;
                if wire.prev.as_ref() == Some(&phx_ref) {
                    return Err(InvalidChange(
                        "a join's prev names the member itself".into(),
                    ));
                }
                Ok(Self::Join {
                    phx_ref,
                    member: Member {
                        key,
                        meta,
                        node,
                        prev: wire.prev,
                    },
                })
            }
            "leave" => Ok(Self::Leave {
                phx_ref: wire.phx_ref.ok_or_else(|| missing("ref"))?,
            }),
            "node_down" => Ok(Self::NodeDown {
                node: wire.node.ok_or_else(|| missing("node"))?,
            }),
            other => Err(InvalidChange(format!("unknown op {other:?}"))),
        }
    }

    /// Applies the change to `table`; whether anything changed.
    pub fn apply(self, table: &mut TopicPresence) -> bool {
        match self {
            Self::Join { phx_ref, member } => table.track(phx_ref, member),
            Self::Leave { phx_ref } => table.untrack(&phx_ref),
            Self::NodeDown { node } => table.untrack_node(&node) > 0,
        }
    }
}

/// Reads a stored entry (`{"node":..,"key":..,"meta":{..}}`) of member `phx_ref`.
///
/// # Errors
/// [`InvalidChange`] when it has another shape.
pub fn parse_entry(phx_ref: &str, entry: &[u8]) -> Result<(String, Member), InvalidChange> {
    let mut body = Vec::with_capacity(entry.len() + 16);
    body.extend_from_slice(br#"{"op":"join","ref":"#);
    body.extend_from_slice(
        serde_json::to_string(phx_ref)
            .map_err(|err| InvalidChange(err.to_string()))?
            .as_bytes(),
    );
    body.push(b',');
    let inner = entry
        .strip_prefix(b"{")
        .ok_or_else(|| InvalidChange("an entry is a JSON object".into()))?;
    body.extend_from_slice(inner);
    match Change::parse(&body)? {
        Change::Join { phx_ref, member } => Ok((phx_ref, member)),
        _ => Err(InvalidChange("an entry is a member".into())),
    }
}

/// The stored entry of `member`: what [`parse_entry`] reads.
#[must_use]
pub fn entry_json(member: &Member) -> String {
    let mut out = String::from(r#"{"node":"#);
    super::meta::push_json_string(&mut out, &member.node);
    out.push_str(r#","key":"#);
    super::meta::push_json_string(&mut out, &member.key);
    out.push_str(r#","meta":"#);
    out.push_str(member.meta.as_str());
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_are_read() {
        let join = Change::parse(
            br#"{"op":"join","ref":"n1-1","node":"n1","key":"ada","meta":{"s":1},"prev":"n1-0"}"#,
        )
        .unwrap();
        let Change::Join { phx_ref, member } = &join else {
            panic!("{join:?}");
        };
        assert_eq!(phx_ref, "n1-1");
        assert_eq!(
            (
                member.key.as_str(),
                member.node.as_str(),
                member.meta.as_str()
            ),
            ("ada", "n1", r#"{"s":1}"#)
        );
        assert_eq!(member.prev.as_deref(), Some("n1-0"));
        assert_eq!(
            Change::parse(br#"{"op":"leave","ref":"x"}"#).unwrap(),
            Change::Leave {
                phx_ref: "x".into()
            }
        );
        assert_eq!(
            Change::parse(br#"{"op":"node_down","node":"n2"}"#).unwrap(),
            Change::NodeDown { node: "n2".into() }
        );
    }

    #[test]
    fn malformed_announcements_are_refused() {
        for body in [
            &b"nope"[..],
            br#"{"op":"join","ref":"r","node":"n","key":"k"}"#,
            br#"{"op":"join","ref":"r","node":"n","key":"k","meta":[1]}"#,
            br#"{"op":"join","ref":"r","node":"n","key":"k","meta":{"phx_ref":"x"}}"#,
            br#"{"op":"leave"}"#,
            br#"{"op":"explode"}"#,
        ] {
            assert!(
                Change::parse(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn entries_round_trip() {
        let member = Member {
            key: "a\"da".into(),
            meta: Meta::parse(r#"{"n":[1,2]}"#, "meta").unwrap(),
            node: "n1".into(),
            prev: None,
        };
        let json = entry_json(&member);
        assert_eq!(
            parse_entry("r\\1", json.as_bytes()).unwrap(),
            ("r\\1".into(), member)
        );
        assert!(parse_entry("r", b"[]").is_err());
    }
}
