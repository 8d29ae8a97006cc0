//! `hub::source` against real Git repositories made by the `git` CLI, served from
//! local paths, file:// urls, and https and ssh on loopback.

mod https;
mod local;
mod ssh;
