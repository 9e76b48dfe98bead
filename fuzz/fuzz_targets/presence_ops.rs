//! Fuzz target: an arbitrary sequence of presence changes (joins, leaves, updates, nodes
//! going away, snapshots, raw backend announcements) through a topic's presence table, next to
//! a plain model and phoenix.js' own `syncState`/`syncDiff`
//! (`switchboard_core::presence::model::check`); a list that differs is a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_core::presence::model::{check, Op};

/// Longest sequence checked (every list is compared after every step).
const MAX_OPS: usize = 200;

fuzz_target!(|ops: Vec<Op>| {
    let ops = &ops[..ops.len().min(MAX_OPS)];
    if let Err(broken) = check(ops) {
        panic!("presence lists differ: {broken}");
    }
});
