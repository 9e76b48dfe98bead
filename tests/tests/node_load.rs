//! Under load: many sessions on many topics get exactly what they subscribed to, and a slow
//! consumer is cut off with 3008 without slowing the others or growing the node's memory
//! (docs/node.md, "A slow consumer never slows the others").

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures_util::{SinkExt, Stream, StreamExt};
use serde_json::{json, Value};
use switchboard_e2e::{http, Client, CloseOutcome, Node, PhxFrame, Rng};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::{self, Message};

/// One delivery as a subscriber sees it: topic, publisher, publisher's sequence number.
type Delivery = (String, String, u64);

/// What a reader collected.
#[derive(Debug, Default)]
struct Collected {
    deliveries: Vec<Delivery>,
    ok_replies: usize,
    other: Vec<Value>,
}

/// Reads from `stream` until `broadcasts` deliveries and `replies` ok replies have arrived,
/// then listens `linger` longer for anything extra. Gives up after `limit`.
async fn collect(
    stream: &mut (impl Stream<Item = Result<Message, tungstenite::Error>> + Unpin),
    broadcasts: usize,
    replies: usize,
    limit: Duration,
    linger: Duration,
) -> Collected {
    let mut got = Collected::default();
    let deadline = tokio::time::Instant::now() + limit;
    let mut done_at = None;
    loop {
        if done_at.is_none() && got.deliveries.len() >= broadcasts && got.ok_replies >= replies {
            done_at = Some(tokio::time::Instant::now() + linger);
        }
        let until = done_at.unwrap_or(deadline).min(deadline);
        let Ok(next) = tokio::time::timeout_at(until, stream.next()).await else {
            return got;
        };
        match next {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(text.as_str()).expect("frames are JSON");
                if frame.is_broadcast() {
                    let payload = frame.payload();
                    got.deliveries.push((
                        frame.topic().to_owned(),
                        payload["p"].as_str().unwrap_or("?").to_owned(),
                        payload["n"].as_u64().unwrap_or(u64::MAX),
                    ));
                } else if frame.is_reply() && frame.status() == "ok" {
                    got.ok_replies += 1;
                } else {
                    got.other.push(frame);
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("connection failed while collecting: {e}"),
            None => panic!("connection ended while collecting"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn many_sessions_on_many_topics_receive_exactly_their_deliveries_in_order() {
    const CLIENTS: usize = 200;
    const TOPICS: usize = 50;
    const PUBLISHERS: usize = 4;
    const PER_PUBLISHER: u64 = 60;
    const HTTP_PUBLISHES: u64 = 40;
    let mut rng = Rng::new(0x5EED_0001);
    let node = Node::start(&[]);
    let topic = |t: usize| format!("t:{t}");

    // The plan: who joins what, who publishes what where.
    let member_topics: Vec<Vec<usize>> = (0..CLIENTS)
        .map(|_| (0..TOPICS).filter(|_| rng.chance(1, 5)).collect())
        .collect();
    let publisher_topics: Vec<Vec<usize>> = (0..PUBLISHERS)
        .map(|_| {
            let mut topics: Vec<usize> = (0..TOPICS).filter(|_| rng.chance(3, 10)).collect();
            if topics.is_empty() {
                topics.push(rng.below(TOPICS));
            }
            topics
        })
        .collect();
    // (publisher name, n, topic), in each publisher's send order.
    let mut sends: Vec<(String, u64, usize)> = Vec::new();
    for (p, topics) in publisher_topics.iter().enumerate() {
        for n in 0..PER_PUBLISHER {
            sends.push((format!("ws{p}"), n, topics[rng.below(topics.len())]));
        }
    }
    for n in 0..HTTP_PUBLISHES {
        sends.push(("http".to_owned(), n, rng.below(TOPICS)));
    }
    let mut subscribers: HashMap<usize, usize> = HashMap::new();
    for topics in member_topics.iter().chain(&publisher_topics) {
        for &t in topics {
            *subscribers.entry(t).or_default() += 1;
        }
    }
    // Everyone who is on a topic gets every message sent to it.
    let expected_for = |topics: &[usize]| -> Vec<Delivery> {
        sends
            .iter()
            .filter(|(_, _, t)| topics.contains(t))
            .map(|(p, n, t)| (topic(*t), p.clone(), *n))
            .collect()
    };

    // Connect and join (pipelined: all joins out, then all replies).
    let mut members = Vec::new();
    for topics in &member_topics {
        let mut client = node.connect().await;
        let mut refs = Vec::new();
        for &t in topics {
            refs.push(client.send_join(&topic(t), json!({})).await);
        }
        for r in refs {
            assert_eq!(client.reply_to(&r).await.status(), "ok");
        }
        members.push(client);
    }
    let mut publishers = Vec::new();
    for topics in &publisher_topics {
        let mut client = node.connect().await;
        for &t in topics {
            client.join_ok(&topic(t)).await;
        }
        publishers.push(client);
    }
    let total_subscriptions: usize = subscribers.values().sum();
    node.wait_metric("switchboard_subscriptions", "== planned", |v| {
        v == total_subscriptions as f64
    })
    .await;

    // Subscribers collect in their own tasks.
    let limit = Duration::from_secs(90);
    let linger = Duration::from_millis(500);
    let mut readers = Vec::new();
    for (client, topics) in members.into_iter().zip(&member_topics) {
        let expected = expected_for(topics).len();
        let mut client: Client = client;
        readers.push(tokio::spawn(async move {
            collect(client.stream(), expected, 0, limit, linger).await
        }));
    }

    // WebSocket publishers push pipelined, half with a ref (and so an ok reply), half without,
    // while reading their own deliveries.
    let mut pushers = Vec::new();
    for (p, (client, topics)) in publishers.into_iter().zip(&publisher_topics).enumerate() {
        let name = format!("ws{p}");
        let mine: Vec<(u64, usize)> = sends
            .iter()
            .filter(|(who, _, _)| *who == name)
            .map(|(_, n, t)| (*n, *t))
            .collect();
        let join_refs: HashMap<usize, String> = topics
            .iter()
            .map(|&t| (t, client.join_ref(&topic(t)).expect("joined").to_owned()))
            .collect();
        let expected = expected_for(topics).len();
        let with_ref = mine.iter().filter(|(n, _)| n % 2 == 0).count();
        let mut client: Client = client;
        pushers.push(tokio::spawn(async move {
            let (mut sink, mut stream) = client.stream().split();
            let send = async {
                for (n, t) in mine {
                    let msg_ref = (n % 2 == 0).then(|| format!("push-{n}"));
                    let frame =
                        json!([join_refs[&t], msg_ref, format!("t:{t}"), "m", {"p": name, "n": n}]);
                    sink.send(Message::text(frame.to_string()))
                        .await
                        .expect("publisher send");
                }
            };
            let ((), got) = tokio::join!(
                send,
                collect(&mut stream, expected, with_ref, limit, linger)
            );
            (got, with_ref)
        }));
    }

    // And an HTTP publisher, whose answers say how many sockets each message was queued for.
    for (p, n, t) in sends.iter().filter(|(p, _, _)| p == "http") {
        let response =
            http::publish(node.addr(), &topic(*t), Some("m"), &json!({"p": p, "n": n})).await;
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(
            response.json()["recipients"],
            subscribers.get(t).copied().unwrap_or(0),
            "recipients of message {n} on {}",
            topic(*t)
        );
    }

    let mut checked = 0;
    let mut results = Vec::new();
    for reader in readers {
        results.push(reader.await.expect("reader task"));
    }
    for (i, got) in results.into_iter().enumerate() {
        check_deliveries(
            &format!("member {i}"),
            &got,
            &expected_for(&member_topics[i]),
        );
        checked += got.deliveries.len();
    }
    for (p, pusher) in pushers.into_iter().enumerate() {
        let (got, with_ref) = pusher.await.expect("publisher task");
        check_deliveries(
            &format!("publisher ws{p}"),
            &got,
            &expected_for(&publisher_topics[p]),
        );
        assert_eq!(
            got.ok_replies, with_ref,
            "publisher ws{p}: one ok reply per push with a ref"
        );
        checked += got.deliveries.len();
    }
    assert!(
        checked > 10_000,
        "the plan should exercise real fan-out, checked {checked}"
    );
    let publishes = node.metric("switchboard_publishes_total").await;
    assert_eq!(publishes, sends.len() as f64);
}

/// Same deliveries (no loss, no duplicates), and each publisher's messages on each topic in
/// the order it sent them.
fn check_deliveries(who: &str, got: &Collected, expected: &[Delivery]) {
    assert!(
        got.other.is_empty(),
        "{who} got unexpected frames: {:?}",
        got.other
    );
    let mut got_sorted = got.deliveries.clone();
    got_sorted.sort();
    let mut expected_sorted = expected.to_vec();
    expected_sorted.sort();
    if got_sorted != expected_sorted {
        let count = |list: &[Delivery]| {
            let mut counts: BTreeMap<Delivery, i64> = BTreeMap::new();
            for d in list {
                *counts.entry(d.clone()).or_default() += 1;
            }
            counts
        };
        let (g, e) = (count(&got_sorted), count(&expected_sorted));
        let missing: Vec<_> = e
            .iter()
            .filter(|(d, n)| g.get(*d) < Some(n))
            .take(10)
            .collect();
        let extra: Vec<_> = g
            .iter()
            .filter(|(d, n)| e.get(*d) < Some(n))
            .take(10)
            .collect();
        panic!(
            "{who}: got {} deliveries, expected {}; missing (first 10) {missing:?}; extra or \
             duplicated (first 10) {extra:?}",
            got.deliveries.len(),
            expected.len()
        );
    }
    let mut order: HashMap<(&str, &str), Vec<u64>> = HashMap::new();
    for (topic, publisher, n) in &got.deliveries {
        order.entry((topic, publisher)).or_default().push(*n);
    }
    for ((topic, publisher), ns) in order {
        assert!(
            ns.windows(2).all(|w| w[0] < w[1]),
            "{who}: {publisher}'s messages on {topic} arrived out of order: {ns:?}"
        );
    }
}

/// The sequence number in a flood broadcast, found without parsing the whole frame.
fn flood_seq(text: &str) -> Option<u64> {
    let at = text.find("\"seq\":")? + "\"seq\":".len();
    let digits: String = text[at..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Reads flood broadcasts, checking they arrive gap-free in order, and reports progress.
async fn read_flood(
    who: &str,
    stream: &mut (impl Stream<Item = Result<Message, tungstenite::Error>> + Unpin),
    total: u64,
    progress: watch::Sender<u64>,
) {
    let mut next = 0;
    while next < total {
        let message = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .unwrap_or_else(|_| panic!("{who}: no flood message {next} within 30 s"));
        match message {
            Some(Ok(Message::Text(text))) => {
                let text = text.as_str();
                if !text.contains("\"flood\"") {
                    continue;
                }
                let seq = flood_seq(text)
                    .unwrap_or_else(|| panic!("{who}: no seq in {}", &text[..text.len().min(200)]));
                assert_eq!(
                    seq, next,
                    "{who}: flood message {next} missing or out of order"
                );
                next += 1;
                if next % 4 == 0 || next == total {
                    progress.send_replace(next);
                }
            }
            Some(Ok(Message::Close(frame))) => panic!("{who} was closed: {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("{who}: connection failed at message {next}: {e}"),
            None => panic!("{who}: connection ended at message {next}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_consumer_is_cut_off_with_3008_while_others_get_everything_and_memory_stays_flat() {
    const MESSAGE_BYTES: usize = 4096;
    const TOTAL_BYTES: usize = 200 * 1024 * 1024;
    const MESSAGES: u64 = (TOTAL_BYTES / MESSAGE_BYTES) as u64;
    // The pusher stays at most this many messages ahead of the slower fast reader, so the
    // fast readers' queues stay within half the send budget.
    const WINDOW: u64 = 32;

    // The publisher floods from one socket: lift the per-socket push rate limit.
    let node = Node::start(&[
        "--send-buffer-bytes",
        "262144",
        "--idle-timeout",
        "10m",
        "--push-rate",
        "1000000",
        "--push-burst",
        "1000000",
    ]);
    let url = node.ws_url();
    // Small receive buffer: the kernel absorbs little once it stops reading.
    let mut slow = Client::connect_with_recv_buffer(&url, 4096).await;
    slow.join_ok("flood").await;
    let mut fast = node.connect().await;
    fast.join_ok("flood").await;
    let mut pusher = node.connect().await;
    pusher.join_ok("flood").await;
    let join_ref = pusher.join_ref("flood").expect("joined").to_owned();
    let rss_before = node.rss_kib();

    let (fast_tx, fast_rx) = watch::channel(0_u64);
    let (own_tx, own_rx) = watch::channel(0_u64);
    let pad = "x".repeat(MESSAGE_BYTES - 64);
    let (mut sink, mut own_stream) = pusher.stream().split();

    let push = async {
        let mut fast_rx = fast_rx;
        let mut own_rx = own_rx;
        for seq in 0..MESSAGES {
            if seq >= WINDOW {
                let behind = seq - WINDOW;
                fast_rx
                    .wait_for(|&v| v > behind)
                    .await
                    .expect("fast reader alive");
                own_rx
                    .wait_for(|&v| v > behind)
                    .await
                    .expect("own reader alive");
            }
            let frame = format!(
                "[\"{join_ref}\",null,\"flood\",\"m\",{{\"seq\":{seq},\"pad\":\"{pad}\"}}]"
            );
            sink.send(Message::text(frame)).await.expect("pusher send");
        }
    };
    let mut peak_rss = rss_before;
    let sample = async {
        loop {
            peak_rss = peak_rss.max(node.rss_kib());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let work = async {
        tokio::join!(
            push,
            read_flood("fast subscriber", fast.stream(), MESSAGES, fast_tx),
            read_flood("publisher", &mut own_stream, MESSAGES, own_tx),
        )
    };
    tokio::select! {
        _ = work => {}
        _ = sample => unreachable!("the sampler never ends"),
    }

    let grown_mib = peak_rss.saturating_sub(rss_before) / 1024;
    assert!(
        grown_mib < 100,
        "node RSS grew by {grown_mib} MiB (from {rss_before} KiB to a peak of {peak_rss} KiB) \
         while {} MiB were published to a subscriber that does not read",
        TOTAL_BYTES / 1024 / 1024
    );
    node.wait_metric("switchboard_slow_consumer_disconnects_total", "== 1", |v| {
        v == 1.0
    })
    .await;
    node.wait_metric(
        "switchboard_connections",
        "== 2 (the slow one is gone)",
        |v| v == 2.0,
    )
    .await;

    // The slow consumer reads at last: it finds what the kernel buffered, then either the
    // 3008 close frame or, if the node already shut the TCP connection down (the contract
    // allows it for a socket that is not reading), the end of the connection. Any other
    // close code is wrong.
    let outcome = slow.wait_end(Duration::from_secs(60)).await;
    // One line of context for whoever reads the test log: how the cut-off looked.
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "slow consumer: RSS {rss_before} KiB -> peak {peak_rss} KiB over {} MiB published; \
             it saw: {outcome}",
            TOTAL_BYTES / 1024 / 1024
        );
    }
    match outcome {
        CloseOutcome::Close(code, reason) => {
            assert_eq!((code, reason.as_str()), (3008, "slow consumer"));
        }
        CloseOutcome::Ended(_) => {}
        CloseOutcome::CloseWithoutCode => panic!("slow consumer closed without a code"),
    }
    // The others are still served.
    assert_eq!(fast.heartbeat().await.status(), "ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_that_reads_too_slowly_gets_close_3008_slow_consumer() {
    const MESSAGE_BYTES: usize = 4096;
    const MESSAGES: u64 = 30_000;
    // 128 KiB ahead of its own reader at most: the publisher's queue stays within half the
    // 256 KiB budget, so only the slow reader passes it.
    const WINDOW: u64 = 32;

    // The publisher floods from one socket: lift the per-socket push rate limit.
    let node = Node::start(&[
        "--send-buffer-bytes",
        "262144",
        "--idle-timeout",
        "10m",
        "--push-rate",
        "1000000",
        "--push-burst",
        "1000000",
    ]);
    let mut sluggish = Client::connect_with_recv_buffer(&node.ws_url(), 4096).await;
    sluggish.join_ok("flood").await;
    let mut pusher = node.connect().await;
    pusher.join_ok("flood").await;
    let join_ref = pusher.join_ref("flood").expect("joined").to_owned();

    let (own_tx, own_rx) = watch::channel(0_u64);
    let pad = "x".repeat(MESSAGE_BYTES - 64);
    let (mut sink, mut own_stream) = pusher.stream().split();
    let push = async {
        let mut own_rx = own_rx;
        for seq in 0..MESSAGES {
            if seq >= WINDOW {
                let behind = seq - WINDOW;
                own_rx
                    .wait_for(|&v| v > behind)
                    .await
                    .expect("own reader alive");
            }
            let frame = format!(
                "[\"{join_ref}\",null,\"flood\",\"m\",{{\"seq\":{seq},\"pad\":\"{pad}\"}}]"
            );
            sink.send(Message::text(frame)).await.expect("pusher send");
        }
    };
    // Keeps reading, one message every 2 ms: far slower than the flood, never stopped.
    let crawl = async {
        let mut read = 0_u64;
        loop {
            match sluggish.next_incoming(Duration::from_secs(60)).await {
                Some(switchboard_e2e::Incoming::Frame(_)) => read += 1,
                Some(switchboard_e2e::Incoming::Close(close)) => return (close, read),
                other => panic!("after {read} messages the slow reader got {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    let ((), (), (close, read)) = tokio::join!(
        push,
        read_flood("publisher", &mut own_stream, MESSAGES, own_tx),
        crawl
    );

    assert_eq!(
        close,
        Some((3008, "slow consumer".to_owned())),
        "after reading {read} messages"
    );
    assert!(read < MESSAGES, "it was cut off before the end");
    assert_eq!(
        node.metric("switchboard_slow_consumer_disconnects_total")
            .await,
        1.0
    );
}
