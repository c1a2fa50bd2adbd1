//! Fuzzes the generated `coder.tailnet.v2` messages that the engine decodes from a Coder
//! deployment: `CoordinateResponse`, `WorkspaceUpdate` and `DERPMap`.
//!
//! Each input is decoded as all three; a message that decodes is re-encoded, decoded again
//! and must be equal. These messages hold maps (`HashMap`, so byte order of a re-encoding is
//! not stable) and doubles: a message holding a NaN is not equal to itself, so for those
//! only the encoded length and a third decode are checked.
//!
//! Must never panic.

#![no_main]

use std::fmt::Debug;

use codervpn_proto::tailnet;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn round_trip<M: Message + Default + PartialEq + Debug>(data: &[u8], kind: &str) {
    let Ok(msg) = M::decode(data) else {
        return;
    };
    let bytes = msg.encode_to_vec();
    assert_eq!(bytes.len(), msg.encoded_len());
    let again = match M::decode(bytes.as_slice()) {
        Ok(m) => m,
        Err(e) => panic!("re-encoded {kind} does not decode: {e}\n{msg:?}"),
    };
    #[allow(clippy::eq_op)]
    let has_nan = msg != msg;
    if has_nan {
        assert_eq!(
            again.encoded_len(),
            msg.encoded_len(),
            "{kind} changed size"
        );
        let third = again.encode_to_vec();
        if let Err(e) = M::decode(third.as_slice()) {
            panic!("twice re-encoded {kind} does not decode: {e}");
        }
    } else {
        assert_eq!(msg, again, "{kind} changed in a round trip");
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<tailnet::CoordinateResponse>(data, "CoordinateResponse");
    round_trip::<tailnet::WorkspaceUpdate>(data, "WorkspaceUpdate");
    round_trip::<tailnet::DerpMap>(data, "DERPMap");
});
