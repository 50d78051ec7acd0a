//! The domain: what a link is ([`code`], [`target`]), how a code is resolved ([`resolve`]), and
//! what an import line may say ([`import`]).
//! What the caches hold for a code is `cache::Resolved`.

pub mod code;
pub mod import;
pub mod resolve;
pub mod target;
