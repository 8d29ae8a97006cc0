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
