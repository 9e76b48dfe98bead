use std::time::Duration;

use super::*;

type TestBridge = Bridge<&'static str, u32, String>;

fn t(millis: u64) -> Time {
    Time::from_millis(millis)
}

fn topic(name: &str) -> Topic {
    Topic::new(name).unwrap()
}

fn config() -> BridgeConfig {
    BridgeConfig {
        unsubscribe_linger: Duration::ZERO,
        ..BridgeConfig::default()
    }
}

fn drain(bridge: &mut TestBridge) -> Vec<Action<&'static str, u32, String>> {
    std::iter::from_fn(|| bridge.poll()).collect()
}

/// A bridge that is up (generation 1) with no topics.
fn up(config: BridgeConfig) -> TestBridge {
    let mut bridge = TestBridge::new(config, t(0));
    bridge.handle_tick(t(0));
    let out = drain(&mut bridge);
    assert!(matches!(
        out[..],
        [Action::Connect {
            generation: Generation(1)
        }]
    ));
    bridge.handle_connected(Generation(1), t(1));
    let out = drain(&mut bridge);
    assert!(matches!(
        out[..],
        [
            Action::Status(LinkStatus::Connected {
                reconnect: false,
                resubscribing: 0
            }),
            Action::Status(LinkStatus::Ready)
        ]
    ));
    bridge
}

fn edges(out: &[Action<&'static str, u32, String>]) -> Vec<(EdgeOp, Vec<String>)> {
    out.iter()
        .filter_map(|action| match action {
            Action::Edges { op, topics, .. } => {
                Some((*op, topics.iter().map(|t| t.as_str().to_owned()).collect()))
            }
            _ => None,
        })
        .collect()
}

fn answers(out: &[Action<&'static str, u32, String>]) -> Vec<(&'static str, WaitOutcome)> {
    out.iter()
        .filter_map(|action| match action {
            Action::Answer { waiter, outcome } => Some((*waiter, outcome.clone())),
            _ => None,
        })
        .collect()
}

fn published(out: &[Action<&'static str, u32, String>]) -> Vec<(u32, PublishOutcome)> {
    out.iter()
        .filter_map(|action| match action {
            Action::Published { ack, outcome } => Some((*ack, outcome.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_join_is_confirmed_when_its_subscription_is() {
    let mut bridge = up(config());
    let room = topic("room:1");
    bridge.handle_subscribe(&room, t(2));
    bridge.handle_wait(&room, "a", t(2));
    let out = drain(&mut bridge);
    assert_eq!(
        edges(&out),
        vec![(EdgeOp::Subscribe, vec!["room:1".into()])]
    );
    assert!(answers(&out).is_empty(), "not before the backend confirms");
    bridge.handle_wait(&room, "b", t(3));
    assert!(
        answers(&drain(&mut bridge)).is_empty(),
        "a second join waits too"
    );
    bridge.handle_edges_done(Generation(1), Ok(()), t(4));
    assert_eq!(
        answers(&drain(&mut bridge)),
        vec![("a", WaitOutcome::Confirmed), ("b", WaitOutcome::Confirmed)]
    );
    assert!(bridge.is_subscribed(&room));
    bridge.handle_wait(&room, "c", t(5));
    assert_eq!(
        answers(&drain(&mut bridge)),
        vec![("c", WaitOutcome::Confirmed)]
    );
}

#[test]
fn joins_while_down_are_answered_local_only_at_once() {
    let mut bridge = TestBridge::new(config(), t(0));
    let room = topic("room:1");
    bridge.handle_subscribe(&room, t(0));
    bridge.handle_wait(&room, "a", t(0));
    let out = drain(&mut bridge);
    assert_eq!(answers(&out), vec![("a", WaitOutcome::LocalOnly)]);
    // The topic is subscribed as soon as the link is up.
    let Some(Action::Connect { generation }) = out
        .into_iter()
        .find(|a| matches!(a, Action::Connect { .. }))
    else {
        panic!("connects at once");
    };
    bridge.handle_connected(generation, t(1));
    let out = drain(&mut bridge);
    assert_eq!(
        edges(&out),
        vec![(EdgeOp::Subscribe, vec!["room:1".into()])]
    );
    assert!(!bridge.is_ready(), "ready once resubscribed");
    bridge.handle_edges_done(generation, Ok(()), t(2));
    let out = drain(&mut bridge);
    assert!(out
        .iter()
        .any(|a| matches!(a, Action::Status(LinkStatus::Ready))));
}

#[test]
fn an_unconfirmed_join_times_out() {
    let mut bridge = up(config());
    let room = topic("room:1");
    bridge.handle_subscribe(&room, t(10));
    bridge.handle_wait(&room, "a", t(10));
    let _ = drain(&mut bridge);
    assert!(bridge.poll_timeout() <= Some(t(10) + Duration::from_secs(5)));
    bridge.handle_tick(t(5009));
    assert!(answers(&drain(&mut bridge)).is_empty());
    bridge.handle_tick(t(5010));
    assert_eq!(
        answers(&drain(&mut bridge)),
        vec![("a", WaitOutcome::TimedOut)]
    );
}

#[test]
fn a_refused_batch_is_split_to_find_the_refused_topic() {
    let mut bridge = up(config());
    let (a, b, c) = (topic("ok:1"), topic("secret:1"), topic("ok:2"));
    bridge.handle_subscribe(&a, t(2));
    bridge.handle_wait(&a, "a", t(2));
    let _ = drain(&mut bridge);
    bridge.handle_subscribe(&b, t(2));
    bridge.handle_wait(&b, "b", t(2));
    bridge.handle_subscribe(&c, t(2));
    bridge.handle_wait(&c, "c", t(2));
    bridge.handle_edges_done(Generation(1), Ok(()), t(3));
    let out = drain(&mut bridge);
    assert_eq!(answers(&out), vec![("a", WaitOutcome::Confirmed)]);
    assert_eq!(
        edges(&out),
        vec![(EdgeOp::Subscribe, vec!["secret:1".into(), "ok:2".into()])]
    );
    bridge.handle_edges_done(
        Generation(1),
        Err(RequestError::Refused("NOPERM".into())),
        t(4),
    );
    let out = drain(&mut bridge);
    assert_eq!(
        edges(&out),
        vec![(EdgeOp::Subscribe, vec!["secret:1".into()])]
    );
    bridge.handle_edges_done(
        Generation(1),
        Err(RequestError::Refused("NOPERM".into())),
        t(5),
    );
    let out = drain(&mut bridge);
    assert_eq!(
        answers(&out),
        vec![("b", WaitOutcome::Refused("NOPERM".into()))]
    );
    assert_eq!(edges(&out), vec![(EdgeOp::Subscribe, vec!["ok:2".into()])]);
    bridge.handle_edges_done(Generation(1), Ok(()), t(6));
    assert_eq!(
        answers(&drain(&mut bridge)),
        vec![("c", WaitOutcome::Confirmed)]
    );
    assert!(bridge.is_ready(), "a refusal does not take the link down");
}

#[test]
fn unsubscribing_lingers_and_a_quick_rejoin_costs_nothing() {
    let mut bridge = up(BridgeConfig {
        unsubscribe_linger: Duration::from_millis(1000),
        ..config()
    });
    let room = topic("room:1");
    bridge.handle_subscribe(&room, t(2));
    bridge.handle_edges_done(Generation(1), Ok(()), t(3));
    let _ = drain(&mut bridge);
    bridge.handle_unsubscribe(&room, t(10));
    bridge.handle_tick(t(500));
    assert!(edges(&drain(&mut bridge)).is_empty(), "lingering");
    bridge.handle_subscribe(&room, t(600));
    bridge.handle_wait(&room, "a", t(600));
    let out = drain(&mut bridge);
    assert!(edges(&out).is_empty(), "still subscribed: nothing to send");
    assert_eq!(answers(&out), vec![("a", WaitOutcome::Confirmed)]);
    bridge.handle_unsubscribe(&room, t(700));
    bridge.handle_tick(t(1699));
    assert!(edges(&drain(&mut bridge)).is_empty());
    bridge.handle_tick(t(1700));
    assert_eq!(
        edges(&drain(&mut bridge)),
        vec![(EdgeOp::Unsubscribe, vec!["room:1".into()])]
    );
    bridge.handle_edges_done(Generation(1), Ok(()), t(1701));
    let _ = drain(&mut bridge);
    assert_eq!(bridge.topic_count(), 0, "nothing left behind");
}

#[test]
fn leave_then_rejoin_during_an_unsubscribe_ends_subscribed() {
    let mut bridge = up(config());
    let room = topic("room:1");
    bridge.handle_subscribe(&room, t(2));
    bridge.handle_edges_done(Generation(1), Ok(()), t(3));
    bridge.handle_unsubscribe(&room, t(4));
    let out = drain(&mut bridge);
    assert_eq!(
        edges(&out).last(),
        Some(&(EdgeOp::Unsubscribe, vec!["room:1".into()]))
    );
    bridge.handle_subscribe(&room, t(5));
    bridge.handle_wait(&room, "a", t(5));
    assert!(
        answers(&drain(&mut bridge)).is_empty(),
        "the unsubscribe is in flight"
    );
    bridge.handle_edges_done(Generation(1), Ok(()), t(6));
    let out = drain(&mut bridge);
    assert_eq!(
        edges(&out),
        vec![(EdgeOp::Subscribe, vec!["room:1".into()])]
    );
    bridge.handle_edges_done(Generation(1), Ok(()), t(7));
    assert_eq!(
        answers(&drain(&mut bridge)),
        vec![("a", WaitOutcome::Confirmed)]
    );
    assert!(bridge.is_subscribed(&room));
}

#[test]
fn a_lost_link_settles_every_promise_and_resubscribes_on_reconnect() {
    let mut bridge = up(config());
    let (a, b) = (topic("room:a"), topic("room:b"));
    bridge.handle_subscribe(&a, t(2));
    bridge.handle_edges_done(Generation(1), Ok(()), t(3));
    bridge.handle_subscribe(&b, t(4));
    bridge.handle_wait(&b, "b", t(4));
    bridge.handle_publish("m1".into(), 10, 1, t(4));
    bridge.handle_publish("m2".into(), 10, 2, t(4));
    let _ = drain(&mut bridge);
    assert_eq!(bridge.queued(), 2);
    bridge.handle_link_lost(Generation(1), "connection reset", t(5));
    let out = drain(&mut bridge);
    assert!(matches!(
        out[0],
        Action::Disconnect {
            generation: Generation(1)
        }
    ));
    assert_eq!(answers(&out), vec![("b", WaitOutcome::LocalOnly)]);
    assert_eq!(
        published(&out),
        vec![(1, PublishOutcome::Lost), (2, PublishOutcome::Lost)]
    );
    assert!(matches!(
        out.last(),
        Some(Action::Status(LinkStatus::Down { notable: true, .. }))
    ));
    assert_eq!((bridge.queued(), bridge.queued_bytes()), (0, 0));
    // Late reports about generation 1 change nothing.
    bridge.handle_edges_done(Generation(1), Ok(()), t(6));
    bridge.handle_published(Generation(1), Ok(vec![Ok(None)]), t(6));
    assert!(drain(&mut bridge).is_empty());
    bridge.handle_publish("m3".into(), 10, 3, t(6));
    assert_eq!(
        published(&drain(&mut bridge)),
        vec![(3, PublishOutcome::Unavailable)]
    );
    let retry = bridge.poll_timeout().unwrap();
    assert!(retry > t(5) && retry <= t(5) + Duration::from_millis(50));
    bridge.handle_tick(retry);
    assert!(matches!(
        drain(&mut bridge)[..],
        [Action::Connect {
            generation: Generation(2)
        }]
    ));
    bridge.handle_connected(Generation(2), retry);
    let out = drain(&mut bridge);
    assert!(matches!(
        out[0],
        Action::Status(LinkStatus::Connected {
            reconnect: true,
            resubscribing: 2
        })
    ));
    let mut resubscribed = edges(&out)[0].1.clone();
    resubscribed.sort();
    assert_eq!(resubscribed, vec!["room:a".to_owned(), "room:b".to_owned()]);
}

#[test]
fn the_publish_queue_is_bounded_by_count_and_bytes() {
    let mut bridge = up(BridgeConfig {
        max_queued_messages: 3,
        max_queued_bytes: 100,
        ..config()
    });
    bridge.handle_publish("a".into(), 40, 1, t(2));
    bridge.handle_publish("b".into(), 40, 2, t(2));
    bridge.handle_publish("c".into(), 40, 3, t(2));
    bridge.handle_publish("d".into(), 10, 4, t(2));
    bridge.handle_publish("e".into(), 10, 5, t(2));
    let out = drain(&mut bridge);
    assert_eq!(
        published(&out),
        vec![
            (3, PublishOutcome::QueueFull),
            (5, PublishOutcome::QueueFull)
        ]
    );
    let batches: Vec<&Vec<String>> = out
        .iter()
        .filter_map(|a| match a {
            Action::Publish { messages, .. } => Some(messages),
            _ => None,
        })
        .collect();
    assert_eq!(batches, vec![&vec!["a".to_owned()]], "one batch in flight");
    bridge.handle_published(Generation(1), Ok(vec![Ok(None)]), t(3));
    let out = drain(&mut bridge);
    assert_eq!(
        published(&out),
        vec![(1, PublishOutcome::Sent { position: None })]
    );
    bridge.handle_published(
        Generation(1),
        Ok(vec![Ok(None), Err("NOPERM".into())]),
        t(4),
    );
    assert_eq!(
        published(&drain(&mut bridge)),
        vec![
            (2, PublishOutcome::Sent { position: None }),
            (4, PublishOutcome::Refused("NOPERM".into()))
        ]
    );
    assert_eq!((bridge.queued(), bridge.queued_bytes()), (0, 0));
}

#[test]
fn a_backend_that_stops_answering_is_noticed_within_the_backend_timeout() {
    let mut bridge = up(config());
    // Quiet link: a ping every half of the timeout.
    assert_eq!(bridge.poll_timeout(), Some(t(1) + Duration::from_secs(5)));
    bridge.handle_tick(t(5001));
    assert!(matches!(drain(&mut bridge)[..], [Action::Ping { .. }]));
    bridge.handle_pong(Generation(1), t(5002));
    bridge.handle_tick(t(10_002));
    assert!(matches!(drain(&mut bridge)[..], [Action::Ping { .. }]));
    // No pong: gone half a timeout later, within one timeout of the last answer.
    bridge.handle_tick(t(15_001));
    assert!(drain(&mut bridge).is_empty());
    bridge.handle_tick(t(15_002));
    let out = drain(&mut bridge);
    assert!(matches!(out[0], Action::Disconnect { .. }));
    assert!(matches!(
        out.last(),
        Some(Action::Status(LinkStatus::Down { .. }))
    ));
    // A publish that is never answered ends the link too.
    let mut bridge = up(config());
    bridge.handle_publish("a".into(), 1, 1, t(100));
    let _ = drain(&mut bridge);
    bridge.handle_tick(t(5100));
    assert_eq!(
        published(&drain(&mut bridge)),
        vec![(1, PublishOutcome::Lost)]
    );
}

#[test]
fn a_failed_publish_ends_the_link() {
    let mut bridge = up(config());
    bridge.handle_publish("a".into(), 1, 1, t(2));
    let _ = drain(&mut bridge);
    bridge.handle_published(Generation(1), Err("broken pipe".into()), t(3));
    let out = drain(&mut bridge);
    assert_eq!(published(&out), vec![(1, PublishOutcome::Lost)]);
    assert!(!bridge.is_up());
}

#[test]
fn connect_attempts_time_out_and_back_off_with_jitter() {
    let mut bridge = TestBridge::new(config(), t(0));
    bridge.handle_tick(t(0));
    let _ = drain(&mut bridge);
    bridge.handle_tick(t(1000));
    let out = drain(&mut bridge);
    assert!(matches!(
        out.last(),
        Some(Action::Status(LinkStatus::Down { notable: true, .. }))
    ));
    let retry = bridge.poll_timeout().unwrap();
    assert!(retry >= t(1025) && retry <= t(1050), "{retry:?}");
    bridge.handle_tick(retry);
    let _ = drain(&mut bridge);
    bridge.handle_connect_failed(Generation(2), "refused", retry);
    let out = drain(&mut bridge);
    assert!(matches!(
        out.last(),
        Some(Action::Status(LinkStatus::Down { notable: false, .. }))
    ));
    // A late success of an abandoned attempt is told to disconnect.
    bridge.handle_connected(Generation(1), retry);
    assert!(matches!(
        drain(&mut bridge)[..],
        [Action::Disconnect {
            generation: Generation(1)
        }]
    ));
}

#[test]
fn shutdown_sends_what_is_queued_and_takes_nothing_new() {
    let mut bridge = up(config());
    bridge.handle_publish("a".into(), 1, 1, t(2));
    bridge.handle_publish("b".into(), 1, 2, t(2));
    let _ = drain(&mut bridge);
    bridge.handle_shutdown(t(3));
    bridge.handle_publish("c".into(), 1, 3, t(3));
    assert_eq!(
        published(&drain(&mut bridge)),
        vec![(3, PublishOutcome::Unavailable)]
    );
    assert!(!bridge.is_idle());
    bridge.handle_published(Generation(1), Ok(vec![Ok(None)]), t(4));
    let out = drain(&mut bridge);
    assert_eq!(
        published(&out),
        vec![(1, PublishOutcome::Sent { position: None })]
    );
    bridge.handle_published(Generation(1), Ok(vec![Ok(None)]), t(5));
    let _ = drain(&mut bridge);
    assert!(bridge.is_idle());
}
