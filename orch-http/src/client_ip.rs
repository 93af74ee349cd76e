//! Who the client is: the socket peer, or, when the peer is a trusted proxy, the nearest
//! `X-Forwarded-For` hop that is not a trusted proxy itself.
//!
//! A proxy such as nginx with `$proxy_add_x_forwarded_for` *appends* the address it saw to
//! whatever the client sent, so only the hops on the right were written by proxies; the
//! leftmost hop is whatever the client chose. The client address is therefore found by walking
//! the header from the right, past the trusted proxies, and only when the socket peer is a
//! trusted proxy to begin with.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRef, FromRequestParts};
use axum::http::request::Parts;

/// Most `X-Forwarded-For` hops looked at (from the right).
const MAX_HOPS: usize = 32;

/// An IP network: `10.0.0.0/8`, `fd00::/8`, or a single address (`127.0.0.1`, `::1`).
///
/// ```
/// use orch_http::config::IpNet;
///
/// let net: IpNet = "10.0.0.0/8".parse().unwrap();
/// assert!(net.contains("10.1.2.3".parse().unwrap()));
/// assert!(!net.contains("11.0.0.1".parse().unwrap()));
/// assert!("127.0.0.1".parse::<IpNet>().unwrap().contains("::ffff:127.0.0.1".parse().unwrap()));
/// assert!("10.0.0.0/33".parse::<IpNet>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    network: IpAddr,
    prefix_len: u8,
}

impl IpNet {
    /// The network of `addr` with `prefix_len` bits; `None` if the length is too long.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Option<Self> {
        let addr = addr.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (prefix_len <= max).then(|| IpNet {
            network: mask(addr, prefix_len),
            prefix_len,
        })
    }

    /// Whether `ip` is in this network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.network.is_ipv4() && mask(ip, self.prefix_len) == self.network
    }
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or network (10.0.0.0/8)"))?;
        let max = if addr.to_canonical().is_ipv4() {
            32
        } else {
            128
        };
        let len = match len {
            None => max,
            Some(len) => len
                .parse::<u8>()
                .ok()
                .filter(|len| *len <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?,
        };
        IpNet::new(addr, len).ok_or_else(|| format!("{text:?} is not a valid network"))
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// `ip` with all but its first `bits` bits cleared.
pub(crate) fn mask(ip: IpAddr, bits: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(bits.min(32));
            let keep = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & keep))
        }
        IpAddr::V6(v6) => {
            let bits = u32::from(bits.min(128));
            let keep = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & keep))
        }
    }
}

/// Where the client address comes from: the socket peer, unless it is one of the trusted
/// proxies ([`HttpConfig::trusted_proxies`](crate::HttpConfig::trusted_proxies)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientIpSource {
    trusted_proxies: Arc<[IpNet]>,
}

impl ClientIpSource {
    /// Believes `X-Forwarded-For` from `trusted_proxies` only.
    pub fn new(trusted_proxies: &[IpNet]) -> Self {
        ClientIpSource {
            trusted_proxies: trusted_proxies.into(),
        }
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(ip))
    }

    /// The client of a request that came from `peer` with these `X-Forwarded-For` values
    /// (each header's value, in order).
    ///
    /// ```
    /// use orch_http::client_ip::ClientIpSource;
    ///
    /// let source = ClientIpSource::new(&["10.0.0.0/8".parse().unwrap()]);
    /// let proxy = "10.0.0.2".parse().unwrap();
    /// // The client wrote "6.6.6.6"; the proxy appended the address it saw.
    /// assert_eq!(source.resolve(proxy, ["6.6.6.6, 203.0.113.7"]).to_string(), "203.0.113.7");
    /// // Not from a trusted proxy: the header is ignored.
    /// assert_eq!(source.resolve("198.51.100.1".parse().unwrap(), ["6.6.6.6"]).to_string(), "198.51.100.1");
    /// ```
    pub fn resolve<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl IntoIterator<Item = &'a str>,
    ) -> IpAddr {
        let peer = peer.to_canonical();
        if self.trusted_proxies.is_empty() || !self.is_trusted(peer) {
            return peer;
        }
        let values: Vec<&str> = forwarded_for.into_iter().collect();
        let hops = values.iter().rev().flat_map(|value| value.rsplit(','));
        let mut client = peer;
        for hop in hops.take(MAX_HOPS) {
            // A hop that does not parse was not written by a proxy we trust: stop at the
            // nearest address we could verify.
            let Some(ip) = parse_hop(hop) else {
                return client;
            };
            client = ip;
            if !self.is_trusted(ip) {
                return ip;
            }
        }
        client
    }
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1` or `[2001:db8::1]:5678`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|addr| addr.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

/// The client address of a request (see [`ClientIpSource::resolve`]); `None` when the request
/// carries no [`ConnectInfo`] (a router served without it).
pub fn client_ip(parts: &Parts, source: &ClientIpSource) -> Option<IpAddr> {
    let ConnectInfo(peer) = parts.extensions.get::<ConnectInfo<SocketAddr>>()?;
    let forwarded = parts
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok());
    Some(source.resolve(peer.ip(), forwarded))
}

/// [`client_ip`] as a string for events ("unknown" without one).
pub fn client_ip_string(parts: &Parts, source: &ClientIpSource) -> String {
    client_ip(parts, source).map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
}

/// The client address as an extractor (see [`client_ip`]).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<IpAddr>);

impl<S> FromRequestParts<S> for ClientIp
where
    S: Send + Sync,
    ClientIpSource: FromRef<S>,
{
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(client_ip(parts, &ClientIpSource::from_ref(state))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let source = ClientIpSource::new(&["10.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()]);
        let proxy = ip("10.0.0.1");
        // Two trusted proxies appended; the client's own choice on the left is ignored.
        assert_eq!(
            source.resolve(proxy, ["1.1.1.1, 203.0.113.9, 10.0.0.5"]),
            ip("203.0.113.9")
        );
        // Several headers are one list, in order.
        assert_eq!(
            source.resolve(proxy, ["1.1.1.1", "203.0.113.9, 10.0.0.5"]),
            ip("203.0.113.9")
        );
        // Every hop trusted: the leftmost.
        assert_eq!(
            source.resolve(proxy, ["10.9.9.9, 10.0.0.5"]),
            ip("10.9.9.9")
        );
        // No header from a trusted proxy: the proxy itself.
        assert_eq!(source.resolve(proxy, []), proxy);
        // Garbage appended after our hops stops the walk at the last verified address.
        assert_eq!(source.resolve(proxy, ["203.0.113.9, nonsense"]), proxy);
        assert_eq!(
            source.resolve(ip("::1"), ["[2001:db8::7]:443"]),
            ip("2001:db8::7")
        );
        // IPv4-mapped peers are IPv4.
        assert_eq!(
            source.resolve(ip("::ffff:10.0.0.1"), ["192.0.2.1"]),
            ip("192.0.2.1")
        );
        // An untrusted peer's header is ignored.
        assert_eq!(
            source.resolve(ip("192.0.2.50"), ["10.0.0.1"]),
            ip("192.0.2.50")
        );
        // No trusted proxies at all (the default).
        assert_eq!(
            ClientIpSource::default().resolve(proxy, ["192.0.2.1"]),
            proxy
        );
    }

    #[test]
    fn networks_parse_and_mask() {
        assert_eq!(
            "2001:db8:1:2:3:4:5:6/64"
                .parse::<IpNet>()
                .unwrap()
                .to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            "192.168.7.9/24".parse::<IpNet>().unwrap().to_string(),
            "192.168.7.0/24"
        );
        assert!(
            "0.0.0.0/0"
                .parse::<IpNet>()
                .unwrap()
                .contains(ip("8.8.8.8"))
        );
        assert!(!"0.0.0.0/0".parse::<IpNet>().unwrap().contains(ip("::2")));
        for bad in ["", "10.0.0.0/", "10.0.0.0/x", "::/129", "host.example"] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
        assert_eq!(mask(ip("2001:db8::ffff"), 64), ip("2001:db8::"));
        assert_eq!(mask(ip("1.2.3.4"), 0), ip("0.0.0.0"));
    }
}
