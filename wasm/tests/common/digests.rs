//! The model-based op-sequence checks of `switchboard_core::model`, with digests computed
//! natively. The native test (`tests/native.rs`) and the wasm tests (`tests/node.rs`,
//! `tests/browser.rs`) check the same table, so the core makes the same decisions on wasm32 as
//! on the server's target.
//!
//! After a deliberate change to `check_ops` or `ops_from_seed`, run
//! `cargo test -p switchboard-wasm --test native` and copy the printed rows here.

use switchboard_core::model::{check_ops, ops_from_seed};

/// `(seed, len, limit, digest)`: `check_ops(&ops_from_seed(seed, len), limit)` must return
/// `Ok(digest)`. Sequences stay at most 1000 ops long: the checker compares the whole state after
/// every step, which an unoptimised wasm test build runs slowly.
pub(crate) const MODEL_DIGESTS: &[(u64, usize, usize, u64)] = &[
    (0x0, 50, 1, 0x884b_da4a_d981_ece2),
    (0x1, 300, 3, 0xea43_8198_f589_fe1d),
    (0x7, 500, 4, 0x887d_3ee7_570e_c4e9),
    (0x2a, 1000, 100, 0xe022_4bb8_cc6a_e9c1),
    (0x4d2, 800, 2, 0x0aed_b1d1_1bc9_13be),
    (0xdead_beef, 1000, 5, 0xa91c_adb4_5f99_283e),
    (0xffff_ffff_ffff_ffff, 600, 3, 0x698e_670d_c965_0ef9),
    (0x63, 1000, 8, 0x1164_3782_113b_0d14),
];

/// Runs every row; returns one line per row that diverged or produced another digest, each
/// with the row as it should read now.
pub(crate) fn mismatches() -> Vec<String> {
    MODEL_DIGESTS
        .iter()
        .filter_map(|&(seed, len, limit, expected)| {
            match check_ops(&ops_from_seed(seed, len), limit) {
                Ok(digest) if digest == expected => None,
                Ok(digest) => Some(format!(
                    "digest differs; row now reads ({seed:#x}, {len}, {limit}, {digest:#018x})"
                )),
                Err(divergence) => Some(format!(
                    "seed {seed:#x}: registry and model diverged: {divergence}"
                )),
            }
        })
        .collect()
}
