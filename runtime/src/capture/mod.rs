//! Reading packet captures (pcap and pcapng, as tcpdump and tshark write them) and
//! decoding their packets down to TCP segments.

pub mod packet;
pub mod pcap;

pub use packet::{Decoded, decode};
pub use pcap::{CaptureError, CapturePacket, CaptureReader, LinkType};
