//! Feeds arbitrary bytes to envelope verification, the agent's only gate, and to
//! the bundle and key-set decoders behind it. Seeds are a valid envelope so that
//! mutations reach past the decoder into the signature and bundle checks.
#![no_main]

use flotilla_common::bundle::Bundle;
use flotilla_common::model::Timestamp;
use flotilla_common::signing::{self, BundleSigner, Expectation, KeySet, KeySetUpdate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let signer = BundleSigner::from_seed(&[7; 32]);
    let Ok(trusted) = KeySet::new(1, &[signer.public_key()]) else {
        return;
    };
    let expect = Expectation {
        cluster: "east",
        now: Timestamp(1_800_000_000),
    };
    let _ = signing::verify_bytes(data, &trusted, expect, |_| Some(1));
    let _ = Bundle::decode(data);
    let _ = KeySet::decode(data);
    if let Ok(update) = KeySetUpdate::decode(data) {
        let _ = trusted.apply_update(&update);
    }
});
