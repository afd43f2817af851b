//! Netlink attributes (`struct nlattr`, linux/netlink.h): the one walk over them that every
//! parser of netlink messages here uses, so a malformed length is handled once. Pure: bytes
//! in, `(type, payload)` pairs out; it never panics and always ends.

/// `sizeof(struct nlmsghdr)`.
const NLMSG_HDRLEN: usize = 16;
/// `sizeof(struct nlattr)`: the length and type before each payload.
const NLA_HDRLEN: usize = 4;
/// Attribute type bits (`NLA_TYPE_MASK`): the top two are flags (nested, byte order).
const NLA_TYPE_MASK: u16 = 0x3fff;

/// The attributes of a stream (a message's, or a nested attribute's payload), as
/// `(type, payload)`. The walk ends at the first malformed one: a length shorter than the
/// attribute's own header, or longer than what is left.
pub(crate) fn stream(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = usize::from(u16::from_ne_bytes([*data.first()?, *data.get(1)?]));
        let ty = u16::from_ne_bytes([*data.get(2)?, *data.get(3)?]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN {
            return None;
        }
        let payload = data.get(NLA_HDRLEN..len)?;
        // NLA_ALIGN: attributes are padded to 4 bytes.
        data = data.get(len.next_multiple_of(4)..).unwrap_or_default();
        Some((ty, payload))
    })
}

/// The attributes of a whole netlink message (header included) after its family's fixed
/// header of `fixed` bytes; none if the message is shorter than that.
pub(crate) fn of_message(msg: &[u8], fixed: usize) -> impl Iterator<Item = (u16, &[u8])> {
    stream(msg.get(NLMSG_HDRLEN + fixed..).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut a = ((NLA_HDRLEN + payload.len()) as u16).to_ne_bytes().to_vec();
        a.extend_from_slice(&ty.to_ne_bytes());
        a.extend_from_slice(payload);
        a.resize(a.len().next_multiple_of(4), 0);
        a
    }

    #[test]
    fn walks_padded_attributes_and_masks_the_flags() {
        let mut data = attr(1, b"abcde");
        data.extend(attr(0x8000 | 2, &[7]));
        let got: Vec<_> = stream(&data).collect();
        assert_eq!(got, [(1, &b"abcde"[..]), (2, &[7][..])]);
    }

    #[test]
    fn a_malformed_length_ends_the_walk() {
        for bad in [0u16, 1, 3, 200] {
            let mut data = attr(1, &[1, 2, 3, 4]);
            data.extend_from_slice(&bad.to_ne_bytes());
            data.extend_from_slice(&[5, 0, 9, 9, 9, 9]);
            let got: Vec<_> = stream(&data).take(5).collect();
            assert_eq!(got, [(1, &[1, 2, 3, 4][..])], "nla_len {bad}");
        }
        assert_eq!(stream(&[4, 0]).count(), 0);
        assert_eq!(of_message(&[0; 10], 4).count(), 0);
    }
}
