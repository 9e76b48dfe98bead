//! The `history` scenario's table (without `--json`).

use serde_json::Value;

use super::{HISTORY, PAYLOAD_BYTES};

/// Prints `report` (what [`super::run`] gathered) as tables.
pub(super) fn print_report(report: &Value) {
    let f = |v: &Value, digits: usize| {
        v.as_f64()
            .map_or_else(|| "-".to_owned(), |x| format!("{x:.digits$}"))
    };
    println!();
    println!(
        "scenario history, {} cpus shared by the node(s), their server and this tool; {} run(s), \
         fresh nodes (and server) per run; redis, postgres: publishers on node A, subscribers \
         on node B",
        report["machine"]["cpus"], report["runs"]
    );
    println!();
    println!(
        "publish throughput, history off vs history = {HISTORY} (same nodes, alternating order)"
    );
    println!(
        "{:<8} {:<32} {:>11} {:>11} {:>7}  per-run on/off",
        "backend", "phase", "off msgs/s", "on msgs/s", "on/off"
    );
    for row in report["throughput"].as_array().into_iter().flatten() {
        let ratios: Vec<String> = row["ratios"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| f(r, 3))
            .collect();
        println!(
            "{:<8} {:<32} {:>11} {:>11} {:>7}  {}",
            row["backend"].as_str().unwrap_or(""),
            row["phase"].as_str().unwrap_or(""),
            f(&row["off_median"], 0),
            f(&row["on_median"], 0),
            f(&row["ratio_median"], 3),
            ratios.join(" ")
        );
        if row["failed_runs"].as_u64().unwrap_or(0) > 0 {
            println!(
                "    ! {} run(s) lost or refused something ({} missing); --json has them",
                row["failed_runs"], row["missing"]
            );
        }
    }
    println!();
    println!("recovery: join with since -> the last missed message arrives (ms)");
    println!(
        "{:<8} {:>7} {:>8} {:>9} {:>8} {:>8} {:>9} {:>11}",
        "backend", "missed", "samples", "median", "min", "max", "reply", "msgs/s"
    );
    for row in report["recovery"].as_array().into_iter().flatten() {
        println!(
            "{:<8} {:>7} {:>8} {:>9} {:>8} {:>8} {:>9} {:>11}",
            row["backend"].as_str().unwrap_or(""),
            row["missed"],
            format!("{}/{}", row["good"], row["samples"]),
            f(&row["last_ms_median"], 2),
            f(&row["last_ms_min"], 2),
            f(&row["last_ms_max"], 2),
            f(&row["reply_ms_median"], 2),
            f(&row["messages_per_s_median"], 0),
        );
        for sample in row["runs"].as_array().into_iter().flatten() {
            if let Some(problems) = sample["problems"].as_array().filter(|p| !p.is_empty()) {
                println!(
                    "    ! {}: {}",
                    sample["topic"],
                    Value::from(problems.clone())
                );
            }
        }
    }
    println!();
    println!(
        "memory at history = {HISTORY}: topics x {HISTORY} publications of {PAYLOAD_BYTES}-byte \
         payloads"
    );
    for row in report["memory"].as_array().into_iter().flatten() {
        let backend = row["backend"].as_str().unwrap_or("");
        if let Some(failure) = row.get("failure") {
            println!("    ! {backend}: {failure}");
        }
        if backend == "redis" {
            let one = &row["one_topic"];
            println!(
                "redis    {} topics: used_memory +{} bytes = {} bytes/topic, {} bytes/publication; \
                 MEMORY USAGE of one topic: stream {} + meta {} bytes ({} entries)",
                row["topics"],
                row["used_memory"]["delta"],
                f(&row["used_memory_bytes_per_topic"], 0),
                f(&row["used_memory_bytes_per_publication"], 1),
                one["stream_memory_usage"],
                one["meta_memory_usage"],
                one["xlen"],
            );
        } else if backend == "postgres" {
            println!(
                "postgres {} topics: history tables +{} bytes = {} bytes/topic, {} \
                 bytes/publication ({} rows)",
                row["topics"],
                row["tables_bytes"]["delta"],
                f(&row["tables_bytes_per_topic"], 0),
                f(&row["tables_bytes_per_publication"], 1),
                row["history_rows"],
            );
        } else {
            println!(
                "{backend:<8} {} topics: node VmRSS +{} bytes = {} bytes/topic",
                row["topics"],
                row["node_rss_delta_bytes"],
                f(&row["node_rss_bytes_per_topic"], 0),
            );
        }
    }
    println!(
        "{}",
        if report["ok"].as_bool() == Some(true) {
            "ok: nothing lost or refused"
        } else {
            "NOT OK: something was lost, refused or recovered wrongly (see !)"
        }
    );
}
