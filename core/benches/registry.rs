//! Registry throughput: subscribe/unsubscribe, routing lookups, connect/disconnect.
//!
//! The large fixture holds 1,000,000 subscriptions: 100,000 sessions each joined to 10 of
//! 100,000 topics, so every topic has exactly 10 local subscribers. Lookups walk the topics in
//! a fixed pseudo-random order (not the map's order), as messages from Redis would arrive.
//! One more topic, `broadcast:all`, has 10,000 members, for fan-out and large-topic churn.
//!
//! Targets on one core: at least 10M routing lookups/s and 5M subscribe+unsubscribe ops/s.
//! Run with `cargo bench -p switchboard-core --bench registry`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use switchboard_core::{Registry, SessionId, Subscribed, Topic, Unsubscribed};

const TOPICS: usize = 100_000;
const SESSIONS: usize = 100_000;
const TOPICS_PER_SESSION: usize = 10;
/// Members of the one large topic (a broadcast room), on top of the regular subscriptions.
const LARGE: usize = 10_000;
/// Lookups (or op pairs) per measured iteration, so the loop overhead and `black_box` are
/// amortised and independent lookups can overlap in the CPU.
const BATCH: usize = 1024;
/// Distinct lookup batches cycled through.
const ROUNDS: usize = 64;

/// SplitMix64: a fixed, dependency-free pseudo-random sequence.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The 1M-subscription registry, its sessions and its topics.
struct Fixture {
    registry: Registry,
    sessions: Vec<SessionId>,
    topics: Vec<Topic>,
    large: Topic,
}

fn topic_name(index: usize) -> String {
    format!("auditlog:{index:08x}-e89b-12d3-a456-426614174000")
}

fn fixture() -> Fixture {
    let topics: Vec<Topic> = (0..TOPICS)
        .map(|i| Topic::new(&topic_name(i)).expect("generated topics are valid"))
        .collect();
    let mut registry = Registry::new();
    let sessions: Vec<SessionId> = (0..SESSIONS).map(|_| registry.connect()).collect();
    // Session i joins topics i, i + 10007, i + 2·10007, ... (mod TOPICS): for each k exactly one
    // session lands on each topic, so every topic gets TOPICS_PER_SESSION subscribers.
    for (i, &session) in sessions.iter().enumerate() {
        for k in 0..TOPICS_PER_SESSION {
            let topic = &topics[(i + k * 10_007) % TOPICS];
            let outcome = registry.subscribe(session, topic).expect("under the limit");
            assert_ne!(outcome, Subscribed::Already);
        }
    }
    let large = Topic::new("broadcast:all").expect("valid");
    for &session in &sessions[..LARGE] {
        let _ = registry
            .subscribe(session, &large)
            .expect("under the limit");
    }
    assert_eq!(
        registry.subscription_count(),
        SESSIONS * TOPICS_PER_SESSION + LARGE
    );
    assert_eq!(registry.topic_count(), TOPICS + 1);
    Fixture {
        registry,
        sessions,
        topics,
        large,
    }
}

/// Topic names to look up, in pseudo-random order of topics but laid out one after another in
/// one buffer: a message's topic was just read off the Redis connection, so its bytes are hot
/// in cache, while the registry's entry for it is wherever it is.
struct LookupNames {
    text: String,
    ends: Vec<usize>,
}

impl LookupNames {
    fn new(count: usize, seed: u64) -> Self {
        let mut rng = SplitMix(seed);
        let (mut text, mut ends) = (String::new(), Vec::with_capacity(count));
        for _ in 0..count {
            text.push_str(&topic_name(rng.below(TOPICS)));
            ends.push(text.len());
        }
        Self { text, ends }
    }

    /// The names of lookup round `round` (of `BATCH` names each).
    fn round(&self, round: usize) -> impl Iterator<Item = &str> + '_ {
        let ends = &self.ends[round * BATCH..(round + 1) * BATCH];
        let mut start = if round == 0 {
            0
        } else {
            self.ends[round * BATCH - 1]
        };
        ends.iter().map(move |&end| {
            let name = &self.text[start..end];
            start = end;
            name
        })
    }
}

fn routing(c: &mut Criterion, fixture: &Fixture) {
    let mut group = c.benchmark_group("route_1M_subs_100k_topics");
    group.throughput(Throughput::Elements(BATCH as u64));
    // Many more lookups than one batch, so the registry entries of the last batch are not
    // simply still in cache.
    let names = LookupNames::new(BATCH * ROUNDS, 1);
    let misses: Vec<String> = (0..BATCH).map(|i| format!("nobody:{i}")).collect();
    let registry = &fixture.registry;

    let mut round = 0;
    group.bench_function("for_each_subscriber", |b| {
        b.iter(|| {
            round = (round + 1) % ROUNDS;
            let mut delivered = 0u64;
            for name in names.round(round) {
                registry.for_each_subscriber(name, |id| delivered ^= id.get());
            }
            black_box(delivered)
        });
    });
    group.bench_function("subscribers_iter", |b| {
        b.iter(|| {
            round = (round + 1) % ROUNDS;
            let mut delivered = 0u64;
            for name in names.round(round) {
                for id in registry.subscribers(name) {
                    delivered ^= id.get();
                }
            }
            black_box(delivered)
        });
    });
    group.bench_function("subscribers_len", |b| {
        b.iter(|| {
            round = (round + 1) % ROUNDS;
            let mut total = 0;
            for name in names.round(round) {
                total += registry.subscribers(black_box(name)).len();
            }
            black_box(total)
        });
    });
    group.bench_function("miss", |b| {
        b.iter(|| {
            let mut total = 0;
            for name in &misses {
                total += registry.subscriber_count(black_box(name));
            }
            black_box(total)
        });
    });
    group.finish();

    let mut group = c.benchmark_group("fan_out_10k");
    group.throughput(Throughput::Elements(LARGE as u64));
    group.bench_function("for_each_subscriber", |b| {
        b.iter(|| {
            let mut delivered = 0u64;
            registry.for_each_subscriber(black_box(fixture.large.as_str()), |id| {
                delivered ^= id.get();
            });
            black_box(delivered)
        });
    });
    group.finish();
}

fn subscribe_unsubscribe(c: &mut Criterion, fixture: &mut Fixture) {
    let mut group = c.benchmark_group("subscribe_unsubscribe");
    // Each pair is two operations.
    group.throughput(Throughput::Elements(2 * BATCH as u64));

    // Pseudo-random (session, existing topic) pairs the session does not hold yet, so each
    // subscribe is a Joined and each unsubscribe a Left: the topic never changes existence.
    let mut rng = SplitMix(2);
    let pairs: Vec<(SessionId, Topic)> = (0..BATCH)
        .map(|_| loop {
            let session = fixture.sessions[rng.below(SESSIONS)];
            let topic = &fixture.topics[rng.below(TOPICS)];
            if !fixture.registry.is_subscribed(session, topic.as_str()) {
                break (session, topic.clone());
            }
        })
        .collect();
    let registry = &mut fixture.registry;
    group.bench_function("existing_topic_1M_subs", |b| {
        b.iter(|| {
            for (session, topic) in &pairs {
                let joined = registry.subscribe(*session, topic);
                debug_assert_eq!(joined, Ok(Subscribed::Joined));
                let left = registry.unsubscribe(*session, topic.as_str());
                debug_assert_eq!(left, Unsubscribed::Left);
                let _ = black_box((joined, left));
            }
        });
    });

    // The same pair over and over on a small registry: the hot-cache ceiling.
    let mut small = Registry::new();
    let (a, b_) = (small.connect(), small.connect());
    let topic = Topic::new("room:lobby").expect("valid");
    let _ = small.subscribe(a, &topic).expect("connected");
    group.bench_function("existing_topic_hot", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                let joined = small.subscribe(b_, black_box(&topic));
                let left = small.unsubscribe(b_, black_box(topic.as_str()));
                let _ = black_box((joined, left));
            }
        });
    });

    // Joining and leaving the 10,000-member topic.
    let outsider = fixture.sessions[LARGE];
    let large = fixture.large.clone();
    group.bench_function("large_topic_10k_members", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                let joined = registry.subscribe(outsider, &large);
                debug_assert_eq!(joined, Ok(Subscribed::Joined));
                let left = registry.unsubscribe(outsider, large.as_str());
                let _ = black_box((joined, left));
            }
        });
    });

    // First and last subscriber: the topic is created and removed every time.
    let fresh: Vec<Topic> = (0..BATCH)
        .map(|i| Topic::new(&format!("fresh:{i}")).expect("valid"))
        .collect();
    group.bench_function("new_topic_1M_subs", |b| {
        let session = pairs[0].0;
        b.iter(|| {
            for topic in &fresh {
                let first = registry.subscribe(session, topic);
                debug_assert_eq!(first, Ok(Subscribed::FirstLocal));
                let last = registry.unsubscribe(session, topic.as_str());
                debug_assert_eq!(last, Unsubscribed::LastLocal);
                let _ = black_box((first, last));
            }
        });
    });
    group.finish();
}

fn connect_disconnect(c: &mut Criterion, fixture: &mut Fixture) {
    let mut group = c.benchmark_group("connect_disconnect");
    group.throughput(Throughput::Elements(BATCH as u64));
    let registry = &mut fixture.registry;
    group.bench_function("no_topics_1M_subs", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                let id = registry.connect();
                let _ = black_box(registry.disconnect(black_box(id)));
            }
        });
    });
    // A socket's whole life: connect, join 10 existing topics, close (leaves them all).
    let topics: Vec<Topic> = fixture.topics[..TOPICS_PER_SESSION].to_vec();
    group.throughput(Throughput::Elements(1));
    group.bench_function("with_10_topics_1M_subs", |b| {
        b.iter(|| {
            let id = registry.connect();
            for topic in &topics {
                let _ = registry.subscribe(id, topic).expect("under the limit");
            }
            black_box(registry.disconnect(id))
        });
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    let mut fixture = fixture();
    routing(c, &fixture);
    subscribe_unsubscribe(c, &mut fixture);
    connect_disconnect(c, &mut fixture);
}

criterion_group!(registry_benches, benches);
criterion_main!(registry_benches);
