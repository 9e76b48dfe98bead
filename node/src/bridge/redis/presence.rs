//! The Redis function library the node loads (`FUNCTION LOAD REPLACE`) when a namespace tracks
//! presence, and how the adapter calls it and reads its replies.
//!
//! Each function stores a change and announces it on the topic's presence channel (`<prefix>`
//! `__presence:<topic>`, the channel of
//! [`presence::channel_of`](switchboard_core::presence::channel_of)) in one atomic step, in the
//! format [`presence::event`](switchboard_core::presence::event) reads:
//!
//! ```text
//! FCALL switchboard_presence_track 1 <topic> <ref> <node> <key> <meta-json> <max_members> [<prev>]
//!       -> 1 (stored, or already stored) | 0 (the topic has max_members members: nothing stored)
//! FCALL switchboard_presence_untrack 1 <topic> <ref>            -> 1 (deleted) | 0 (absent)
//! FCALL switchboard_presence_heartbeat 0 <node> <ttl_ms>        -> entries held for <node>
//! FCALL switchboard_presence_sync 0 <node> <ttl_ms> <entries>   -> entries now held for <node>
//!       <entries>: [[<topic>, <ref>, <key>, "<meta-json>"], ...] (the meta as a JSON string)
//! FCALL_RO switchboard_presence_list 1 <topic>                  -> [<ref>, <entry>, ...]
//! ```
//!
//! Keys (channel = prefix + topic):
//! - `switchboard:presence:members:<channel>`: a hash, `ref` → the stored entry
//!   `{"node":..,"key":..,"meta":{..}}` (what
//!   [`parse_entry`](switchboard_core::presence::event::parse_entry) reads);
//! - `switchboard:presence:node:<node>`: a set of `<topic>\n<ref>`, every entry the node owns
//!   (topics hold no control character, so the first newline splits it), which makes reaping
//!   and syncing a node cost its own entries only;
//! - `switchboard:presence:nodes`: a sorted set, node → its liveness expiry (Redis `TIME`, in
//!   ms).
//!
//! None of them expires: a node's entries go when the node is reaped (its liveness lapsed and
//! another node heartbeats) or untracks them. Redis must therefore not evict keys
//! (`maxmemory-policy` `noeviction` or a `volatile-*` one). The library carries the node's
//! channel prefix, so every node sharing the Redis must use the same one.

use std::fmt::Write as _;
use std::time::Duration;

use switchboard_core::presence::event::parse_entry;
use tracing::warn;

use crate::bridge::backend::{sync_entries_json, PresenceOp, PresenceReply};

/// The library's name, as `FUNCTION LIST` shows it.
pub const LIBRARY: &str = "switchboard_presence";

/// A Lua string literal for `text` (every byte outside printable ASCII escaped). The same
/// helper as the history library's (kept apart so the two libraries stay independent).
fn lua_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for byte in text.bytes() {
        match byte {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(char::from(byte));
            }
            0x20..=0x7e => out.push(char::from(byte)),
            _ => {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\{byte:03}");
            }
        }
    }
    out.push('"');
    out
}

/// The library's source for channel prefix `prefix`.
#[must_use]
pub fn library(prefix: &str) -> String {
    TEMPLATE.replace("@PREFIX@", &lua_string(prefix))
}

/// A TTL in whole milliseconds, as the functions take it.
fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}

/// The `FCALL` that performs `op`, or why there is none.
pub(super) fn command(op: &PresenceOp) -> Result<redis::Cmd, String> {
    let mut cmd = redis::cmd("FCALL");
    match op {
        PresenceOp::Track {
            topic,
            phx_ref,
            member,
            max_members,
        } => {
            cmd.arg("switchboard_presence_track")
                .arg(1)
                .arg(topic.as_str())
                .arg(phx_ref)
                .arg(&member.node)
                .arg(&member.key)
                .arg(member.meta.as_str())
                .arg(*max_members);
            if let Some(prev) = &member.prev {
                cmd.arg(prev);
            }
        }
        PresenceOp::Untrack { topic, phx_ref } => {
            cmd.arg("switchboard_presence_untrack")
                .arg(1)
                .arg(topic.as_str())
                .arg(phx_ref);
        }
        PresenceOp::Heartbeat { node, ttl } => {
            cmd.arg("switchboard_presence_heartbeat")
                .arg(0)
                .arg(node)
                .arg(millis(*ttl));
        }
        PresenceOp::Sync { node, ttl, entries } => {
            cmd.arg("switchboard_presence_sync")
                .arg(0)
                .arg(node)
                .arg(millis(*ttl))
                .arg(sync_entries_json(entries));
        }
        PresenceOp::List { topic } => {
            cmd = redis::cmd("FCALL_RO");
            cmd.arg("switchboard_presence_list")
                .arg(1)
                .arg(topic.as_str());
        }
        other => return Err(format!("unsupported presence operation {other:?}")),
    }
    Ok(cmd)
}

/// Reads the reply to `op`.
///
/// # Errors
/// A reply of another shape than the function returns.
pub(super) fn reply(op: &PresenceOp, value: &redis::Value) -> Result<PresenceReply, String> {
    let shape = || format!("unexpected reply {value:?} to a presence {}", name(op));
    match op {
        PresenceOp::Track { .. } => match value {
            redis::Value::Int(1) => Ok(PresenceReply::Tracked),
            redis::Value::Int(0) => Ok(PresenceReply::Full),
            _ => Err(shape()),
        },
        PresenceOp::Untrack { .. } | PresenceOp::Sync { .. } => match value {
            redis::Value::Int(_) => Ok(PresenceReply::Done),
            _ => Err(shape()),
        },
        PresenceOp::Heartbeat { .. } => match value {
            redis::Value::Int(held) => u64::try_from(*held)
                .map(PresenceReply::Held)
                .map_err(|_| shape()),
            _ => Err(shape()),
        },
        PresenceOp::List { topic } => {
            let redis::Value::Array(items) = value else {
                return Err(shape());
            };
            let mut members = Vec::with_capacity(items.len() / 2);
            for pair in items.chunks(2) {
                let [phx_ref, entry] = pair else {
                    return Err(shape());
                };
                let phx_ref: String =
                    redis::from_redis_value_ref(phx_ref).map_err(|err| err.to_string())?;
                let entry: Vec<u8> =
                    redis::from_redis_value_ref(entry).map_err(|err| err.to_string())?;
                match parse_entry(&phx_ref, &entry) {
                    Ok(member) => members.push(member),
                    // One bad entry (written by hand) must not hide the others.
                    Err(err) => warn!(%topic, %phx_ref, %err, "skipping a stored presence entry"),
                }
            }
            Ok(PresenceReply::Members(members))
        }
        _ => Err(shape()),
    }
}

/// The operation's name, for messages.
fn name(op: &PresenceOp) -> &'static str {
    match op {
        PresenceOp::Track { .. } => "track",
        PresenceOp::Untrack { .. } => "untrack",
        PresenceOp::Heartbeat { .. } => "heartbeat",
        PresenceOp::Sync { .. } => "sync",
        PresenceOp::List { .. } => "list",
        _ => "operation",
    }
}

const TEMPLATE: &str = r#"#!lua name=switchboard_presence
-- Switchboard presence: who is on a topic, across nodes. Loaded by the switchboard node.
local PREFIX = @PREFIX@
local NODES = "switchboard:presence:nodes"
local MAX_KEY_BYTES = 256

local function members_key(topic) return "switchboard:presence:members:" .. PREFIX .. topic end
local function node_key(node) return "switchboard:presence:node:" .. node end
local function channel(topic) return PREFIX .. "__presence:" .. topic end
local function pair(topic, ref) return topic .. "\n" .. ref end

local function split(both)
  local at = string.find(both, "\n", 1, true)
  if not at then return nil, nil end
  return string.sub(both, 1, at - 1), string.sub(both, at + 1)
end

local function now_ms()
  local now = redis.call("TIME")
  return tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
end

local function valid_topic(topic)
  return type(topic) == "string" and #topic > 0 and #topic <= 255
    and not string.find(topic, "%c") and string.sub(topic, 1, 2) ~= "__"
end

local function nonempty(text) return type(text) == "string" and #text > 0 end

local function valid_key(key) return type(key) == "string" and #key <= MAX_KEY_BYTES end

-- A JSON object without phx_ fields (those are the protocol's).
local function valid_meta(meta)
  if type(meta) ~= "string" or not string.find(meta, "^%s*{") then return false end
  local ok, decoded = pcall(cjson.decode, meta)
  if not ok or type(decoded) ~= "table" then return false end
  for field in pairs(decoded) do
    if type(field) == "string" and string.sub(field, 1, 4) == "phx_" then return false end
  end
  return true
end

local function ttl_of(text)
  local ttl = tonumber(text or "")
  if not ttl or ttl < 0 then return nil end
  return math.floor(ttl)
end

local function fail(name, why)
  return redis.error_reply("ERR " .. name .. ": " .. why)
end

-- The stored entry, and the announcements.
local function entry(node, key, meta)
  return '{"node":' .. cjson.encode(node) .. ',"key":' .. cjson.encode(key) .. ',"meta":' .. meta .. '}'
end

local function join(ref, stored, prev)
  local out = '{"op":"join","ref":' .. cjson.encode(ref) .. ',' .. string.sub(stored, 2, -2)
  if prev then out = out .. ',"prev":' .. cjson.encode(prev) end
  return out .. '}'
end

local function leave(ref) return '{"op":"leave","ref":' .. cjson.encode(ref) .. '}' end

local function node_down(node) return '{"op":"node_down","node":' .. cjson.encode(node) .. '}' end

-- The node a stored entry belongs to.
local function owner(stored)
  local ok, decoded = pcall(cjson.decode, stored)
  if ok and type(decoded) == "table" and type(decoded.node) == "string" then return decoded.node end
  return nil
end

-- Deletes `ref` of `topic` (and its place in its owner's set); whether it was stored.
local function delete(topic, ref)
  local members = members_key(topic)
  local old = redis.call("HGET", members, ref)
  if not old then return false end
  redis.call("HDEL", members, ref)
  local node = owner(old)
  if node then redis.call("SREM", node_key(node), pair(topic, ref)) end
  return true
end

-- Every node whose liveness expired before `now` is gone: its entries are deleted, and each
-- topic it had entries on is told once.
local function reap(now)
  local dead = redis.call("ZRANGEBYSCORE", NODES, "-inf", string.format("(%d", now))
  for _, node in ipairs(dead) do
    local index = node_key(node)
    local seen, topics = {}, {}
    for _, both in ipairs(redis.call("SMEMBERS", index)) do
      local topic, ref = split(both)
      if topic then
        redis.call("HDEL", members_key(topic), ref)
        if not seen[topic] then
          seen[topic] = true
          table.insert(topics, topic)
        end
      end
    end
    redis.call("DEL", index)
    redis.call("ZREM", NODES, node)
    for _, topic in ipairs(topics) do
      redis.call("PUBLISH", channel(topic), node_down(node))
    end
  end
end

local function track(keys, args)
  local name = "switchboard_presence_track"
  local topic, ref, node, key, meta = keys[1], args[1], args[2], args[3], args[4]
  local max, prev = tonumber(args[5] or ""), args[6]
  if prev == "" then prev = nil end
  if not valid_topic(topic) then return fail(name, "invalid topic") end
  if not nonempty(ref) or not nonempty(node) then
    return fail(name, "the ref and the node must be non-empty")
  end
  if not valid_key(key) then return fail(name, "the key is at most 256 bytes") end
  if not valid_meta(meta) then return fail(name, "the meta must be a JSON object without phx_ fields") end
  if not max or max < 0 then return fail(name, "max_members must be a number") end
  local members = members_key(topic)
  if redis.call("HEXISTS", members, ref) == 1 then return 1 end
  if not prev and redis.call("HLEN", members) >= max then return 0 end
  if prev then delete(topic, prev) end
  local stored = entry(node, key, meta)
  redis.call("HSET", members, ref, stored)
  redis.call("SADD", node_key(node), pair(topic, ref))
  redis.call("PUBLISH", channel(topic), join(ref, stored, prev))
  return 1
end

local function untrack(keys, args)
  local name = "switchboard_presence_untrack"
  local topic, ref = keys[1], args[1]
  if not valid_topic(topic) then return fail(name, "invalid topic") end
  if not nonempty(ref) then return fail(name, "the ref must be non-empty") end
  if not delete(topic, ref) then return 0 end
  redis.call("PUBLISH", channel(topic), leave(ref))
  return 1
end

local function heartbeat(keys, args)
  local name = "switchboard_presence_heartbeat"
  local node, ttl = args[1], ttl_of(args[2])
  if not nonempty(node) then return fail(name, "the node must be non-empty") end
  if not ttl then return fail(name, "the ttl is a number of milliseconds") end
  local now = now_ms()
  redis.call("ZADD", NODES, now + ttl, node)
  reap(now)
  return redis.call("SCARD", node_key(node))
end

local function sync(keys, args)
  local name = "switchboard_presence_sync"
  local node, ttl = args[1], ttl_of(args[2])
  if not nonempty(node) then return fail(name, "the node must be non-empty") end
  if not ttl then return fail(name, "the ttl is a number of milliseconds") end
  local ok, entries = pcall(cjson.decode, args[3] or "")
  if not ok or type(entries) ~= "table" then
    return fail(name, "the entries must be a JSON array of [topic, ref, key, meta]")
  end
  -- Everything is checked before anything changes (a function's writes are not undone).
  local wanted, order = {}, {}
  for i, e in ipairs(entries) do
    if type(e) ~= "table" then return fail(name, "entry " .. i .. " is not an array") end
    local topic, ref, key, meta = e[1], e[2], e[3], e[4]
    if not valid_topic(topic) then return fail(name, "entry " .. i .. ": invalid topic") end
    if not nonempty(ref) then return fail(name, "entry " .. i .. ": the ref must be non-empty") end
    if not valid_key(key) then return fail(name, "entry " .. i .. ": the key is at most 256 bytes") end
    if not valid_meta(meta) then
      return fail(name, "entry " .. i .. ": the meta must be a JSON string holding an object without phx_ fields")
    end
    local both = pair(topic, ref)
    if not wanted[both] then
      wanted[both] = true
      table.insert(order, e)
    end
  end
  redis.call("ZADD", NODES, now_ms() + ttl, node)
  local index = node_key(node)
  for _, both in ipairs(redis.call("SMEMBERS", index)) do
    if not wanted[both] then
      redis.call("SREM", index, both)
      local topic, ref = split(both)
      if topic and redis.call("HDEL", members_key(topic), ref) == 1 then
        redis.call("PUBLISH", channel(topic), leave(ref))
      end
    end
  end
  for _, e in ipairs(order) do
    local topic, ref = e[1], e[2]
    local members = members_key(topic)
    if redis.call("HEXISTS", members, ref) == 0 then
      local stored = entry(node, e[3], e[4])
      redis.call("HSET", members, ref, stored)
      redis.call("PUBLISH", channel(topic), join(ref, stored, nil))
    end
    redis.call("SADD", index, pair(topic, ref))
  end
  return redis.call("SCARD", index)
end

local function list(keys, args)
  if not valid_topic(keys[1]) then return fail("switchboard_presence_list", "invalid topic") end
  return redis.call("HGETALL", members_key(keys[1]))
end

redis.register_function("switchboard_presence_track", track)
redis.register_function("switchboard_presence_untrack", untrack)
redis.register_function("switchboard_presence_heartbeat", heartbeat)
redis.register_function("switchboard_presence_sync", sync)
redis.register_function{function_name = "switchboard_presence_list", callback = list, flags = {"no-writes"}}
"#;

#[cfg(test)]
mod tests {
    use redis::Value;
    use switchboard_core::presence::{Member, Meta};
    use switchboard_core::Topic;

    use super::*;

    fn member(key: &str, meta: &str, prev: Option<&str>) -> Member {
        Member {
            key: key.into(),
            meta: Meta::parse(meta, "meta").unwrap(),
            node: "n1".into(),
            prev: prev.map(Into::into),
        }
    }

    fn command_of(op: &PresenceOp) -> redis::Cmd {
        command(op).unwrap()
    }

    fn args(cmd: &redis::Cmd) -> Vec<String> {
        cmd.args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                _ => "<not simple>".into(),
            })
            .collect()
    }

    #[test]
    fn the_library_carries_the_prefix() {
        let text = library("sb\"\n");
        assert!(text.starts_with("#!lua name=switchboard_presence\n"));
        assert!(text.contains(r#"local PREFIX = "sb\"\010""#), "{text}");
        assert!(!text.contains('@'), "every placeholder is filled");
        for function in ["track", "untrack", "heartbeat", "sync", "list"] {
            assert!(
                text.contains(&format!("\"switchboard_presence_{function}\"")),
                "{function}"
            );
        }
    }

    #[test]
    fn every_op_is_one_fcall_with_its_arguments_in_order() {
        let topic = Topic::new("room:1").unwrap();
        let track = PresenceOp::Track {
            topic: topic.clone(),
            phx_ref: "r2".into(),
            member: member("ada", r#"{"s":1}"#, Some("r1")),
            max_members: 10,
        };
        assert_eq!(
            args(&command_of(&track)),
            [
                "FCALL",
                "switchboard_presence_track",
                "1",
                "room:1",
                "r2",
                "n1",
                "ada",
                r#"{"s":1}"#,
                "10",
                "r1"
            ]
        );
        let heartbeat = PresenceOp::Heartbeat {
            node: "n1".into(),
            ttl: Duration::from_millis(1500),
        };
        assert_eq!(
            args(&command_of(&heartbeat)),
            ["FCALL", "switchboard_presence_heartbeat", "0", "n1", "1500"]
        );
        let sync = PresenceOp::Sync {
            node: "n1".into(),
            ttl: Duration::from_secs(30),
            entries: vec![(
                topic.clone(),
                "r\"1".into(),
                member("ada", r#"{"a":[1]}"#, None),
            )],
        };
        assert_eq!(
            args(&command_of(&sync)),
            [
                "FCALL",
                "switchboard_presence_sync",
                "0",
                "n1",
                "30000",
                r#"[["room:1","r\"1","ada","{\"a\":[1]}"]]"#
            ]
        );
        let list = PresenceOp::List { topic };
        assert_eq!(
            args(&command_of(&list)),
            ["FCALL_RO", "switchboard_presence_list", "1", "room:1"]
        );
    }

    #[test]
    fn replies_are_read() {
        let topic = Topic::new("room:1").unwrap();
        let track = PresenceOp::Track {
            topic: topic.clone(),
            phx_ref: "r".into(),
            member: member("k", "{}", None),
            max_members: 1,
        };
        assert_eq!(reply(&track, &Value::Int(1)), Ok(PresenceReply::Tracked));
        assert_eq!(reply(&track, &Value::Int(0)), Ok(PresenceReply::Full));
        assert!(reply(&track, &Value::Okay).is_err());
        let heartbeat = PresenceOp::Heartbeat {
            node: "n".into(),
            ttl: Duration::from_secs(1),
        };
        assert_eq!(
            reply(&heartbeat, &Value::Int(7)),
            Ok(PresenceReply::Held(7))
        );
        assert!(reply(&heartbeat, &Value::Int(-1)).is_err());
        let bulk = |text: &str| Value::BulkString(text.as_bytes().to_vec());
        let list = PresenceOp::List { topic };
        let read = reply(
            &list,
            &Value::Array(vec![
                bulk("r1"),
                bulk(r#"{"node":"n1","key":"ada","meta":{"s":1}}"#),
                bulk("bad"),
                bulk("not json"),
            ]),
        )
        .unwrap();
        let PresenceReply::Members(members) = read else {
            panic!("{read:?}");
        };
        assert_eq!(
            members,
            [("r1".to_owned(), member("ada", r#"{"s":1}"#, None))]
        );
        assert!(reply(&list, &Value::Array(vec![bulk("odd")])).is_err());
        assert!(reply(&list, &Value::Int(3)).is_err());
    }
}
