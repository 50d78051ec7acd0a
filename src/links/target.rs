//! Target URLs: only `http`/`https` with a host, at most 2,048 bytes, no control characters (a
//! `Location` header must never be able to carry a second header), no user:password part (a
//! classic way to disguise where a link goes), and never pointing back at this service.
//!
//! A URL that is already plain printable ASCII is stored exactly as given, so `Location` equals
//! what the client sent byte for byte. One with spaces or non-ASCII characters is stored in its
//! normalised form (percent-encoded, punycode host), which is what browsers send anyway; the API
//! returns the stored form.

use url::Url;

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

/// Validates a target URL; returns the string to store.
pub fn parse_target(raw: &str, base: &Url) -> Result<String, UrlError> {
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
    let Some(host) = parsed.host_str().filter(|h| !h.is_empty()) else {
        return Err(err("invalid_url", "url must have a host"));
    };
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(err("invalid_url", "url must not contain a user name or password"));
    }
    if base.host_str().is_some_and(|b| b.eq_ignore_ascii_case(host))
        && base.port_or_known_default() == parsed.port_or_known_default()
    {
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

    fn base() -> Url {
        Url::parse("https://sho.rt/").unwrap()
    }

    #[test]
    fn plain_urls_are_kept_byte_for_byte() {
        assert_eq!(parse_target("https://Example.com", &base()).unwrap(), "https://Example.com");
        assert_eq!(parse_target("http://a.io/x?y=1#z", &base()).unwrap(), "http://a.io/x?y=1#z");
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
            assert!(parse_target(bad, &base()).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(
            parse_target(&format!("https://a.io/{}", "x".repeat(2048)), &base()).unwrap_err().code,
            "url_too_long"
        );
    }

    #[test]
    fn other_ports_of_our_host_and_non_ascii_urls() {
        assert!(parse_target("https://sho.rt:8443/x", &base()).is_ok());
        assert_eq!(parse_target("https://bücher.de/a b", &base()).unwrap(), "https://xn--bcher-kva.de/a%20b");
    }
}
