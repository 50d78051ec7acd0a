//! The domain: what a link is ([`code`], [`target`]) and how a code is resolved ([`resolve`]).
//! What the caches hold for a code is `cache::Resolved`.

pub mod code;
pub mod resolve;
pub mod target;
