//! Short codes: what may be one, and how random ones are made.
//!
//! Custom codes are `[A-Za-z0-9_-]{3,64}` and not a reserved word; random codes are base62 of
//! `CODE_LENGTH` characters and not a reserved word either. The redirect path checks only the
//! shape ([`is_code_shaped`]) and [`is_never_a_link`], so anything that cannot be a code is
//! answered 404 before any I/O.

use rand::Rng;

/// Shortest custom code.
pub const MIN_LEN: usize = 3;
/// Longest code.
pub const MAX_LEN: usize = 64;

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Words that cannot be custom codes: our own routes, and paths browsers and crawlers ask for.
pub const RESERVED: &[&str] = &[
    "api",
    "health",
    "metrics",
    "admin",
    "static",
    "assets",
    "login",
    "logout",
    "signup",
    "docs",
    "status",
    "ready",
    "robots",
    "favicon",
    "well-known",
    "_next",
    "www",
    "app",
    "dashboard",
    "settings",
    "help",
    "about",
    "terms",
    "privacy",
    "v1",
    "v2",
    // `GET /api/v1/links/export` (the export) is matched before `/api/v1/links/{code}`. A link
    // that was created as `export` before the word was reserved stays a link: its redirect
    // (`/export`, see `UNDER_LINKS`), `/api/v1/links/export/clicks` and `/api/v1/links/export/qr`
    // reach it as before; only `GET`, `PATCH` and `DELETE /api/v1/links/export` itself now mean
    // the export route (`PATCH` and `DELETE` answer 405 there).
    "export",
];

/// Reserved words that are reserved only because a route under `/api/v1/links/` takes them,
/// not a top-level path: the redirect path still looks them up, so a link that had such a code
/// before it was reserved keeps working.
const UNDER_LINKS: &[&str] = &["export"];

/// Whether `s` has the shape of a code (length and alphabet); no allocation, no I/O.
#[inline]
pub fn is_code_shaped(s: &str) -> bool {
    (MIN_LEN..=MAX_LEN).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether `s` is a reserved word (case-insensitive): no new link may have it as its code.
pub fn is_reserved(s: &str) -> bool {
    RESERVED.iter().any(|r| r.eq_ignore_ascii_case(s))
}

/// Whether `/{s}` can never be a link's redirect: a reserved word other than those reserved only
/// for routes under `/api/v1/links/` (case-insensitive). The redirect path answers these 404
/// without any lookup.
pub fn is_never_a_link(s: &str) -> bool {
    is_reserved(s) && !UNDER_LINKS.iter().any(|r| r.eq_ignore_ascii_case(s))
}

/// Why a custom code was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum CodeError {
    /// Wrong length or characters.
    Shape,
    /// A reserved word.
    Reserved,
}

/// Validates a custom code.
pub fn parse_custom(s: &str) -> Result<&str, CodeError> {
    if !is_code_shaped(s) {
        Err(CodeError::Shape)
    } else if is_reserved(s) {
        Err(CodeError::Reserved)
    } else {
        Ok(s)
    }
}

/// A random base62 code of `len` characters that is not a reserved word (the redirect path
/// answers those 404, so such a link could never be followed).
pub fn generate(len: usize) -> String {
    let mut rng = rand::rng();
    generate_from(len, || BASE62[rng.random_range(0..BASE62.len())])
}

/// [`generate`] with the characters drawn by `next`: draws again while the code is reserved.
fn generate_from(len: usize, mut next: impl FnMut() -> u8) -> String {
    loop {
        let code: String = (0..len).map(|_| next() as char).collect();
        if !is_reserved(&code) {
            return code;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert!(is_code_shaped("abc"));
        assert!(is_code_shaped("A_b-9"));
        assert!(!is_code_shaped("ab"));
        assert!(!is_code_shaped(&"a".repeat(65)));
        assert!(!is_code_shaped("favicon.ico"));
        assert!(!is_code_shaped("a b"));
        assert!(!is_code_shaped("ünï"));
    }

    #[test]
    fn reserved_words_are_refused_whatever_the_case() {
        assert_eq!(parse_custom("API"), Err(CodeError::Reserved));
        assert_eq!(parse_custom("health"), Err(CodeError::Reserved));
        assert_eq!(parse_custom("my-link"), Ok("my-link"));
    }

    #[test]
    fn export_is_reserved_for_new_codes_but_an_old_link_named_export_is_still_looked_up() {
        assert_eq!(parse_custom("Export"), Err(CodeError::Reserved));
        assert!(!is_never_a_link("export"));
        assert!(is_never_a_link("API") && is_never_a_link("health"));
        assert!(!is_never_a_link("my-link"));
    }

    #[test]
    fn random_codes_are_base62_of_the_asked_length() {
        let c = generate(7);
        assert_eq!(c.len(), 7);
        assert!(c.bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    #[test]
    fn a_random_draw_that_spells_a_reserved_word_is_drawn_again() {
        let mut draws = b"APIwww7x9".iter().copied();

        let code = generate_from(3, || draws.next().expect("drew too often"));

        assert_eq!(code, "7x9");
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1024))]

            #[test]
            fn the_shape_check_and_the_custom_code_parser_agree_on_any_string(s in any::<String>()) {
                let parsed = parse_custom(&s);
                prop_assert_eq!(parsed == Err(CodeError::Shape), !is_code_shaped(&s));
                prop_assert_eq!(parsed == Err(CodeError::Reserved), is_code_shaped(&s) && is_reserved(&s));
                if let Ok(code) = parsed {
                    prop_assert_eq!(code, s.as_str());
                    prop_assert_eq!(parse_custom(code), Ok(code));
                }
            }

            #[test]
            fn the_shape_check_and_the_custom_code_parser_agree_on_code_like_strings(
                s in "[A-Za-z0-9_.~ -]{0,66}|(?i:api|health|metrics|well-known|favicon)",
            ) {
                let documented_shape = (MIN_LEN..=MAX_LEN).contains(&s.chars().count())
                    && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                let parsed = parse_custom(&s);
                prop_assert_eq!(is_code_shaped(&s), documented_shape);
                prop_assert_eq!(parsed == Err(CodeError::Shape), !is_code_shaped(&s));
                prop_assert_eq!(parsed == Err(CodeError::Reserved), is_code_shaped(&s) && is_reserved(&s));
                prop_assert_eq!(parsed.is_ok(), is_code_shaped(&s) && !is_reserved(&s));
            }

            #[test]
            fn generated_codes_are_always_accepted(len in MIN_LEN..=MAX_LEN) {
                let code = generate(len);
                prop_assert_eq!(code.len(), len);
                prop_assert_eq!(parse_custom(&code), Ok(code.as_str()));
            }
        }
    }
}
