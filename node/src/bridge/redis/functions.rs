//! The Redis function library the node loads (`FUNCTION LOAD REPLACE`) when a namespace keeps
//! history: `switchboard_publish` gives a publication its position, appends it to the topic's
//! stream, trims and refreshes the stream, and publishes it, in one atomic step;
//! `switchboard_history` reads a stream after an offset.
//!
//! Producers call the first themselves to publish with history:
//! `FCALL switchboard_publish 1 <topic> <payload-json> [event]`. The library carries the
//! node's channel prefix, message format and history rules, so every node sharing the Redis
//! must be configured alike (the last one to connect loads its text).
//!
//! Keys, per channel (prefix + topic): `switchboard:meta:<channel>`, a hash with the
//! stream's `offset` and `epoch`, and `switchboard:stream:<channel>`, a Redis Stream whose
//! entry ids are `<offset>-0`. Both expire together after the namespace's `history_ttl`
//! without publications; a flushed or restarted Redis without persistence loses them, and the
//! next publication starts a new epoch.

use std::fmt::Write as _;

use switchboard_core::history::HistoryRules;

use crate::config::EnvelopeFormat;

/// The library's name, as `FUNCTION LIST` shows it.
pub const LIBRARY: &str = "switchboard";

/// A Lua string literal for `text` (every byte outside printable ASCII escaped).
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

/// The library's source for channel prefix `prefix`, message `format` and `rules`.
#[must_use]
pub fn library(prefix: &str, format: EnvelopeFormat, rules: &HistoryRules) -> String {
    let mut retention = String::new();
    let mut fallback = "nil".to_owned();
    for (namespace, keep) in rules.iter() {
        let entry = format!("{{{}, {}}}", keep.size, keep.ttl.as_secs().max(1));
        if namespace == "*" {
            fallback = entry;
        } else {
            // Writing to a String cannot fail.
            let _ = writeln!(retention, "  [{}] = {entry},", lua_string(namespace));
        }
    }
    let format = match format {
        EnvelopeFormat::Pyview => "pyview",
        EnvelopeFormat::Switchboard => "switchboard",
    };
    TEMPLATE
        .replace("@PREFIX@", &lua_string(prefix))
        .replace("@FORMAT@", &lua_string(format))
        .replace("@RETENTION@", &retention)
        .replace("@FALLBACK@", &fallback)
}

const TEMPLATE: &str = r#"#!lua name=switchboard
-- Switchboard: publishing with history, and reading it. Loaded by the switchboard node.
local PREFIX = @PREFIX@
local FORMAT = @FORMAT@
local RETENTION = {
@RETENTION@}
local FALLBACK = @FALLBACK@

local function retention(topic)
  local namespace = topic
  local colon = string.find(topic, ":", 1, true)
  if colon then namespace = string.sub(topic, 1, colon - 1) end
  return RETENTION[namespace] or FALLBACK
end

local DIGITS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
local function new_epoch()
  local now = redis.call("TIME")
  local n = tonumber(now[1]) * 1000000 + tonumber(now[2])
  local out = ""
  repeat
    local digit = n % 62
    out = string.sub(DIGITS, digit + 1, digit + 1) .. out
    n = math.floor(n / 62)
  until n == 0
  return out
end

local function valid_topic(topic)
  return type(topic) == "string" and #topic > 0 and #topic <= 255
    and not string.find(topic, "%c") and string.sub(topic, 1, 2) ~= "__"
end

local function envelope(topic, event, origin, payload, position)
  local extra = ""
  if origin ~= "" then extra = extra .. ',"origin":' .. cjson.encode(origin) end
  if position then extra = extra .. ',"position":"' .. position .. '"' end
  if FORMAT == "pyview" then
    return '{"topic":' .. cjson.encode(topic) .. ',"message":' .. payload
      .. ',"event":' .. cjson.encode(event) .. extra .. '}'
  end
  return '{"switchboard":{"event":' .. cjson.encode(event) .. extra .. '},"payload":' .. payload .. '}'
end

-- The stream's offset and epoch, starting a new stream (and dropping any old entries) when
-- its meta data is gone.
local function stream_state(stream, meta, ttl)
  local epoch = redis.call("HGET", meta, "epoch")
  if not epoch then
    epoch = new_epoch()
    redis.call("DEL", stream)
    redis.call("HSET", meta, "epoch", epoch, "offset", 0)
    redis.call("EXPIRE", meta, ttl)
    return 0, epoch
  end
  return tonumber(redis.call("HGET", meta, "offset") or "0"), epoch
end

local function publish(keys, args)
  local topic, payload = keys[1], args[1]
  local event, origin = args[2] or "message", args[3] or ""
  if not valid_topic(topic) then
    return redis.error_reply("ERR switchboard_publish: invalid topic")
  end
  if type(payload) ~= "string" or not pcall(cjson.decode, payload) then
    return redis.error_reply("ERR switchboard_publish: the payload must be one JSON value")
  end
  if event == "" or string.sub(event, 1, 4) == "phx_" then
    return redis.error_reply("ERR switchboard_publish: the event must be non-empty and not a phx_ event")
  end
  local channel = PREFIX .. topic
  local keep = retention(topic)
  if not keep then
    redis.call("PUBLISH", channel, envelope(topic, event, origin, payload, nil))
    return {0, ""}
  end
  local stream, meta = "switchboard:stream:" .. channel, "switchboard:meta:" .. channel
  local _, epoch = stream_state(stream, meta, keep[2])
  local offset = redis.call("HINCRBY", meta, "offset", 1)
  redis.call("XADD", stream, "MAXLEN", keep[1], offset .. "-0", "e", event, "p", payload)
  redis.call("EXPIRE", stream, keep[2])
  redis.call("EXPIRE", meta, keep[2])
  local position = offset .. ":" .. epoch
  redis.call("PUBLISH", channel, envelope(topic, event, origin, payload, position))
  return {offset, epoch}
end

local function history(keys, args)
  local topic = keys[1]
  local after, limit = tonumber(args[1] or "0") or 0, tonumber(args[2] or "0") or 0
  local keep = retention(topic)
  if not valid_topic(topic) or not keep then
    return redis.error_reply("ERR switchboard_history: the topic keeps no history")
  end
  local channel = PREFIX .. topic
  local stream, meta = "switchboard:stream:" .. channel, "switchboard:meta:" .. channel
  local offset, epoch = stream_state(stream, meta, keep[2])
  local earliest = offset + 1
  local first = redis.call("XRANGE", stream, "-", "+", "COUNT", 1)
  if #first > 0 then earliest = tonumber(string.match(first[1][1], "^(%d+)")) end
  local entries = {}
  if limit > 0 and after < offset then
    entries = redis.call("XRANGE", stream, "(" .. after .. "-0", "+", "COUNT", limit)
  end
  return {offset, epoch, earliest, entries}
end

redis.register_function("switchboard_publish", publish)
redis.register_function("switchboard_history", history)
"#;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use switchboard_core::history::Retention;

    use super::*;

    #[test]
    fn the_library_carries_the_prefix_the_format_and_the_rules() {
        let mut rules = HistoryRules::none();
        rules.set(
            "feed",
            Retention {
                size: 100,
                ttl: Duration::from_secs(600),
            },
        );
        rules.set(
            "*",
            Retention {
                size: 5,
                ttl: Duration::from_secs(60),
            },
        );
        let text = library("sb\"\n", EnvelopeFormat::Switchboard, &rules);
        assert!(text.starts_with("#!lua name=switchboard\n"));
        assert!(text.contains(r#"local PREFIX = "sb\"\010""#), "{text}");
        assert!(text.contains(r#"  ["feed"] = {100, 600},"#), "{text}");
        assert!(text.contains("local FALLBACK = {5, 60}"), "{text}");
        assert!(text.contains(r#"local FORMAT = "switchboard""#));
        assert!(!text.contains('@'), "every placeholder is filled");
    }
}
