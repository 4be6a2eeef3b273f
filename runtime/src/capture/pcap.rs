//! pcap and pcapng files. Hostile input is expected: every length is checked, a
//! truncated or corrupt file ends with an error naming the offset, never a panic.

use std::time::{Duration, SystemTime};

/// Link-layer types we decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkType {
    /// Ethernet (1).
    Ethernet,
    /// Linux cooked capture v1 (113), `tcpdump -i any`.
    LinuxSll,
    /// Linux cooked capture v2 (276).
    LinuxSll2,
    /// Raw IP (101 / 12 / 14).
    RawIp,
    /// BSD loopback (0).
    Null,
    /// Anything else (its number).
    Other(u32),
}

impl LinkType {
    fn from_u32(v: u32) -> Self {
        match v {
            1 => Self::Ethernet,
            113 => Self::LinuxSll,
            276 => Self::LinuxSll2,
            101 | 12 | 14 => Self::RawIp,
            0 => Self::Null,
            other => Self::Other(other),
        }
    }
}

/// One captured packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturePacket {
    /// Capture time.
    pub time: SystemTime,
    /// Link type of its interface.
    pub link: LinkType,
    /// Captured bytes (possibly truncated by the snap length).
    pub data: Vec<u8>,
}

/// A capture that cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CaptureError {
    /// Not a pcap or pcapng file.
    #[error("not a pcap or pcapng file (magic {0:#010x})")]
    Magic(u32),
    /// The file ends inside a header or record.
    #[error("truncated at byte {0}")]
    Truncated(usize),
    /// A length field is impossible.
    #[error("corrupt record at byte {offset}: {message}")]
    Corrupt {
        /// Where.
        offset: usize,
        /// What.
        message: String,
    },
}

/// Largest record we accept (a jumbo frame with room to spare).
const MAX_RECORD: usize = 256 * 1024;

enum Format {
    Pcap {
        big_endian: bool,
        nanos: bool,
        link: LinkType,
    },
    PcapNg {
        big_endian: bool,
        interfaces: Vec<(LinkType, u64)>,
    },
}

/// Iterates over the packets of a capture held in memory.
pub struct CaptureReader<'a> {
    data: &'a [u8],
    pos: usize,
    format: Format,
}

impl std::fmt::Debug for CaptureReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureReader")
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

fn u32_at(data: &[u8], at: usize, big: bool) -> Option<u32> {
    let b: [u8; 4] = data.get(at..at + 4)?.try_into().ok()?;
    Some(if big {
        u32::from_be_bytes(b)
    } else {
        u32::from_le_bytes(b)
    })
}

fn u16_at(data: &[u8], at: usize, big: bool) -> Option<u16> {
    let b: [u8; 2] = data.get(at..at + 2)?.try_into().ok()?;
    Some(if big {
        u16::from_be_bytes(b)
    } else {
        u16::from_le_bytes(b)
    })
}

impl<'a> CaptureReader<'a> {
    /// Reads the file header.
    pub fn new(data: &'a [u8]) -> Result<Self, CaptureError> {
        let magic = u32_at(data, 0, false).ok_or(CaptureError::Truncated(0))?;
        let format = match magic {
            0xa1b2_c3d4 | 0xd4c3_b2a1 | 0xa1b2_3c4d | 0x4d3c_b2a1 => {
                let big = matches!(magic, 0xd4c3_b2a1 | 0x4d3c_b2a1);
                let nanos = matches!(magic, 0xa1b2_3c4d | 0x4d3c_b2a1);
                let link = u32_at(data, 20, big).ok_or(CaptureError::Truncated(20))?;
                Format::Pcap {
                    big_endian: big,
                    nanos,
                    link: LinkType::from_u32(link & 0x0FFF_FFFF),
                }
            }
            0x0A0D_0D0A => Format::PcapNg {
                big_endian: false,
                interfaces: Vec::new(),
            },
            other => return Err(CaptureError::Magic(other)),
        };
        let pos = if matches!(format, Format::Pcap { .. }) {
            24
        } else {
            0
        };
        Ok(Self { data, pos, format })
    }

    /// The next packet; `Ok(None)` at the end.
    pub fn next_packet(&mut self) -> Result<Option<CapturePacket>, CaptureError> {
        loop {
            if self.pos >= self.data.len() {
                return Ok(None);
            }
            match &mut self.format {
                Format::Pcap {
                    big_endian,
                    nanos,
                    link,
                } => {
                    let (big, nanos, link) = (*big_endian, *nanos, *link);
                    let at = self.pos;
                    let hdr = self
                        .data
                        .get(at..at + 16)
                        .ok_or(CaptureError::Truncated(at))?;
                    let sec = u32_at(hdr, 0, big).unwrap_or(0);
                    let frac = u32_at(hdr, 4, big).unwrap_or(0);
                    let incl = u32_at(hdr, 8, big).unwrap_or(0) as usize;
                    if incl > MAX_RECORD {
                        return Err(CaptureError::Corrupt {
                            offset: at,
                            message: format!("record length {incl}"),
                        });
                    }
                    let body = self
                        .data
                        .get(at + 16..at + 16 + incl)
                        .ok_or(CaptureError::Truncated(at + 16))?;
                    self.pos = at + 16 + incl;
                    let sub = if nanos {
                        Duration::from_nanos(u64::from(frac))
                    } else {
                        Duration::from_micros(u64::from(frac))
                    };
                    return Ok(Some(CapturePacket {
                        time: SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(sec)) + sub,
                        link,
                        data: body.to_vec(),
                    }));
                }
                Format::PcapNg {
                    big_endian,
                    interfaces,
                } => {
                    let at = self.pos;
                    let block_type =
                        u32_at(self.data, at, false).ok_or(CaptureError::Truncated(at))?;
                    if block_type == 0x0A0D_0D0A {
                        // Section header: its byte-order magic decides the endianness.
                        let bom =
                            u32_at(self.data, at + 8, false).ok_or(CaptureError::Truncated(at))?;
                        *big_endian = bom == 0x4D3C_2B1A;
                        interfaces.clear();
                    }
                    let big = *big_endian;
                    let len =
                        u32_at(self.data, at + 4, big).ok_or(CaptureError::Truncated(at))? as usize;
                    if len < 12 || !len.is_multiple_of(4) || len > MAX_RECORD + 64 {
                        return Err(CaptureError::Corrupt {
                            offset: at,
                            message: format!("block length {len}"),
                        });
                    }
                    let block = self
                        .data
                        .get(at..at + len)
                        .ok_or(CaptureError::Truncated(at))?;
                    self.pos = at + len;
                    match block_type {
                        // Interface description: link type and timestamp resolution.
                        1 => {
                            let link = u16_at(block, 8, big).unwrap_or(0);
                            let mut resolution = 1_000_000u64;
                            let mut opt = 16;
                            while opt + 4 <= len - 4 {
                                let code = u16_at(block, opt, big).unwrap_or(0);
                                let olen = u16_at(block, opt + 2, big).unwrap_or(0) as usize;
                                if code == 0 {
                                    break;
                                }
                                if code == 9 && olen == 1 {
                                    let v = block.get(opt + 4).copied().unwrap_or(6);
                                    resolution = if v & 0x80 != 0 {
                                        1u64.checked_shl(u32::from(v & 0x7f)).unwrap_or(1_000_000)
                                    } else {
                                        10u64.checked_pow(u32::from(v)).unwrap_or(1_000_000)
                                    };
                                }
                                opt += 4 + olen.div_ceil(4) * 4;
                            }
                            interfaces.push((LinkType::from_u32(u32::from(link)), resolution));
                        }
                        // Enhanced packet.
                        6 => {
                            let iface = u32_at(block, 8, big).unwrap_or(0) as usize;
                            let (link, resolution) =
                                *interfaces.get(iface).ok_or_else(|| CaptureError::Corrupt {
                                    offset: at,
                                    message: format!("packet on undeclared interface {iface}"),
                                })?;
                            let ts = (u64::from(u32_at(block, 12, big).unwrap_or(0)) << 32)
                                | u64::from(u32_at(block, 16, big).unwrap_or(0));
                            let caplen = u32_at(block, 20, big).unwrap_or(0) as usize;
                            let body = block.get(28..28 + caplen).ok_or(CaptureError::Corrupt {
                                offset: at,
                                message: format!("captured length {caplen} past the block"),
                            })?;
                            let secs = ts / resolution.max(1);
                            let rem = ts % resolution.max(1);
                            let nanos = rem.saturating_mul(1_000_000_000) / resolution.max(1);
                            return Ok(Some(CapturePacket {
                                time: SystemTime::UNIX_EPOCH
                                    + Duration::from_secs(secs)
                                    + Duration::from_nanos(nanos),
                                link,
                                data: body.to_vec(),
                            }));
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pcap(records: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
        out.extend_from_slice(&[2, 0, 4, 0]);
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&65535u32.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        for (i, r) in records.iter().enumerate() {
            out.extend_from_slice(&(i as u32 + 10).to_le_bytes());
            out.extend_from_slice(&500u32.to_le_bytes());
            out.extend_from_slice(&(r.len() as u32).to_le_bytes());
            out.extend_from_slice(&(r.len() as u32).to_le_bytes());
            out.extend_from_slice(r);
        }
        out
    }

    #[test]
    fn reads_pcap_records() {
        let file = pcap(&[b"abc", b"defg"]);
        let mut r = CaptureReader::new(&file).unwrap();
        let p = r.next_packet().unwrap().unwrap();
        assert_eq!(p.data, b"abc");
        assert_eq!(p.link, LinkType::Ethernet);
        assert_eq!(
            p.time,
            SystemTime::UNIX_EPOCH + Duration::from_secs(10) + Duration::from_micros(500)
        );
        assert_eq!(r.next_packet().unwrap().unwrap().data, b"defg");
        assert_eq!(r.next_packet().unwrap(), None);
    }

    #[test]
    fn hostile_files_are_errors() {
        assert_eq!(
            CaptureReader::new(b"xx").unwrap_err(),
            CaptureError::Truncated(0)
        );
        assert!(matches!(
            CaptureReader::new(&[0u8; 32]).unwrap_err(),
            CaptureError::Magic(0)
        ));
        let mut file = pcap(&[b"abc"]);
        file.truncate(file.len() - 1);
        let mut r = CaptureReader::new(&file).unwrap();
        assert_eq!(r.next_packet().unwrap_err(), CaptureError::Truncated(40));
        let mut huge = pcap(&[b"abc"]);
        huge[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut r = CaptureReader::new(&huge).unwrap();
        assert!(matches!(
            r.next_packet().unwrap_err(),
            CaptureError::Corrupt { offset: 24, .. }
        ));
        // Random bytes after a valid header never panic.
        for seed in 0..200u32 {
            let mut f = pcap(&[]);
            f.extend(
                (0..64).map(|i| (seed.wrapping_mul(2_654_435_761).wrapping_add(i * 97) >> 5) as u8),
            );
            let mut r = CaptureReader::new(&f).unwrap();
            for _ in 0..10 {
                if !matches!(r.next_packet(), Ok(Some(_))) {
                    break;
                }
            }
        }
    }
}
