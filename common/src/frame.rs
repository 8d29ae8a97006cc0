//! Framing: a `u32` big-endian body length, then a bincode-encoded [`Message`].
//!
//! Every decode has a hard limit that depends on the [`Channel`]: 64 KiB for the
//! control stream, and configurable limits for bundle and status streams. The
//! length prefix is checked against the limit before a single body byte is
//! buffered, and the body is decoded with a bincode limit no larger than twice the
//! body (see [`crate::codec`]), so no forged length can allocate past the limit.
//!
//! [`FrameDecoder`] reassembles frames from a stream delivered in arbitrary pieces;
//! [`decode`] handles one complete frame in a buffer.

use crate::codec::{self, DecodeFailure};
use crate::message::{Channel, Message};

#[cfg(test)]
mod tests;

/// Errors from encoding and decoding frames.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The length prefix announces a body larger than the channel allows.
    #[error("frame of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// The announced (or, when encoding, actual) body length.
        len: u64,
        /// The limit in force.
        limit: usize,
    },
    /// The input ended inside a frame.
    #[error("input ended inside a frame: {needed} more bytes needed")]
    Truncated {
        /// How many more bytes the frame needed.
        needed: usize,
    },
    /// Bytes remain after the one frame expected.
    #[error("{0} bytes after the end of the frame")]
    TrailingBytes(usize),
    /// The body is not a valid message.
    #[error("frame body is not a valid message")]
    Body(#[source] DecodeFailure),
    /// The message does not belong on this channel, such as a bundle on the
    /// control stream.
    #[error("{found:?} message on the {channel:?} channel")]
    WrongChannel {
        /// The channel it arrived on.
        channel: Channel,
        /// The channel it belongs on.
        found: Channel,
    },
    /// bincode could not encode the message.
    #[error("failed to encode message")]
    Encode(#[source] bincode::error::EncodeError),
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The bytes a length prefix takes.
pub const PREFIX_LEN: usize = 4;

/// The fixed limit for control-stream frames.
pub const CONTROL_LIMIT: usize = 64 * 1024;

/// The default limit for bundle-stream frames.
pub const DEFAULT_BUNDLE_LIMIT: usize = 64 * 1024 * 1024;

/// The default limit for status-stream frames: a status of thousands of resources
/// with drift does not fit the control limit.
pub const DEFAULT_STATUS_LIMIT: usize = 16 * 1024 * 1024;

/// Frame size limits per channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    bundle: usize,
    status: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            bundle: DEFAULT_BUNDLE_LIMIT,
            status: DEFAULT_STATUS_LIMIT,
        }
    }
}

impl Limits {
    /// Sets the bundle-stream limit, clamped to what a `u32` prefix can announce.
    #[must_use]
    pub fn with_bundle_limit(mut self, bytes: usize) -> Self {
        self.bundle = bytes.min(u32::MAX as usize);
        self
    }

    /// Sets the status-stream limit, clamped to what a `u32` prefix can announce.
    #[must_use]
    pub fn with_status_limit(mut self, bytes: usize) -> Self {
        self.status = bytes.min(u32::MAX as usize);
        self
    }

    /// The limit for frames on `channel`.
    pub fn for_channel(&self, channel: Channel) -> usize {
        match channel {
            Channel::Control => CONTROL_LIMIT,
            Channel::Bundle => self.bundle,
            Channel::Status => self.status,
        }
    }
}

/// Encodes `message` as one frame for the channel it belongs on, refusing a body
/// the receiver would refuse.
pub fn encode(message: &Message, limits: &Limits) -> Result<Vec<u8>> {
    let limit = limits.for_channel(Channel::of(message));
    let body = codec::encode(message).map_err(Error::Encode)?;
    if body.len() > limit {
        return Err(Error::TooLarge {
            len: body.len() as u64,
            limit,
        });
    }
    // `limit` is at most u32::MAX, so the length fits.
    let len = u32::try_from(body.len()).map_err(|_| Error::TooLarge {
        len: body.len() as u64,
        limit,
    })?;
    let mut frame = Vec::with_capacity(PREFIX_LEN + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

fn check_len(prefix: [u8; PREFIX_LEN], limit: usize) -> Result<usize> {
    let len = u32::from_be_bytes(prefix);
    match usize::try_from(len) {
        Ok(len) if len <= limit => Ok(len),
        _ => Err(Error::TooLarge {
            len: u64::from(len),
            limit,
        }),
    }
}

fn decode_body(body: &[u8], channel: Channel) -> Result<Message> {
    let message: Message = codec::decode(body).map_err(Error::Body)?;
    let found = Channel::of(&message);
    if found != channel {
        return Err(Error::WrongChannel { channel, found });
    }
    Ok(message)
}

/// Decodes exactly one complete frame received on `channel`.
pub fn decode(bytes: &[u8], channel: Channel, limits: &Limits) -> Result<Message> {
    let limit = limits.for_channel(channel);
    let Some((prefix, rest)) = bytes.split_first_chunk::<PREFIX_LEN>() else {
        return Err(Error::Truncated {
            needed: PREFIX_LEN - bytes.len(),
        });
    };
    let len = check_len(*prefix, limit)?;
    if rest.len() < len {
        return Err(Error::Truncated {
            needed: len - rest.len(),
        });
    }
    if rest.len() > len {
        return Err(Error::TrailingBytes(rest.len() - len));
    }
    decode_body(rest, channel)
}

/// Reassembles frames from one stream that arrives in pieces of any size.
///
/// It buffers at most one frame, and only after its length prefix has passed the
/// limit. After an error the stream is unusable: the caller ends it.
#[derive(Debug)]
pub struct FrameDecoder {
    channel: Channel,
    limit: usize,
    prefix: [u8; PREFIX_LEN],
    prefix_filled: usize,
    body: Vec<u8>,
    body_len: Option<usize>,
}

impl FrameDecoder {
    /// A decoder for a stream of `channel`.
    pub fn new(channel: Channel, limits: &Limits) -> Self {
        Self {
            channel,
            limit: limits.for_channel(channel),
            prefix: [0; PREFIX_LEN],
            prefix_filled: 0,
            body: Vec::new(),
            body_len: None,
        }
    }

    /// Consumes bytes from the front of `input` until one frame is complete, and
    /// returns its message; returns `None` once `input` is used up mid-frame.
    pub fn decode_next(&mut self, input: &mut &[u8]) -> Result<Option<Message>> {
        let body_len = match self.body_len {
            Some(len) => len,
            None => {
                let take = (PREFIX_LEN - self.prefix_filled).min(input.len());
                let (head, rest) = input.split_at(take);
                self.prefix[self.prefix_filled..self.prefix_filled + take].copy_from_slice(head);
                self.prefix_filled += take;
                *input = rest;
                if self.prefix_filled < PREFIX_LEN {
                    return Ok(None);
                }
                let len = check_len(self.prefix, self.limit)?;
                // Grow with the bytes that actually arrive, so a prefix alone cannot
                // make every open stream hold a full-limit buffer.
                self.body = Vec::with_capacity(len.min(CONTROL_LIMIT));
                self.body_len = Some(len);
                len
            }
        };
        let take = (body_len - self.body.len()).min(input.len());
        let (head, rest) = input.split_at(take);
        self.body.extend_from_slice(head);
        *input = rest;
        if self.body.len() < body_len {
            return Ok(None);
        }
        let body = std::mem::take(&mut self.body);
        self.body_len = None;
        self.prefix_filled = 0;
        decode_body(&body, self.channel).map(Some)
    }

    /// Whether the decoder sits between frames, so the stream may end here.
    pub fn is_idle(&self) -> bool {
        self.prefix_filled == 0 && self.body_len.is_none()
    }

    /// Bytes buffered for the frame in progress.
    pub fn buffered(&self) -> usize {
        self.prefix_filled + self.body.capacity()
    }
}
