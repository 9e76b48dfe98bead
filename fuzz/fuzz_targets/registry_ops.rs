//! Fuzz target: an arbitrary op sequence and topic limit run through the registry and the
//! plain model (`switchboard_core::model::check_ops`); any divergence is a crash.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use switchboard_core::model::{check_ops, Op};

/// Longest sequence checked: the checker compares the whole state after every step, so very
/// long inputs would only slow the fuzzer down without reaching new states (sessions and
/// topics are drawn from small pools).
const MAX_OPS: usize = 512;

#[derive(Debug, Arbitrary)]
struct Input {
    /// Topics per session, mapped onto 1..=8.
    limit: u8,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let limit = usize::from(input.limit % 8) + 1;
    let ops = &input.ops[..input.ops.len().min(MAX_OPS)];
    if let Err(divergence) = check_ops(ops, limit) {
        panic!("registry diverged from the model (limit {limit}): {divergence}");
    }
});
