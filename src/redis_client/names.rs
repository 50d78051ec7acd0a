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
//!
//! # In a Redis Cluster
//! Every key that one script call touches must hash to one slot, so in a Cluster
//! ([`Names::for_cluster`]) a code's value and lease carry a hash tag naming one of
//! [`SLOT_BUCKETS`] buckets: `{p}l:{17}abc` and `{p}lease:{17}abc`. The cache groups batched
//! script calls by bucket ([`Names::bucket`]); an `MGET` or `DEL` over many buckets is split per
//! slot by the cluster connection (`conn`). Why 64 buckets: one per code would
//! make every batch one command per code; one for all would put the whole cache on one node.
//! 64 spread over the default three-master layout as 21/22/21 and keep a batch at most 64
//! commands. (A `REDIS_KEY_PREFIX` with braces of its own would put everything in one slot.)
//!
//! The bus's channels (`invalidate`, `presence`, `instance:*`) share the tag `{bus}`:
//! `{p}{bus}invalidate`. A classic `PUBLISH` is routed by its channel's slot, so every
//! instance's pings and announcements are executed on that one master, in one order, which the
//! bus's confirmations rely on (`invalidation`); the subscribers subscribe there too. The keys
//! channel keeps its plain name: `shortener keys revoke` publishes on whatever node it reaches,
//! and classic pub/sub carries it to every node of the cluster.

/// Hash-tag buckets of the link cache in a Cluster (module doc).
pub const SLOT_BUCKETS: u32 = 64;

/// The names under one prefix. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
    cluster: bool,
}

impl Names {
    /// Names under `prefix` (`REDIS_KEY_PREFIX`, e.g. `shortener:`).
    pub fn new(prefix: &str) -> Self {
        Names { prefix: prefix.to_string(), cluster: false }
    }

    /// Names under `prefix` for a Redis Cluster: with hash tags (module doc).
    pub fn for_cluster(prefix: &str) -> Self {
        Names { prefix: prefix.to_string(), cluster: true }
    }

    /// A code's hash-tag bucket in a Cluster (`None` otherwise): codes of one bucket may share a
    /// script call or an `MGET`. FNV-1a, so that every instance and version agrees.
    pub fn bucket(&self, code: &str) -> Option<u32> {
        self.cluster.then(|| {
            let h = code.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
            h % SLOT_BUCKETS
        })
    }

    /// The key of a code's cached answer.
    pub fn link(&self, code: &str) -> String {
        match self.bucket(code) {
            Some(b) => format!("{}l:{{{b}}}{code}", self.prefix),
            None => format!("{}l:{code}", self.prefix),
        }
    }

    /// The key of a code's fill lease.
    pub fn lease(&self, code: &str) -> String {
        match self.bucket(code) {
            Some(b) => format!("{}lease:{{{b}}}{code}", self.prefix),
            None => format!("{}lease:{code}", self.prefix),
        }
    }

    /// The bus channels' hash tag in a Cluster (module doc).
    fn bus(&self) -> &'static str {
        if self.cluster {
            "{bus}"
        } else {
            ""
        }
    }

    /// The key of one rate limit (`kind`: a short tag per limit) for one subject.
    pub fn rate_limit(&self, kind: &str, subject: &str) -> String {
        format!("{}rl:{kind}:{subject}", self.prefix)
    }

    /// The channel on which every change to a link is announced.
    pub fn invalidation_channel(&self) -> String {
        format!("{}{}invalidate", self.prefix, self.bus())
    }

    /// The channel on which every running instance pings (and says goodbye).
    pub fn presence_channel(&self) -> String {
        format!("{}{}presence", self.prefix, self.bus())
    }

    /// The channel of one running instance: confirmations of its changes.
    pub fn instance_channel(&self, instance: &str) -> String {
        format!("{}{}instance:{instance}", self.prefix, self.bus())
    }

    /// The channel on which `shortener keys revoke` announces revocations.
    pub fn keys_channel(&self) -> String {
        format!("{}keys", self.prefix)
    }

    /// The counter on which running instances acknowledge the revocation announced with `nonce`.
    /// In a Cluster it carries the bus's hash tag: it lives on the bus node, where `keys revoke`
    /// announces and reads it.
    pub fn revocation_acks(&self, nonce: &str) -> String {
        format!("{}{}keys:ack:{nonce}", self.prefix, self.bus())
    }

    /// A `SCAN MATCH` pattern for every key of this namespace.
    pub fn everything(&self) -> String {
        format!("{}*", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_a_cluster_a_codes_value_and_lease_share_a_hash_tag_and_the_bus_channels_share_another() {
        let n = Names::for_cluster("shortener:");
        let tag = |k: &str| k[k.find('{').unwrap()..=k.find('}').unwrap()].to_string();
        for code in ["abc", "x", "a-much-longer-code-42"] {
            assert_eq!(tag(&n.link(code)), tag(&n.lease(code)), "{code}");
        }
        assert_eq!(tag(&n.invalidation_channel()), "{bus}");
        assert_eq!(tag(&n.presence_channel()), "{bus}");
        assert_eq!(tag(&n.instance_channel("i1")), "{bus}");
        assert_eq!(n.keys_channel(), Names::new("shortener:").keys_channel());
        let buckets: std::collections::HashSet<_> = (0..1000).map(|i| n.bucket(&format!("c{i}")).unwrap()).collect();
        assert_eq!(buckets.len(), SLOT_BUCKETS as usize, "codes spread over every bucket");
    }

    #[test]
    fn on_one_node_the_names_are_untagged() {
        let n = Names::new("shortener:");
        assert_eq!(n.link("abc"), "shortener:l:abc");
        assert_eq!(n.invalidation_channel(), "shortener:invalidate");
        assert_eq!(n.bucket("abc"), None);
    }
}
