//! The one bincode configuration that every encoder and decoder in this crate uses.
//!
//! bincode 2 allocates a `String` or byte buffer as soon as it has read the length
//! prefix, before it checks that the input holds that many bytes. Its only guard is
//! a byte limit fixed at compile time, counted in decoded bytes. Two choices make
//! that guard tight:
//!
//! - Integers use fixed-width encoding, so the bytes bincode counts are exactly the
//!   bytes it reads (a varint `u64` would count 8 for every 1-byte value).
//! - Every decode picks the smallest power-of-two limit that is at least as large
//!   as its input. A forged length can then never make bincode allocate more than
//!   twice the bytes actually received, and the caller has already bounded those.

use bincode::config::{Config, Configuration, Fixint, LittleEndian};
use bincode::error::{DecodeError, EncodeError};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn config<const LIMIT: usize>() -> Configuration<LittleEndian, Fixint, bincode::config::Limit<LIMIT>>
{
    bincode::config::standard()
        .with_fixed_int_encoding()
        .with_limit::<LIMIT>()
}

/// Encodes `value` with the crate's bincode configuration.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, EncodeError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard().with_fixed_int_encoding())
}

/// Why bytes could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeFailure {
    /// The bytes are not a valid encoding of the expected type.
    #[error("invalid encoding")]
    Invalid(#[source] DecodeError),
    /// The value ended before the input did.
    #[error("{0} unexpected trailing bytes")]
    TrailingBytes(usize),
    /// The input is larger than any decoder here accepts.
    #[error("input of {0} bytes is larger than any accepted input")]
    TooLarge(usize),
}

fn decode_exact<T: DeserializeOwned, C: Config>(
    bytes: &[u8],
    config: C,
) -> Result<T, DecodeFailure> {
    let (value, read) =
        bincode::serde::decode_from_slice::<T, C>(bytes, config).map_err(DecodeFailure::Invalid)?;
    if read != bytes.len() {
        return Err(DecodeFailure::TrailingBytes(bytes.len() - read));
    }
    Ok(value)
}

/// Decodes exactly one `T` from all of `bytes`, with a bincode limit no larger than
/// twice `bytes.len()` (and never below 1 KiB).
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeFailure> {
    macro_rules! by_limit {
        ($($shift:literal),*) => {
            $(
                if bytes.len() <= (1usize << $shift) {
                    return decode_exact::<T, _>(bytes, config::<{ 1usize << $shift }>());
                }
            )*
        };
    }
    by_limit!(
        10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32
    );
    Err(DecodeFailure::TooLarge(bytes.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_string_length_is_refused_by_the_limit_not_allocated() {
        // A 9-byte input that claims a 1 GiB string.
        let mut forged = (1u64 << 30).to_le_bytes().to_vec();
        forged.push(b'x');
        assert!(matches!(
            decode::<String>(&forged),
            Err(DecodeFailure::Invalid(DecodeError::LimitExceeded))
        ));
    }

    #[test]
    fn a_value_that_fills_its_input_exactly_still_decodes() {
        // The limit counts decoded bytes; fixed-width integers keep that equal to
        // the input length, so a 1024-byte input fits a 1024-byte limit.
        let text = "x".repeat(1024 - 8);
        let bytes = encode(&text).unwrap();
        assert_eq!(bytes.len(), 1024);
        assert_eq!(decode::<String>(&bytes).unwrap(), text);
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(&7u64).unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<u64>(&bytes),
            Err(DecodeFailure::TrailingBytes(1))
        ));
    }
}
