//! Target URLs: only `http`/`https` with a host, at most 2,048 bytes, no control characters (a
//! `Location` header must never be able to carry a second header), no user:password part (a
//! classic way to disguise where a link goes), and never pointing back at this service.
//!
//! A URL that is already plain printable ASCII is stored exactly as given, so `Location` equals
//! what the client sent byte for byte. One with spaces or non-ASCII characters is stored in its
//! normalised form (percent-encoded, punycode host), which is what browsers send anyway; the API
//! returns the stored form.
//!
//! **Not us.** A target that reaches this service would make a redirect loop. [`OwnOrigin`],
//! built once from `PUBLIC_BASE_URL` and the listening address, decides it on normalized hosts:
//! lowercase, IDNA, percent-decoded, trailing dots removed, IPv4 in any spelling WHATWG accepts,
//! IPv6 in any spelling, and a v4-mapped IPv6 address (`::ffff:a.b.c.d`) equal to its IPv4
//! address. A target is us when
//! - its host is the base's host, or the base's host is a loopback host and the target's host is
//!   any loopback host (`localhost`, `*.localhost`, 127.0.0.0/8, `::1`, and the unspecified
//!   `0.0.0.0` and `::`, which reach the local machine too), and its port (explicit or the
//!   scheme's default) is the base's port, 80 or 443; other ports of our host stay allowed;
//! - or its host is a loopback host or the listening IP (when that is not unspecified), and its
//!   port is the listening port.
//!
//! A name that merely resolves to us (another DNS name) is not detected: that needs DNS.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use url::{Host, Url};

/// Longest accepted URL, in bytes.
pub const MAX_URL_BYTES: usize = 2048;

/// Why a URL was refused: a stable code and a message for the client.
#[derive(Debug, PartialEq, Eq)]
pub struct UrlError {
    /// Machine-readable reason.
    pub code: &'static str,
    /// Human-readable reason.
    pub message: String,
}

fn err(code: &'static str, message: impl Into<String>) -> UrlError {
    UrlError { code, message: message.into() }
}

/// A host reduced to what it names: the same address spelled differently compares equal.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NormHost {
    Domain(String),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

impl NormHost {
    /// Normalizes a host that WHATWG parsing already lowercased, IDNA-mapped, percent-decoded and,
    /// for addresses, parsed. Left to do: trailing dots (`127.0.0.1..` is a domain to WHATWG,
    /// which allows only one trailing dot on an address) and v4-mapped IPv6.
    fn of(host: Host<&str>) -> Self {
        match host {
            Host::Domain(d) => {
                let d = d.trim_end_matches('.');
                match Host::parse(d) {
                    Ok(Host::Ipv4(a)) => NormHost::V4(a),
                    Ok(Host::Ipv6(a)) => Self::of_ip(IpAddr::V6(a)),
                    Ok(Host::Domain(d)) => NormHost::Domain(d),
                    Err(_) => NormHost::Domain(d.to_ascii_lowercase()),
                }
            }
            Host::Ipv4(a) => NormHost::V4(a),
            Host::Ipv6(a) => Self::of_ip(IpAddr::V6(a)),
        }
    }

    fn of_ip(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(a) => NormHost::V4(a),
            IpAddr::V6(a) => a.to_ipv4_mapped().map_or(NormHost::V6(a), NormHost::V4),
        }
    }

    /// Whether connecting to this host reaches the local machine whatever its DNS says.
    fn is_loopback(&self) -> bool {
        match self {
            NormHost::Domain(d) => d == "localhost" || d.ends_with(".localhost"),
            NormHost::V4(a) => a.is_loopback() || a.is_unspecified(),
            NormHost::V6(a) => a.is_loopback() || a.is_unspecified(),
        }
    }
}

/// What "this service" is to a target URL: the host and ports of `PUBLIC_BASE_URL` and the
/// address the server listens on. Built once from the configuration; see the module doc.
#[derive(Debug, Clone)]
pub struct OwnOrigin {
    host: Option<NormHost>,
    ports: [u16; 3],
    listen_ip: Option<NormHost>,
    listen_port: u16,
}

impl OwnOrigin {
    /// From the public base URL and the address the server listens on (port 0: none).
    pub fn new(base: &Url, listen: SocketAddr) -> Self {
        OwnOrigin {
            host: base.host().map(NormHost::of),
            ports: [base.port_or_known_default().unwrap_or(80), 80, 443],
            listen_ip: Some(listen.ip()).filter(|ip| !ip.is_unspecified()).map(NormHost::of_ip),
            listen_port: listen.port(),
        }
    }

    /// Whether `url` (parsed, http or https) would reach this service.
    fn is_us(&self, url: &Url) -> bool {
        let (Some(host), Some(port)) = (url.host().map(NormHost::of), url.port_or_known_default()) else {
            return false;
        };
        let our_host = self.host.as_ref().is_some_and(|h| *h == host || (h.is_loopback() && host.is_loopback()));
        let our_listener = self.listen_port != 0 && (host.is_loopback() || self.listen_ip.as_ref() == Some(&host));
        (our_host && self.ports.contains(&port)) || (our_listener && port == self.listen_port)
    }
}

/// Validates a target URL; returns the string to store.
pub fn parse_target(raw: &str, own: &OwnOrigin) -> Result<String, UrlError> {
    if raw.is_empty() {
        return Err(err("invalid_url", "url must not be empty"));
    }
    if raw.len() > MAX_URL_BYTES {
        return Err(err("url_too_long", format!("url is longer than {MAX_URL_BYTES} bytes")));
    }
    if raw.chars().any(|c| c.is_control()) {
        return Err(err("invalid_url", "url contains control characters"));
    }
    let parsed = Url::parse(raw).map_err(|e| err("invalid_url", format!("url is not valid: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(err("invalid_url", "only http and https URLs can be shortened"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(err("invalid_url", "url must have a host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(err("invalid_url", "url must not contain a user name or password"));
    }
    if own.is_us(&parsed) {
        return Err(err("self_referencing_url", "url points back at this shortener"));
    }
    let stored = if raw.bytes().all(|b| b.is_ascii_graphic()) { raw.to_string() } else { parsed.to_string() };
    if stored.len() > MAX_URL_BYTES {
        return Err(err("url_too_long", format!("url is longer than {MAX_URL_BYTES} bytes once encoded")));
    }
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The service at `base`, listening on `listen`.
    fn origin(base: &str, listen: &str) -> OwnOrigin {
        OwnOrigin::new(&Url::parse(base).unwrap(), listen.parse().unwrap())
    }

    /// The service at `https://sho.rt/`, listening on 127.0.0.1:8080.
    fn own() -> OwnOrigin {
        origin("https://sho.rt/", "127.0.0.1:8080")
    }

    fn parse(raw: &str) -> Result<String, UrlError> {
        parse_target(raw, &own())
    }

    fn refusal(raw: &str, own: &OwnOrigin) -> &'static str {
        match parse_target(raw, own) {
            Ok(stored) => panic!("{raw:?} was accepted as {stored:?}"),
            Err(e) => e.code,
        }
    }

    #[test]
    fn plain_urls_are_kept_byte_for_byte() {
        assert_eq!(parse("https://Example.com").unwrap(), "https://Example.com");
        assert_eq!(parse("http://a.io/x?y=1#z").unwrap(), "http://a.io/x?y=1#z");
    }

    #[test]
    fn unsafe_or_useless_urls_are_refused() {
        for bad in [
            "",
            "ftp://a.io/",
            "javascript:alert(1)",
            "https://a.io/\r\nSet-Cookie: x=1",
            "https://user:pw@a.io/",
            "https://sho.rt/abc",
            "https://SHO.RT:443/abc",
            "not a url",
            "mailto:x@a.io",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(parse(&format!("https://a.io/{}", "x".repeat(2048))).unwrap_err().code, "url_too_long");
    }

    #[test]
    fn other_ports_of_our_host_and_non_ascii_urls() {
        assert!(parse("https://sho.rt:8443/x").is_ok());
        assert_eq!(parse("https://bücher.de/a b").unwrap(), "https://xn--bcher-kva.de/a%20b");
    }

    #[test]
    fn spellings_of_our_host_or_our_listener_point_back_at_us() {
        for raw in [
            "https://sho.rt./",
            "https://SHO.RT../x",
            "https://sho%2Ert/",
            "https://sh%6f.rt%2e/",
            "http://sho.rt/",
            "https://sho.rt:80/",
            "http://sho.rt:443/",
            "https://sho.rt:0443/",
            "https://sho.rt:/",
            "https://ｓｈｏ。ｒｔ/",
            "http://127.0.0.1:8080/",
            "http://127.1:8080/",
            "http://0x7f000001:8080/",
            "http://0177.0.0.1.:8080/",
            "http://127.0.0.1..:8080/",
            "http://[::1]:8080/",
            "http://[0:0:0:0:0:0:0:1]:8080/",
            "http://[::ffff:127.0.0.1]:8080/",
            "http://[::FFFF:7f00:1]:8080/",
            "http://localhost:8080/",
            "http://LOCALHOST.:8080/",
            "http://a.localhost:8080/",
            "http://0.0.0.0:8080/",
            "http://[::]:8080/",
        ] {
            assert_eq!(refusal(raw, &own()), "self_referencing_url", "{raw}");
        }
    }

    #[test]
    fn hosts_that_only_resemble_ours_are_not_us() {
        for raw in [
            "https://sho.rt:8443/x",
            "https://sho.rt.example/",
            "https://xsho.rt/",
            "http://127.0.0.1:9090/",
            "http://127.0.0.1/",
            "https://[::1]/",
            "http://localhost.example:8080/",
        ] {
            assert!(parse(raw).is_ok(), "{raw} was refused: {:?}", parse(raw));
        }
    }

    #[test]
    fn a_loopback_base_refuses_every_loopback_spelling_on_its_ports() {
        let own = origin("http://localhost:3000/", "0.0.0.0:3000");
        for raw in
            ["http://127.0.0.2:3000/", "https://[::1]/", "http://[0:0:0:0:0:ffff:7f00:1]/", "http://x.localhost:3000/"]
        {
            assert_eq!(refusal(raw, &own), "self_referencing_url", "{raw}");
        }
        assert!(parse_target("http://127.0.0.1:3001/", &own).is_ok());
    }

    #[test]
    fn an_ip_base_refuses_every_spelling_of_its_address() {
        let v4 = origin("http://192.0.2.10/", "192.0.2.10:8080");
        for raw in [
            "http://192.0.2.10/",
            "https://3221225994/",
            "http://0xc0.0.2.10:8080/",
            "http://[::ffff:c000:20a]/",
            "http://192.0.2.10.:8080/",
        ] {
            assert_eq!(refusal(raw, &v4), "self_referencing_url", "{raw}");
        }
        assert!(parse_target("http://192.0.2.11/", &v4).is_ok());
        assert!(parse_target("http://192.0.2.10:9000/", &v4).is_ok());

        let v6 = origin("http://[2001:db8::1]/", "[2001:db8::1]:8080");
        for raw in ["http://[2001:DB8:0:0:0:0:0:1]/", "https://[2001:db8::0:1]:8080/"] {
            assert_eq!(refusal(raw, &v6), "self_referencing_url", "{raw}");
        }
        assert!(parse_target("http://[2001:db8::2]/", &v6).is_ok());
    }

    /// Strategies for the property tests: spellings of one host.
    mod arb {
        use std::net::{Ipv4Addr, Ipv6Addr};

        use proptest::{prelude::*, sample::Index, strategy::Union};

        /// One character as a host may spell it: either case, percent-encoded, or fullwidth (or,
        /// for a dot, an ideographic full stop), all of which WHATWG maps back to it.
        fn char_spelling(c: char) -> BoxedStrategy<String> {
            let mut ways = vec![
                Just(c.to_ascii_lowercase().to_string()),
                Just(c.to_ascii_uppercase().to_string()),
                Just(format!("%{:02x}", c as u32)),
                Just(format!("%{:02X}", c as u32)),
            ];
            if c == '.' {
                ways.extend(["\u{3002}", "\u{ff0e}", "\u{ff61}"].map(|d| Just(d.to_string())));
            } else if let Some(wide) = char::from_u32(c as u32 + 0xfee0).filter(|_| c.is_ascii_alphanumeric()) {
                ways.push(Just(wide.to_string()));
            }
            Union::new(ways).boxed()
        }

        /// `text` with every character spelled by [`char_spelling`], plus up to three trailing dots.
        pub fn spelled(text: String) -> BoxedStrategy<String> {
            let chars: Vec<_> = text.chars().map(char_spelling).collect();
            (chars, prop::collection::vec(char_spelling('.'), 0..=3))
                .prop_map(|(chars, dots)| chars.concat() + &dots.concat())
                .boxed()
        }

        /// An IPv4 address in any WHATWG form: 1 to 4 parts, each decimal, hex or octal, with
        /// leading zeros where the form allows them.
        pub fn ipv4_text(a: Ipv4Addr) -> impl Strategy<Value = String> {
            (1..=4usize, prop::collection::vec((0..3u8, 0..3usize), 4)).prop_map(move |(parts, forms)| {
                let (n, o) = (u32::from(a), a.octets().map(u32::from));
                let nums = match parts {
                    1 => vec![n],
                    2 => vec![o[0], n & 0xff_ffff],
                    3 => vec![o[0], o[1], n & 0xffff],
                    _ => o.to_vec(),
                };
                let parts: Vec<String> = nums
                    .iter()
                    .zip(forms)
                    .map(|(v, (radix, zeros))| match radix {
                        0 => v.to_string(),
                        1 => format!("0x{}{v:x}", "0".repeat(zeros)),
                        _ => format!("0{}{v:o}", "0".repeat(zeros)),
                    })
                    .collect();
                parts.join(".")
            })
        }

        /// Any spelling of an IPv4 address: [`ipv4_text`] then [`spelled`].
        pub fn ipv4(a: Ipv4Addr) -> BoxedStrategy<String> {
            ipv4_text(a).prop_flat_map(spelled).boxed()
        }

        /// An IPv6 address in brackets: any case, leading zeros, any zero run compressed or none,
        /// the last 32 bits as dotted decimal or not.
        pub fn ipv6(a: Ipv6Addr) -> BoxedStrategy<String> {
            (prop::collection::vec(0..4usize, 8), any::<bool>(), any::<Option<Index>>(), any::<bool>())
                .prop_map(move |(pad, upper, compress, dotted_tail)| {
                    let seg = a.segments();
                    let n_hex = if dotted_tail { 6 } else { 8 };
                    let mut items: Vec<String> = seg[..n_hex]
                        .iter()
                        .zip(&pad)
                        .map(|(s, &p)| {
                            let h = format!("{s:x}");
                            let h = format!("{}{h}", "0".repeat(p.min(4 - h.len())));
                            if upper {
                                h.to_uppercase()
                            } else {
                                h
                            }
                        })
                        .collect();
                    let tail = dotted_tail
                        .then(|| format!("{}.{}.{}.{}", seg[6] >> 8, seg[6] & 0xff, seg[7] >> 8, seg[7] & 0xff));
                    let mut runs = Vec::new();
                    let mut i = 0;
                    while i < n_hex {
                        let len = seg[i..n_hex].iter().take_while(|&&s| s == 0).count();
                        if len > 0 {
                            runs.push((i, len));
                        }
                        i += len.max(1);
                    }
                    let text = match compress.filter(|_| !runs.is_empty()).map(|c| runs[c.index(runs.len())]) {
                        Some((start, len)) => {
                            let mut right = items[start + len..].to_vec();
                            right.extend(tail);
                            format!("{}::{}", items[..start].join(":"), right.join(":"))
                        }
                        None => {
                            items.extend(tail);
                            items.join(":")
                        }
                    };
                    format!("[{text}]")
                })
                .boxed()
        }

        /// Every way to name the local machine: 127.0.0.0/8, `::1`, the unspecified addresses, their
        /// v4-mapped forms, `localhost` and its subdomains.
        pub fn loopback() -> BoxedStrategy<String> {
            let v4 = any::<[u8; 3]>().prop_map(|[a, b, c]| Ipv4Addr::new(127, a, b, c));
            prop_oneof![
                v4.clone().prop_flat_map(ipv4),
                ipv4(Ipv4Addr::UNSPECIFIED),
                ipv6(Ipv6Addr::LOCALHOST),
                ipv6(Ipv6Addr::UNSPECIFIED),
                v4.prop_flat_map(|a| ipv6(a.to_ipv6_mapped())),
                spelled("localhost".into()),
                "[a-z0-9]{1,8}".prop_flat_map(|sub| spelled(format!("{sub}.localhost"))),
            ]
            .boxed()
        }

        /// `scheme://host:port/path` with the scheme in any case, and the port explicit (with
        /// leading zeros) or, when `default_ok`, left out or empty.
        pub fn url(host: BoxedStrategy<String>, ports: Vec<u16>, default_ok: bool) -> BoxedStrategy<String> {
            let port = (prop::sample::select(ports), 0..3usize).prop_map(|(p, z)| format!(":{}{p}", "0".repeat(z)));
            let port = if default_ok {
                prop_oneof![Just(String::new()), Just(":".to_string()), port].boxed()
            } else {
                port.boxed()
            };
            let scheme = prop::sample::select(vec!["http", "https", "HTTP", "hTtPs"]);
            let path = prop::sample::select(vec!["", "/", "/x", "/a/b?c=d", "?q", "#f", "/x?y#z"]);
            (scheme, host, port, path).prop_map(|(s, h, p, path)| format!("{s}://{h}{p}{path}")).boxed()
        }
    }

    mod properties {
        use std::net::{Ipv4Addr, Ipv6Addr};

        use proptest::prelude::*;

        use super::{arb, origin, own, parse, parse_target, OwnOrigin};

        fn is_self_referencing(raw: &str, own: &OwnOrigin) -> bool {
            parse_target(raw, own).is_err_and(|e| e.code == "self_referencing_url")
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn no_spelling_of_the_base_host_is_accepted(
                raw in arb::url(arb::spelled("sho.rt".into()), vec![80, 443], true),
            ) {
                prop_assert!(is_self_referencing(&raw, &own()), "{raw:?}: {:?}", parse(&raw));
            }

            #[test]
            fn no_spelling_of_a_loopback_address_on_the_listening_port_is_accepted(
                raw in arb::url(arb::loopback(), vec![8080], false),
            ) {
                prop_assert!(is_self_referencing(&raw, &own()), "{raw:?}: {:?}", parse(&raw));
            }

            #[test]
            fn a_loopback_base_accepts_no_loopback_spelling_on_its_ports(
                raw in arb::url(arb::loopback(), vec![3000, 80, 443], true),
            ) {
                let own = origin("http://localhost:3000/", "[::]:3000");
                prop_assert!(is_self_referencing(&raw, &own), "{raw:?}: {:?}", parse_target(&raw, &own));
            }

            #[test]
            fn an_ip_base_accepts_no_spelling_of_its_address(
                raw in arb::url(
                    prop_oneof![
                        arb::ipv4(Ipv4Addr::new(192, 0, 2, 10)),
                        arb::ipv6(Ipv4Addr::new(192, 0, 2, 10).to_ipv6_mapped()),
                    ].boxed(),
                    vec![80, 443, 8080],
                    true,
                ),
            ) {
                let own = origin("http://192.0.2.10/", "192.0.2.10:8080");
                prop_assert!(is_self_referencing(&raw, &own), "{raw:?}: {:?}", parse_target(&raw, &own));
            }

            #[test]
            fn an_ipv6_base_accepts_no_spelling_of_its_address(
                raw in arb::url(arb::ipv6("2001:db8::a:0:1".parse().unwrap()), vec![80, 443], true),
            ) {
                let own = origin("https://[2001:db8::a:0:1]/", "[::]:8080");
                prop_assert!(is_self_referencing(&raw, &own), "{raw:?}: {:?}", parse_target(&raw, &own));
            }

            #[test]
            fn spellings_of_other_hosts_and_ports_are_never_taken_for_ours(
                raw in prop_oneof![
                    arb::url(arb::spelled("sho.rtx".into()), vec![80, 443], true),
                    arb::url(arb::spelled("www.sho.rt".into()), vec![80, 443], true),
                    arb::url(arb::spelled("sho.rt".into()), vec![8443, 3000], false),
                    arb::url(arb::loopback(), vec![8081, 9000], false),
                    arb::url(arb::ipv4(Ipv4Addr::new(128, 0, 0, 1)), vec![8080, 80, 443], true),
                    arb::url(arb::ipv6("::2".parse::<Ipv6Addr>().unwrap()), vec![8080, 80, 443], true),
                ],
            ) {
                prop_assert!(!is_self_referencing(&raw, &own()), "{raw:?} taken for ours");
            }

        }
    }
}
