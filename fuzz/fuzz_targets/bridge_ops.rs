//! Fuzz target: an arbitrary sequence of registry edges, waiting joins, publishes, time and
//! backend behaviour through the bridge machine and its simulated backend
//! (`switchboard_core::bridge::model::check`); a broken promise is a crash.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_core::bridge::model::{check, Op};

/// Longest sequence checked (the harness checks every promise after every step).
const MAX_OPS: usize = 400;

fuzz_target!(|ops: Vec<Op>| {
    let ops = &ops[..ops.len().min(MAX_OPS)];
    if let Err(broken) = check(ops) {
        panic!("the bridge broke a promise: {broken}");
    }
});
