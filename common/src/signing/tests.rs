use super::*;
use crate::fixture::{self, CLUSTER, NOW};
use crate::model::Timestamp;

fn expect() -> Expectation<'static> {
    Expectation {
        cluster: CLUSTER,
        now: NOW,
    }
}

fn never_applied(_: &AppRef) -> Option<u64> {
    None
}

#[test]
fn a_signed_bundle_verifies_and_comes_back_unchanged() {
    let signer = fixture::signer(1);
    let bundle = fixture::bundle("web", 3, 4);
    let envelope = signer.sign(&bundle).unwrap();
    let opened = verify(
        &envelope,
        &fixture::trusting(&[&signer]),
        expect(),
        never_applied,
    )
    .unwrap();
    assert_eq!(opened.digest().unwrap(), bundle.digest().unwrap());
    assert_eq!(opened.generation, 3);
}

#[test]
fn a_flipped_bit_anywhere_in_an_envelope_is_rejected() {
    let signer = fixture::signer(1);
    let trusted = fixture::trusting(&[&signer]);
    let bytes = signer
        .sign(&fixture::bundle("web", 1, 2))
        .unwrap()
        .encode()
        .unwrap();
    assert!(verify_bytes(&bytes, &trusted, expect(), never_applied).is_ok());
    for bit in 0..bytes.len() * 8 {
        let mut flipped = bytes.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        assert!(
            verify_bytes(&flipped, &trusted, expect(), never_applied).is_err(),
            "bit {bit} flipped and still accepted"
        );
    }
}

#[test]
fn a_tampered_payload_with_a_recomputed_digest_has_a_bad_signature() {
    let signer = fixture::signer(1);
    let mut envelope = signer.sign(&fixture::bundle("web", 1, 2)).unwrap();
    let mut other = fixture::bundle("web", 1, 2);
    other.objects[0] = fixture::config_map("cm-0", "evil");
    envelope.payload = other.encode().unwrap();
    envelope.digest = Digest::of(&envelope.payload);
    let result = verify(
        &envelope,
        &fixture::trusting(&[&signer]),
        expect(),
        never_applied,
    );
    assert_eq!(result, Err(VerifyError::BadSignature(signer.key_id())));
}

#[test]
fn a_payload_that_does_not_match_its_digest_is_rejected() {
    let signer = fixture::signer(1);
    let mut envelope = signer.sign(&fixture::bundle("web", 1, 2)).unwrap();
    envelope.payload.push(0);
    let result = verify(
        &envelope,
        &fixture::trusting(&[&signer]),
        expect(),
        never_applied,
    );
    assert!(matches!(result, Err(VerifyError::DigestMismatch { .. })));
}

#[test]
fn a_bundle_signed_by_an_unknown_key_is_rejected() {
    let stranger = fixture::signer(9);
    let envelope = stranger.sign(&fixture::bundle("web", 1, 1)).unwrap();
    let result = verify(
        &envelope,
        &fixture::trusting(&[&fixture::signer(1)]),
        expect(),
        never_applied,
    );
    assert_eq!(result, Err(VerifyError::UnknownKey(stranger.key_id())));
}

#[test]
fn a_replayed_old_generation_is_rejected() {
    let signer = fixture::signer(1);
    let trusted = fixture::trusting(&[&signer]);
    let old = signer.sign(&fixture::bundle("web", 4, 1)).unwrap();
    let newer = signer.sign(&fixture::bundle("web", 5, 1)).unwrap();
    assert!(verify(&newer, &trusted, expect(), |_| Some(4)).is_ok());
    assert!(matches!(
        verify(&old, &trusted, expect(), |_| Some(5)),
        Err(VerifyError::Stale {
            generation: 4,
            last_applied: 5,
            ..
        })
    ));
    // The same generation again is not newer either.
    assert!(matches!(
        verify(&newer, &trusted, expect(), |_| Some(5)),
        Err(VerifyError::Stale { .. })
    ));
}

#[test]
fn staleness_is_judged_per_app() {
    let signer = fixture::signer(1);
    let envelope = signer.sign(&fixture::bundle("api", 1, 1)).unwrap();
    let last = |app: &AppRef| (app.name == "web").then_some(10);
    assert!(verify(&envelope, &fixture::trusting(&[&signer]), expect(), last).is_ok());
}

#[test]
fn a_bundle_for_another_cluster_is_rejected() {
    let signer = fixture::signer(1);
    let envelope = signer.sign(&fixture::bundle("web", 1, 1)).unwrap();
    let result = verify(
        &envelope,
        &fixture::trusting(&[&signer]),
        Expectation {
            cluster: "west",
            now: NOW,
        },
        never_applied,
    );
    assert_eq!(
        result,
        Err(VerifyError::WrongCluster {
            expected: "west".to_owned(),
            found: CLUSTER.to_owned(),
        })
    );
}

#[test]
fn an_expired_bundle_is_rejected() {
    let signer = fixture::signer(1);
    let bundle = fixture::bundle("web", 1, 1);
    let envelope = signer.sign(&bundle).unwrap();
    let at_expiry = Expectation {
        cluster: CLUSTER,
        now: bundle.not_after,
    };
    assert_eq!(
        verify(
            &envelope,
            &fixture::trusting(&[&signer]),
            at_expiry,
            never_applied
        ),
        Err(VerifyError::Expired {
            not_after: bundle.not_after,
            now: bundle.not_after,
        })
    );
}

#[test]
fn a_signed_header_that_disagrees_with_the_bundle_is_malformed() {
    let signer = fixture::signer(1);
    let bundle = fixture::bundle("web", 2, 1);
    let mut envelope = signer.sign(&bundle).unwrap();
    // Re-sign a header that lies about the generation: the signature is valid, the
    // content is not.
    envelope.generation = 99;
    envelope.signature = signer.key.sign(&envelope.signed_bytes()).to_bytes();
    assert!(matches!(
        verify(
            &envelope,
            &fixture::trusting(&[&signer]),
            expect(),
            never_applied
        ),
        Err(VerifyError::Malformed(_))
    ));
}

#[test]
fn any_key_of_a_multi_key_set_is_accepted() {
    let (a, b) = (fixture::signer(1), fixture::signer(2));
    let trusted = fixture::trusting(&[&a, &b]);
    for signer in [&a, &b] {
        let envelope = signer.sign(&fixture::bundle("web", 1, 1)).unwrap();
        assert!(verify(&envelope, &trusted, expect(), never_applied).is_ok());
    }
}

#[test]
fn key_id_is_the_first_eight_bytes_of_the_public_key_hash() {
    let signer = fixture::signer(1);
    let hash = Digest::of(&signer.public_key());
    assert_eq!(signer.key_id().0, hash.0[..8]);
}

#[test]
fn a_key_set_rotates_through_an_update_signed_by_a_current_key() {
    let (old, new) = (fixture::signer(1), fixture::signer(2));
    let current = fixture::trusting(&[&old]);
    let next = KeySet::new(2, &[old.public_key(), new.public_key()]).unwrap();
    let update = old.sign_key_set(&next);
    let rotated = current.apply_update(&update).unwrap();
    assert!(rotated.contains(new.key_id()));
    // Then the old key can be dropped by an update signed with the new one.
    let only_new = KeySet::new(3, &[new.public_key()]).unwrap();
    let rotated = rotated.apply_update(&new.sign_key_set(&only_new)).unwrap();
    assert!(!rotated.contains(old.key_id()));
    let envelope = old.sign(&fixture::bundle("web", 1, 1)).unwrap();
    assert_eq!(
        verify(&envelope, &rotated, expect(), never_applied),
        Err(VerifyError::UnknownKey(old.key_id()))
    );
}

#[test]
fn a_key_set_update_not_signed_by_a_trusted_key_is_rejected() {
    let (trusted, stranger) = (fixture::signer(1), fixture::signer(9));
    let current = fixture::trusting(&[&trusted]);
    let takeover = KeySet::new(2, &[stranger.public_key()]).unwrap();
    let update = stranger.sign_key_set(&takeover);
    assert_eq!(
        current.apply_update(&update),
        Err(KeySetError::UntrustedSigner(stranger.key_id()))
    );
    // Claiming a trusted signer's id does not help without its signature.
    let forged = KeySetUpdate {
        signer: trusted.key_id(),
        ..update
    };
    assert_eq!(
        current.apply_update(&forged),
        Err(KeySetError::BadSignature(trusted.key_id()))
    );
}

#[test]
fn a_replayed_key_set_update_is_rejected() {
    let signer = fixture::signer(1);
    let current = KeySet::new(5, &[signer.public_key()]).unwrap();
    let replay = signer.sign_key_set(&KeySet::new(5, &[signer.public_key()]).unwrap());
    assert_eq!(
        current.apply_update(&replay),
        Err(KeySetError::Stale {
            current: 5,
            update: 5
        })
    );
}

#[test]
fn key_sets_refuse_empty_duplicate_and_invalid_keys() {
    let key = fixture::signer(1).public_key();
    assert!(matches!(KeySet::new(1, &[]), Err(Error::KeyCount(0))));
    assert!(matches!(
        KeySet::new(1, &[key, key]),
        Err(Error::DuplicateKey(_))
    ));
    assert!(matches!(
        KeySet::new(1, &[[0u8; 32]; MAX_KEYS + 1]),
        Err(Error::KeyCount(_))
    ));
    // A y-coordinate that is not on the curve.
    let mut off_curve = [0xFFu8; 32];
    off_curve[31] = 0x7F;
    off_curve[0] = 0xED;
    let not_a_point = (0u8..=255)
        .map(|b| {
            let mut k = off_curve;
            k[1] = b;
            k
        })
        .find(|k| VerifyingKey::from_bytes(k).is_err())
        .unwrap();
    assert!(matches!(
        KeySet::new(1, &[not_a_point]),
        Err(Error::InvalidPublicKey(_))
    ));
}

#[test]
fn key_sets_round_trip_and_garbage_is_malformed() {
    let set = fixture::trusting(&[&fixture::signer(1), &fixture::signer(2)]);
    assert_eq!(KeySet::decode(&set.encode().unwrap()).unwrap(), set);
    assert!(matches!(
        KeySet::decode(b"garbage"),
        Err(KeySetError::Malformed(_))
    ));
    let update = fixture::signer(1).sign_key_set(&set);
    assert_eq!(
        KeySetUpdate::decode(&update.encode().unwrap()).unwrap(),
        update
    );
}

#[test]
fn expiry_is_strict_one_second_before_is_accepted() {
    let signer = fixture::signer(1);
    let bundle = fixture::bundle("web", 1, 1);
    let envelope = signer.sign(&bundle).unwrap();
    let just_before = Expectation {
        cluster: CLUSTER,
        now: Timestamp(bundle.not_after.0 - 1),
    };
    assert!(
        verify(
            &envelope,
            &fixture::trusting(&[&signer]),
            just_before,
            never_applied
        )
        .is_ok()
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    fn signed() -> &'static (KeySet, Vec<u8>) {
        static SIGNED: OnceLock<(KeySet, Vec<u8>)> = OnceLock::new();
        SIGNED.get_or_init(|| {
            let signer = fixture::signer(1);
            let bytes = signer
                .sign(&fixture::bundle("web", 2, 3))
                .unwrap()
                .encode()
                .unwrap();
            (fixture::trusting(&[&signer]), bytes)
        })
    }

    proptest! {
        #[test]
        fn garbage_envelopes_are_rejected_without_panicking(
            bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        ) {
            let (trusted, _) = signed();
            prop_assert!(verify_bytes(&bytes, trusted, expect(), never_applied).is_err());
        }

        #[test]
        fn any_changed_byte_in_a_signed_envelope_is_rejected(
            index in any::<prop::sample::Index>(),
            xor in 1u8..=255,
        ) {
            let (trusted, bytes) = signed();
            let mut changed = bytes.clone();
            let at = index.index(changed.len());
            changed[at] ^= xor;
            prop_assert!(verify_bytes(&changed, trusted, expect(), never_applied).is_err());
        }

        #[test]
        fn truncated_or_extended_envelopes_are_rejected(
            cut in any::<prop::sample::Index>(),
            extra in proptest::collection::vec(any::<u8>(), 1..16),
        ) {
            let (trusted, bytes) = signed();
            let truncated = &bytes[..cut.index(bytes.len())];
            prop_assert!(verify_bytes(truncated, trusted, expect(), never_applied).is_err());
            let mut extended = bytes.clone();
            extended.extend_from_slice(&extra);
            prop_assert!(verify_bytes(&extended, trusted, expect(), never_applied).is_err());
        }

        #[test]
        fn garbage_bundles_and_key_sets_give_typed_errors(
            bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        ) {
            let _ = Bundle::decode(&bytes);
            let _ = KeySet::decode(&bytes);
            if let Ok(update) = KeySetUpdate::decode(&bytes) {
                let (trusted, _) = signed();
                prop_assert!(trusted.apply_update(&update).is_err());
            }
        }

        #[test]
        fn digest_is_the_same_for_every_object_order(
            order in Just((0..12usize).collect::<Vec<_>>()).prop_shuffle(),
        ) {
            let bundle = fixture::bundle("web", 1, 12);
            let mut shuffled = bundle.clone();
            shuffled.objects = order.iter().map(|&i| bundle.objects[i].clone()).collect();
            prop_assert_eq!(bundle.digest().unwrap(), shuffled.digest().unwrap());
        }
    }
}
