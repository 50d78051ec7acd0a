//! The two cache tiers in front of SQLite: [`local`] (in-process L1) and [`redis`] (shared L2).
//!
//! Both store a [`Resolved`] ([`entry`]): a link ready to answer with, or "no such code".

pub mod entry;
pub mod local;
pub mod redis;

pub use entry::{CachedLink, Resolved};
