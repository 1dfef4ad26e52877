//! The `connect` allowlist, DNS through an injectable [`Resolve`], and the address rule.
//!
//! The rule: a URL's host and port must equal an entry of `connect` (host case-insensitive, a
//! trailing dot ignored; the port is the URL's or its scheme's default) or the request is
//! refused before any lookup. Then:
//! - an IP-literal entry (`127.0.0.1:9443`, `[::1]:443`) connects to that IP, whatever range
//!   it is in: the operator named it;
//! - `localhost` connects to 127.0.0.1 then ::1, without a lookup (RFC 6761);
//! - any other name is resolved once; addresses in private, loopback, link-local, unspecified,
//!   multicast, CGNAT, ULA and other reserved ranges ([`is_public`]) are dropped, and if none
//!   is left the request fails with `private_address`. The socket connects to the checked
//!   address itself (no second lookup), so DNS rebinding cannot redirect it.

use super::OutboundError;
use futures_util::future::BoxFuture;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use url::Host;

/// Most addresses of one lookup that are tried.
const MAX_ADDRESSES: usize = 16;

/// A name resolver: the system's ([`SystemResolver`]) or a test's.
pub trait Resolve: Send + Sync {
    /// The addresses of `host` (a DNS name, never an IP literal), with `port` set.
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>>;
}

/// The system resolver (`getaddrinfo` on tokio's blocking pool).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>> {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// One `connect` entry: `api.deepgram.com:443`, `127.0.0.1:9443`, `[::1]:443`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The host as the URL parser normalises it (lowercase, punycode, no trailing dot).
    pub host: Host<String>,
    /// TCP port.
    pub port: u16,
}

impl Endpoint {
    /// Parse `host:port`. Errors: a human message (no port, port 0, bad host).
    pub fn parse(entry: &str) -> Result<Endpoint, String> {
        let (host, port) = entry.rsplit_once(':').ok_or_else(|| format!("`{entry}` needs a port (host:port)"))?;
        let port: u16 = port.parse().map_err(|_| format!("`{entry}`: the port must be 1 to 65535"))?;
        if port == 0 {
            return Err(format!("`{entry}`: the port must be 1 to 65535"));
        }
        if host.contains(':') && !host.starts_with('[') {
            return Err(format!("`{entry}`: write an IPv6 address in brackets, e.g. [::1]:443"));
        }
        let host = Host::parse(host).map_err(|e| format!("`{entry}`: bad host: {e}"))?;
        Ok(Endpoint { host: normalise(host), port })
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

fn normalise(host: Host<String>) -> Host<String> {
    match host {
        Host::Domain(d) => Host::Domain(d.strip_suffix('.').unwrap_or(&d).to_ascii_lowercase()),
        other => other,
    }
}

/// A plugin's `connect` entries.
#[derive(Debug, Clone, Default)]
pub struct Allowlist(Vec<Endpoint>);

impl Allowlist {
    /// Parse every entry. Errors: `(index, message)` of the first bad one.
    pub fn parse(entries: &[String]) -> Result<Allowlist, (usize, String)> {
        entries
            .iter()
            .enumerate()
            .map(|(i, e)| Endpoint::parse(e).map_err(|m| (i, m)))
            .collect::<Result<_, _>>()
            .map(Allowlist)
    }

    /// The entry equal to `host:port`, or `NotAllowed` (checked before any lookup).
    pub fn check(&self, host: &Host<&str>, port: u16) -> Result<Endpoint, OutboundError> {
        let wanted = Endpoint { host: normalise(host.to_owned()), port };
        self.0
            .iter()
            .find(|e| **e == wanted)
            .cloned()
            .ok_or_else(|| OutboundError::NotAllowed { host: wanted.host.to_string(), port })
    }
}

/// The addresses to connect to for an allowed endpoint, per the module's rule: the IP of an
/// IP-literal entry, loopback for `localhost`, else the public addresses `resolver` returns.
/// Errors: `Dns` (lookup failed or empty), `PrivateAddress` (only non-public addresses).
pub async fn addresses(resolver: &dyn Resolve, endpoint: &Endpoint) -> Result<Vec<SocketAddr>, OutboundError> {
    let port = endpoint.port;
    match &endpoint.host {
        Host::Ipv4(ip) => Ok(vec![SocketAddr::new(IpAddr::V4(*ip), port)]),
        Host::Ipv6(ip) => Ok(vec![SocketAddr::new(IpAddr::V6(*ip), port)]),
        Host::Domain(d) if d == "localhost" => Ok(vec![
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port),
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port),
        ]),
        Host::Domain(d) => {
            let dns = |message: String| OutboundError::Dns { host: d.clone(), message };
            let found = resolver.resolve(d, port).await.map_err(|e| dns(e.to_string()))?;
            if found.is_empty() {
                return Err(dns("no addresses".into()));
            }
            let public: Vec<SocketAddr> = found
                .iter()
                .filter(|a| is_public(a.ip()))
                .take(MAX_ADDRESSES)
                .map(|a| SocketAddr::new(a.ip(), port))
                .collect();
            if public.is_empty() {
                return Err(OutboundError::PrivateAddress { host: d.clone(), address: found[0].ip() });
            }
            Ok(public)
        }
    }
}

/// Whether `ip` is a public unicast address: not unspecified, loopback, private (RFC 1918),
/// CGNAT (100.64/10), link-local, IETF-reserved (192.0.0/24, 198.18/15, 240/4, broadcast),
/// multicast, IPv6 ULA (fc00::/7), site-local, discard (100::/64), IPv4-compatible (::/96);
/// IPv4-mapped (::ffff:0:0/96) and NAT64 (64:ff9b::/96) addresses are judged by their IPv4.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(a == 0
                || a == 10
                || a == 127
                || (a == 100 && (64..128).contains(&b))
                || (a == 169 && b == 254)
                || (a == 172 && (16..32).contains(&b))
                || (a == 192 && b == 168)
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (18..20).contains(&b))
                || a >= 224)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                let [.., a, b, c, d] = v6.octets();
                return is_public(IpAddr::V4(Ipv4Addr::new(a, b, c, d)));
            }
            !(s[..6] == [0; 6] // ::, ::1 and IPv4-compatible
                || (s[0] & 0xfe00) == 0xfc00 // ULA
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local
                || (s[0] & 0xff00) == 0xff00 // multicast
                || s[..4] == [0x100, 0, 0, 0]) // discard
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_and_normalise() {
        let e = Endpoint::parse("API.Deepgram.com.:443").unwrap();
        assert_eq!((e.host.to_string(), e.port), ("api.deepgram.com".to_string(), 443));
        assert_eq!(Endpoint::parse("[::1]:9443").unwrap().host, Host::<String>::Ipv6(Ipv6Addr::LOCALHOST));
        assert_eq!(Endpoint::parse("127.0.0.1:1").unwrap().host, Host::<String>::Ipv4(Ipv4Addr::LOCALHOST));
        for bad in ["api.deepgram.com", "host:0", "host:65536", "::1:443", "a b:1", ":443"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_listed_host_and_port_pass() {
        let list = Allowlist::parse(&["api.deepgram.com:443".to_string(), "[::1]:8443".to_string()]).unwrap();
        assert!(list.check(&Host::Domain("API.deepgram.com"), 443).is_ok());
        assert!(list.check(&Host::Domain("api.deepgram.com."), 443).is_ok());
        assert!(list.check(&Host::Ipv6(Ipv6Addr::LOCALHOST), 8443).is_ok());
        let e = list.check(&Host::Domain("api.deepgram.com"), 80).unwrap_err();
        assert_eq!(e.to_string(), "api.deepgram.com:80 is not in the plugin's `connect` allowlist");
        assert!(list.check(&Host::Domain("evil.deepgram.com"), 443).is_err());
        assert!(list.check(&Host::Ipv4(Ipv4Addr::LOCALHOST), 8443).is_err());
        assert_eq!(Allowlist::parse(&["a:1".to_string(), "b".to_string()]).unwrap_err().0, 1);
    }

    #[test]
    fn reserved_ranges_are_not_public() {
        for ip in [
            "0.0.0.0",
            "10.1.2.3",
            "100.64.0.1",
            "100.127.255.255",
            "127.0.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "192.0.0.8",
            "198.18.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "100::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "172.32.0.1",
            "1.1.1.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }
}
