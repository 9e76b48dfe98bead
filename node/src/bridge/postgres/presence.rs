//! The SQL objects the node installs in the database when a namespace tracks presence, and how
//! the adapter calls them and reads their results.
//!
//! Each function stores a change and announces it on the topic's presence channel
//! (`switchboard_presence_channel(topic)` = `switchboard_channel(<prefix> || '__presence:' ||
//! topic)`, the channel of [`presence::channel_of`](switchboard_core::presence::channel_of)) in
//! one transaction, in the format [`presence::event`](switchboard_core::presence::event) reads;
//! a rolled-back transaction leaves neither the change nor the announcement:
//!
//! ```text
//! switchboard_presence_track(topic text, ref text, node text, key text, meta json,
//!                            max_members bigint, prev text DEFAULT NULL) -> boolean
//!     true: stored (or already stored); false: the topic has max_members members
//! switchboard_presence_untrack(topic text, ref text) -> boolean (whether it was stored)
//! switchboard_presence_heartbeat(node text, ttl_ms bigint) -> bigint (entries held for node)
//! switchboard_presence_sync(node text, ttl_ms bigint, entries json) -> bigint (the same)
//!     entries: [[topic, ref, key, "<meta json>"], ...]
//! switchboard_presence_list(topic text) -> TABLE (ref text, node text, key text, meta json)
//! ```
//!
//! Tables: `switchboard_presence (topic, ref, node, key, meta json)`, primary key
//! `(topic, ref)`, indexed on `node`; `switchboard_presence_nodes (node primary key, expires
//! timestamptz)`, each node's liveness by the database's `clock_timestamp()`. A track takes a
//! transaction-level advisory lock on its topic (`pg_advisory_xact_lock(1937203824,
//! hashtext(topic))`), so the bound holds however many nodes track at once; reaping takes
//! `pg_try_advisory_xact_lock(1937203825, 0)`, so one heartbeat reaps while the others skip
//! and every `node_down` is said once. The functions carry the node's channel prefix, so every
//! node sharing the database must use the same one.

use std::time::Duration;

use switchboard_core::bridge::RequestError;
use switchboard_core::presence::{Member, Meta};
use tokio_postgres::{Client, Statement};
use tracing::warn;

use super::classify;
use crate::bridge::backend::{sync_entries_json, PresenceOp, PresenceReply};

/// The first key of the advisory locks presence takes (ASCII `swbp`); the history install's
/// single 64-bit key lives in another key space.
pub const LOCK_KEY: i32 = 1_937_203_824;

/// A SQL string literal for `text` (single quotes doubled; channel prefixes never hold NUL).
fn sql_string(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The statements that create (or update) the presence tables and functions. They use
/// `switchboard_channel`, and run after it in the [one install transaction](super::install_sql).
#[must_use]
pub fn install_sql(prefix: &str) -> String {
    TEMPLATE.replace("@PREFIX@", &sql_string(prefix))
}

const TRACK_SQL: &str = "SELECT switchboard_presence_track($1::text, $2::text, $3::text, \
     $4::text, $5::text::json, $6::bigint, $7::text)";
const UNTRACK_SQL: &str = "SELECT switchboard_presence_untrack($1::text, $2::text)";
const HEARTBEAT_SQL: &str = "SELECT switchboard_presence_heartbeat($1::text, $2::bigint)";
const SYNC_SQL: &str = "SELECT switchboard_presence_sync($1::text, $2::bigint, $3::text::json)";
const LIST_SQL: &str = "SELECT ref, node, key, meta::text FROM switchboard_presence_list($1::text)";

/// The longest TTL sent (ten years): PostgreSQL intervals are bounded.
const MAX_TTL_MS: i64 = 315_360_000_000;

/// The presence statements, prepared on the publishing connection.
#[derive(Debug)]
pub struct Statements {
    track: Statement,
    untrack: Statement,
    heartbeat: Statement,
    sync: Statement,
    list: Statement,
}

impl Statements {
    /// Prepares them on `client` (after the install).
    ///
    /// # Errors
    /// When the database refuses one (the functions are missing).
    pub async fn prepare(client: &Client) -> Result<Self, tokio_postgres::Error> {
        Ok(Self {
            track: client.prepare(TRACK_SQL).await?,
            untrack: client.prepare(UNTRACK_SQL).await?,
            heartbeat: client.prepare(HEARTBEAT_SQL).await?,
            sync: client.prepare(SYNC_SQL).await?,
            list: client.prepare(LIST_SQL).await?,
        })
    }
}

/// A TTL in whole milliseconds, as the functions take it.
fn millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).map_or(MAX_TTL_MS, |ms| ms.min(MAX_TTL_MS))
}

/// Performs `op` with `statements` on `client`.
///
/// # Errors
/// As [`Backend::presence`](crate::bridge::backend::Backend::presence).
pub async fn perform(
    client: &Client,
    statements: &Statements,
    op: &PresenceOp,
) -> Result<PresenceReply, RequestError> {
    let failed = |err: tokio_postgres::Error| classify(&err);
    match op {
        PresenceOp::Track {
            topic,
            phx_ref,
            member,
            max_members,
        } => {
            let max = i64::try_from(*max_members).unwrap_or(i64::MAX);
            let row = client
                .query_one(
                    &statements.track,
                    &[
                        &topic.as_str(),
                        phx_ref,
                        &member.node,
                        &member.key,
                        &member.meta.as_str(),
                        &max,
                        &member.prev,
                    ],
                )
                .await
                .map_err(failed)?;
            let tracked: bool = row.try_get(0).map_err(failed)?;
            Ok(if tracked {
                PresenceReply::Tracked
            } else {
                PresenceReply::Full
            })
        }
        PresenceOp::Untrack { topic, phx_ref } => {
            client
                .query_one(&statements.untrack, &[&topic.as_str(), phx_ref])
                .await
                .map_err(failed)?;
            Ok(PresenceReply::Done)
        }
        PresenceOp::Heartbeat { node, ttl } => {
            let row = client
                .query_one(&statements.heartbeat, &[node, &millis(*ttl)])
                .await
                .map_err(failed)?;
            let held: i64 = row.try_get(0).map_err(failed)?;
            Ok(PresenceReply::Held(u64::try_from(held).unwrap_or(0)))
        }
        PresenceOp::Sync { node, ttl, entries } => {
            client
                .query_one(
                    &statements.sync,
                    &[node, &millis(*ttl), &sync_entries_json(entries)],
                )
                .await
                .map_err(failed)?;
            Ok(PresenceReply::Done)
        }
        PresenceOp::List { topic } => {
            let rows = client
                .query(&statements.list, &[&topic.as_str()])
                .await
                .map_err(failed)?;
            let mut members = Vec::with_capacity(rows.len());
            for row in rows {
                let (phx_ref, node, key, meta): (String, String, String, String) = (
                    row.try_get(0).map_err(failed)?,
                    row.try_get(1).map_err(failed)?,
                    row.try_get(2).map_err(failed)?,
                    row.try_get(3).map_err(failed)?,
                );
                match member(node, key, &meta) {
                    Ok(member) => members.push((phx_ref, member)),
                    // One bad row (written by hand) must not hide the others.
                    Err(err) => warn!(%topic, %phx_ref, %err, "skipping a stored presence entry"),
                }
            }
            Ok(PresenceReply::Members(members))
        }
        other => Err(RequestError::Refused(format!(
            "unsupported presence operation {other:?}"
        ))),
    }
}

/// A listed row as a member.
fn member(
    node: String,
    key: String,
    meta: &str,
) -> Result<Member, switchboard_core::presence::MetaError> {
    Ok(Member {
        key,
        meta: Meta::parse(meta, "meta")?,
        node,
        prev: None,
    })
}

const TEMPLATE: &str = r#"
CREATE TABLE IF NOT EXISTS switchboard_presence (
  topic text NOT NULL,
  ref text NOT NULL,
  node text NOT NULL,
  key text NOT NULL,
  meta json NOT NULL,
  PRIMARY KEY (topic, ref)
);
CREATE INDEX IF NOT EXISTS switchboard_presence_node ON switchboard_presence (node);
CREATE TABLE IF NOT EXISTS switchboard_presence_nodes (
  node text PRIMARY KEY,
  expires timestamptz NOT NULL
);
-- switchboard_channel(<prefix> || '__presence:' || topic), with its common case (a short name
-- is its own channel) in plpgsql: a sync or a reap computes thousands.
CREATE OR REPLACE FUNCTION switchboard_presence_channel(topic text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT AS $f$
DECLARE
  name text := @PREFIX@ || '__presence:' || topic;
BEGIN
  IF octet_length(name) <= 63 AND name !~ '~[0-9a-f]{32}$' THEN
    RETURN name;
  END IF;
  RETURN switchboard_channel(name);
END
$f$;
-- What a member may be: a topic clients can join, a ref, a key of at most 256 bytes, and a meta
-- object without phx_ fields (those are the protocol's).
CREATE OR REPLACE FUNCTION switchboard_presence_valid_topic(topic text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $f$
  SELECT coalesce($1 <> '' AND octet_length($1) <= 255 AND $1 !~ '[[:cntrl:]]'
    AND left($1, 2) <> '__', false)
$f$;
CREATE OR REPLACE FUNCTION switchboard_presence_valid_meta(meta json) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $f$
  SELECT coalesce(json_typeof($1) = 'object', false) AND NOT EXISTS (
    SELECT 1 FROM json_object_keys(CASE WHEN json_typeof($1) = 'object' THEN $1 END) AS f(name)
    WHERE left(f.name, 4) = 'phx_')
$f$;
CREATE OR REPLACE FUNCTION switchboard_presence_check(fn text, topic text, ref text)
RETURNS void LANGUAGE plpgsql IMMUTABLE AS $f$
BEGIN
  IF NOT switchboard_presence_valid_topic(topic) THEN
    RAISE EXCEPTION '%: invalid topic %', fn, quote_literal(coalesce(topic, 'NULL'));
  END IF;
  IF ref IS NULL OR ref = '' THEN
    RAISE EXCEPTION '%: the ref must be non-empty', fn;
  END IF;
END
$f$;
CREATE OR REPLACE FUNCTION switchboard_presence_check_member(fn text, key text, meta json)
RETURNS void LANGUAGE plpgsql IMMUTABLE AS $f$
BEGIN
  IF key IS NULL OR octet_length(key) > 256 THEN
    RAISE EXCEPTION '%: the key is at most 256 bytes', fn;
  END IF;
  IF NOT switchboard_presence_valid_meta(meta) THEN
    RAISE EXCEPTION '%: the meta must be a JSON object without phx_ fields', fn;
  END IF;
END
$f$;
CREATE OR REPLACE FUNCTION switchboard_presence_join(ref text, node text, key text, meta json,
  prev text) RETURNS text LANGUAGE sql STABLE AS $f$
  SELECT '{"op":"join","ref":' || to_json($1)::text || ',"node":' || to_json($2)::text
    || ',"key":' || to_json($3)::text || ',"meta":' || $4::text
    || CASE WHEN $5 IS NULL THEN '' ELSE ',"prev":' || to_json($5)::text END || '}'
$f$;
CREATE OR REPLACE FUNCTION switchboard_presence_leave(ref text) RETURNS text
LANGUAGE sql STABLE AS $f$
  SELECT '{"op":"leave","ref":' || to_json($1)::text || '}'
$f$;
-- node is alive for ttl_ms more (by the database's clock).
CREATE OR REPLACE FUNCTION switchboard_presence_alive(fn text, node text, ttl_ms bigint)
RETURNS void LANGUAGE plpgsql AS $f$
#variable_conflict use_variable
BEGIN
  IF node IS NULL OR node = '' THEN
    RAISE EXCEPTION '%: the node must be non-empty', fn;
  END IF;
  IF ttl_ms IS NULL OR ttl_ms < 0 THEN
    RAISE EXCEPTION '%: the ttl is a number of milliseconds', fn;
  END IF;
  INSERT INTO switchboard_presence_nodes AS n (node, expires)
    VALUES (node, clock_timestamp() + ttl_ms * interval '1 millisecond')
  ON CONFLICT ON CONSTRAINT switchboard_presence_nodes_pkey
    DO UPDATE SET expires = excluded.expires;
END
$f$;
-- Every node whose liveness has lapsed is gone: its entries are deleted, and each topic it had
-- entries on is told once. One transaction reaps at a time; the others skip (it reaps for them).
CREATE OR REPLACE FUNCTION switchboard_presence_reap() RETURNS void
LANGUAGE plpgsql AS $f$
DECLARE
  gone record;
BEGIN
  IF NOT EXISTS (SELECT 1 FROM switchboard_presence_nodes n WHERE n.expires < clock_timestamp())
     OR NOT pg_try_advisory_xact_lock(1937203825, 0) THEN
    RETURN;
  END IF;
  FOR gone IN
    WITH dead AS (
      DELETE FROM switchboard_presence_nodes n WHERE n.expires < clock_timestamp()
      RETURNING n.node
    ), entries AS (
      DELETE FROM switchboard_presence p USING dead d WHERE p.node = d.node
      RETURNING p.node, p.topic
    )
    SELECT DISTINCT e.node, e.topic FROM entries e
  LOOP
    PERFORM pg_notify(switchboard_presence_channel(gone.topic),
      '{"op":"node_down","node":' || to_json(gone.node)::text || '}');
  END LOOP;
END
$f$;
CREATE OR REPLACE FUNCTION switchboard_presence_track(topic text, ref text, node text, key text,
  meta json, max_members bigint, prev text DEFAULT NULL) RETURNS boolean
LANGUAGE plpgsql AS $f$
#variable_conflict use_variable
BEGIN
  PERFORM switchboard_presence_check('switchboard_presence_track', topic, ref);
  PERFORM switchboard_presence_check_member('switchboard_presence_track', key, meta);
  IF node IS NULL OR node = '' THEN
    RAISE EXCEPTION 'switchboard_presence_track: the node must be non-empty';
  END IF;
  IF max_members IS NULL THEN
    RAISE EXCEPTION 'switchboard_presence_track: max_members must be a number';
  END IF;
  IF prev = '' THEN
    prev := NULL;
  END IF;
  -- Tracks of one topic take turns, so the bound holds however many nodes track at once.
  PERFORM pg_advisory_xact_lock(1937203824, hashtext(topic));
  IF EXISTS (SELECT 1 FROM switchboard_presence p WHERE p.topic = topic AND p.ref = ref) THEN
    RETURN true;
  END IF;
  IF prev IS NULL AND (SELECT count(*) FROM (SELECT 1 FROM switchboard_presence p
      WHERE p.topic = topic LIMIT greatest(max_members, 0)) AS held) >= max_members THEN
    RETURN false;
  END IF;
  IF prev IS NOT NULL THEN
    DELETE FROM switchboard_presence p WHERE p.topic = topic AND p.ref = prev;
  END IF;
  INSERT INTO switchboard_presence (topic, ref, node, key, meta)
    VALUES (topic, ref, node, key, meta)
  ON CONFLICT DO NOTHING;
  IF FOUND THEN
    PERFORM pg_notify(switchboard_presence_channel(topic),
      switchboard_presence_join(ref, node, key, meta, prev));
  END IF;
  RETURN true;
END
$f$;
CREATE OR REPLACE FUNCTION switchboard_presence_untrack(topic text, ref text) RETURNS boolean
LANGUAGE plpgsql AS $f$
#variable_conflict use_variable
BEGIN
  PERFORM switchboard_presence_check('switchboard_presence_untrack', topic, ref);
  DELETE FROM switchboard_presence p WHERE p.topic = topic AND p.ref = ref;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  PERFORM pg_notify(switchboard_presence_channel(topic), switchboard_presence_leave(ref));
  RETURN true;
END
$f$;
CREATE OR REPLACE FUNCTION switchboard_presence_heartbeat(node text, ttl_ms bigint)
RETURNS bigint LANGUAGE plpgsql AS $f$
#variable_conflict use_variable
BEGIN
  PERFORM switchboard_presence_alive('switchboard_presence_heartbeat', node, ttl_ms);
  PERFORM switchboard_presence_reap();
  RETURN (SELECT count(*) FROM switchboard_presence p WHERE p.node = node);
END
$f$;
CREATE OR REPLACE FUNCTION switchboard_presence_sync(node text, ttl_ms bigint, entries json)
RETURNS bigint LANGUAGE plpgsql AS $f$
#variable_conflict use_variable
DECLARE
  topics text[];
  refs text[];
  keys text[];
  metas json[];
  wanted jsonb;
  bad bigint;
  r record;
BEGIN
  IF entries IS NULL OR json_typeof(entries) <> 'array' THEN
    RAISE EXCEPTION 'switchboard_presence_sync: the entries must be a JSON array of [topic, ref, key, meta]';
  END IF;
  SELECT coalesce(array_agg(e->>0), '{}'), coalesce(array_agg(e->>1), '{}'),
         coalesce(array_agg(e->>2), '{}'), coalesce(array_agg((e->>3)::json), '{}')
    INTO topics, refs, keys, metas
    FROM json_array_elements(entries) AS e;
  SELECT w.i INTO bad
    FROM unnest(topics, refs, keys, metas) WITH ORDINALITY AS w(topic, ref, key, meta, i)
    WHERE NOT switchboard_presence_valid_topic(w.topic) OR coalesce(w.ref, '') = ''
      OR coalesce(octet_length(w.key) > 256, true) OR NOT switchboard_presence_valid_meta(w.meta)
    LIMIT 1;
  IF bad IS NOT NULL THEN
    RAISE EXCEPTION 'switchboard_presence_sync: entry % is not [topic, ref, key, meta] with a valid topic, a non-empty ref, a key of at most 256 bytes and a JSON object without phx_ fields', bad;
  END IF;
  PERFORM switchboard_presence_alive('switchboard_presence_sync', node, ttl_ms);
  -- The wanted (topic, ref) pairs as the keys of one object: a lookup per stored entry.
  SELECT coalesce(jsonb_object_agg(w.topic || E'\n' || w.ref, true), '{}')
    INTO wanted
    FROM unnest(topics, refs) AS w(topic, ref);
  FOR r IN
    DELETE FROM switchboard_presence p
    WHERE p.node = node AND NOT (wanted ? (p.topic || E'\n' || p.ref))
    RETURNING p.topic, p.ref
  LOOP
    PERFORM pg_notify(switchboard_presence_channel(r.topic), switchboard_presence_leave(r.ref));
  END LOOP;
  FOR r IN
    INSERT INTO switchboard_presence AS p (topic, ref, node, key, meta)
      SELECT w.topic, w.ref, node, w.key, w.meta
      FROM unnest(topics, refs, keys, metas) AS w(topic, ref, key, meta)
      WHERE NOT EXISTS (SELECT 1 FROM switchboard_presence q
                        WHERE q.topic = w.topic AND q.ref = w.ref)
    ON CONFLICT DO NOTHING
    RETURNING p.topic, p.ref, p.node, p.key, p.meta
  LOOP
    PERFORM pg_notify(switchboard_presence_channel(r.topic),
      switchboard_presence_join(r.ref, r.node, r.key, r.meta, NULL));
  END LOOP;
  RETURN (SELECT count(*) FROM switchboard_presence p WHERE p.node = node);
END
$f$;
CREATE OR REPLACE FUNCTION switchboard_presence_list(topic text)
RETURNS TABLE (ref text, node text, key text, meta json)
LANGUAGE sql STABLE AS $f$
  SELECT p.ref, p.node, p.key, p.meta FROM switchboard_presence p WHERE p.topic = $1
$f$;
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_install_carries_the_prefix() {
        let sql = install_sql("o'k:");
        assert!(
            sql.contains("name text := 'o''k:' || '__presence:' || topic;"),
            "{sql}"
        );
        assert!(!sql.contains('@'), "every placeholder is filled");
        assert!(
            !sql.contains("BEGIN;"),
            "the caller wraps it in its transaction"
        );
        for function in ["track", "untrack", "heartbeat", "sync", "list"] {
            assert!(
                sql.contains(&format!("FUNCTION switchboard_presence_{function}(")),
                "{function}"
            );
        }
        assert!(sql.contains(&format!(
            "pg_advisory_xact_lock({LOCK_KEY}, hashtext(topic))"
        )));
    }

    #[test]
    fn ttls_are_whole_bounded_milliseconds() {
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
        assert_eq!(millis(Duration::MAX), MAX_TTL_MS);
    }

    #[test]
    fn listed_rows_become_members() {
        let member = member("n1".into(), "ada".into(), r#"{"b": 1, "a": [2]}"#).unwrap();
        assert_eq!(member.meta.as_str(), r#"{"a":[2],"b":1}"#);
        assert_eq!((member.node.as_str(), member.key.as_str()), ("n1", "ada"));
        assert!(super::member("n".into(), "k".into(), r#"{"phx_ref":"x"}"#).is_err());
    }
}
