//! `--allowed-origins` (PROTOCOL.md v2, "Transport security and safe defaults"): which
//! web pages may open a WebSocket or call the API.
//!
//! A browser names the page that makes a request in `Origin`, and a page cannot forge it;
//! so a list of origins keeps other sites' pages (CSRF, DNS rebinding) from acting with a
//! visitor's network position. A request without `Origin` is not a browser's page (a
//! backend, a phone app, a test tool) and is not this list's business: the API token and
//! the JWT guard those.

/// The origins a browser page may come from; without the flag, every origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedOrigins {
    /// Each origin as `scheme://host[:port]`, lower-case.
    origins: Vec<String>,
}

impl AllowedOrigins {
    /// Parses the flag's value: comma-separated `http(s)://host[:port]` origins.
    pub fn parse(list: &str) -> Result<AllowedOrigins, String> {
        let mut origins = Vec::new();
        for origin in list.split(',').map(str::trim) {
            let normal = normalize(origin).ok_or_else(|| {
                format!(
                    "'{origin}' is not an origin; write scheme://host[:port], as \
                     https://chat.example.com, comma-separated"
                )
            })?;
            origins.push(normal);
        }
        Ok(AllowedOrigins { origins })
    }

    /// Whether a request whose `Origin` header is `origin` may go on. `None` (no header)
    /// may; `null` (a sandboxed page, a file) and unlisted origins may not.
    pub fn permits(&self, origin: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        normalize(origin).is_some_and(|origin| self.origins.contains(&origin))
    }
}

/// `origin` as compared: lower-case, without a trailing `/`; `None` when it is not
/// `http(s)://host[:port]` (no path, no user, no query).
fn normalize(origin: &str) -> Option<String> {
    let origin = origin
        .strip_suffix('/')
        .unwrap_or(origin)
        .to_ascii_lowercase();
    let host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"))?;
    let well_formed = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    well_formed.then_some(origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_origins_pass_in_any_case_and_others_do_not() {
        let allowed =
            AllowedOrigins::parse("https://chat.example.com, http://localhost:3000/").unwrap();
        assert!(allowed.permits(Some("https://chat.example.com")));
        assert!(allowed.permits(Some("HTTPS://Chat.Example.com")));
        assert!(allowed.permits(Some("http://localhost:3000")));
        assert!(!allowed.permits(Some("http://chat.example.com")));
        assert!(!allowed.permits(Some("https://chat.example.com.evil.net")));
        assert!(!allowed.permits(Some("http://localhost:3001")));
        assert!(!allowed.permits(Some("null")));
        assert!(!allowed.permits(Some("")));
        assert!(allowed.permits(None), "no Origin: not a browser page");
    }

    #[test]
    fn what_is_not_an_origin_is_refused_at_start() {
        for bad in [
            "",
            "chat.example.com",
            "https://",
            "https://a.example/path",
            "https://user@a.example",
            "ws://a.example",
            "https://a.example,",
        ] {
            assert!(AllowedOrigins::parse(bad).is_err(), "{bad:?}");
        }
    }
}
