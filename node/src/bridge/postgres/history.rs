//! The SQL objects the node installs in the database when a namespace keeps history: two
//! tables and the functions `switchboard_publish` and `switchboard_history`.
//!
//! Producers publish with history from their own transactions:
//! `SELECT switchboard_publish('<topic>', '<payload>'::jsonb [, '<event>'])`. The function
//! gives the publication its position (locking the topic's stream row until the transaction
//! ends, so offsets follow commit order), stores it, trims the topic's history to its size,
//! and notifies it: a rolled-back transaction leaves neither history nor delivery, a
//! committed one both. A position is a promise that the publication stays in the history, so
//! a transaction that records one commits durably: `switchboard_publish` raises
//! `synchronous_commit` from `off` (the node's publishing connection runs with it, see
//! [`super`]) to `on` for that transaction. Otherwise a crash of the database loses the last
//! commits already answered, and the stream's offsets count up again from before them in the
//! same epoch: new publications at positions clients already saw, recovered as if nothing
//! were missing. The functions carry the node's channel prefix and history rules, so
//! every node sharing the database must be configured alike (the last one to connect
//! installs its text).

use std::fmt::Write as _;

use switchboard_core::history::recovery::{HistoryRead, Publication};
use switchboard_core::history::{Epoch, HistoryRules, Position};
use switchboard_core::Payload;

/// A SQL string literal for `text` (single quotes doubled; channel prefixes and namespaces
/// never hold NUL: topics have no control characters).
fn sql_string(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The statements that create (or update) the history tables and functions. They use
/// `switchboard_channel`, and run after it in the [one install transaction](super::install_sql).
#[must_use]
pub fn install_sql(prefix: &str, rules: &HistoryRules) -> String {
    let mut rows = String::new();
    let mut fallback = "NULL::bigint, NULL::interval".to_owned();
    for (namespace, keep) in rules.iter() {
        let ttl = keep.ttl.as_secs().max(1);
        if namespace == "*" {
            fallback = format!("{}::bigint, interval '{ttl} seconds'", keep.size);
        } else {
            if !rows.is_empty() {
                rows.push_str(", ");
            }
            // Writing to a String cannot fail.
            let _ = write!(
                rows,
                "({}, {}::bigint, interval '{ttl} seconds')",
                sql_string(namespace),
                keep.size
            );
        }
    }
    if rows.is_empty() {
        rows.push_str("(NULL, NULL::bigint, NULL::interval)");
    }
    TEMPLATE
        .replace("@PREFIX@", &sql_string(prefix))
        .replace("@ROWS@", &rows)
        .replace("@FALLBACK@", &fallback)
}

/// Deletes the history of streams that have been quiet for longer than their TTL (their next
/// publication starts a new epoch anyway).
pub const CLEANUP_SQL: &str = "DELETE FROM switchboard_history h USING switchboard_streams s \
    WHERE h.channel = s.channel AND s.touched < now() - (SELECT ttl FROM switchboard_retention(s.topic))";

const TEMPLATE: &str = r#"
CREATE TABLE IF NOT EXISTS switchboard_streams (
  channel text PRIMARY KEY,
  topic text NOT NULL,
  "offset" bigint NOT NULL,
  epoch text NOT NULL,
  touched timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS switchboard_history (
  channel text NOT NULL,
  "offset" bigint NOT NULL,
  event text NOT NULL,
  payload jsonb NOT NULL,
  PRIMARY KEY (channel, "offset")
);
CREATE OR REPLACE FUNCTION switchboard_retention(topic text, OUT size bigint, OUT ttl interval)
LANGUAGE sql STABLE AS $f$
  SELECT size, ttl FROM (
    SELECT r.size, r.ttl, 0 AS rank FROM (VALUES @ROWS@) AS r(namespace, size, ttl)
      WHERE r.namespace = split_part(topic, ':', 1)
    UNION ALL SELECT @FALLBACK@, 1
  ) AS rules WHERE size IS NOT NULL ORDER BY rank LIMIT 1
$f$;
CREATE OR REPLACE FUNCTION switchboard_check(topic text, event text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $f$
BEGIN
  IF topic IS NULL OR topic = '' OR octet_length(topic) > 255 OR topic ~ '[[:cntrl:]]'
     OR left(topic, 2) = '__' THEN
    RAISE EXCEPTION 'switchboard: invalid topic %', quote_literal(coalesce(topic, 'NULL'));
  END IF;
  IF event IS NULL OR event = '' OR left(event, 4) = 'phx_' THEN
    RAISE EXCEPTION 'switchboard: the event must be non-empty and not a phx_ event';
  END IF;
END
$f$;
CREATE OR REPLACE FUNCTION switchboard_publish(topic text, payload jsonb, event text DEFAULT 'message')
RETURNS text LANGUAGE plpgsql AS $f$
DECLARE
  ch text;
  keep record;
  stream record;
  meta text;
  pos text;
BEGIN
  PERFORM switchboard_check(topic, event);
  ch := switchboard_channel(@PREFIX@ || topic);
  SELECT * INTO keep FROM switchboard_retention(topic);
  meta := '"event":' || to_json(event)::text;
  IF keep.size IS NULL THEN
    PERFORM pg_notify(ch, '{"switchboard":{' || meta || '},"payload":' || payload::text || '}');
    RETURN NULL;
  END IF;
  IF current_setting('synchronous_commit') = 'off' THEN
    PERFORM set_config('synchronous_commit', 'on', true);
  END IF;
  INSERT INTO switchboard_streams AS s (channel, topic, "offset", epoch, touched)
    VALUES (ch, topic, 1, substr(md5(random()::text || clock_timestamp()::text), 1, 12), now())
  ON CONFLICT (channel) DO UPDATE SET
    "offset" = CASE WHEN s.touched < now() - keep.ttl THEN 1 ELSE s."offset" + 1 END,
    epoch = CASE WHEN s.touched < now() - keep.ttl THEN excluded.epoch ELSE s.epoch END,
    touched = now()
  RETURNING s."offset", s.epoch INTO stream;
  IF stream."offset" = 1 THEN
    DELETE FROM switchboard_history WHERE channel = ch;
  END IF;
  INSERT INTO switchboard_history (channel, "offset", event, payload)
    VALUES (ch, stream."offset", event, payload);
  DELETE FROM switchboard_history WHERE channel = ch AND "offset" <= stream."offset" - keep.size;
  pos := stream."offset" || ':' || stream.epoch;
  PERFORM pg_notify(ch, '{"switchboard":{' || meta || ',"position":"' || pos || '"},"payload":'
    || payload::text || '}');
  RETURN pos;
END
$f$;
CREATE OR REPLACE FUNCTION switchboard_history(topic text, after bigint, max_count integer)
RETURNS json LANGUAGE plpgsql AS $f$
DECLARE
  ch text;
  keep record;
  stream record;
  earliest bigint;
  entries json;
BEGIN
  PERFORM switchboard_check(topic, 'message');
  ch := switchboard_channel(@PREFIX@ || topic);
  SELECT * INTO keep FROM switchboard_retention(topic);
  IF keep.size IS NULL THEN
    RAISE EXCEPTION 'switchboard_history: the topic % keeps no history', quote_literal(topic);
  END IF;
  INSERT INTO switchboard_streams AS s (channel, topic, "offset", epoch, touched)
    VALUES (ch, topic, 0, substr(md5(random()::text || clock_timestamp()::text), 1, 12), now())
  ON CONFLICT (channel) DO UPDATE SET
    "offset" = CASE WHEN s.touched < now() - keep.ttl THEN 0 ELSE s."offset" END,
    epoch = CASE WHEN s.touched < now() - keep.ttl THEN excluded.epoch ELSE s.epoch END,
    touched = CASE WHEN s.touched < now() - keep.ttl THEN now() ELSE s.touched END
  RETURNING s."offset", s.epoch INTO stream;
  IF stream."offset" = 0 THEN
    DELETE FROM switchboard_history WHERE channel = ch;
  END IF;
  SELECT coalesce(min(h."offset"), stream."offset" + 1) INTO earliest
    FROM switchboard_history h WHERE h.channel = ch;
  SELECT json_agg(json_build_object('o', t."offset", 'e', t.event, 'p', t.payload) ORDER BY t."offset")
    INTO entries
    FROM (SELECT h."offset", h.event, h.payload FROM switchboard_history h
          WHERE h.channel = ch AND h."offset" > after ORDER BY h."offset" LIMIT max_count) AS t;
  RETURN json_build_object('offset', stream."offset", 'epoch', stream.epoch,
    'earliest', earliest, 'entries', coalesce(entries, '[]'::json));
END
$f$;
"#;

#[derive(serde::Deserialize)]
struct ReadJson {
    offset: u64,
    epoch: String,
    earliest: u64,
    entries: Vec<EntryJson>,
}

#[derive(serde::Deserialize)]
struct EntryJson {
    o: u64,
    e: String,
    p: Box<serde_json::value::RawValue>,
}

/// Reads what `switchboard_history` returns.
///
/// # Errors
/// When it is not the JSON the function builds.
pub fn parse_read(text: &str) -> Result<HistoryRead, String> {
    let read: ReadJson = serde_json::from_str(text)
        .map_err(|err| format!("unexpected switchboard_history result: {err}"))?;
    let epoch = Epoch::new(&read.epoch).map_err(|err| err.to_string())?;
    Ok(HistoryRead {
        latest: read.offset,
        earliest: read.earliest,
        publications: read
            .entries
            .into_iter()
            .map(|entry| Publication {
                position: Position::new(entry.o, epoch.clone()),
                event: entry.e,
                payload: Payload::from_raw_value(entry.p),
            })
            .collect(),
        epoch,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use switchboard_core::history::Retention;

    use super::*;

    #[test]
    fn the_install_carries_the_prefix_and_the_rules() {
        let mut rules = HistoryRules::none();
        rules.set(
            "feed",
            Retention {
                size: 100,
                ttl: Duration::from_secs(600),
            },
        );
        let sql = install_sql("o'k:", &rules);
        assert!(
            sql.contains("switchboard_channel('o''k:' || topic)"),
            "{sql}"
        );
        assert!(
            sql.contains("('feed', 100::bigint, interval '600 seconds')"),
            "{sql}"
        );
        assert!(
            sql.contains("UNION ALL SELECT NULL::bigint, NULL::interval, 1"),
            "{sql}"
        );
        assert!(!sql.contains('@'), "every placeholder is filled");
    }

    #[test]
    fn reads_are_parsed() {
        let read = parse_read(
            r#"{"offset":5,"epoch":"a1b2","earliest":4,"entries":[{"o":4,"e":"m","p":{"n": 4}},{"o":5,"e":"x","p":[1]}]}"#,
        )
        .unwrap();
        assert_eq!((read.latest, read.earliest), (5, 4));
        assert_eq!(read.publications[1].position.to_string(), "5:a1b2");
        assert_eq!(read.publications[0].payload.get(), r#"{"n": 4}"#);
        assert!(parse_read("{}").is_err());
    }
}
