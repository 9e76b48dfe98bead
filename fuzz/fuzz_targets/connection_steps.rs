//! Fuzz target: arbitrary frames, bytes, answers in any order, time and closes through the
//! protocol engine of one connection over a real registry
//! (`switchboard_core::connection::model::check`): no panic, the connection's memberships and
//! the registry agree, every frame sent is a valid server frame, nothing follows a close.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_core::connection::model::{check, Step};

/// Longest sequence checked.
const MAX_STEPS: usize = 400;

fuzz_target!(|steps: Vec<Step>| {
    let steps = &steps[..steps.len().min(MAX_STEPS)];
    if let Err(broken) = check(steps) {
        panic!("the connection broke an invariant: {broken}");
    }
});
