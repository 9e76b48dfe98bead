//! Native half of the cross-platform model check: the digests of `common/digests.rs` hold on
//! the host (the wasm tests check the same table on wasm32).
#![cfg(not(target_arch = "wasm32"))]

#[path = "common/digests.rs"]
mod digests;

#[test]
fn model_digests_match_the_table() {
    let mismatches = digests::mismatches();
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}
