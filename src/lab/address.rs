//! The address policy: the lab assigns only addresses from ranges reserved for
//! benchmarking, documentation and carrier-grade NAT, so nothing it configures can collide
//! with or reach a real network even if it leaked out of a namespace.

use super::{LabError, Result};
use ipnet::IpNet;

/// The ranges the lab may use: the underlay (RFC 2544 benchmarking), tunnel addresses
/// (RFC 6598 shared space), VM subnets (RFC 5737 documentation ranges) and, for IPv6, the
/// documentation prefix (RFC 3849).
pub const LAB_RANGES: [&str; 6] = [
    "198.18.0.0/15",
    "100.64.0.0/10",
    "203.0.113.0/24",
    "198.51.100.0/24",
    "192.0.2.0/24",
    "2001:db8::/32",
];

/// Accepts `cidr` (e.g. `198.18.0.1/24` or a bare address) only if the whole prefix lies
/// inside one of [`LAB_RANGES`]; call it before handing any address to `ip`.
pub fn check_lab_address(cidr: &str) -> Result<IpNet> {
    let net: IpNet = cidr
        .parse()
        .or_else(|_| cidr.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| LabError::Refused(format!("{cidr:?} is not an address or prefix")))?;
    let inside = LAB_RANGES.iter().any(|range| {
        let range: IpNet = range.parse().expect("LAB_RANGES are valid prefixes");
        range.contains(&net)
    });
    if inside {
        Ok(net)
    } else {
        Err(LabError::Refused(format!(
            "{cidr} is outside the lab ranges {LAB_RANGES:?}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_ranges_pass_and_others_are_refused() {
        assert!(check_lab_address("198.18.0.1/24").is_ok());
        assert!(check_lab_address("198.19.255.1").is_ok());
        assert!(check_lab_address("100.64.0.2/24").is_ok());
        assert!(check_lab_address("203.0.113.0/29").is_ok());
        assert!(check_lab_address("10.0.0.1/24").is_err());
        assert!(check_lab_address("198.18.0.0/14").is_err());
        assert!(check_lab_address("0.0.0.0/0").is_err());
        assert!(check_lab_address("fe80::1/64").is_err());
        assert!(check_lab_address("2001:db8:18::1/64").is_ok());
        assert!(check_lab_address("2001:db9::1/64").is_err());
        assert!(check_lab_address("2001:db8::/31").is_err());
        assert!(check_lab_address("junk").is_err());
    }
}
