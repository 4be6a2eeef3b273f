//! Decoding a captured frame down to its TCP segment.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::LinkType;

/// What a frame holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A TCP segment.
    Tcp {
        /// Source.
        src: SocketAddr,
        /// Destination.
        dst: SocketAddr,
        /// Sequence number.
        seq: u32,
        /// Flags byte.
        flags: u8,
        /// Payload (IP padding removed).
        payload: &'a [u8],
    },
    /// Not TCP (or a fragment): skipped.
    Other,
    /// Malformed: too short or inconsistent lengths.
    Malformed(&'static str),
}

/// Decodes a frame of the given link type.
pub fn decode(link: LinkType, frame: &[u8]) -> Decoded<'_> {
    let (ethertype, l3) = match link {
        LinkType::Ethernet => {
            let Some(mut et) = be16(frame, 12) else {
                return Decoded::Malformed("short Ethernet header");
            };
            let mut off = 14;
            // 802.1Q / QinQ tags.
            while et == 0x8100 || et == 0x88a8 {
                let Some(inner) = be16(frame, off + 2) else {
                    return Decoded::Malformed("short VLAN tag");
                };
                et = inner;
                off += 4;
            }
            (et, off)
        }
        LinkType::LinuxSll => match be16(frame, 14) {
            Some(et) => (et, 16),
            None => return Decoded::Malformed("short SLL header"),
        },
        LinkType::LinuxSll2 => match be16(frame, 0) {
            Some(et) => (et, 20),
            None => return Decoded::Malformed("short SLL2 header"),
        },
        LinkType::RawIp => match frame.first().map(|b| b >> 4) {
            Some(4) => (0x0800, 0),
            Some(6) => (0x86DD, 0),
            _ => return Decoded::Other,
        },
        LinkType::Null => match frame
            .get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        {
            Some(2) => (0x0800, 4),
            Some(24 | 28 | 30) => (0x86DD, 4),
            _ => return Decoded::Other,
        },
        LinkType::Other(_) => return Decoded::Other,
    };
    let Some(ip) = frame.get(l3..) else {
        return Decoded::Malformed("no network header");
    };
    match ethertype {
        0x0800 => ipv4(ip),
        0x86DD => ipv6(ip),
        _ => Decoded::Other,
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn ipv4(ip: &[u8]) -> Decoded<'_> {
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return Decoded::Malformed("short IPv4 header");
    }
    let ihl = usize::from(ip[0] & 0x0F) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ihl < 20 || total < ihl || ip.len() < ihl {
        return Decoded::Malformed("bad IPv4 lengths");
    }
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    if frag & 0x3FFF != 0 {
        // Fragments (first or not) are not reassembled at the IP layer.
        return Decoded::Other;
    }
    if ip[9] != 6 {
        return Decoded::Other;
    }
    let src = IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]));
    let dst = IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]));
    // Trim Ethernet padding; a snap length may have cut the packet short.
    let end = total.min(ip.len());
    tcp(src, dst, &ip[ihl..end])
}

fn ipv6(ip: &[u8]) -> Decoded<'_> {
    if ip.len() < 40 || ip[0] >> 4 != 6 {
        return Decoded::Malformed("short IPv6 header");
    }
    let payload_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    let mut next = ip[6];
    let mut addr = [0u8; 16];
    addr.copy_from_slice(&ip[8..24]);
    let src = IpAddr::V6(Ipv6Addr::from(addr));
    addr.copy_from_slice(&ip[24..40]);
    let dst = IpAddr::V6(Ipv6Addr::from(addr));
    let end = (40 + payload_len).min(ip.len());
    let mut off = 40;
    for _ in 0..8 {
        match next {
            0 | 43 | 60 => {
                let (Some(&n), Some(&len)) = (ip.get(off), ip.get(off + 1)) else {
                    return Decoded::Malformed("short IPv6 extension header");
                };
                next = n;
                off += (usize::from(len) + 1) * 8;
            }
            44 => return Decoded::Other,
            _ => break,
        }
    }
    if next != 6 {
        return Decoded::Other;
    }
    match ip.get(off..end) {
        Some(seg) => tcp(src, dst, seg),
        None => Decoded::Malformed("IPv6 extension headers past the packet"),
    }
}

fn tcp<'a>(src: IpAddr, dst: IpAddr, seg: &'a [u8]) -> Decoded<'a> {
    if seg.len() < 20 {
        return Decoded::Malformed("short TCP header");
    }
    let data_off = usize::from(seg[12] >> 4) * 4;
    if data_off < 20 || data_off > seg.len() {
        return Decoded::Malformed("bad TCP data offset");
    }
    Decoded::Tcp {
        src: SocketAddr::new(src, u16::from_be_bytes([seg[0], seg[1]])),
        dst: SocketAddr::new(dst, u16::from_be_bytes([seg[2], seg[3]])),
        seq: u32::from_be_bytes([seg[4], seg[5], seg[6], seg[7]]),
        flags: seg[13],
        payload: &seg[data_off..],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8], pad: usize) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        let total = 20 + 20 + payload.len();
        f.extend_from_slice(&[
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            0x40,
            0,
            64,
            6,
            0,
            0,
        ]);
        f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        f.extend_from_slice(&[
            0x9c, 0x40, 0x18, 0xeb, 0, 0, 0, 7, 0, 0, 0, 0, 0x50, 0x18, 0, 0, 0, 0, 0, 0,
        ]);
        f.extend_from_slice(payload);
        f.extend(std::iter::repeat_n(0, pad));
        f
    }

    #[test]
    fn ethernet_ipv4_tcp_with_padding() {
        let f = frame(b"PING", 6);
        let Decoded::Tcp {
            src,
            dst,
            seq,
            flags,
            payload,
        } = decode(LinkType::Ethernet, &f)
        else {
            panic!()
        };
        assert_eq!(src, "10.0.0.1:40000".parse().unwrap());
        assert_eq!(dst, "10.0.0.2:6379".parse().unwrap());
        assert_eq!((seq, flags, payload), (7, 0x18, &b"PING"[..]));
    }

    #[test]
    fn malformed_frames_never_panic() {
        let f = frame(b"PING", 0);
        for cut in 0..f.len() {
            let _ = decode(LinkType::Ethernet, &f[..cut]);
            let _ = decode(LinkType::LinuxSll, &f[..cut]);
            let _ = decode(LinkType::RawIp, &f[cut..]);
        }
        let mut bad = f.clone();
        bad[14 + 12 + 8 + 12] = 0xF0; // data offset 60 > segment
        assert!(matches!(
            decode(LinkType::Ethernet, &bad),
            Decoded::Malformed(_)
        ));
    }
}
