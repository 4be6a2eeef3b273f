//! A plugin that links `std` and reads the environment: it imports WASI, and the
//! host must refuse it at install, naming the import.

use loupe_sdk::{Direction, Frame, Info, ParseError, Parser, Sniff};

/// Parses nothing; exists to import.
#[derive(Default)]
pub struct Nosy;

impl Parser for Nosy {
    const INFO: Info = Info {
        name: "nosy",
        version: "0.0.1",
        protocol: "nosy",
        default_ports: &[],
        fields: &[],
    };

    fn sniff(_: Direction, _: &[u8]) -> Sniff {
        if std::env::var_os("NOSY").is_some() {
            println!("looking around");
        }
        Sniff::No
    }

    fn parse(&mut self, d: Direction, buf: &[u8]) -> Result<Option<Frame>, ParseError> {
        Ok(Some(Frame::new(d, buf.len())))
    }

    fn deny_reply(_: &loupe_sdk::Request<'_>) -> Vec<u8> {
        Vec::new()
    }
}

loupe_sdk::export_parser!(Nosy);
