//! Target URLs: what may be shortened, and the one form in which it is stored and sent.
//!
//! A target is `http`/`https` with a host, at most 2,048 bytes, without control characters (a
//! `Location` header must never be able to carry a second header), without a user:password part
//! (a classic way to disguise where a link goes), and not pointing back at this service.
//!
//! **One form.** The input is parsed as browsers parse it (WHATWG, the `url` crate), and what is
//! stored, returned by the API and sent in `Location` is the serialization of that parse:
//! `HTTPS://Example.com:443` is stored as `https://example.com/`, `https://bücher.de/a b` as
//! `https://xn--bcher-kva.de/a%20b`.
//!
//! **One host.** Many other readers of URLs (crawlers, proxies, link scanners) follow RFC 3986,
//! which splits the same text differently: WHATWG takes `\` for `/` and percent-decodes the host,
//! RFC 3986 does neither, so `https://evil.example\@good.example/` is evil.example to a browser
//! and good.example (with a user name) to such a reader. Every input is therefore also read by a
//! small RFC 3986 authority reader (`Authority`: scheme, `://`, then the authority up to the
//! first `/`, `?` or `#`; userinfo before its last `@`; port after its last `:` outside brackets)
//! and refused (`invalid_url`) unless both readings agree: the same scheme, no userinfo at all
//! (not even an empty `@`), the same port, and the same host. "The same host" allows only the
//! differences every reader resolves alike: ASCII case, the spelling of an IPv6 address, and
//! IDNA of a host written with non-ASCII characters and no `%` (RFC 3986 readers cannot read
//! those at all; IRI-aware ones apply the same IDNA). Anything else is refused rather than
//! rewritten, because the rewrite would send the link somewhere a reader of the input did not
//! expect:
//! - a backslash or `@` before the path, or whitespace in the authority;
//! - a percent-encoded host (`ex%61mple.com`), or one mixing `%` with non-ASCII characters;
//! - an IPv4 address in a short, octal or hexadecimal spelling (`127.1`, `0x7f.0.0.1`) or with a
//!   trailing dot;
//! - a missing or extra `/` after the scheme (`https:example.com`, `https:///example.com`);
//! - a host name with a character RFC 3986 does not allow in one (`"`, `{`, …), which WHATWG
//!   keeps and strict readers refuse.
//!
//! The serialization itself reads the same host and port in both (checked by property tests over
//! generated inputs, and again on every input), so every reader finds the same host in
//! `Location`.
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

/// The authority of a URL as RFC 3986 reads it, nothing decoded: `scheme://[userinfo@]host[:port]`
/// up to the first `/`, `?` or `#`.
#[derive(Debug, PartialEq, Eq)]
struct Authority<'a> {
    scheme: &'a str,
    userinfo: Option<&'a str>,
    host: &'a str,
    port: Option<&'a str>,
}

impl<'a> Authority<'a> {
    /// `None` when `s` has no `scheme://` start, i.e. no authority to RFC 3986.
    fn read(s: &'a str) -> Option<Self> {
        let (scheme, rest) = s.split_once(':')?;
        let mut chars = scheme.chars();
        if !chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        {
            return None;
        }
        let rest = rest.strip_prefix("//")?;
        let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
        let (userinfo, host_port) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (host, port) = match host_port.rsplit_once(':') {
            Some((h, p)) if !p.contains(']') => (h, Some(p)),
            _ => (host_port, None),
        };
        Some(Authority { scheme, userinfo, host, port })
    }

    /// The port number, the scheme's default when absent or empty; `None` when not a number.
    fn port_number(&self, default: Option<u16>) -> Option<u16> {
        match self.port {
            None | Some("") => default,
            Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => match p.trim_start_matches('0') {
                "" => Some(0),
                n => n.parse().ok(),
            },
            Some(_) => None,
        }
    }
}

/// Whether an RFC 3986 reader would name the same host as WHATWG's `parsed` (see the module doc
/// for which differences are reconciled).
fn same_host(rfc_host: &str, parsed: &Url) -> bool {
    let Some(whatwg) = parsed.host_str() else { return false };
    if rfc_host.eq_ignore_ascii_case(whatwg) {
        return true;
    }
    match parsed.host() {
        Some(Host::Ipv6(addr)) => rfc_host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .and_then(|h| h.parse::<Ipv6Addr>().ok())
            .is_some_and(|a| a == addr),
        Some(Host::Domain(d)) => {
            !rfc_host.is_ascii() && !rfc_host.contains('%') && Host::parse(rfc_host).is_ok_and(|h| h == Host::Domain(d))
        }
        _ => false,
    }
}

/// Whether RFC 3986 allows `c` in a host name (`reg-name`, nothing percent-encoded): unreserved or
/// sub-delims. WHATWG also lets `"`, `` ` ``, `{` and `}` through, which strict readers refuse.
fn is_reg_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=".contains(c)
}

/// Refuses an input that an RFC 3986 reader would take to another scheme, user, host or port
/// than WHATWG's parse of it did.
fn check_one_reading(raw: &str, parsed: &Url) -> Result<(), UrlError> {
    // WHATWG drops leading and trailing spaces (control characters were refused already).
    let Some(rfc) = Authority::read(raw.trim_matches(' ')).filter(|a| a.scheme.eq_ignore_ascii_case(parsed.scheme()))
    else {
        return Err(err("invalid_url", "url must start with http:// or https:// followed by the host"));
    };
    if rfc.userinfo.is_some() {
        return Err(err("invalid_url", "url must not contain a user name or password (an @ before the path)"));
    }
    let host = parsed.host_str().unwrap_or_default();
    if !same_host(rfc.host, parsed) {
        return Err(err(
            "invalid_url",
            format!(
                "url names host {:?} to some URL parsers and {host:?} to others (a backslash, @, space or \
                 percent-encoding before the path, or an unusual IP address spelling); write the host plainly",
                rfc.host
            ),
        ));
    }
    if let Some(Host::Domain(d)) = parsed.host() {
        if let Some(c) = d.chars().find(|&c| !is_reg_name_char(c)) {
            return Err(err("invalid_url", format!("url's host contains {c:?}, which URL parsers disagree on")));
        }
    }
    if rfc.port_number(parsed.port_or_known_default()) != parsed.port_or_known_default() {
        return Err(err("invalid_url", "url names a different port to different URL parsers; write the port plainly"));
    }
    Ok(())
}

/// Validates a target URL; returns the string to store and send: the serialization of the
/// parsed input (see the module doc).
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
    check_one_reading(raw, &parsed)?;
    // Holds for every serialization (property-tested); checked anyway, so that no change in how
    // `url` serializes can ever store an ambiguous URL.
    check_one_reading(parsed.as_str(), &parsed)?;
    let stored: String = parsed.into();
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
    fn plain_urls_are_stored_as_their_serialization() {
        assert_eq!(parse("https://Example.com").unwrap(), "https://example.com/");
        assert_eq!(parse("http://a.io/x?y=1#z").unwrap(), "http://a.io/x?y=1#z");
        assert_eq!(parse("HTTPS://a.io:443/b/./c/../d\\e?q=\\").unwrap(), "https://a.io/b/d/e?q=\\");
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

    #[test]
    fn urls_that_parsers_split_differently_are_refused() {
        for raw in [
            "https://evil.example\\@good.example/",
            "https://evil.example\\\\@good.example",
            "https://@good.example/",
            "https:good.example/",
            "https:/good.example/",
            "https:\\\\good.example/",
            "https:///good.example/",
            "https://good.example\\x",
            "https://ex%61mple.com/",
            "https://example%2Ecom/",
            "https://bü%63her.de/",
            "https://127.1/",
            "https://0x7f.0.0.1/",
            "https://2130706433/",
            "https://1.2.3.4./",
        ] {
            assert_eq!(refusal(raw, &own()), "invalid_url", "{raw}");
        }
    }

    #[test]
    fn differences_every_parser_resolves_alike_are_accepted_and_normalized() {
        for (raw, stored) in [
            ("HTTPS://EXAMPLE.com:443", "https://example.com/"),
            ("https://example.com:/", "https://example.com/"),
            ("  https://example.com/a  ", "https://example.com/a"),
            ("https://[2001:DB8:0::1]:8443/", "https://[2001:db8::1]:8443/"),
            ("https://[::ffff:1.2.3.4]/", "https://[::ffff:102:304]/"),
            ("https://Bücher.de/", "https://xn--bcher-kva.de/"),
            ("https://ｅｘａｍｐｌｅ.com/", "https://example.com/"),
            ("https://a.io/x\\y?q=@\\#@", "https://a.io/x/y?q=@\\#@"),
        ] {
            assert_eq!(parse(raw).as_deref(), Ok(stored), "{raw}");
        }
    }

    #[test]
    fn the_authority_reader_splits_as_rfc_3986_does() {
        assert_eq!(
            Authority::read("https://u:p@[::1]:80/x"),
            Some(Authority { scheme: "https", userinfo: Some("u:p"), host: "[::1]", port: Some("80") })
        );
        assert_eq!(
            Authority::read("http://a\\b@c@d:1?x@y/z"),
            Some(Authority { scheme: "http", userinfo: Some("a\\b@c"), host: "d", port: Some("1") })
        );
        assert_eq!(
            Authority::read("http://[::1]#:9"),
            Some(Authority { scheme: "http", userinfo: None, host: "[::1]", port: None })
        );
        assert_eq!(Authority::read("https:x"), None);
        assert_eq!(Authority::read("https:/x"), None);
        assert_eq!(Authority::read("1http://a"), None);
    }

    /// Strategies for the property tests: spellings of one host, and URL-like strings.
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

        fn pick(options: &'static [&'static str]) -> BoxedStrategy<String> {
            prop::sample::select(options).prop_map(String::from).boxed()
        }

        /// Mostly one of `good`, sometimes one of `bad`.
        fn mostly(good: &'static [&'static str], bad: &'static [&'static str]) -> BoxedStrategy<String> {
            prop_oneof![6 => pick(good), 1 => pick(bad)].boxed()
        }

        /// Strings shaped like URLs, about a third of them valid targets, with the pieces that make
        /// parsers disagree.
        pub fn url_like() -> BoxedStrategy<String> {
            let scheme = mostly(&["https", "http", "HTTP"], &["ftp", "", "h t", "1a"]);
            let sep = mostly(&["://"], &[":", ":/", ":\\", ":///", ":/\\"]);
            let userinfo = mostly(&[""], &["@", "u@", "u:p@", "a\\@", "%40@"]);
            let host = prop_oneof![
                6 => pick(&[
                    "example.com", "sho.rt", "Bücher.de", "127.0.0.1", "[::1]", "[0:0::FFFF:1.2.3.4]",
                    "xn--bcher-kva.de", "ｅｘａｍｐｌｅ.com", "a..b", "e\u{ad}x.com", "a.b.c.d.e", "a_b.io",
                ]),
                1 => pick(&["ex%61mple.com", "0x7f.1", "", "a b", "1.2.3.4.", "[::1", "a]b", "%zz", "a{b"]),
                1 => "[a-z0-9.%\\[\\]:-]{0,12}",
            ];
            let port = mostly(&["", "", ":", ":80", ":443", ":0443", ":8443"], &[":65536", ":x", "::"]);
            let lead = mostly(&["/", "/", "/", "?", "#"], &["", "\\", "@", " "]);
            let piece = prop_oneof![
                20 => pick(&[
                    "/", "/", "\\", "?", "#", "@", "%", "%2e", "..", ".", "a", " ", "é", "%zz", "[", "]", ":",
                    "|", "\"", "<", "'", "{", "^", "\u{3002}", "%00",
                ]),
                1 => any::<char>().prop_map(String::from),
            ];
            let rest = prop::collection::vec(piece, 0..10).prop_map(|p| p.concat());
            (scheme, sep, userinfo, host, port, lead, rest)
                .prop_map(|(a, b, c, d, e, f, g)| format!("{a}{b}{c}{d}{e}{f}{g}"))
                .boxed()
        }
    }

    mod properties {
        use std::net::{Ipv4Addr, Ipv6Addr};

        use proptest::prelude::*;

        use super::{arb, origin, own, parse, parse_target, Authority, OwnOrigin, Url};

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

            #[test]
            fn parse_target_never_panics_on_any_string(raw in any::<String>()) {
                let _ = parse(&raw);
            }

            #[test]
            fn parse_target_never_panics_on_url_like_strings(raw in arb::url_like()) {
                let _ = parse(&raw);
            }

            #[test]
            fn parsing_our_own_output_gives_it_back(raw in arb::url_like()) {
                if let Ok(stored) = parse(&raw) {
                    prop_assert_eq!(parse(&stored), Ok(stored.clone()), "from {:?}", raw);
                }
            }

            #[test]
            fn every_serialization_names_the_same_host_and_port_to_rfc_3986(raw in arb::url_like()) {
                let Ok(url) = Url::parse(&raw) else { return Ok(()) };
                if !matches!(url.scheme(), "http" | "https") || !url.username().is_empty() || url.password().is_some() {
                    return Ok(());
                }
                let rfc = Authority::read(url.as_str());
                prop_assert!(rfc.is_some(), "no authority in {:?}", url.as_str());
                let rfc = rfc.unwrap();
                prop_assert_eq!(rfc.scheme, url.scheme());
                prop_assert_eq!(rfc.userinfo, None);
                prop_assert_eq!(Some(rfc.host), url.host_str());
                prop_assert_eq!(rfc.port_number(url.port_or_known_default()), url.port_or_known_default());
            }
        }
    }
}
