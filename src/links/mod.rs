//! The domain: what a link is ([`code`], [`target`]), how a code is resolved ([`resolve`]), and
//! how links are exported ([`export`]).
//! What the caches hold for a code is `cache::Resolved`.

pub mod code;
pub mod export;
pub mod resolve;
pub mod target;
