//! Property tests: random op sequences through the [`Registry`] agree with a plain model.
//!
//! [`check_ops`] runs every sequence through a real registry and a
//! `BTreeMap<Topic, BTreeSet<SessionId>>` model, comparing each outcome and the whole state
//! (both indexes, the counters, connectivity) after every step, with per-session topic limits
//! 1, 2, 3 and 100. Crowded workloads push a topic's members past the registry's switch from a
//! list to a hash set and back. The last test drives the registry directly on a single topic
//! and checks the 0↔1 edges a bridge acts on: every `FirstLocal` is matched by exactly one
//! `LastLocal` (or emptied topic) before the next one.

use std::collections::BTreeSet;

use proptest::prelude::*;
use switchboard_core::model::{check_ops, Op, TOPIC_POOL};
use switchboard_core::{Registry, SessionId, SubscribeError, Subscribed, Topic, Unsubscribed};

/// An index that usually picks among the first few sessions or topics (so ops collide), and
/// sometimes anywhere in `u8` (the checker wraps it around what exists).
fn index() -> impl Strategy<Value = u8> {
    prop_oneof![4 => 0u8..6, 1 => any::<u8>()]
}

/// One registry op, weighted towards subscribe/unsubscribe so topics fill up and drain.
fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Connect),
        1 => index().prop_map(|session| Op::Disconnect { session }),
        7 => (index(), index()).prop_map(|(session, topic)| Op::Subscribe { session, topic }),
        5 => (index(), index()).prop_map(|(session, topic)| Op::Unsubscribe { session, topic }),
        1 => index().prop_map(|session| Op::UnsubscribeAll { session }),
        2 => index().prop_map(|topic| Op::Route { topic }),
    ]
}

/// A workload of up to 160 ops.
fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 0..160)
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

fn assert_agrees(ops: &[Op], limit: usize) -> Result<(), TestCaseError> {
    if let Err(divergence) = check_ops(ops, limit) {
        return Err(TestCaseError::fail(divergence.to_string()));
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn registry_agrees_with_model_limit_1(ops in ops()) {
        assert_agrees(&ops, 1)?;
    }

    #[test]
    fn registry_agrees_with_model_limit_2(ops in ops()) {
        assert_agrees(&ops, 2)?;
    }

    #[test]
    fn registry_agrees_with_model_limit_3(ops in ops()) {
        assert_agrees(&ops, 3)?;
    }

    #[test]
    fn registry_agrees_with_model_limit_100(ops in ops()) {
        assert_agrees(&ops, 100)?;
    }

    #[test]
    fn equal_inputs_give_equal_digests(ops in ops(), limit in 1usize..5) {
        prop_assert_eq!(check_ops(&ops, limit), check_ops(&ops, limit));
    }
}

/// 80 sessions crowd two topics, then thin them out: a topic's members grow well past the
/// registry's switch from a plain list to a hash set (32) and shrink back below the switch
/// back (8), with the model checked after every step.
fn crowd_then_thin() -> impl Strategy<Value = Vec<Op>> {
    let pair = || (any::<u8>(), 0u8..2);
    let grow = prop_oneof![
        8 => pair().prop_map(|(session, topic)| Op::Subscribe { session, topic }),
        1 => pair().prop_map(|(session, topic)| Op::Unsubscribe { session, topic }),
        1 => (0u8..2).prop_map(|topic| Op::Route { topic }),
    ];
    let thin = prop_oneof![
        1 => pair().prop_map(|(session, topic)| Op::Subscribe { session, topic }),
        6 => pair().prop_map(|(session, topic)| Op::Unsubscribe { session, topic }),
        1 => any::<u8>().prop_map(|session| Op::Disconnect { session }),
        1 => (0u8..2).prop_map(|topic| Op::Route { topic }),
    ];
    (
        prop::collection::vec(grow, 150..300),
        prop::collection::vec(thin, 400..700),
    )
        .prop_map(|(grow, thin)| {
            std::iter::repeat_n(Op::Connect, 80)
                .chain(grow)
                .chain(thin)
                .collect()
        })
}

proptest! {
    #![proptest_config(config(24))]

    #[test]
    fn crowded_topics_agree_with_model(ops in crowd_then_thin()) {
        assert_agrees(&ops, 100)?;
    }
}

/// One topic filled to 100 members and emptied again, one at a time, in a scrambled order.
#[test]
fn a_topic_growing_and_shrinking_past_every_size_routes_exactly() {
    let mut registry = Registry::new();
    let topic = Topic::new("room:crowd").unwrap();
    let ids: Vec<SessionId> = (0..100).map(|_| registry.connect()).collect();
    let mut members = BTreeSet::new();
    let check = |registry: &Registry, members: &BTreeSet<SessionId>| {
        let routed: BTreeSet<SessionId> = registry.subscribers(topic.as_str()).collect();
        assert_eq!(&routed, members);
        let mut delivered = Vec::new();
        let count = registry.for_each_subscriber(topic.as_str(), |id| delivered.push(id));
        delivered.sort_unstable();
        assert_eq!(count, members.len());
        assert_eq!(delivered, members.iter().copied().collect::<Vec<_>>());
        assert_eq!(registry.subscriber_count(topic.as_str()), members.len());
        assert_eq!(registry.subscribers(topic.as_str()).len(), members.len());
    };
    for (n, &id) in ids.iter().enumerate() {
        let expected = if n == 0 {
            Subscribed::FirstLocal
        } else {
            Subscribed::Joined
        };
        assert_eq!(registry.subscribe(id, &topic), Ok(expected));
        assert_eq!(registry.subscribe(id, &topic), Ok(Subscribed::Already));
        members.insert(id);
        check(&registry, &members);
    }
    // Leave in a scrambled order (37 is coprime with 100), rejoining a few on the way down.
    for step in 0..100 {
        let id = ids[step * 37 % 100];
        let expected = if members.len() == 1 {
            Unsubscribed::LastLocal
        } else {
            Unsubscribed::Left
        };
        assert_eq!(registry.unsubscribe(id, topic.as_str()), expected);
        assert_eq!(
            registry.unsubscribe(id, topic.as_str()),
            Unsubscribed::NotSubscribed
        );
        members.remove(&id);
        check(&registry, &members);
        if step % 10 == 5 && members.len() > 1 {
            assert_eq!(registry.subscribe(id, &topic), Ok(Subscribed::Joined));
            assert_eq!(registry.unsubscribe(id, topic.as_str()), Unsubscribed::Left);
        }
    }
    assert_eq!(registry.topic_count(), 0);
    assert_eq!(registry.subscription_count(), 0);
}

/// A hand-picked sequence that passes every edge at least once, so a checker that silently
/// skipped them would still be caught here.
#[test]
fn a_sequence_through_every_edge_agrees() {
    let ops = [
        Op::Subscribe {
            session: 0,
            topic: 0,
        }, // unknown session: nobody connected yet
        Op::Connect,
        Op::Connect,
        Op::Subscribe {
            session: 0,
            topic: 0,
        }, // FirstLocal
        Op::Subscribe {
            session: 1,
            topic: 0,
        }, // Joined
        Op::Subscribe {
            session: 1,
            topic: 0,
        }, // Already
        Op::Subscribe {
            session: 0,
            topic: 1,
        },
        Op::Subscribe {
            session: 0,
            topic: 2,
        }, // TooManyTopics at limit 2
        Op::Route { topic: 0 },
        Op::Unsubscribe {
            session: 0,
            topic: 0,
        }, // Left
        Op::Unsubscribe {
            session: 0,
            topic: 0,
        }, // NotSubscribed
        Op::Unsubscribe {
            session: 1,
            topic: 0,
        }, // LastLocal
        Op::Subscribe {
            session: 1,
            topic: 1,
        },
        Op::UnsubscribeAll { session: 1 }, // Left on topic 1, session 0 still holds it
        Op::Disconnect { session: 0 },     // empties topic 1
        Op::Subscribe {
            session: 0,
            topic: 3,
        }, // disconnected session
        Op::Disconnect { session: 0 },     // twice: nothing left
        Op::Route { topic: 1 },
    ];
    check_ops(&ops, 2).unwrap();
    assert_eq!(TOPIC_POOL.len(), 8, "the ops above assume the pool's size");
}

/// What one session does to the single topic of the edge test.
#[derive(Debug, Clone, Copy)]
enum EdgeOp {
    Subscribe(usize),
    Unsubscribe(usize),
    UnsubscribeAll(usize),
    Disconnect(usize),
    Reconnect(usize),
}

fn edge_op(sessions: usize) -> impl Strategy<Value = EdgeOp> {
    prop_oneof![
        6 => (0..sessions).prop_map(EdgeOp::Subscribe),
        5 => (0..sessions).prop_map(EdgeOp::Unsubscribe),
        1 => (0..sessions).prop_map(EdgeOp::UnsubscribeAll),
        1 => (0..sessions).prop_map(EdgeOp::Disconnect),
        1 => (0..sessions).prop_map(EdgeOp::Reconnect),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    /// Several sessions join and leave one topic (and hold a private topic each, so leaving
    /// everything is not the same as leaving the shared one): the count of `FirstLocal` minus
    /// the count of `LastLocal` (including topics reported emptied) is 1 while the topic
    /// exists and 0 otherwise, and `FirstLocal`/`LastLocal` happen exactly at 0→1 and 1→0.
    #[test]
    fn first_and_last_local_bracket_the_topic_lifetime(
        sessions in 1usize..5,
        steps in prop::collection::vec(edge_op(4), 0..120),
    ) {
        let shared = Topic::new("room:lobby").unwrap();
        let mut registry = Registry::with_max_topics_per_session(2);
        let mut ids: Vec<SessionId> = (0..sessions).map(|_| registry.connect()).collect();
        let privates: Vec<Topic> = (0..sessions)
            .map(|i| Topic::new(&format!("private:{i}")).unwrap())
            .collect();
        for (id, private) in ids.iter().zip(&privates) {
            prop_assert_eq!(registry.subscribe(*id, private), Ok(Subscribed::FirstLocal));
        }
        let mut members: BTreeSet<SessionId> = BTreeSet::new();
        let (mut first, mut last) = (0usize, 0usize);
        for step in steps {
            let before = members.len();
            match step {
                EdgeOp::Subscribe(i) => {
                    let id = ids[i % sessions];
                    let outcome = registry.subscribe(id, &shared);
                    let expected = if !registry.is_connected(id) {
                        Err(SubscribeError::UnknownSession(id))
                    } else if members.contains(&id) {
                        Ok(Subscribed::Already)
                    } else if before == 0 {
                        Ok(Subscribed::FirstLocal)
                    } else {
                        Ok(Subscribed::Joined)
                    };
                    prop_assert_eq!(&outcome, &expected);
                    if outcome.is_ok() {
                        members.insert(id);
                    }
                    first += usize::from(outcome == Ok(Subscribed::FirstLocal));
                }
                EdgeOp::Unsubscribe(i) => {
                    let id = ids[i % sessions];
                    let outcome = registry.unsubscribe(id, shared.as_str());
                    let expected = if !members.remove(&id) {
                        Unsubscribed::NotSubscribed
                    } else if members.is_empty() {
                        Unsubscribed::LastLocal
                    } else {
                        Unsubscribed::Left
                    };
                    prop_assert_eq!(outcome, expected);
                    last += usize::from(outcome == Unsubscribed::LastLocal);
                }
                EdgeOp::UnsubscribeAll(i) | EdgeOp::Disconnect(i) => {
                    let id = ids[i % sessions];
                    let held = registry.topics_of(id).count();
                    let emptied = if matches!(step, EdgeOp::Disconnect(_)) {
                        registry.disconnect(id)
                    } else {
                        registry.unsubscribe_all(id)
                    };
                    prop_assert_eq!(emptied.left, held);
                    let was_member = members.remove(&id);
                    let shared_emptied = emptied.topics.contains(&shared);
                    prop_assert_eq!(shared_emptied, was_member && members.is_empty());
                    // The private topic has one holder, so it empties with it.
                    prop_assert_eq!(emptied.topics.len(), held - usize::from(was_member && !shared_emptied));
                    last += usize::from(shared_emptied);
                }
                EdgeOp::Reconnect(i) => {
                    let slot = i % sessions;
                    if !registry.is_connected(ids[slot]) {
                        ids[slot] = registry.connect();
                    }
                }
            }
            let exists = registry.subscriber_count(shared.as_str()) > 0;
            // Never negative: a LastLocal without a FirstLocal before it fails here too.
            prop_assert_eq!(first as i64 - last as i64, i64::from(exists), "after {:?}", step);
            prop_assert_eq!(exists, !members.is_empty());
            prop_assert_eq!(
                registry.subscribers(shared.as_str()).collect::<BTreeSet<_>>(),
                members.clone()
            );
            prop_assert_eq!(registry.topics().any(|t| *t == shared), exists);
        }
    }
}
