//! Exported lines on disk, rotated as Cilium's exporter rotates them: before a
//! write would take the file past its size limit it is renamed
//! `<name>-<UTC time>.<ext>` (`events-2026-12-07T10-30-00.000.log`), optionally
//! gzipped (`….log.gz`), and the oldest rotated files beyond the limit are removed.
//!
//! A write either lands whole or not at all: a failed write (a full disk) is cut
//! back off the file, so every line in it parses.

use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::config::Rotation;

/// Where lines go.
#[derive(Debug)]
pub enum Sink {
    /// The agent's standard output.
    Stdout,
    /// A rotated file.
    File(RotatingFile),
}

impl Sink {
    /// The sink for `path` (`stdout` is standard output); files open on the first
    /// write.
    pub fn new(path: &Path, rotation: Rotation) -> Self {
        if path == Path::new("stdout") {
            Self::Stdout
        } else {
            Self::File(RotatingFile::new(path.to_path_buf(), rotation))
        }
    }

    /// Writes one line (with its newline); returns whether the file rotated.
    pub fn write_line(&mut self, line: &[u8]) -> io::Result<bool> {
        match self {
            Self::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(line)?;
                out.flush()?;
                Ok(false)
            }
            Self::File(f) => f.write_line(line),
        }
    }
}

/// A size-limited file with rotated backups.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    rotation: Rotation,
    file: Option<File>,
    size: u64,
}

impl RotatingFile {
    /// The file at `path`, opened (appending) on the first write.
    pub fn new(path: PathBuf, rotation: Rotation) -> Self {
        Self {
            path,
            rotation,
            file: None,
            size: 0,
        }
    }

    /// Writes `line` whole, rotating first when it would not fit.
    pub fn write_line(&mut self, line: &[u8]) -> io::Result<bool> {
        let len = line.len() as u64;
        if len > self.rotation.max_bytes {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a {len}-byte line is larger than the {}-byte file limit",
                    self.rotation.max_bytes
                ),
            ));
        }
        if self.file.is_none() {
            self.open()?;
        }
        let Some(file) = self.file.as_ref() else {
            return Err(io::Error::other("file not open"));
        };
        // What is on disk, not what we wrote: someone may have truncated it.
        self.size = file.metadata()?.len();
        let mut rotated = false;
        if self.size + len > self.rotation.max_bytes {
            self.rotate()?;
            rotated = true;
        }
        let Some(file) = self.file.as_mut() else {
            return Err(io::Error::other("file not open"));
        };
        if let Err(e) = file.write_all(line) {
            // Leave no partial line behind: cut the file back to where it was.
            if file.metadata().is_ok_and(|m| m.len() > self.size) {
                let _ = file.set_len(self.size);
            }
            return Err(e);
        }
        self.size += len;
        Ok(rotated)
    }

    fn open(&mut self) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)?;
        self.size = file.metadata()?.len();
        self.file = Some(file);
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        let backup = self.backup_name(SystemTime::now());
        std::fs::rename(&self.path, &backup)?;
        let result = self.open();
        if self.rotation.compress {
            gzip(&backup)?;
        }
        self.prune()?;
        result
    }

    /// `<dir>/<stem>-<UTC time>.<ext>`.
    fn backup_name(&self, at: SystemTime) -> PathBuf {
        let (stem, ext) = self.stem_ext();
        let t = time::OffsetDateTime::from(at);
        let stamp = format!(
            "{:04}-{:02}-{:02}T{:02}-{:02}-{:02}.{:03}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        );
        let mut name = self.path.with_file_name(format!("{stem}-{stamp}{ext}"));
        // Two rotations within a millisecond: keep both.
        let mut n = 1;
        while name.exists() || gz_name(&name).exists() {
            name = self.path.with_file_name(format!("{stem}-{stamp}.{n}{ext}"));
            n += 1;
        }
        name
    }

    fn stem_ext(&self) -> (String, String) {
        let stem = self
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ext = self
            .path
            .extension()
            .map(|e| format!(".{}", e.to_string_lossy()))
            .unwrap_or_default();
        (stem, ext)
    }

    /// Rotated files, oldest first.
    pub fn backups(&self) -> Vec<PathBuf> {
        let (stem, ext) = self.stem_ext();
        let prefix = format!("{stem}-");
        let Some(dir) = self.path.parent() else {
            return Vec::new();
        };
        let mut found: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let body = name.strip_prefix(&prefix)?;
                let stamp = body
                    .strip_suffix(&format!("{ext}.gz"))
                    .or_else(|| body.strip_suffix(&ext))?;
                // `2026-12-07T10-30-00.000` (and `.n` for same-millisecond twins).
                let b = stamp.as_bytes();
                let ok = b.len() >= 23 && b[10] == b'T' && b[..4].iter().all(u8::is_ascii_digit);
                ok.then(|| (stamp.to_string(), e.path()))
            })
            .collect();
        found.sort();
        found.into_iter().map(|(_, p)| p).collect()
    }

    /// Removes the oldest backups past the limit (0 keeps them all, as Cilium's
    /// rotation does).
    fn prune(&self) -> io::Result<()> {
        if self.rotation.max_backups == 0 {
            return Ok(());
        }
        let backups = self.backups();
        let excess = backups.len().saturating_sub(self.rotation.max_backups);
        for old in &backups[..excess] {
            std::fs::remove_file(old)?;
        }
        Ok(())
    }
}

fn gz_name(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".gz");
    PathBuf::from(name)
}

/// Replaces `path` by `path.gz`.
fn gzip(path: &Path) -> io::Result<()> {
    let target = gz_name(path);
    let mut input = File::open(path)?;
    let output = OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&target)?;
    let mut encoder = flate2::write::GzEncoder::new(output, flate2::Compression::default());
    let copied = io::copy(&mut input, &mut encoder).and_then(|_| encoder.finish());
    match copied {
        Ok(_) => std::fs::remove_file(path),
        Err(e) => {
            let _ = std::fs::remove_file(&target);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;

    fn rotation(max_bytes: u64, max_backups: usize, compress: bool) -> Rotation {
        Rotation {
            max_bytes,
            max_backups,
            compress,
        }
    }

    #[test]
    fn rotates_at_the_limit_and_keeps_the_newest_backups() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        let mut f = RotatingFile::new(path.clone(), rotation(120, 2, false));
        let line = |i: usize| format!("{{\"n\":{i:03},\"pad\":\"{}\"}}\n", "x".repeat(20));
        let mut rotations = 0;
        for i in 0..12 {
            if f.write_line(line(i).as_bytes()).unwrap() {
                rotations += 1;
            }
        }
        // 39-byte lines, 3 per 120-byte file: 12 lines rotate 3 times.
        assert_eq!(rotations, 3);
        let backups = f.backups();
        assert_eq!(backups.len(), 2, "{backups:?}");
        for b in &backups {
            let name = b.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                name.starts_with("events-") && name.ends_with(".log"),
                "{name}"
            );
        }
        let current = std::fs::read_to_string(&path).unwrap();
        assert_eq!(current, (9..12).map(line).collect::<String>());
        let newest = std::fs::read_to_string(&backups[1]).unwrap();
        assert_eq!(newest, (6..9).map(line).collect::<String>());
        let oldest = std::fs::read_to_string(&backups[0]).unwrap();
        assert_eq!(oldest, (3..6).map(line).collect::<String>());
    }

    #[test]
    fn zero_backups_keeps_them_all_and_strangers_are_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        // Files that only look like backups, one with a multi-byte name.
        std::fs::write(dir.path().join("events-abcé0123456T89012345678.log"), "x").unwrap();
        std::fs::write(dir.path().join("events-notes.log"), "x").unwrap();
        let mut f = RotatingFile::new(path, rotation(40, 0, false));
        for i in 0..6 {
            f.write_line(format!("{{\"n\":{i},\"pad\":\"{}\"}}\n", "z".repeat(16)).as_bytes())
                .unwrap();
        }
        assert_eq!(f.backups().len(), 5);
        assert!(dir.path().join("events-notes.log").exists());
        assert!(
            dir.path()
                .join("events-abcé0123456T89012345678.log")
                .exists()
        );
    }

    #[test]
    fn rotated_files_can_be_gzipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.json");
        let mut f = RotatingFile::new(path.clone(), rotation(64, 5, true));
        for i in 0..4 {
            f.write_line(format!("{{\"line\":{i},\"x\":\"{}\"}}\n", "y".repeat(30)).as_bytes())
                .unwrap();
        }
        let backups = f.backups();
        assert_eq!(backups.len(), 3);
        let mut text = String::new();
        flate2::read::GzDecoder::new(File::open(&backups[0]).unwrap())
            .read_to_string(&mut text)
            .unwrap();
        assert!(text.starts_with("{\"line\":0,"), "{text}");
        assert!(backups[0].to_string_lossy().ends_with(".json.gz"));
    }

    #[test]
    fn a_line_larger_than_the_file_is_refused_and_appends_resume() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.log");
        std::fs::write(&path, "{\"old\":1}\n").unwrap();
        let mut f = RotatingFile::new(path.clone(), rotation(50, 1, false));
        let e = f.write_line(&[b'x'; 51]).unwrap_err();
        assert!(
            e.to_string().contains("larger than the 50-byte file limit"),
            "{e}"
        );
        f.write_line(b"{\"new\":2}\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"old\":1}\n{\"new\":2}\n"
        );
    }
}
