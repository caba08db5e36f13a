//! The Origin check: which web pages may open a socket to us.
//!
//! Browsers send `Origin` on every WebSocket upgrade and scripts cannot forge it, so it is what
//! stops a page on another site from using a visitor's cookies against us (cross-site
//! WebSocket hijacking). Both the header and the allowlist are normalised the same way
//! (lower-case scheme and host, default port dropped) and then compared exactly; a
//! `https://*.example.com` rule matches one or more labels in front of `.example.com`, never
//! `example.com` itself nor a name that merely ends in `example.com`.

use std::fmt;

/// An origin reduced to the parts that identify it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

impl Origin {
    /// Parse a serialised origin (`scheme://host[:port]`, nothing after). Anything else, the
    /// opaque `null` included, is not an origin we can allow.
    pub fn parse(s: &str) -> Result<Origin, &'static str> {
        let (scheme, rest) = s.split_once("://").ok_or("missing scheme")?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "https" => 443,
            "http" => 80,
            _ => return Err("scheme must be https or http"),
        };
        if rest.is_empty() {
            return Err("missing host");
        }
        if rest.contains(['/', '?', '#', '@', '\\']) || rest.chars().any(|c| c.is_whitespace()) {
            return Err("an origin has no path, query, user or spaces");
        }
        let (host, port) = split_host_port(rest)?;
        let port = match port {
            None => default_port,
            Some(p) => p.parse::<u16>().map_err(|_| "bad port")?,
        };
        let host = host.to_ascii_lowercase();
        if host.is_empty() || host.starts_with('.') || host.ends_with('.') || host.contains("..") {
            return Err("bad host");
        }
        if !host.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'[' | b']' | b'*')
        }) {
            return Err("bad character in host");
        }
        Ok(Origin { scheme, host, port })
    }
}

fn split_host_port(s: &str) -> Result<(&str, Option<&str>), &'static str> {
    if let Some(rest) = s.strip_prefix('[') {
        // IPv6 literal: [::1]:8443
        let end = rest.find(']').ok_or("unclosed [")?;
        let host = &s[..end + 2];
        match &rest[end + 1..] {
            "" => Ok((host, None)),
            p => Ok((host, Some(p.strip_prefix(':').ok_or("bad port")?))),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => Ok((h, Some(p))),
            None => Ok((s, None)),
        }
    }
}

/// One entry of `origins.allowed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginRule {
    Exact(Origin),
    /// `scheme://*.suffix:port`: any host with at least one label before `.suffix`.
    Subdomains {
        scheme: String,
        suffix: String,
        port: u16,
    },
}

impl OriginRule {
    pub fn parse(s: &str) -> Result<OriginRule, &'static str> {
        let o = Origin::parse(s)?;
        match o.host.strip_prefix("*.") {
            Some(suffix) => {
                if suffix.contains('*') || !suffix.contains('.') {
                    return Err("a wildcard must be a leading *. before a name with a dot, as in https://*.example.com");
                }
                Ok(OriginRule::Subdomains {
                    scheme: o.scheme,
                    suffix: suffix.to_string(),
                    port: o.port,
                })
            }
            None if o.host.contains('*') => Err("a wildcard must be a leading *."),
            None => Ok(OriginRule::Exact(o)),
        }
    }

    fn matches(&self, o: &Origin) -> bool {
        match self {
            OriginRule::Exact(e) => e == o,
            OriginRule::Subdomains {
                scheme,
                suffix,
                port,
            } => {
                *scheme == o.scheme
                    && *port == o.port
                    && o.host
                        .strip_suffix(suffix.as_str())
                        .and_then(|label| label.strip_suffix('.'))
                        .is_some_and(|label| !label.is_empty())
            }
        }
    }
}

/// Why an upgrade's Origin was refused; logged, and the client sees 403.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Malformed,
    NotAllowed,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Missing => "origin missing",
            Refusal::Malformed => "origin malformed",
            Refusal::NotAllowed => "origin not allowed",
        }
    }
}

/// The configured allowlist.
#[derive(Debug, Clone)]
pub struct OriginPolicy {
    rules: Vec<OriginRule>,
    allow_missing: bool,
}

impl OriginPolicy {
    /// Build from config entries already checked by `Config::validate`.
    pub fn new(allowed: &[String], allow_missing: bool) -> OriginPolicy {
        OriginPolicy {
            rules: allowed
                .iter()
                .filter_map(|s| OriginRule::parse(s).ok())
                .collect(),
            allow_missing,
        }
    }

    /// `header` is the raw `Origin` value, if the request had exactly one.
    pub fn check(&self, header: Option<&[u8]>) -> Result<(), Refusal> {
        let Some(raw) = header else {
            return if self.allow_missing {
                Ok(())
            } else {
                Err(Refusal::Missing)
            };
        };
        let s = std::str::from_utf8(raw).map_err(|_| Refusal::Malformed)?;
        let o = Origin::parse(s).map_err(|_| Refusal::Malformed)?;
        if o.host.contains('*') {
            return Err(Refusal::Malformed);
        }
        if self.rules.iter().any(|r| r.matches(&o)) {
            Ok(())
        } else {
            Err(Refusal::NotAllowed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> OriginPolicy {
        OriginPolicy::new(
            &[
                "https://chat.example.com".into(),
                "https://*.corp.example.org".into(),
                "https://localhost:8443".into(),
            ],
            false,
        )
    }

    fn check(o: &str) -> Result<(), Refusal> {
        policy().check(Some(o.as_bytes()))
    }

    #[test]
    fn exact_match_after_normalising() {
        assert_eq!(check("https://chat.example.com"), Ok(()));
        assert_eq!(check("https://chat.example.com:443"), Ok(()));
        assert_eq!(check("HTTPS://Chat.Example.COM"), Ok(()));
        assert_eq!(check("https://localhost:8443"), Ok(()));
    }

    #[test]
    fn look_alikes_and_variants_refused() {
        for o in [
            "https://chat.example.com.evil.net",
            "https://evil-chat.example.com",
            "https://chatexample.com",
            "https://other.example.com",
            "http://chat.example.com",
            "https://chat.example.com:8443",
            "https://localhost",
        ] {
            assert_eq!(check(o), Err(Refusal::NotAllowed), "{o}");
        }
        for o in [
            "null",
            "",
            "wss://chat.example.com",
            "https://chat.example.com/",
            "https://chat.example.com/x",
            "https://user@chat.example.com",
            "https://chat.example.com:99999",
            "https://*.corp.example.org",
        ] {
            assert_eq!(check(o), Err(Refusal::Malformed), "{o}");
        }
    }

    #[test]
    fn wildcard_matches_subdomains_only() {
        assert_eq!(check("https://a.corp.example.org"), Ok(()));
        assert_eq!(check("https://a.b.corp.example.org"), Ok(()));
        assert_eq!(check("https://corp.example.org"), Err(Refusal::NotAllowed));
        assert_eq!(
            check("https://evilcorp.example.org"),
            Err(Refusal::NotAllowed)
        );
        assert_eq!(check("http://a.corp.example.org"), Err(Refusal::NotAllowed));
        assert_eq!(
            check("https://a.corp.example.org.evil.net"),
            Err(Refusal::NotAllowed)
        );
    }

    #[test]
    fn missing_origin_only_when_allowed() {
        assert_eq!(policy().check(None), Err(Refusal::Missing));
        assert_eq!(OriginPolicy::new(&[], true).check(None), Ok(()));
    }

    #[test]
    fn rules_reject_bad_wildcards() {
        assert!(OriginRule::parse("https://*").is_err());
        assert!(OriginRule::parse("https://*.com").is_err());
        assert!(OriginRule::parse("https://a.*.com").is_err());
        assert!(OriginRule::parse("https://[::1]:8443").is_ok());
    }
}
