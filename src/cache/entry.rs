//! What every cache tier stores for a code: [`Resolved`], a link ready to answer a redirect with
//! ([`CachedLink`]) or "no such code", and its encoding in Redis.

use std::sync::{atomic::AtomicU64, Arc};

use axum::http::{HeaderValue, StatusCode};

/// A link ready to answer a redirect with: built once per cache fill, shared by every request
/// that hits it (the `Location` value is reference-counted, not copied).
#[derive(Debug)]
pub struct CachedLink {
    /// The short code.
    pub code: Box<str>,
    /// The `Location` header: the stored URL byte for byte.
    pub location: HeaderValue,
    /// 301, 302, 307 or 308.
    pub status: StatusCode,
    /// Epoch milliseconds after which the link answers 410.
    pub expires_at: Option<i64>,
    /// Clicks counted on this cached entry and not yet drained by the flusher (see `clicks`).
    pub pending_clicks: AtomicU64,
}

/// What a code resolves to, in every cache tier.
#[derive(Debug, Clone)]
pub enum Resolved {
    /// A link.
    Found(Arc<CachedLink>),
    /// No link has this code (cached with a short TTL).
    Missing,
}

impl Resolved {
    /// Builds a found entry from stored columns; `None` if the row cannot be served (a URL that
    /// is not a valid header value, or a status out of range — only possible for rows written
    /// by hand).
    pub fn from_parts(code: &str, url: &str, status: i64, expires_at: Option<i64>) -> Option<Self> {
        let status = match status {
            301 | 302 | 307 | 308 => StatusCode::from_u16(status as u16).ok()?,
            _ => return None,
        };
        let location = HeaderValue::from_str(url).ok()?;
        Some(Resolved::Found(Arc::new(CachedLink {
            code: code.into(),
            location,
            status,
            expires_at,
            pending_clicks: AtomicU64::new(0),
        })))
    }

    /// Encodes for Redis: `-` for missing, else `status|expires_ms|url`.
    pub fn encode(&self) -> String {
        match self {
            Resolved::Missing => "-".to_string(),
            Resolved::Found(l) => {
                let exp = l.expires_at.map(|e| e.to_string()).unwrap_or_default();
                let url = l.location.to_str().unwrap_or_default();
                format!("{}|{}|{}", l.status.as_u16(), exp, url)
            }
        }
    }

    /// Decodes what [`Resolved::encode`] wrote; `None` for anything else (treated as a miss).
    pub fn decode(code: &str, raw: &str) -> Option<Self> {
        if raw == "-" {
            return Some(Resolved::Missing);
        }
        let mut parts = raw.splitn(3, '|');
        let status: i64 = parts.next()?.parse().ok()?;
        let exp = parts.next()?;
        let expires_at = if exp.is_empty() { None } else { Some(exp.parse().ok()?) };
        Self::from_parts(code, parts.next()?, status, expires_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_encoding_round_trips_urls_with_pipes() {
        let v = Resolved::from_parts("c0de", "https://a.example/x|y?z=1", 308, Some(42)).unwrap();
        let Resolved::Found(back) = Resolved::decode("c0de", &v.encode()).unwrap() else { panic!("lost the link") };
        assert_eq!(back.location, "https://a.example/x|y?z=1");
        assert_eq!(back.status, StatusCode::PERMANENT_REDIRECT);
        assert_eq!(back.expires_at, Some(42));
        assert!(matches!(Resolved::decode("c0de", "-"), Some(Resolved::Missing)));
        assert!(Resolved::decode("c0de", "garbage").is_none());
    }
}
