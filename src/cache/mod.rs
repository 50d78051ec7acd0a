//! The two cache tiers in front of SQLite: [`local`] (in-process L1) and [`redis`] (shared L2).
//!
//! Both store a [`crate::links::Resolved`]: a link ready to answer with, or "no such code".

pub mod local;
pub mod redis;
