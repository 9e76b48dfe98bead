//! A topic's presence table against phoenix.js' own `syncState`/`syncDiff` and a plain model
//! (`switchboard_core::presence::model::check`).
//!
//! Random changes (joins, leaves, updates, nodes going away, snapshots after a reconnect,
//! announcements from the backend) hit one `TopicPresence`; clients join at random moments,
//! get the state then and every diff after it (the way the node sends them), and apply them as
//! phoenix.js' `Presence` does. After every diff, every client's list must be the table's, and
//! the table's must be the plain model's.

use proptest::prelude::*;
use switchboard_core::presence::model::{check, Op};

fn announcement() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (0..4u8, 0..40u32, 0..3u8, proptest::option::of(0..40u32)).prop_map(
            |(key, r, node, prev)| {
                let prev = prev.map(|p| format!(r#","prev":"r{p}""#)).unwrap_or_default();
                format!(
                    r#"{{"op":"join","ref":"r{r}","node":"node{node}","key":"user{key}","meta":{{"via":"backend"}}{prev}}}"#
                )
                .into_bytes()
            }
        ),
        (0..40u32).prop_map(|r| format!(r#"{{"op":"leave","ref":"r{r}"}}"#).into_bytes()),
        (0..3u8).prop_map(|node| format!(r#"{{"op":"node_down","node":"node{node}"}}"#).into_bytes()),
        proptest::collection::vec(any::<u8>(), 0..20),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(key, meta, node)| Op::Track { key, meta, node }),
        2 => any::<u16>().prop_map(|pick| Op::Untrack { pick }),
        1 => (any::<u16>(), any::<u8>()).prop_map(|(pick, meta)| Op::Update { pick, meta }),
        1 => any::<u8>().prop_map(|node| Op::NodeDown { node }),
        1 => (proptest::collection::vec(any::<bool>(), 0..12), proptest::collection::vec((any::<u8>(), any::<u8>()), 0..3))
            .prop_map(|(keep, add)| Op::Resync { keep, add }),
        3 => Just(Op::Flush),
        1 => Just(Op::ClientJoins),
        2 => announcement().prop_map(Op::Announce),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    #[test]
    fn every_client_sees_the_table_after_every_diff(ops in proptest::collection::vec(op(), 0..60)) {
        check(&ops).map_err(TestCaseError::fail)?;
    }
}

#[test]
fn a_client_that_joined_mid_window_still_sees_a_member_leave() {
    // The case that forbids cancelling a join and a leave within one window: the client was
    // shown the member in between.
    let ops = [
        Op::Track {
            key: 0,
            meta: 0,
            node: 0,
        },
        Op::ClientJoins,
        Op::Untrack { pick: 0 },
        Op::Flush,
    ];
    check(&ops).unwrap();
}

#[test]
fn an_update_announced_by_another_node_replaces_the_member() {
    let ops = [
        Op::Announce(br#"{"op":"join","ref":"a","node":"node1","key":"user1","meta":{}}"#.to_vec()),
        Op::ClientJoins,
        Op::Announce(
            br#"{"op":"join","ref":"b","node":"node1","key":"user1","meta":{"s":1},"prev":"a"}"#
                .to_vec(),
        ),
        Op::Flush,
        Op::Announce(br#"{"op":"node_down","node":"node1"}"#.to_vec()),
        Op::Flush,
    ];
    check(&ops).unwrap();
}
