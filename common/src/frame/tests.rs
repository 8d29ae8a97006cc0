use super::*;
use crate::fixture;
use crate::message::{Goodbye, GoodbyeReason, Heartbeat, StatusAck};

fn heartbeat() -> Message {
    Message::Heartbeat(Heartbeat { sequence: 42 })
}

#[test]
fn a_frame_round_trips() {
    let limits = Limits::default();
    let frame = encode(&heartbeat(), &limits).unwrap();
    assert_eq!(
        u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize,
        frame.len() - 4
    );
    assert_eq!(
        decode(&frame, Channel::Control, &limits).unwrap(),
        heartbeat()
    );
}

#[test]
fn an_oversized_length_prefix_is_rejected_before_allocation() {
    let limits = Limits::default();
    let mut decoder = FrameDecoder::new(Channel::Control, &limits);
    let mut input: &[u8] = &u32::MAX.to_be_bytes();
    let error = decoder.decode_next(&mut input).unwrap_err();
    assert!(matches!(
        error,
        Error::TooLarge {
            len: 0xFFFF_FFFF,
            limit: CONTROL_LIMIT
        }
    ));
    // Nothing but the 4-byte prefix was ever buffered.
    assert_eq!(decoder.buffered(), PREFIX_LEN);
    let just_over = ((CONTROL_LIMIT + 1) as u32).to_be_bytes();
    assert!(matches!(
        decode(&just_over, Channel::Control, &limits),
        Err(Error::TooLarge { .. })
    ));
}

#[test]
fn the_bundle_limit_is_configurable() {
    let envelope = fixture::signer(1)
        .sign(&fixture::bundle("web", 1, 50))
        .unwrap();
    let message = Message::Bundle(envelope);
    let roomy = Limits::default();
    let frame = encode(&message, &roomy).unwrap();
    assert_eq!(decode(&frame, Channel::Bundle, &roomy).unwrap(), message);
    let tight = Limits::default().with_bundle_limit(1024);
    assert!(matches!(
        encode(&message, &tight),
        Err(Error::TooLarge { .. })
    ));
    assert!(matches!(
        decode(&frame, Channel::Bundle, &tight),
        Err(Error::TooLarge { limit: 1024, .. })
    ));
}

#[test]
fn frames_split_into_single_bytes_reassemble() {
    let limits = Limits::default();
    let messages = [
        heartbeat(),
        Message::StatusAck(StatusAck { sequence: 7 }),
        Message::Goodbye(Goodbye {
            reason: GoodbyeReason::Shutdown,
            message: "bye".to_owned(),
        }),
    ];
    let stream: Vec<u8> = messages
        .iter()
        .flat_map(|m| encode(m, &limits).unwrap())
        .collect();
    let mut decoder = FrameDecoder::new(Channel::Control, &limits);
    let mut out = Vec::new();
    for byte in &stream {
        let mut piece: &[u8] = std::slice::from_ref(byte);
        while let Some(message) = decoder.decode_next(&mut piece).unwrap() {
            out.push(message);
        }
        assert!(piece.is_empty());
    }
    assert_eq!(out, messages);
    assert!(decoder.is_idle());
}

#[test]
fn several_frames_in_one_read_come_out_one_at_a_time() {
    let limits = Limits::default();
    let mut stream = encode(&heartbeat(), &limits).unwrap();
    stream.extend(encode(&heartbeat(), &limits).unwrap());
    let mut decoder = FrameDecoder::new(Channel::Control, &limits);
    let mut input = stream.as_slice();
    assert!(decoder.decode_next(&mut input).unwrap().is_some());
    assert!(decoder.decode_next(&mut input).unwrap().is_some());
    assert!(input.is_empty());
    assert!(decoder.decode_next(&mut input).unwrap().is_none());
}

#[test]
fn a_bundle_on_the_control_stream_is_rejected() {
    let limits = Limits::default();
    let envelope = fixture::signer(1)
        .sign(&fixture::bundle("web", 1, 1))
        .unwrap();
    let frame = encode(&Message::Bundle(envelope), &limits).unwrap();
    assert!(matches!(
        decode(&frame, Channel::Control, &limits),
        Err(Error::WrongChannel {
            channel: Channel::Control,
            found: Channel::Bundle
        })
    ));
}

#[test]
fn truncated_and_padded_frames_are_rejected() {
    let limits = Limits::default();
    let frame = encode(&heartbeat(), &limits).unwrap();
    for len in 0..frame.len() {
        assert!(matches!(
            decode(&frame[..len], Channel::Control, &limits),
            Err(Error::Truncated { .. })
        ));
    }
    let mut padded = frame.clone();
    padded.push(0);
    assert!(matches!(
        decode(&padded, Channel::Control, &limits),
        Err(Error::TrailingBytes(1))
    ));
}

#[test]
fn a_garbage_body_is_a_typed_error() {
    let limits = Limits::default();
    let mut frame = 8u32.to_be_bytes().to_vec();
    frame.extend_from_slice(&[0xFF; 8]);
    assert!(matches!(
        decode(&frame, Channel::Control, &limits),
        Err(Error::Body(_))
    ));
}

/// Writes valid frames and envelopes as seeds for the cargo-fuzz targets, so
/// mutations start past the decoder. Run by hand:
/// `cargo test -p flotilla-common -- --ignored write_fuzz_seed_corpus`.
#[test]
#[ignore = "writes files; run by hand before fuzzing"]
fn write_fuzz_seed_corpus() {
    use crate::message::{Hello, Status};
    let limits = Limits::default();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    let frames = root.join("frame_decode");
    let envelopes = root.join("envelope_verify");
    std::fs::create_dir_all(&frames).unwrap();
    std::fs::create_dir_all(&envelopes).unwrap();
    let signer = crate::signing::BundleSigner::from_seed(&[7; 32]);
    let envelope = signer.sign(&fixture::bundle("web", 2, 3)).unwrap();
    let messages = [
        heartbeat(),
        Message::Hello(Hello {
            versions: vec![1],
            applied: Vec::new(),
            agent_version: "0.1.0".to_owned(),
        }),
        Message::Bundle(envelope.clone()),
        Message::Status(Status {
            sequence: 1,
            app: crate::model::AppRef::new("default", "web"),
            generation: 2,
            sync: crate::model::SyncStatus::Synced,
            health: crate::model::Health::Healthy,
            resources: Vec::new(),
            drift: Vec::new(),
            events: Vec::new(),
            operation: None,
        }),
    ];
    for (index, message) in messages.iter().enumerate() {
        std::fs::write(
            frames.join(format!("seed-{index}")),
            encode(message, &limits).unwrap(),
        )
        .unwrap();
    }
    std::fs::write(envelopes.join("seed-envelope"), envelope.encode().unwrap()).unwrap();
    let key_set = crate::signing::KeySet::new(2, &[signer.public_key()]).unwrap();
    std::fs::write(
        envelopes.join("seed-key-set-update"),
        signer.sign_key_set(&key_set).encode().unwrap(),
    )
    .unwrap();
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn any_channel() -> impl Strategy<Value = Channel> {
        prop_oneof![
            Just(Channel::Control),
            Just(Channel::Bundle),
            Just(Channel::Status)
        ]
    }

    proptest! {
        #[test]
        fn garbage_frames_give_typed_errors_not_panics(
            bytes in proptest::collection::vec(any::<u8>(), 0..2048),
            channel in any_channel(),
        ) {
            let _ = decode(&bytes, channel, &Limits::default());
        }

        #[test]
        fn garbage_bodies_behind_a_valid_prefix_give_typed_errors(
            body in proptest::collection::vec(any::<u8>(), 0..2048),
            channel in any_channel(),
        ) {
            let mut frame = (body.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(&body);
            // Random bodies may by chance be a valid small message; what matters is
            // that nothing panics and errors are typed.
            if let Err(error) = decode(&frame, channel, &Limits::default()) {
                let typed = matches!(error, Error::Body(_) | Error::WrongChannel { .. });
                prop_assert!(typed, "unexpected error {:?}", error);
            }
        }

        #[test]
        fn any_prefix_over_the_limit_is_refused_before_buffering(
            len in (CONTROL_LIMIT as u32 + 1)..=u32::MAX,
            tail in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut stream = len.to_be_bytes().to_vec();
            stream.extend_from_slice(&tail);
            let mut decoder = FrameDecoder::new(Channel::Control, &Limits::default());
            let mut input = stream.as_slice();
            let refused = matches!(decoder.decode_next(&mut input), Err(Error::TooLarge { .. }));
            prop_assert!(refused);
            prop_assert_eq!(decoder.buffered(), PREFIX_LEN);
            prop_assert_eq!(input.len(), tail.len());
        }

        #[test]
        fn garbage_in_arbitrary_pieces_never_buffers_past_the_limit(
            bytes in proptest::collection::vec(any::<u8>(), 0..4096),
            piece in 1usize..64,
            bundle_limit in 16usize..1024,
        ) {
            let limits = Limits::default().with_bundle_limit(bundle_limit);
            let mut decoder = FrameDecoder::new(Channel::Bundle, &limits);
            'stream: for chunk in bytes.chunks(piece) {
                let mut input = chunk;
                while !input.is_empty() {
                    match decoder.decode_next(&mut input) {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => break 'stream,
                    }
                    prop_assert!(decoder.buffered() <= PREFIX_LEN + bundle_limit.max(CONTROL_LIMIT));
                }
            }
        }

        #[test]
        fn status_reports_round_trip_through_frames(
            names in proptest::collection::vec("[a-z0-9.-]{0,40}", 0..50),
            message in ".{0,200}",
            sequence in any::<u64>(),
        ) {
            use crate::message::{ResourceStatus, Status};
            use crate::model::{AppRef, Gvk, Health, ResourceRef, SyncStatus};
            let status = Status {
                sequence,
                app: AppRef::new("p", "a"),
                generation: 3,
                sync: SyncStatus::OutOfSync,
                health: Health::Degraded,
                resources: names.iter().map(|name| ResourceStatus {
                    resource: ResourceRef {
                        gvk: Gvk::new("apps", "v1", "Deployment"),
                        namespace: Some(name.clone()),
                        name: name.clone(),
                    },
                    sync: SyncStatus::Synced,
                    health: Health::Progressing,
                    message: Some(message.clone()),
                }).collect(),
                drift: Vec::new(),
                events: Vec::new(),
                operation: None,
            };
            let limits = Limits::default();
            let frame = encode(&Message::Status(status.clone()), &limits).unwrap();
            prop_assert_eq!(decode(&frame, Channel::Status, &limits).unwrap(), Message::Status(status));
        }
    }
}
