//! `--allowed-origins` (PROTOCOL.md v2, "Transport security and safe defaults"): which
//! web pages may open a WebSocket or call the API; and [`names_this_host`], which keeps
//! pages that rebind their domain to this address away from what is open.
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

/// Whether a request's `Host` names this host as only a local program or the address
/// itself would: an IP literal, `localhost` or a name under `.localhost` (or no `Host`
/// at all: not a browser). A page whose domain an attacker rebinds to this address (DNS
/// rebinding) sends its own domain, and is refused what open mode or an open API would
/// give it.
pub fn names_this_host(host: Option<&str>) -> bool {
    let Some(host) = host else {
        return true;
    };
    let name = match host.strip_prefix('[') {
        Some(bracketed) => {
            return bracketed
                .split(']')
                .next()
                .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
        }
        None => host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                name
            } else {
                host
            }
        }),
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name.parse::<std::net::IpAddr>().is_ok() || name == "localhost" || name.ends_with(".localhost")
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
    fn only_local_names_and_addresses_name_this_host() {
        for host in [
            None,
            Some("127.0.0.1:8080"),
            Some("10.0.0.5"),
            Some("[::1]:8080"),
            Some("localhost:8080"),
            Some("LOCALHOST."),
            Some("app.localhost"),
        ] {
            assert!(names_this_host(host), "{host:?}");
        }
        for host in [
            "evil.example:8080",
            "evil.example",
            "localhost.evil.example",
            "[evil]:80",
            "127.0.0.1.nip.io",
        ] {
            assert!(!names_this_host(Some(host)), "{host}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_origin_or_host_is_judged_without_panicking(text in "\\PC{0,80}") {
            let allowed = AllowedOrigins::parse("https://chat.example").unwrap();
            let permitted = allowed.permits(Some(&text));
            proptest::prop_assert!(!permitted || text.to_ascii_lowercase().trim_end_matches('/') == "https://chat.example");
            let _ = names_this_host(Some(&text));
            let _ = AllowedOrigins::parse(&text);
        }
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
