//! Where reminder webhooks may point. A holder's webhook URL comes from outside, and the
//! gateway `POST`s to it from inside the deployment's network: unless the operator allows
//! it (`--webhook-private`), only public addresses are reached, so a webhook cannot make the
//! gateway call its own node, a database on the private network or a cloud metadata
//! service. Names are checked where they are resolved, on every delivery (a name that
//! resolved to a public address at booking may resolve elsewhere later); addresses written
//! in the URL are checked at booking and before each delivery.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Whether `ip` is an address anyone on the internet could reach: not loopback, private,
/// shared (CGNAT), link-local, unique-local, multicast, documentation, benchmarking,
/// unspecified or reserved. IPv4 inside IPv6 (mapped, translated, compatible, NAT64, 6to4,
/// Teredo) is judged as the IPv4 address it carries; site-local `fec0::/10` and local-use
/// NAT64 `64:ff9b:1::/48` are never public.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0                                   // "this network"
        || a == 10                             // private
        || a == 127                            // loopback
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 169 && b == 254)              // link-local, cloud metadata
        || (a == 172 && (16..32).contains(&b)) // private
        || (a == 192 && b == 0 && c == 0)      // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2)      // documentation
        || (a == 192 && b == 168)              // private
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || (a == 198 && b == 51 && c == 100)   // documentation
        || (a == 203 && b == 0 && c == 113)    // documentation
        || a >= 224) // multicast, reserved, broadcast
}

/// The IPv4 address in segments `hi` and `lo`.
fn v4_of(hi: u16, lo: u16) -> Ipv4Addr {
    Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo))
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    if s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0 {
        // IPv4-translated (::ffff:0:a.b.c.d, SIIT).
        return is_public_v4(v4_of(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        // 6to4: the relay delivers to the IPv4 address in bits 16-47.
        return is_public_v4(v4_of(s[1], s[2]));
    }
    if s[0] == 0x2001 && s[1] == 0 {
        // Teredo: the server's IPv4 address, and the client's (bit-inverted) in the last 32.
        return is_public_v4(v4_of(s[2], s[3])) && is_public_v4(v4_of(!s[6], !s[7]));
    }
    if s[0] == 0x0064 && s[1] == 0xff9b && s[2] == 0x0001 {
        // Local-use NAT64 (RFC 8215): a translator inside someone's network.
        return false;
    }
    if (s[0] & 0xffc0) == 0xfec0 {
        // Site-local (deprecated, still routed inside some networks).
        return false;
    }
    if s[..6] == [0; 6] {
        // Unspecified, loopback, and the deprecated IPv4-compatible form.
        return !(ip.is_unspecified() || ip.is_loopback())
            && is_public_v4(Ipv4Addr::from(((s[6] as u32) << 16) | s[7] as u32));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // NAT64: the IPv4 address it stands for.
        return is_public_v4(Ipv4Addr::from(((s[6] as u32) << 16) | s[7] as u32));
    }
    !((s[0] & 0xfe00) == 0xfc00                 // unique local
        || (s[0] & 0xffc0) == 0xfe80           // link-local
        || (s[0] & 0xff00) == 0xff00           // multicast
        || (s[0] == 0x2001 && s[1] == 0x0db8)  // documentation
        || (s[0] == 0x0100 && s[1..4] == [0; 3])) // discard
}

/// The refusal for a webhook that names a non-public address, or `None` for one that does
/// not name an address (a host name, checked when resolved), names a public one, or when
/// the operator allows private addresses (`webhook_private`).
pub fn literal_refusal(url: &reqwest::Url, webhook_private: bool) -> Option<String> {
    if webhook_private {
        return None;
    }
    let host = url.host_str()?;
    let ip: IpAddr = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .parse()
        .ok()?;
    (!is_public(ip)).then(|| refusal(&ip.to_string()))
}

fn refusal(what: &str) -> String {
    format!(
        "webhook address {what} is not public (loopback, private, link-local or reserved); \
         start the gateway with --webhook-private to allow such addresses"
    )
}

/// A resolver that keeps only public addresses, and fails for a name that has none.
#[derive(Debug, Clone, Copy)]
pub struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> =
                all.iter().copied().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                let found: Vec<String> = all.iter().map(|a| a.ip().to_string()).collect();
                let what = format!("{host} ({})", found.join(", "));
                return Err(refusal(&what).into());
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use reqwest::dns::Resolve;

    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        let private = [
            "0.0.0.0",
            "10.1.2.3",
            "127.0.0.1",
            "100.64.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a00:1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "100::1",
            // 6to4, NAT64, Teredo, translated and mapped forms of private IPv4 addresses.
            "2002:7f00:1::1",
            "2002:a00:1::",
            "2002:c0a8:101::1",
            "64:ff9b::7f00:1",
            "64:ff9b::c0a8:101",
            "64:ff9b:1::808:808",
            "2001:0:4136:e378:8000:63bf:80ff:fffe", // client 127.0.0.1
            "2001:0:a00:1:8000:63bf:f7f7:f7f7",     // server 10.0.0.1
            "::ffff:0:127.0.0.1",
            "::ffff:0:a00:1",
            "::ffff:192.168.1.1",
            "::ffff:0:0",
            "fec0::1",
            "feff::1",
        ];
        for a in private {
            assert!(!is_public(a.parse().unwrap()), "{a} is not public");
        }
        let public = [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.0.1",
            "172.32.0.1",
            "192.169.0.1",
            "198.20.0.1",
            "223.255.255.255",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2001:0:4136:e378:8000:63bf:f7f7:f7f7", // server 65.54.227.120, client 8.8.8.8
            "::ffff:0:808:808",
        ];
        for a in public {
            assert!(is_public(a.parse().unwrap()), "{a} is public");
        }
    }

    #[test]
    fn addresses_in_urls_are_refused_and_names_left_to_resolution() {
        let refused = |u: &str| literal_refusal(&reqwest::Url::parse(u).unwrap(), false);
        assert!(refused("http://127.0.0.1:9/hook")
            .unwrap()
            .contains("127.0.0.1"));
        assert!(refused("http://[::1]/hook").is_some());
        assert!(refused("http://[2002:7f00:1::1]/hook").is_some());
        assert!(refused("http://[64:ff9b::a9fe:a9fe]/latest").is_some());
        assert!(refused("http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/hook").is_some());
        assert!(refused("http://[fec0::1]/hook").is_some());
        assert!(refused("http://[::ffff:0:a00:1]/hook").is_some());
        assert!(refused("http://169.254.169.254/latest/meta-data").is_some());
        assert!(refused("https://8.8.8.8/hook").is_none());
        assert!(refused("https://hooks.example.org/x").is_none());
        let loopback = reqwest::Url::parse("http://127.0.0.1/h").unwrap();
        assert!(
            literal_refusal(&loopback, true).is_none(),
            "allowed by the operator"
        );
    }

    #[tokio::test]
    async fn a_name_that_resolves_only_to_loopback_is_refused() {
        let err = match PublicOnly.resolve("localhost".parse().unwrap()).await {
            Ok(addrs) => panic!("resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("localhost") && err.contains("not public"),
            "{err}"
        );
    }
}
