//! Every Redis key and pub/sub channel this service uses, in one place, all under
//! `REDIS_KEY_PREFIX` (so several services, or test runs, can share one Redis).
//!
//! | name | what |
//! |---|---|
//! | `{p}l:{code}` | a code's cached answer (`cache::entry` encoding) |
//! | `{p}lease:{code}` | a fill's lease (the stale-set guard) |
//! | `{p}rl:{kind}:{subject}` | a rate limit's GCRA timestamp |
//! | `{p}invalidate` | channel: codes changed, space-separated, after `!<instance>:<nonce>[:<first row>-<last row>]` when the writer waits for confirmations |
//! | `{p}presence` | channel: every instance's pings (`p <id> <ms>`) and goodbyes (`b <id> <ms>`) |
//! | `{p}instance:{id}` | channel: confirmations of one instance's changes (`a <nonce> <confirming id>`) |
//! | `{p}keys` | channel: an API key was revoked (`<name> <nonce>`) |
//! | `{p}keys:ack:{nonce}` | counter: instances that applied that revocation |

/// The names under one prefix. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
}

impl Names {
    /// Names under `prefix` (`REDIS_KEY_PREFIX`, e.g. `shortener:`).
    pub fn new(prefix: &str) -> Self {
        Names { prefix: prefix.to_string() }
    }

    /// The key of a code's cached answer.
    pub fn link(&self, code: &str) -> String {
        format!("{}l:{code}", self.prefix)
    }

    /// The key of a code's fill lease.
    pub fn lease(&self, code: &str) -> String {
        format!("{}lease:{code}", self.prefix)
    }

    /// The key of one rate limit (`kind`: a short tag per limit) for one subject.
    pub fn rate_limit(&self, kind: &str, subject: &str) -> String {
        format!("{}rl:{kind}:{subject}", self.prefix)
    }

    /// The channel on which every change to a link is announced.
    pub fn invalidation_channel(&self) -> String {
        format!("{}invalidate", self.prefix)
    }

    /// The channel on which every running instance pings (and says goodbye).
    pub fn presence_channel(&self) -> String {
        format!("{}presence", self.prefix)
    }

    /// The channel of one running instance: confirmations of its changes.
    pub fn instance_channel(&self, instance: &str) -> String {
        format!("{}instance:{instance}", self.prefix)
    }

    /// The channel on which `shortener keys revoke` announces revocations.
    pub fn keys_channel(&self) -> String {
        format!("{}keys", self.prefix)
    }

    /// The counter on which running instances acknowledge the revocation announced with `nonce`.
    pub fn revocation_acks(&self, nonce: &str) -> String {
        format!("{}keys:ack:{nonce}", self.prefix)
    }

    /// A `SCAN MATCH` pattern for every key of this namespace.
    pub fn everything(&self) -> String {
        format!("{}*", self.prefix)
    }
}
