//! The protocol engine of one connection, driven over a real registry the way the node's hub
//! drives it (`switchboard_core::connection::model`): whatever the client sends and in
//! whatever order the server answers, the connection's memberships and the registry agree,
//! every frame it sends is a valid server frame, and nothing follows a close.

use proptest::prelude::*;
use switchboard_core::connection::model::{check, FrameKind, Step};

fn kind() -> impl Strategy<Value = FrameKind> {
    prop_oneof![
        4 => Just(FrameKind::Join),
        3 => Just(FrameKind::Leave),
        4 => Just(FrameKind::Push),
        1 => Just(FrameKind::Heartbeat),
        1 => Just(FrameKind::ServerEvent),
        1 => Just(FrameKind::NotObject),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        12 => (0..5_u8, 0..5_u8, 0..7_u8, kind()).prop_map(|(join_ref, msg_ref, topic, kind)| {
            Step::Frame { join_ref, msg_ref, topic, kind }
        }),
        1 => "[^\\u{0}]{0,40}".prop_map(Step::Raw),
        1 => prop::collection::vec(any::<u8>(), 0..16).prop_map(Step::Bytes),
        5 => (any::<u8>(), any::<u8>()).prop_map(|(which, how)| Step::AnswerJoin { which, how }),
        3 => (any::<u8>(), any::<u8>()).prop_map(|(which, how)| Step::AnswerPush { which, how }),
        2 => prop_oneof![0..100_u16, 100..2000_u16, 20_000..40_000_u16].prop_map(Step::Advance),
        1 => Just(Step::Binary),
        1 => Just(Step::Oversized),
        1 => Just(Step::ServerClose),
        2 => (0..7_u8).prop_map(Step::StreamBroken),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn memberships_agree_with_the_registry(steps in prop::collection::vec(step(), 0..120)) {
        if let Err(broken) = check(&steps) {
            panic!("{broken}");
        }
    }
}
