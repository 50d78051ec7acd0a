//! The domain: what a link is ([`code`], [`target`]), how a code is resolved ([`resolve`]),
//! what an import line may say ([`import`]), how links are exported ([`export`]).
//! What the caches hold for a code is `cache::Resolved`.

pub mod code;
pub mod export;
pub mod import;
pub mod resolve;
pub mod target;
