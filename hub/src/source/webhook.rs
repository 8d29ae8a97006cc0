//! Forge push webhooks.
