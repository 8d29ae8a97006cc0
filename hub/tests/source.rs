//! `hub::source` against real Git repositories made by the `git` CLI, served from
//! local paths, file:// urls, and https and ssh on loopback.

#[path = "source/fixture.rs"]
mod fixture;
#[path = "source/https.rs"]
mod https;
#[path = "source/local.rs"]
mod local;
#[path = "source/ssh.rs"]
mod ssh;
