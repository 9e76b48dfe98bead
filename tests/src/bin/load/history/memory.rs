//! Memory per topic at `history = 100`: Redis `INFO memory` and `MEMORY USAGE`, the
//! PostgreSQL history tables' size, the node's VmRSS (the memory backend).

use std::rc::Rc;
use std::time::Duration;

use serde_json::{json, Value};
use switchboard_e2e::redis::RedisServer;
use switchboard_e2e::BackendServer;

use super::publish::publish_counted;
use super::{Backend, HISTORY, MEMORY_PUBLISHERS, NS_ON, PAYLOAD_BYTES};
use crate::{rss_kib, Target};

/// `INFO memory`'s `used_memory`.
fn used_memory(server: &RedisServer) -> Option<u64> {
    let info: String = server
        .try_cli(&["INFO", "memory"])
        .ok()
        .and_then(|v| redis::from_redis_value_ref::<String>(&v).ok())?;
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
}

/// One Redis command's integer answer.
fn redis_int(server: &RedisServer, args: &[&str]) -> Option<i64> {
    let value = server.try_cli(args).ok()?;
    redis::from_redis_value_ref::<Option<i64>>(&value)
        .ok()
        .flatten()
}

/// The on-disk size of the history tables (`pg_total_relation_size`: heap, indexes and TOAST
/// of `switchboard_history` and `switchboard_streams`) and the rows of `switchboard_history`.
async fn postgres_sizes(url: &str) -> Result<(i64, i64, i64), String> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("connect to {url}: {e}"))?;
    let driver = tokio::task::spawn_local(connection);
    let row = client
        .query_one(
            "SELECT pg_total_relation_size('switchboard_history'), \
             pg_total_relation_size('switchboard_streams'), \
             (SELECT count(*) FROM switchboard_history)",
            &[],
        )
        .await
        .map_err(|e| format!("table sizes: {e}"));
    drop(client);
    let _ = driver.await;
    let row = row?;
    Ok((row.get(0), row.get(1), row.get(2)))
}

/// The memory figures of `topics` topics at [`HISTORY`] publications each.
pub(super) async fn measure_memory(target: &Target, backend: Backend, topics: u64) -> Value {
    let addr = target.addrs[0];
    let pid = target.pids[0];
    let redis = target.backend.as_ref().and_then(BackendServer::redis);
    let postgres_url = target
        .backend
        .as_ref()
        .filter(|b| b.postgres().is_some())
        .map(BackendServer::url);
    let mut out = json!({
        "backend": backend.name(),
        "topics": topics,
        "publications_per_topic": HISTORY,
        "payload_bytes": PAYLOAD_BYTES,
    });
    // A warm-up topic first, so one-time costs (the HTTP connections, the function library's
    // first call, the allocator's first arenas, the tables' first pages) are in the baseline.
    let warm: Rc<dyn Fn(u64) -> String> = Rc::new(|_| format!("{NS_ON}:warm-up"));
    if let Err(e) = publish_counted(addr, HISTORY, MEMORY_PUBLISHERS, warm).await {
        out["failure"] = json!(format!("warm-up: {e}"));
        return out;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let used_before = redis.and_then(used_memory);
    let pg_before = match &postgres_url {
        Some(url) => Some(postgres_sizes(url).await),
        None => None,
    };
    let rss_before = pid.and_then(rss_kib);
    let topic: Rc<dyn Fn(u64) -> String> =
        Rc::new(move |n: u64| format!("{NS_ON}:{}", n % topics.max(1)));
    let seconds = match publish_counted(addr, topics * HISTORY, MEMORY_PUBLISHERS, topic).await {
        Ok(seconds) => seconds,
        Err(e) => {
            out["failure"] = json!(e);
            return out;
        }
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let used_after = redis.and_then(used_memory);
    let pg_after = match &postgres_url {
        Some(url) => Some(postgres_sizes(url).await),
        None => None,
    };
    let rss_after = pid.and_then(rss_kib);
    let publications = topics * HISTORY;
    out["publish_seconds"] = json!(seconds);
    out["publishes_per_s"] = json!(publications as f64 / seconds);
    out["node_rss_kib"] = json!({ "before": rss_before, "after": rss_after });
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        let delta = after.saturating_sub(before) * 1024;
        out["node_rss_delta_bytes"] = json!(delta);
        out["node_rss_bytes_per_topic"] = json!(delta as f64 / topics as f64);
    }
    if let Some(redis) = redis {
        redis_memory(redis, topics, used_before, used_after, &mut out);
    }
    if let (Some(before), Some(after)) = (pg_before, pg_after) {
        match (before, after) {
            (Ok(before), Ok(after)) => postgres_memory(topics, before, after, &mut out),
            (Err(e), _) | (_, Err(e)) => out["failure"] = json!(e),
        }
    }
    out
}

/// The Redis figures: `INFO memory` delta and `MEMORY USAGE` of one topic's keys.
fn redis_memory(
    server: &RedisServer,
    topics: u64,
    before: Option<u64>,
    after: Option<u64>,
    out: &mut Value,
) {
    let (Some(before), Some(after)) = (before, after) else {
        out["failure"] = json!("INFO memory gave no used_memory");
        return;
    };
    let publications = topics * HISTORY;
    let delta = after.saturating_sub(before);
    let stream = format!("switchboard:stream:{NS_ON}:0");
    let meta = format!("switchboard:meta:{NS_ON}:0");
    let stream_bytes = redis_int(server, &["MEMORY", "USAGE", &stream, "SAMPLES", "0"]);
    let meta_bytes = redis_int(server, &["MEMORY", "USAGE", &meta, "SAMPLES", "0"]);
    let xlen = redis_int(server, &["XLEN", &stream]);
    let offset = server
        .try_cli(&["HGET", &meta, "offset"])
        .ok()
        .and_then(|v| {
            redis::from_redis_value_ref::<Option<String>>(&v)
                .ok()
                .flatten()
        });
    out["used_memory"] = json!({ "before": before, "after": after, "delta": delta });
    out["used_memory_bytes_per_topic"] = json!(delta as f64 / topics as f64);
    out["used_memory_bytes_per_publication"] = json!(delta as f64 / publications as f64);
    out["one_topic"] = json!({
        "stream_key": stream,
        "meta_key": meta,
        "stream_memory_usage": stream_bytes,
        "meta_memory_usage": meta_bytes,
        "xlen": xlen,
        "offset": offset,
    });
    out["keys"] = json!(redis_int(server, &["DBSIZE"]));
    if xlen != Some(HISTORY as i64) {
        out["failure"] = json!(format!("{stream} holds {xlen:?} entries, not {HISTORY}"));
    }
}

/// The PostgreSQL figures: the history tables' growth.
fn postgres_memory(topics: u64, before: (i64, i64, i64), after: (i64, i64, i64), out: &mut Value) {
    let publications = topics * HISTORY;
    let delta = (after.0 + after.1)
        .saturating_sub(before.0 + before.1)
        .max(0);
    out["tables_bytes"] = json!({
        "before": before.0 + before.1,
        "after": after.0 + after.1,
        "delta": delta,
        "history_after": after.0,
        "streams_after": after.1,
    });
    out["tables_bytes_per_topic"] = json!(delta as f64 / topics as f64);
    out["tables_bytes_per_publication"] = json!(delta as f64 / publications as f64);
    out["history_rows"] = json!(after.2);
    let want = (topics + 1) * HISTORY;
    if after.2 != want as i64 {
        out["failure"] = json!(format!(
            "switchboard_history holds {} rows, not {want}",
            after.2
        ));
    }
}
