//! Store keys: big-endian tuples. Strings carry a length prefix, so the key of
//! `("web", "a")` is never a prefix of `("web-2", ...)`, and a prefix scan over the
//! first parts of a tuple finds exactly the tuples that start with them.

/// A key under construction, or read back.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(Vec<u8>);

impl Key {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a string part.
    pub fn str(mut self, part: &str) -> Self {
        let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(&part.as_bytes()[..len as usize]);
        self
    }

    /// Appends a number part; big-endian, so keys sort by it.
    pub fn u64(mut self, part: u64) -> Self {
        self.0.extend_from_slice(&part.to_be_bytes());
        self
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The trailing number part, when the key ends with one.
    pub fn last_u64(&self) -> Option<u64> {
        let tail = self.0.len().checked_sub(8)?;
        Some(u64::from_be_bytes(self.0[tail..].try_into().ok()?))
    }
}
