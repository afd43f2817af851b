//! [`Guest`]: one VM of the lab by its index, and the names and addresses that follow from
//! it, so that several VMs can live on the hosts and move one after another. Index 0 is
//! the scenario's VM ([`VIF`], [`VM_ADDR`], [`VM_MAC`], [`VIF_MAC`]); VM `i` has `vif{i}`,
//! the subnet's address `.2 + i` and MACs ending in `02 + i`.

use std::net::IpAddr;

use super::*;

/// The most VMs the lab's /29 holds beside the gateway-less hosts: `.2` to `.5`, so that
/// `.6` stays an unused address of the subnet.
pub const MAX_GUESTS: u8 = 4;

/// A VM of the lab by index (its namespace is [`MigrationLab::guest_ns`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guest(pub u8);

impl Guest {
    /// The scenario's VM.
    pub const FIRST: Guest = Guest(0);

    /// Its interface on the host side (libvirt's `<target dev=...>`).
    pub fn vif(&self) -> String {
        format!("{VIF_PREFIX}{}", self.0)
    }

    /// Its address of `family`.
    pub fn addr(&self, family: Family) -> IpAddr {
        let first: IpAddr = vm_addr(family).parse().expect("constant address");
        match first {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) + u32::from(self.0)).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) + u128::from(self.0)).into()),
        }
    }

    /// The guest NIC's MAC, the same on both hosts.
    pub fn mac(&self) -> String {
        self.with_last_byte(VM_MAC)
    }

    /// The host side's MAC (libvirt's `fe:` tap MAC of the guest's), the same on both hosts.
    pub fn vif_mac(&self) -> String {
        self.with_last_byte(VIF_MAC)
    }

    fn with_last_byte(&self, first: &str) -> String {
        let (head, last) = first.rsplit_once(':').expect("constant MAC");
        let last = u8::from_str_radix(last, 16).expect("constant MAC") + self.0;
        format!("{head}:{last:02x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_guest_is_the_scenarios_vm_and_the_others_follow_it() {
        let first = Guest::FIRST;
        assert_eq!(first.vif(), VIF);
        assert_eq!(first.addr(Family::Ipv4).to_string(), VM_ADDR);
        assert_eq!(first.addr(Family::Ipv6).to_string(), VM_ADDR6);
        assert_eq!(first.mac(), VM_MAC);
        assert_eq!(first.vif_mac(), VIF_MAC);
        let third = Guest(2);
        assert_eq!(third.vif(), "vif2");
        assert_eq!(third.addr(Family::Ipv4).to_string(), "203.0.113.4");
        assert_eq!(third.addr(Family::Ipv6).to_string(), "2001:db8:1::4");
        assert_eq!(third.vif_mac(), "fe:54:00:00:71:04");
    }
}
