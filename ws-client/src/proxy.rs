//! Which proxy, if any, a connection goes through ([`ClientBuilder::proxy`] and
//! [`ClientBuilder::proxy_from_env`]): the proxy's URL parsed, and the conventional
//! environment variables (`https_proxy`, `http_proxy`, `all_proxy`, `no_proxy`) read. The
//! tunnel itself is opened in `transport/tunnel.rs`.
//!
//! [`ClientBuilder::proxy`]: crate::ClientBuilder::proxy
//! [`ClientBuilder::proxy_from_env`]: crate::ClientBuilder::proxy_from_env

use std::net::IpAddr;

use url::{Host, Url};

/// How the builder was told to choose a proxy.
#[derive(Debug, Clone, Default)]
pub(crate) enum ProxyChoice {
    /// Connect directly (the default).
    #[default]
    Direct,
    /// Every connection through the proxy at this URL.
    Url(String),
    /// From the environment variables, read when the client is built.
    Env,
}

/// The kind of proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProxyKind {
    /// An HTTP proxy: `CONNECT host:port`.
    HttpConnect,
    /// A SOCKS5 proxy; `remote_dns`: the proxy resolves the server's name (`socks5h://`),
    /// rather than the client (`socks5://`).
    Socks5 { remote_dns: bool },
}

/// A proxy server.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Proxy {
    pub(crate) kind: ProxyKind,
    /// Its host (an IPv6 address without brackets).
    pub(crate) host: String,
    pub(crate) port: u16,
    /// User name and password, percent-decoded.
    pub(crate) credentials: Option<(String, String)>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")?;
        if self.credentials.is_some() {
            f.write_str(" (with credentials)")?;
        }
        Ok(())
    }
}

impl std::fmt::Display for Proxy {
    /// The proxy's URL without its credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = match self.kind {
            ProxyKind::HttpConnect => "http",
            ProxyKind::Socks5 { remote_dns: false } => "socks5",
            ProxyKind::Socks5 { remote_dns: true } => "socks5h",
        };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl Proxy {
    /// Parses `http://[user:password@]host[:port]` (port 80 by default), `socks5://…` or
    /// `socks5h://…` (port 1080 by default).
    pub(crate) fn parse(url: &str) -> Result<Self, String> {
        // The URL itself is not repeated in errors: it may hold a password.
        let parsed = Url::parse(url).map_err(|e| format!("invalid proxy URL: {e}"))?;
        let kind = match parsed.scheme() {
            "http" => ProxyKind::HttpConnect,
            "socks5" => ProxyKind::Socks5 { remote_dns: false },
            "socks5h" => ProxyKind::Socks5 { remote_dns: true },
            "https" => {
                return Err(
                    "an https:// proxy (TLS to the proxy itself) is not supported: use \
                            http://; a wss:// connection's TLS still runs end to end through \
                            the tunnel"
                        .to_owned(),
                );
            }
            other => {
                return Err(format!(
                    "unsupported proxy scheme {other:?}: http, socks5 or socks5h"
                ));
            }
        };
        let host = match parsed.host() {
            Some(Host::Domain(name)) if !name.is_empty() => name.to_owned(),
            Some(Host::Ipv4(ip)) => ip.to_string(),
            Some(Host::Ipv6(ip)) => ip.to_string(),
            _ => return Err("no host in the proxy URL".to_owned()),
        };
        let port = parsed.port().unwrap_or(match kind {
            ProxyKind::HttpConnect => 80,
            ProxyKind::Socks5 { .. } => 1080,
        });
        let decode = |part: &str| {
            percent_encoding::percent_decode_str(part)
                .decode_utf8()
                .map(std::borrow::Cow::into_owned)
                .map_err(|_| "the proxy URL's credentials are not UTF-8".to_owned())
        };
        let credentials = if parsed.username().is_empty() && parsed.password().is_none() {
            None
        } else {
            Some((
                decode(parsed.username())?,
                decode(parsed.password().unwrap_or(""))?,
            ))
        };
        Ok(Self {
            kind,
            host,
            port,
            credentials,
        })
    }
}

/// Where each connection goes: decided once, when the client is built.
#[derive(Debug, Clone, Default)]
pub(crate) struct ProxyRoute {
    /// For `ws://` URLs.
    plain: Option<Proxy>,
    /// For `wss://` URLs.
    secure: Option<Proxy>,
    /// Hosts reached directly whatever the above say.
    bypass: NoProxy,
}

impl ProxyRoute {
    /// The route the builder's choice makes.
    pub(crate) fn from_choice(choice: &ProxyChoice) -> Result<Self, String> {
        match choice {
            ProxyChoice::Direct => Ok(Self::default()),
            ProxyChoice::Url(url) => {
                let proxy = Proxy::parse(url)?;
                Ok(Self {
                    plain: Some(proxy.clone()),
                    secure: Some(proxy),
                    bypass: NoProxy::default(),
                })
            }
            ProxyChoice::Env => Self::from_vars(|name| std::env::var(name).ok()),
        }
    }

    /// The route the variables `var` gives make: `https_proxy` for `wss://`, `http_proxy`
    /// for `ws://`, `all_proxy` for either when those are unset, `no_proxy` exempting hosts;
    /// each name in lower case first, then upper case (as curl reads them); empty counts as
    /// unset.
    pub(crate) fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let read = |name: &str| {
            [name.to_owned(), name.to_ascii_uppercase()]
                .into_iter()
                .find_map(|name| {
                    var(&name)
                        .filter(|v| !v.trim().is_empty())
                        .map(|v| (name, v))
                })
        };
        let proxy = |name: &str| -> Result<Option<Proxy>, String> {
            read(name)
                .map(|(name, value)| {
                    Proxy::parse(value.trim()).map_err(|why| format!("{name}: {why}"))
                })
                .transpose()
        };
        let all = proxy("all_proxy")?;
        Ok(Self {
            plain: proxy("http_proxy")?.or_else(|| all.clone()),
            secure: proxy("https_proxy")?.or(all),
            bypass: read("no_proxy")
                .map(|(_, list)| NoProxy::parse(&list))
                .unwrap_or_default(),
        })
    }

    /// The proxy for a connection to `url`, if any.
    pub(crate) fn for_url(&self, url: &Url) -> Option<&Proxy> {
        let proxy = match url.scheme() {
            "wss" => self.secure.as_ref(),
            _ => self.plain.as_ref(),
        }?;
        let host = url.host()?;
        (!self.bypass.matches(&host)).then_some(proxy)
    }
}

/// The hosts of `no_proxy`: `*` (every host), names (each also covering its subdomains; a
/// leading `.` or `*.` is the same), IP addresses and CIDR ranges (`10.0.0.0/8`). A `:port`
/// after an entry is ignored.
#[derive(Debug, Clone, Default)]
struct NoProxy {
    everything: bool,
    names: Vec<String>,
    ranges: Vec<(IpAddr, u8)>,
}

impl NoProxy {
    fn parse(list: &str) -> Self {
        let mut bypass = Self::default();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry == "*" {
                bypass.everything = true;
                continue;
            }
            let (address, bits) = match entry.split_once('/') {
                Some((address, bits)) => (address, bits.parse::<u8>().ok()),
                None => (entry, None),
            };
            let address = address.trim_start_matches('[');
            let address = address.split_once(']').map_or(address, |(ip, _)| ip);
            if let Ok(ip) = address.parse::<IpAddr>() {
                let whole = if ip.is_ipv4() { 32 } else { 128 };
                bypass.ranges.push((ip, bits.unwrap_or(whole).min(whole)));
                continue;
            }
            // A name, without a port and leading dots or wildcard.
            let name = address.rsplit_once(':').map_or(address, |(name, _)| name);
            let name = name.trim_start_matches('*').trim_start_matches('.');
            if !name.is_empty() {
                bypass.names.push(name.to_ascii_lowercase());
            }
        }
        bypass
    }

    fn matches(&self, host: &Host<&str>) -> bool {
        if self.everything {
            return true;
        }
        match host {
            Host::Domain(name) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                self.names.iter().any(|entry| {
                    name == *entry
                        || name
                            .strip_suffix(entry.as_str())
                            .is_some_and(|rest| rest.ends_with('.'))
                })
            }
            Host::Ipv4(ip) => self.covers(IpAddr::V4(*ip)),
            Host::Ipv6(ip) => self.covers(IpAddr::V6(*ip)),
        }
    }

    fn covers(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|(range, bits)| match (range, ip) {
            (IpAddr::V4(range), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(*bits)).unwrap_or(0);
                u32::from(*range) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(range), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(*bits)).unwrap_or(0);
                u128::from(*range) & mask == u128::from(ip) & mask
            }
            _ => false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    #[test]
    fn proxy_urls_parse_with_their_credentials_decoded() {
        let proxy = Proxy::parse("http://us%40er:p%3Ass@proxy.corp:3128").unwrap();
        assert_eq!(proxy.kind, ProxyKind::HttpConnect);
        assert_eq!((proxy.host.as_str(), proxy.port), ("proxy.corp", 3128));
        assert_eq!(
            proxy.credentials,
            Some(("us@er".to_owned(), "p:ss".to_owned()))
        );
        assert_eq!(proxy.to_string(), "http://proxy.corp:3128");
        assert!(!format!("{proxy:?}").contains("p:ss"), "the password leaks");
        let socks = Proxy::parse("socks5h://[::1]").unwrap();
        assert_eq!(socks.kind, ProxyKind::Socks5 { remote_dns: true });
        assert_eq!((socks.host.as_str(), socks.port), ("::1", 1080));
        assert_eq!(socks.to_string(), "socks5h://[::1]:1080");
        assert_eq!(Proxy::parse("http://p").unwrap().port, 80);
        for (bad, says) in [
            ("https://p:1", "not supported"),
            ("ftp://p:1", "unsupported proxy scheme"),
            ("socks5://user:secret@", "invalid proxy URL"),
            ("not a url", "invalid proxy URL"),
        ] {
            let error = Proxy::parse(bad).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
            assert!(!error.contains("secret"), "{error}");
        }
    }

    #[test]
    fn the_environment_picks_a_proxy_per_scheme_and_no_proxy_exempts_hosts() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let route = ProxyRoute::from_vars(vars(&[
            ("HTTPS_PROXY", "http://secure:3128"),
            ("https_proxy", ""),
            ("ALL_PROXY", "socks5://all:1080"),
            (
                "no_proxy",
                "localhost, .internal.example,10.0.0.0/8, [::1], exchange.example:443",
            ),
        ]))
        .unwrap();
        let via = |u: &str| route.for_url(&url(u)).map(ToString::to_string);
        assert_eq!(
            via("wss://feed.example/ws").as_deref(),
            Some("http://secure:3128")
        );
        assert_eq!(
            via("ws://feed.example/ws").as_deref(),
            Some("socks5://all:1080")
        );
        for direct in [
            "ws://localhost:8080",
            "wss://a.internal.example",
            "wss://internal.example",
            "ws://10.1.2.3:80",
            "ws://[::1]:80",
            "wss://exchange.example",
            "wss://api.exchange.example",
        ] {
            assert_eq!(via(direct), None, "{direct}");
        }
        assert!(via("ws://notinternal.example").is_some());
        assert!(via("ws://11.0.0.1").is_some());

        let everything =
            ProxyRoute::from_vars(vars(&[("http_proxy", "http://p:1"), ("NO_PROXY", "*")]))
                .unwrap();
        assert!(everything.for_url(&url("ws://a.example")).is_none());
        let nothing = ProxyRoute::from_vars(vars(&[])).unwrap();
        assert!(nothing.for_url(&url("wss://a.example")).is_none());
        let error =
            ProxyRoute::from_vars(vars(&[("HTTPS_PROXY", "ftp://x:secret@p")])).unwrap_err();
        assert!(error.starts_with("HTTPS_PROXY: "), "{error}");
        assert!(!error.contains("secret"), "{error}");
    }
}
