//! The `history` scenario: what a topic's history costs (issue 12's closing figures).
//!
//! Every node it starts reads a config file this module writes: namespace [`NS_ON`] keeps
//! [`HISTORY`] publications per topic, [`NS_RECOVER`] keeps `--missed` (1,000), and
//! [`NAMESPACE`](crate::NAMESPACE) (`load`) keeps none. For each backend (`--backend`, a list
//! of `memory`, `redis`, `postgres`, or `all`), with fresh nodes (and server) per run:
//! `memory` is one node; `redis` and `postgres` are two nodes sharing a private
//! `redis-server` or PostgreSQL cluster, started the way the bridge tests start them, with
//! publishers on A and subscribers on B. Through a server, with history and without, every
//! message reaches B through the server, so the ratio is the cost of the history alone (a
//! publication with history is delivered from the backend by every node, its publisher's
//! included).
//!
//! 1. **Throughput, history on vs off.** Each throughput phase (the preset; the phase flags
//!    override it) runs twice on the same nodes, once on `load:` topics and once on `hist:`
//!    topics, with the same publishers and subscribers, in alternating order from run to run.
//!    Reported: msgs/s of each, and the ratio on/off of each run (median).
//! 2. **Recovery of `--missed` messages** ([`recovery`]). `--recoveries` times per run, on a
//!    topic of its own: a socket (on B) joins (the reply gives position P), leaves, `--missed`
//!    messages are published over HTTP (to A; each answered 200, so each has its position),
//!    and the socket joins again with `{"since": P}`. Timed: from writing that join to
//!    reading its reply, and to reading the last missed message. Checked: `recovered: true`,
//!    the reply's position, every missed message exactly once, in order, with positions
//!    P+1.., and nothing more within a short quiet period.
//! 3. **Memory per topic at `history = 100`** ([`memory`]). On one fresh node (and server):
//!    after one warm-up topic, `--topics` topics each get [`HISTORY`] publications of a
//!    [`PAYLOAD_BYTES`]-byte payload over HTTP ([`publish`]). Redis: `INFO memory`
//!    `used_memory` after − before, per topic and per publication, and `MEMORY USAGE ...
//!    SAMPLES 0` of one topic's stream and meta keys. PostgreSQL: `pg_total_relation_size` of
//!    the history tables after − before. The memory backend: the node's VmRSS after − before.
//!
//! [`report`] prints the table.

mod memory;
mod publish;
mod recovery;
mod report;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use switchboard_e2e::BackendKind;

use memory::measure_memory;
use recovery::{recover_once, recovery_summary};
use report::print_report;

use crate::{median, run_failed, run_phase, spawn_target, Options, Phase};

/// The namespace whose topics keep [`HISTORY`] publications (throughput and memory).
const NS_ON: &str = "hist";
/// The namespace of the recovery measurement (keeps `--missed` publications).
const NS_RECOVER: &str = "recover";
/// Publications kept per topic of [`NS_ON`], and published per topic for the memory figure.
const HISTORY: u64 = 100;
/// Bytes of every payload the recovery and memory measurements publish
/// ([`publish::fixed_payload`]).
const PAYLOAD_BYTES: usize = 100;
/// HTTP connections the memory measurement publishes on.
const MEMORY_PUBLISHERS: usize = 4;
/// How long one recovery may take, and one counted publish.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a recovered socket must stay quiet after its last missed message.
const QUIET: Duration = Duration::from_millis(300);

/// A backend the scenario measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Backend {
    /// One node, history in its memory.
    Memory,
    /// Two nodes sharing a private `redis-server` (history in Redis Streams).
    Redis,
    /// Two nodes sharing a private PostgreSQL cluster (history in `switchboard_history`).
    Postgres,
}

impl Backend {
    /// Every backend, in the order they run.
    const ALL: [Self; 3] = [Self::Memory, Self::Redis, Self::Postgres];

    /// A comma-separated list of `memory`, `redis` and `postgres`, or `all`.
    pub(super) fn parse_list(text: &str) -> Result<Vec<Self>, String> {
        if text == "all" {
            return Ok(Self::ALL.to_vec());
        }
        let mut backends = Vec::new();
        for name in text.split(',') {
            let backend = Self::ALL
                .into_iter()
                .find(|b| b.name() == name.trim())
                .ok_or_else(|| {
                    format!("--backend {text}: a list of memory, redis, postgres, or all")
                })?;
            if !backends.contains(&backend) {
                backends.push(backend);
            }
        }
        Ok(backends)
    }

    const fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Redis => "redis",
            Self::Postgres => "postgres",
        }
    }

    /// The server the nodes share, if any.
    const fn server(self) -> Option<BackendKind> {
        match self {
            Self::Memory => None,
            Self::Redis => Some(BackendKind::Redis),
            Self::Postgres => Some(BackendKind::Postgres),
        }
    }

    /// Nodes a throughput and recovery run starts: with a server, publishers on the first
    /// and subscribers (and the recovering socket) on the second.
    const fn nodes(self) -> usize {
        match self {
            Self::Memory => 1,
            Self::Redis | Self::Postgres => 2,
        }
    }
}

/// The `history` scenario's own flags.
#[derive(Debug, Clone)]
pub(super) struct HistoryOptions {
    /// `--backend`.
    pub(super) backends: Vec<Backend>,
    /// `--missed`: messages a recovering socket missed.
    pub(super) missed: u64,
    /// `--recoveries`: recoveries per run and backend.
    pub(super) recoveries: usize,
    /// `--topics`: topics of the memory measurement.
    pub(super) topics: u64,
}

impl Default for HistoryOptions {
    fn default() -> Self {
        Self {
            backends: Backend::ALL.to_vec(),
            missed: 1_000,
            recoveries: 5,
            topics: 1_000,
        }
    }
}

/// The throughput phases of the preset (flags override them, as for every scenario).
pub(super) fn phases() -> Vec<Phase> {
    let mut socket = Phase::new("socket 1x10 max", 10);
    socket.window = 1_000;
    socket.seconds = 4.0;
    let mut http = Phase::new("http 4 pubs, 1000 own topics", 1_000);
    http.pattern = super::Pattern::Own;
    http.via = super::Via::Http;
    http.publishers = 4;
    http.seconds = 4.0;
    vec![socket, http]
}

/// The nodes' config file: history for [`NS_ON`] and [`NS_RECOVER`].
fn config_text(missed: u64) -> String {
    format!(
        "# Written by `load history`.\n\
         [channels.{NS_ON}]\nhistory = {HISTORY}\nhistory_ttl = \"10m\"\n\n\
         [channels.{NS_RECOVER}]\nhistory = {}\nhistory_ttl = \"10m\"\n",
        missed.max(1)
    )
}

/// Runs the scenario; whether nothing was lost, refused or recovered wrongly.
pub(super) async fn run(options: Options, phases: Vec<Phase>, nofile: u64) -> bool {
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let history = options.history.clone();
    let config = config_text(history.missed);
    let path: PathBuf =
        std::env::temp_dir().join(format!("load-history-{}.toml", std::process::id()));
    if let Err(e) = std::fs::write(&path, &config) {
        eprintln!("load: cannot write {}: {e}", path.display());
        return false;
    }
    let extra: Vec<String> = [
        "--config",
        &path.to_string_lossy(),
        "--join-rate",
        "1000",
        "--join-burst",
        "1000",
    ]
    .iter()
    .map(|arg| (*arg).to_owned())
    .collect();
    let mut ok = true;

    // (backend, phase) -> (off runs, on runs), in run order.
    let mut throughput: Vec<(Backend, usize, Vec<Value>, Vec<Value>)> = Vec::new();
    for &backend in &history.backends {
        for i in 0..phases.len() {
            throughput.push((backend, i, Vec::new(), Vec::new()));
        }
    }
    let mut recoveries: Vec<(Backend, Vec<Value>)> = history
        .backends
        .iter()
        .map(|&backend| (backend, Vec::new()))
        .collect();
    for run in 0..options.runs {
        for &backend in &history.backends {
            let target = spawn_target(&options, backend.nodes(), backend.server(), &extra).await;
            eprintln!(
                "load: history run {}/{} on {} ({:?}, node {}, pids {:?}); {cpus} cpus shared \
                 by the node(s), their server and this tool",
                run + 1,
                options.runs,
                backend.name(),
                target.addrs,
                target.binary,
                target.pids,
            );
            for (i, phase) in phases.iter().enumerate() {
                // Alternate which goes first, so a drift within a run favours neither.
                let order = if run % 2 == 0 {
                    [false, true]
                } else {
                    [true, false]
                };
                for with_history in order {
                    let mut p = phase.clone();
                    if with_history {
                        p.namespace = NS_ON.to_owned();
                        p.name = format!("{}, history {HISTORY}", phase.name);
                    } else {
                        p.name = format!("{}, history off", phase.name);
                    }
                    eprintln!(
                        "load: {}: phase {:?}, {} clients ...",
                        backend.name(),
                        p.name,
                        p.clients
                    );
                    let result = run_phase(&p, &target, &options, None).await;
                    if run_failed(&result) {
                        ok = false;
                        eprintln!(
                            "load: phase {:?} lost or refused something: {result}",
                            p.name
                        );
                    }
                    let slot = throughput
                        .iter_mut()
                        .find(|(b, j, _, _)| *b == backend && *j == i);
                    if let Some((_, _, off, on)) = slot {
                        if with_history { on } else { off }.push(result);
                    }
                }
            }
            for k in 0..history.recoveries {
                let topic = format!("{NS_RECOVER}:{run}:{k}");
                eprintln!(
                    "load: {}: recovery {}/{} of {} missed messages on {topic} ...",
                    backend.name(),
                    k + 1,
                    history.recoveries,
                    history.missed
                );
                let sample = recover_once(&target, &topic, history.missed).await;
                if sample["problems"].as_array().is_none_or(|p| !p.is_empty()) {
                    ok = false;
                    eprintln!("load: recovery on {topic} went wrong: {sample}");
                }
                if let Some((_, samples)) = recoveries.iter_mut().find(|(b, _)| *b == backend) {
                    samples.push(sample);
                }
            }
            drop(target);
        }
    }

    let mut memory = Vec::new();
    for &backend in &history.backends {
        let target = spawn_target(&options, 1, backend.server(), &extra).await;
        eprintln!(
            "load: {}: memory of {} topics x {HISTORY} publications of {PAYLOAD_BYTES} bytes ...",
            backend.name(),
            history.topics
        );
        let figures = measure_memory(&target, backend, history.topics).await;
        if figures.get("failure").is_some() {
            ok = false;
            eprintln!("load: memory measurement went wrong: {figures}");
        }
        memory.push(figures);
        drop(target);
    }
    let _ = std::fs::remove_file(&path);

    let report = json!({
        "scenario": "history",
        "machine": {
            "cpus": cpus,
            "nofile_soft_limit": nofile,
            "note": "the node(s), their server and this tool share these cpus",
        },
        "runs": options.runs,
        "config": config,
        "throughput": throughput.into_iter().map(|(backend, i, off, on)| {
            throughput_summary(backend, &phases[i], &off, &on)
        }).collect::<Vec<_>>(),
        "recovery": recoveries.into_iter().map(|(backend, samples)| {
            recovery_summary(backend, history.missed, samples)
        }).collect::<Vec<_>>(),
        "memory": memory,
        "ok": ok,
    });
    if options.json {
        println!("{report}");
    } else {
        print_report(&report);
    }
    ok
}

// ---- throughput ----------------------------------------------------------------------------

/// One phase on one backend: the rates off and on, their medians and the per-run ratios.
fn throughput_summary(backend: Backend, phase: &Phase, off: &[Value], on: &[Value]) -> Value {
    let rate = |runs: &[Value]| {
        runs.iter()
            .filter_map(|r| r["msgs_per_s"].as_f64())
            .collect::<Vec<_>>()
    };
    let (off_rates, on_rates) = (rate(off), rate(on));
    // Paired: the two halves of one run ran on the same node one after the other.
    let ratios: Vec<f64> = off_rates
        .iter()
        .zip(&on_rates)
        .filter(|(off, _)| **off > 0.0)
        .map(|(off, on)| on / off)
        .collect();
    json!({
        "backend": backend.name(),
        "phase": phase.name,
        "clients": phase.clients,
        "off_msgs_per_s": off_rates,
        "on_msgs_per_s": on_rates,
        "off_median": median(off_rates.clone()),
        "on_median": median(on_rates.clone()),
        "ratios": ratios,
        "ratio_median": median(ratios.clone()),
        "missing": off.iter().chain(on).map(|r| r["missing"].as_u64().unwrap_or(0)).sum::<u64>(),
        "failed_runs": off.iter().chain(on).filter(|r| run_failed(r)).count(),
        "off_runs": off,
        "on_runs": on,
    })
}
