//! Presence at scale: building a topic's `presence_state` and a batched `presence_diff`.
//!
//! Run with `cargo bench -p switchboard-core --bench presence`. The state is built once per
//! change however many sockets join (then copied into each join's frame), and a diff once per
//! batch window however many watchers get it.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use switchboard_core::presence::{Member, Meta, TopicPresence};

fn member(n: usize) -> Member {
    Member {
        key: format!("user-{n}"),
        // About 50 bytes of meta, as a name and a status would be.
        meta: Meta::parse(
            &format!(r#"{{"name":"User number {n}","status":"online"}}"#),
            "meta",
        )
        .expect("valid meta"),
        node: "1f3a9c0e5b7d2468".to_owned(),
        prev: None,
    }
}

fn table(members: usize) -> TopicPresence {
    let mut table = TopicPresence::new();
    for n in 0..members {
        table.track(format!("1f3a9c0e5b7d2468.{n}"), member(n));
    }
    let _ = table.take_diff();
    table
}

fn presence(c: &mut Criterion) {
    let mut group = c.benchmark_group("presence");
    group.sample_size(20);
    for members in [1_000, 10_000] {
        group.throughput(Throughput::Elements(members as u64));
        group.bench_function(format!("state_{members}_members"), |b| {
            b.iter_batched_ref(
                || {
                    let mut table = table(members);
                    // A change since the last state: the next one is built anew.
                    table.track("fresh".into(), member(members));
                    table
                },
                |table| black_box(table.state()),
                BatchSize::LargeInput,
            );
        });
    }
    group.throughput(Throughput::Elements(1_000));
    group.bench_function("diff_of_1000_joins_into_10000_members", |b| {
        b.iter_batched_ref(
            || {
                let mut table = table(10_000);
                for n in 10_000..11_000 {
                    table.track(format!("1f3a9c0e5b7d2468.{n}"), member(n));
                }
                table
            },
            |table| black_box(table.take_diff()),
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

criterion_group!(benches, presence);
criterion_main!(benches);
