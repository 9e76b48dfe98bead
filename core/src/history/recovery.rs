//! Recovery: what a joining client that names the last position it saw must get, merged from
//! a read of the topic's history and the live publications that arrived during the read.
//!
//! The driver subscribes the client's topic first (so nothing published from then on can be
//! missed), buffers the live publications meanwhile, reads the history after the client's
//! position, and hands both to [`recover`]: the result is either every missed publication in
//! order, each exactly once, followed by the live ones — or "not recovered" and only what
//! arrived live. All or nothing: a client is never handed a stream with a hole in it.

use super::{Epoch, Position};
use crate::Payload;

/// One publication of a topic's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// Its place in the stream.
    pub position: Position,
    /// The event name.
    pub event: String,
    /// The message.
    pub payload: Payload,
}

/// A read of a topic's history: the stream's state when read, and its publications after the
/// offset asked for (all of them the history still holds, ascending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRead {
    /// The stream's epoch.
    pub epoch: Epoch,
    /// The latest offset published (0: none yet).
    pub latest: u64,
    /// The first offset the history still holds (`latest + 1` when it holds nothing).
    pub earliest: u64,
    /// The publications after the offset asked for, ascending.
    pub publications: Vec<Publication>,
}

/// What a joining client gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Whether every publication after the client's position follows (`None`: the client
    /// named no position).
    pub recovered: Option<bool>,
    /// What to deliver after the join's reply, in order: the missed publications (when
    /// recovered) and then those that arrived live, each once.
    pub deliver: Vec<Publication>,
    /// The stream position the reply reports: the last publication delivered, or the stream's
    /// latest when nothing is.
    pub position: Position,
}

/// Merges `read` (the history after `since`, read after subscribing) and `live` (what arrived
/// from the subscription meanwhile, in arrival order) for a client that last saw `since`.
#[must_use]
pub fn recover(since: Option<&Position>, read: HistoryRead, live: Vec<Publication>) -> Recovery {
    let epoch = read.epoch.clone();
    // Live publications of this stream after what the read saw, each once, in order; and
    // whether they continue the read without a hole. Those of another epoch (the stream was
    // lost meanwhile) are delivered but break continuity.
    let mut after = Vec::with_capacity(live.len());
    let mut last = read.latest;
    let mut continuous = true;
    for publication in live {
        if publication.position.epoch != epoch {
            continuous = false;
            after.push(publication);
            continue;
        }
        if publication.position.offset <= last {
            continue;
        }
        if publication.position.offset != last + 1 {
            continuous = false;
        }
        last = publication.position.offset;
        after.push(publication);
    }
    let recovered = since.map(|since| {
        let from = since.offset + 1;
        since.epoch == epoch
            && since.offset <= read.latest
            && from >= read.earliest
            && continuous
            && read
                .publications
                .iter()
                .map(|p| (p.position.epoch == epoch).then_some(p.position.offset))
                .eq((from..=read.latest).map(Some))
    });
    let mut deliver = Vec::new();
    if recovered == Some(true) {
        deliver.extend(read.publications);
    }
    deliver.extend(after);
    let position = deliver
        .last()
        .map_or_else(|| Position::new(read.latest, epoch), |p| p.position.clone());
    Recovery {
        recovered,
        deliver,
        position,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch() -> Epoch {
        Epoch::new("e1").unwrap()
    }

    fn publication(offset: u64) -> Publication {
        Publication {
            position: Position::new(offset, epoch()),
            event: "m".into(),
            payload: Payload::from_json(&offset.to_string()).unwrap(),
        }
    }

    fn read(latest: u64, earliest: u64, from: u64) -> HistoryRead {
        HistoryRead {
            epoch: epoch(),
            latest,
            earliest,
            publications: (from.max(earliest)..=latest).map(publication).collect(),
        }
    }

    fn offsets(recovery: &Recovery) -> Vec<u64> {
        recovery.deliver.iter().map(|p| p.position.offset).collect()
    }

    #[test]
    fn missed_then_live_each_once_in_order() {
        let since = Position::new(3, epoch());
        let live = vec![publication(5), publication(6), publication(7)];
        let recovery = recover(Some(&since), read(6, 1, 4), live);
        assert_eq!(recovery.recovered, Some(true));
        assert_eq!(offsets(&recovery), vec![4, 5, 6, 7]);
        assert_eq!(recovery.position, Position::new(7, epoch()));
    }

    #[test]
    fn a_trimmed_history_an_epoch_change_or_a_future_offset_is_not_recovered() {
        let live = vec![publication(11)];
        let trimmed = recover(
            Some(&Position::new(3, epoch())),
            read(10, 6, 4),
            live.clone(),
        );
        assert_eq!(trimmed.recovered, Some(false));
        assert_eq!(offsets(&trimmed), vec![11], "live ones still arrive");
        let other = Position::new(3, Epoch::new("e0").unwrap());
        assert_eq!(
            recover(Some(&other), read(10, 1, 4), live.clone()).recovered,
            Some(false)
        );
        let future = Position::new(12, epoch());
        assert_eq!(
            recover(Some(&future), read(10, 1, 13), live).recovered,
            Some(false)
        );
    }

    #[test]
    fn a_hole_in_the_live_stream_is_not_recovered() {
        let since = Position::new(3, epoch());
        let live = vec![publication(7), publication(9)];
        let recovery = recover(Some(&since), read(6, 1, 4), live);
        assert_eq!(recovery.recovered, Some(false));
        assert_eq!(offsets(&recovery), vec![7, 9]);
    }

    #[test]
    fn without_a_position_only_live_ones_after_the_read_are_delivered() {
        let live = vec![publication(5), publication(6), publication(7)];
        let recovery = recover(None, read(6, 1, 7), live);
        assert_eq!(recovery.recovered, None);
        assert_eq!(offsets(&recovery), vec![7]);
        let empty = recover(None, read(0, 1, 1), Vec::new());
        assert_eq!(empty.position.to_string(), "0:e1");
    }

    #[test]
    fn nothing_missed_is_recovered_with_nothing() {
        let since = Position::new(6, epoch());
        let recovery = recover(Some(&since), read(6, 1, 7), Vec::new());
        assert_eq!(recovery.recovered, Some(true));
        assert!(recovery.deliver.is_empty());
        assert_eq!(recovery.position, since);
    }
}
