//! Fetching over https on loopback, behind Basic authentication.
