//! The recovery merge against a plain model: a client that last saw position `since` joins
//! while a stream of publications goes on; the history is read (through the in-memory
//! [`Ring`]) after subscribing, and the live publications that arrived from the subscription
//! overlap the read. Whatever the timing, trimming, epoch and losses: either every
//! publication after `since` is delivered exactly once, in order, or the client is told it
//! was not recovered and gets only what came live, with no duplicate.

use std::time::Duration;

use proptest::prelude::*;
use switchboard_core::history::recovery::{recover, Publication};
use switchboard_core::history::ring::Ring;
use switchboard_core::history::{Epoch, Position};
use switchboard_core::{Payload, Time};

#[derive(Debug, Clone)]
struct Case {
    /// Publications in the stream by the end.
    total: u64,
    /// How many had been published when the history was read.
    read_at: u64,
    /// The history's capacity.
    capacity: usize,
    /// The client's last offset.
    since: u64,
    /// Whether the client's epoch is the stream's.
    same_epoch: bool,
    /// The subscription started after this many publications (its first live ones may
    /// overlap the read).
    live_from: u64,
    /// A live publication lost on the way (an offset after the read), if any.
    lost: Option<u64>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        1..60_u64,
        1..20_usize,
        any::<bool>(),
        any::<prop::sample::Index>(),
        any::<prop::sample::Index>(),
        any::<prop::sample::Index>(),
        any::<prop::sample::Index>(),
        any::<bool>(),
    )
        .prop_map(
            |(total, capacity, same_epoch, read_at, since, live_from, lost, lose)| {
                let read_at = read_at.index(total as usize + 1) as u64;
                let since = since.index(read_at as usize + 3) as u64;
                let live_from = live_from.index(read_at as usize + 1) as u64;
                let after = total - read_at;
                let lost =
                    (lose && after > 0).then(|| read_at + 1 + lost.index(after as usize) as u64);
                Case {
                    total,
                    read_at,
                    capacity,
                    since,
                    same_epoch,
                    live_from,
                    lost,
                }
            },
        )
}

fn epoch() -> Epoch {
    Epoch::new("now").unwrap()
}

fn publication(offset: u64) -> Publication {
    Publication {
        position: Position::new(offset, epoch()),
        event: "m".into(),
        payload: Payload::from_json(&offset.to_string()).unwrap(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn recovery_is_exact_or_refused(case in case()) {
        // The history as it was when read.
        let mut ring = Ring::new(epoch(), case.capacity, Duration::from_secs(60), Time::ZERO);
        for _ in 0..case.read_at {
            let _ = ring.append("m".into(), Payload::empty_object(), Time::ZERO);
        }
        let since_epoch = if case.same_epoch { epoch() } else { Epoch::new("before").unwrap() };
        let since = Position::new(case.since, since_epoch);
        let read = {
            let raw = ring.read(case.since, usize::MAX);
            // Payloads as the model numbers them.
            let mut read = raw;
            for p in &mut read.publications {
                *p = publication(p.position.offset);
            }
            read
        };
        let live: Vec<Publication> = (case.live_from + 1..=case.total)
            .filter(|offset| Some(*offset) != case.lost)
            .map(publication)
            .collect();
        let recovery = recover(Some(&since), read, live);

        // The model.
        let earliest = (case.read_at + 1).saturating_sub(case.capacity as u64).max(1);
        // A lost live publication shows only when a later one arrives: one lost at the very
        // end of the window looks like one not published yet.
        let hole = case.lost.is_some_and(|lost| lost < case.total);
        let recoverable = case.same_epoch
            && case.since <= case.read_at
            && case.since + 1 >= earliest
            && !hole;
        let expected: Vec<u64> = if recoverable {
            (case.since + 1..=case.total).filter(|o| Some(*o) != case.lost).collect()
        } else {
            (case.read_at + 1..=case.total).filter(|o| Some(*o) != case.lost).collect()
        };
        let got: Vec<u64> = recovery.deliver.iter().map(|p| p.position.offset).collect();
        prop_assert_eq!(recovery.recovered, Some(recoverable));
        prop_assert_eq!(&got, &expected);
        // Each payload is its own publication's.
        for p in &recovery.deliver {
            prop_assert_eq!(p.payload.get(), p.position.offset.to_string());
        }
        let position = expected.last().copied().unwrap_or(case.read_at);
        prop_assert_eq!(recovery.position, Position::new(position, epoch()));
    }
}
