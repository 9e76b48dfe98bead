//! The bridge state machine against a simulated backend and a plain model of its promises
//! (`switchboard_core::bridge::model`): random sequences of registry edges, waiting joins,
//! publishes, time, and backend behaviour must never break a promise, and a quiet bridge must
//! end with exactly the registry's topics subscribed.

use proptest::prelude::*;
use switchboard_core::bridge::model::{check, Op, TOPICS};

fn op() -> impl Strategy<Value = Op> {
    let topic = 0..TOPICS.len() as u8;
    prop_oneof![
        4 => topic.clone().prop_map(Op::Toggle),
        3 => topic.prop_map(Op::Wait),
        2 => (1..4000_u16).prop_map(Op::Publish),
        3 => prop_oneof![0..50_u16, 50..2000_u16, 2000..8000_u16].prop_map(Op::Advance),
        2 => any::<bool>().prop_map(Op::Connect),
        4 => prop_oneof![5 => Just(false), 1 => Just(true)].prop_map(Op::Edges),
        3 => prop_oneof![5 => Just(0_u8), 1 => Just(1_u8), 1 => Just(2_u8)].prop_map(Op::Published),
        1 => Just(Op::Pong),
        1 => Just(Op::LinkLost),
        1 => Just(Op::LateReport),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_bridge_keeps_its_promises(ops in prop::collection::vec(op(), 0..200)) {
        if let Err(broken) = check(&ops) {
            panic!("{broken}");
        }
    }
}

#[test]
fn an_empty_run_connects_and_is_ready() {
    check(&[]).unwrap();
}
