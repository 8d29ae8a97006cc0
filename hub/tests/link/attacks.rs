//! Bad input and attacks.
