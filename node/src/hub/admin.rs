//! What the inspector (`/admin`) asks the hub: one page of the topic list ([`ListTopics`]) and
//! what one topic keeps ([`InspectTopic`]). Both are read-only.
//!
//! The topic list is sorted by local subscribers (most first, then by name, so pages are
//! stable), filtered by a substring, and cut into pages. A page costs one pass over the
//! registry's topics plus a partial selection ([`page`]): only the page itself is sorted, so
//! any page of 100,000 topics costs the actor that does all the routing about 4 ms in a
//! release build (measured by the last test below; docs/node.md quotes it).

use std::cmp::Ordering;

use actix::prelude::*;
use switchboard_core::history::Retention;
use switchboard_core::{Registry, Topic};

use super::Hub;

/// The most rows one [`ListTopics`] answers with.
pub const MAX_PAGE: usize = 500;

/// One page of the topic list, sorted by local subscribers (most first), then by name.
#[derive(Debug, Message)]
#[rtype(result = "TopicPage")]
pub struct ListTopics {
    /// Only topics whose name contains this (all when empty).
    pub filter: String,
    /// Rows of the sorted (and filtered) list to skip.
    pub offset: usize,
    /// Rows wanted (at most [`MAX_PAGE`]).
    pub limit: usize,
}

/// The answer to a [`ListTopics`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPage {
    /// Topics with at least one local subscriber.
    pub total: usize,
    /// Of those, the ones the filter keeps.
    pub matched: usize,
    /// The page: each topic with its local subscribers.
    pub rows: Vec<(Topic, usize)>,
}

/// A row of the list being paged: subscribers, the first 16 bytes of the name as a number
/// (big-endian, zero-padded: ordered as the names are), the topic.
type Row<'a> = (usize, u128, &'a Topic);

/// The first 16 bytes of `name`, as a number that orders as the names do.
fn prefix(name: &str) -> u128 {
    let mut bytes = [0; 16];
    let len = name.len().min(16);
    bytes[..len].copy_from_slice(&name.as_bytes()[..len]);
    u128::from_be_bytes(bytes)
}

/// The most subscribers first, then the names in order: a total order, so a page boundary
/// never moves between requests when nothing changed. Most topics tie on their subscriber
/// count (often 1); the names' prefixes settle nearly every tie without reading the names
/// again (a cache miss each).
fn busiest_first(a: &Row<'_>, b: &Row<'_>) -> Ordering {
    b.0.cmp(&a.0)
        .then_with(|| a.1.cmp(&b.1))
        .then_with(|| a.2.cmp(b.2))
}

/// The rows `offset..offset + limit` of `topics` (topic, subscribers) sorted by
/// [`busiest_first`], keeping only names that contain `filter`; also how many matched.
///
/// Nothing but the page itself is sorted: two linear selections put the rows before the page
/// in front of it and the rows after it behind, so a page costs O(n + limit log limit) for n
/// topics, wherever it is in the list.
pub fn page<'a>(
    topics: impl Iterator<Item = (&'a Topic, usize)>,
    filter: &str,
    offset: usize,
    limit: usize,
) -> (usize, Vec<(Topic, usize)>) {
    let mut rows: Vec<Row<'a>> = Vec::with_capacity(topics.size_hint().1.unwrap_or(0));
    rows.extend(
        topics
            .filter(|(topic, _)| contains(topic.as_str(), filter))
            .map(|(topic, count)| (count, prefix(topic.as_str()), topic)),
    );
    let matched = rows.len();
    let end = offset.saturating_add(limit.min(MAX_PAGE)).min(matched);
    if offset >= end {
        return (matched, Vec::new());
    }
    if end < matched {
        // The rows up to the page's end, in no order, are now before index `end`.
        rows.select_nth_unstable_by(end, busiest_first);
    }
    let upto_end = &mut rows[..end];
    if offset > 0 {
        // And the rows before the page are before index `offset`.
        upto_end.select_nth_unstable_by(offset, busiest_first);
    }
    let window = &mut upto_end[offset..];
    window.sort_unstable_by(busiest_first);
    let page = window
        .iter()
        .map(|&(count, _, topic)| (topic.clone(), count))
        .collect();
    (matched, page)
}

/// Whether `name` contains `filter`. Topics are short: comparing at each place the first byte
/// matches is several times faster here than `str::contains`, which prepares a searcher for
/// every call.
fn contains(name: &str, filter: &str) -> bool {
    let (name, filter) = (name.as_bytes(), filter.as_bytes());
    let Some((&first, rest)) = filter.split_first() else {
        return true;
    };
    if name.len() < filter.len() {
        return false;
    }
    name[..=name.len() - filter.len()]
        .iter()
        .enumerate()
        .any(|(at, &byte)| byte == first && name[at + 1..].starts_with(rest))
}

impl Handler<ListTopics> for Hub {
    type Result = MessageResult<ListTopics>;

    fn handle(&mut self, msg: ListTopics, _: &mut Self::Context) -> Self::Result {
        MessageResult(list(&self.registry, &msg))
    }
}

/// Answers `msg` from `registry`.
fn list(registry: &Registry, msg: &ListTopics) -> TopicPage {
    let (matched, rows) = page(registry.topic_counts(), &msg.filter, msg.offset, msg.limit);
    TopicPage {
        total: registry.topic_count(),
        matched,
        rows,
    }
}

/// What one topic has on this node, for the inspector's topic view.
#[derive(Debug, Message)]
#[rtype(result = "TopicDetail")]
pub struct InspectTopic {
    /// The topic.
    pub topic: Topic,
}

/// The answer to an [`InspectTopic`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicDetail {
    /// Local subscribers (sockets and inspector tails).
    pub subscribers: usize,
    /// The topic's history retention, when it keeps history.
    pub history: Option<Retention>,
    /// Whether the topic tracks presence.
    pub presence: bool,
}

impl Handler<InspectTopic> for Hub {
    type Result = MessageResult<InspectTopic>;

    fn handle(&mut self, msg: InspectTopic, _: &mut Self::Context) -> Self::Result {
        MessageResult(TopicDetail {
            subscribers: self.registry.subscriber_count(msg.topic.as_str()),
            history: self.histories.retention(&msg.topic),
            presence: self.presences.rules().applies(&msg.topic),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn topics(counts: &[(&str, usize)]) -> Vec<(Topic, usize)> {
        counts
            .iter()
            .map(|&(name, count)| (Topic::new(name).unwrap(), count))
            .collect()
    }

    fn names(rows: &[(Topic, usize)]) -> Vec<String> {
        rows.iter()
            .map(|(topic, count)| format!("{topic}={count}"))
            .collect()
    }

    fn of(all: &[(Topic, usize)]) -> impl Iterator<Item = (&Topic, usize)> + '_ {
        all.iter().map(|(topic, count)| (topic, *count))
    }

    #[test]
    fn pages_are_sorted_by_subscribers_then_name_and_filtered() {
        let all = topics(&[("b:1", 2), ("a:1", 2), ("c:1", 9), ("a:2", 1), ("d:1", 5)]);
        let (matched, rows) = page(of(&all), "", 0, 2);
        assert_eq!(matched, 5);
        assert_eq!(names(&rows), ["c:1=9", "d:1=5"]);
        let (_, rows) = page(of(&all), "", 2, 2);
        assert_eq!(names(&rows), ["a:1=2", "b:1=2"], "ties in name order");
        let (_, rows) = page(of(&all), "", 4, 2);
        assert_eq!(names(&rows), ["a:2=1"]);
        assert!(page(of(&all), "", 5, 2).1.is_empty());
        assert!(page(of(&all), "", usize::MAX, usize::MAX).1.is_empty());
        let (matched, rows) = page(of(&all), "a:", 0, 10);
        assert_eq!(matched, 2);
        assert_eq!(names(&rows), ["a:1=2", "a:2=1"]);
    }

    #[test]
    fn every_page_together_is_the_whole_sorted_list() {
        let all: Vec<(Topic, usize)> = (0..1000)
            .map(|i| (Topic::new(&format!("t:{i}")).unwrap(), (i * 7919) % 13))
            .collect();
        let mut expected: Vec<(usize, &Topic)> = all.iter().map(|(t, c)| (*c, t)).collect();
        expected.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        let mut paged = Vec::new();
        for offset in (0..1000).step_by(37) {
            paged.extend(page(of(&all), "", offset, 37).1);
        }
        let expected: Vec<(Topic, usize)> =
            expected.into_iter().map(|(c, t)| (t.clone(), c)).collect();
        assert_eq!(paged, expected);
    }

    /// A registry of 100,000 topics with 1 to 8 subscribers each (450,000 subscriptions).
    fn big_registry() -> Registry {
        let mut registry = Registry::with_max_topics_per_session(usize::MAX);
        let sessions: Vec<_> = (0..8).map(|_| registry.connect()).collect();
        for i in 0..100_000_usize {
            let topic = Topic::new(&format!("room:{i}")).unwrap();
            for session in &sessions[..1 + (i * 31) % 8] {
                let _ = registry.subscribe(*session, &topic).unwrap();
            }
        }
        registry
    }

    /// The fastest of five runs of `f` (the machine may be busy), and its result.
    fn fastest<T>(mut f: impl FnMut() -> T) -> (Duration, T) {
        let mut best = Duration::MAX;
        let mut result = None;
        for _ in 0..5 {
            let started = Instant::now();
            result = Some(f());
            best = best.min(started.elapsed());
        }
        // unwrap: the loop ran.
        (best, result.unwrap())
    }

    #[test]
    #[allow(clippy::print_stderr)] // The timings are the point: docs/node.md quotes them.
    fn a_page_of_100_000_topics_is_cheap() {
        let registry = big_registry();
        let ask = |filter: &str, offset| ListTopics {
            filter: filter.into(),
            offset,
            limit: 50,
        };
        let (first_took, first) = fastest(|| list(&registry, &ask("", 0)));
        assert_eq!(
            (first.total, first.matched, first.rows.len()),
            (100_000, 100_000, 50)
        );
        assert_eq!(first.rows[0].1, 8);
        let (middle_took, _) = fastest(|| list(&registry, &ask("", 50_000)));
        let (last_took, last) = fastest(|| list(&registry, &ask("", 99_950)));
        assert_eq!(last.rows.len(), 50);
        assert_eq!(last.rows[49].1, 1);
        let (filtered_took, filtered) = fastest(|| list(&registry, &ask("room:99", 0)));
        assert_eq!(filtered.matched, 1111);
        // Debug builds are several times slower than release; this only catches a blow-up
        // (a full sort per page, a lookup or a clone per topic).
        assert!(
            first_took.as_millis() < 500,
            "first page took {first_took:?}"
        );
        eprintln!(
            "100k topics: first page {first_took:?}, middle page {middle_took:?}, \
             last page {last_took:?}, filtered {filtered_took:?}"
        );
    }
}
