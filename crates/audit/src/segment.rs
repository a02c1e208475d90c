//! The log's files. Entries are appended to the current segment, the path
//! the log is opened with (`audit.log`: what `tail -f` and log shippers
//! follow). When it passes `[audit] segment_max_bytes` or its first entry
//! is older than `segment_max_age_hours`, it is sealed: renamed to
//! `audit.log.<seq of its first entry, 20 digits>`, and a new current
//! segment starts. The chain runs on across segments (a segment's first
//! entry holds the hash of the previous segment's last), so the files in
//! name order are one log.
//!
//! Why names carry the first seq: a reader finds the segment holding a
//! given entry from a directory listing, and name order is seq order. A
//! segment compacted by retention ([`crate::retention`]) keeps its name.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};

/// Digits of the seq in a sealed segment's name, so name order is seq order.
const SEQ_DIGITS: usize = 20;

/// The name a segment sealed with first entry `first_seq` gets.
pub fn sealed_name(current: &Path, first_seq: u64) -> PathBuf {
    let mut name = current.as_os_str().to_owned();
    name.push(format!(".{first_seq:0SEQ_DIGITS$}"));
    PathBuf::from(name)
}

/// The sealed segments of the log at `current`, oldest first, with the
/// seq their first entry had when sealed.
pub fn sealed(current: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let dir = match current.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Some(base) = current.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{base}.");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        if rest.len() == SEQ_DIGITS
            && let Ok(seq) = rest.parse::<u64>()
        {
            found.push((seq, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Every file of the log, oldest first: the sealed segments, then the
/// current one if it exists.
pub fn files(current: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = sealed(current)?.into_iter().map(|(_, p)| p).collect();
    if current.exists() {
        files.push(current.to_owned());
    }
    Ok(files)
}

/// Every whole line of every file of the log, in order. The files are
/// opened at once, so a segment sealed during the read is still read
/// whole (through the open file, under its new name). The last file stays
/// open at its end: lines appended to it later are read by later calls.
pub struct Lines {
    files: std::vec::IntoIter<Named>,
    reader: Option<Named>,
    /// The start of a line not yet whole (at the end of the last file).
    partial: Vec<u8>,
}

impl Lines {
    /// Reads the log at `current` from its oldest segment.
    pub fn open(current: &Path) -> std::io::Result<Self> {
        Self::open_from(current, 0)
    }

    /// Reads the log at `current` from the newest segment that starts at
    /// or before entry `seq` (0: the oldest).
    ///
    /// The current segment is opened first, then the sealed ones listed:
    /// if it is sealed in between, the listing holds it (the same file),
    /// and it is read once, in its place.
    pub fn open_from(current: &Path, seq: u64) -> std::io::Result<Self> {
        use std::os::unix::fs::MetadataExt as _;
        let current_file = match std::fs::File::open(current) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let sealed = sealed(current)?;
        let from = sealed.iter().rposition(|(first, _)| *first <= seq).unwrap_or(0);
        let mut readers = open_all(sealed.into_iter().skip(from).map(|(_, p)| p))?;
        if let Some(file) = current_file {
            let ino = file.metadata()?.ino();
            let sealed_meanwhile = readers
                .iter()
                .any(|(_, r)| r.get_ref().metadata().is_ok_and(|m| m.ino() == ino));
            if !sealed_meanwhile {
                readers.push((
                    current.to_owned(),
                    std::io::BufReader::with_capacity(1 << 16, file),
                ));
            }
        }
        Ok(Self::of(readers))
    }

    /// Reads `paths`, in order.
    pub fn open_files(paths: Vec<PathBuf>) -> std::io::Result<Self> {
        Ok(Self::of(open_all(paths.into_iter())?))
    }

    fn of(readers: Vec<Named>) -> Self {
        let mut files = readers.into_iter();
        let reader = files.next();
        Self {
            files,
            reader,
            partial: Vec::new(),
        }
    }

    /// The file the last line came from.
    pub fn file(&self) -> Option<&Path> {
        self.reader.as_ref().map(|(path, _)| path.as_path())
    }

    /// Puts the next whole line (without its newline) in `buf`; `false` at
    /// the end. A last line still being written is not a line yet (its
    /// start is kept for the next call).
    pub fn next_line(&mut self, buf: &mut Vec<u8>) -> std::io::Result<bool> {
        loop {
            let Some((_, reader)) = self.reader.as_mut() else {
                return Ok(false);
            };
            reader.read_until(b'\n', &mut self.partial)?;
            if self.partial.last() == Some(&b'\n') {
                self.partial.pop();
                buf.clear();
                std::mem::swap(buf, &mut self.partial);
                return Ok(true);
            }
            match self.files.next() {
                // A sealed file ends with a whole line.
                Some(next) => {
                    self.partial.clear();
                    self.reader = Some(next);
                }
                None => return Ok(false),
            }
        }
    }
}

/// A file being read, and its name.
type Named = (PathBuf, std::io::BufReader<std::fs::File>);

/// Opens each of `paths`; one removed meanwhile (by retention) is skipped.
fn open_all(paths: impl Iterator<Item = PathBuf>) -> std::io::Result<Vec<Named>> {
    let mut readers = Vec::new();
    for path in paths {
        match std::fs::File::open(&path) {
            Ok(f) => readers.push((path, std::io::BufReader::with_capacity(1 << 16, f))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(readers)
}

/// How far from a file's start or end its first or last line is looked
/// for (a device, `/dev/full`, never ends).
pub(crate) const MAX_LINE: u64 = 1 << 20;

/// A file's first whole line, if it has one.
pub(crate) fn first_line(file: &mut std::fs::File) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::{Read as _, Seek as _};
    file.seek(std::io::SeekFrom::Start(0))?;
    let mut first = Vec::new();
    std::io::BufReader::new((&*file).take(MAX_LINE)).read_until(b'\n', &mut first)?;
    Ok(first.strip_suffix(b"\n").map(<[u8]>::to_vec))
}

/// A file's end: its length, its length up to its last newline (less when
/// a write was cut off), and its last whole line.
pub(crate) fn last_line(file: &mut std::fs::File) -> std::io::Result<(u64, u64, Option<Vec<u8>>)> {
    use std::io::{Read as _, Seek as _};
    let len = file.metadata()?.len();
    let start = len.saturating_sub(MAX_LINE);
    file.seek(std::io::SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    (&*file).take(len - start).read_to_end(&mut tail)?;
    let complete = tail.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let last = tail[..complete]
        .strip_suffix(b"\n")
        .and_then(|b| b.rsplit(|c| *c == b'\n').next())
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec);
    Ok((len, start + complete as u64, last))
}

/// The `seq` of an entry, read from the start of its line.
pub fn seq_of(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(b"{\"seq\":")?;
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// The id of the log at `path`: the first 16 hex digits of its first
/// entry's hash; `None` while it has no entry. Kept in `<path>.id` once
/// found (with `persist`), since retention may later remove that entry.
pub fn log_id(path: &Path, persist: bool) -> std::io::Result<Option<String>> {
    let mut id_file = path.as_os_str().to_owned();
    id_file.push(".id");
    let id_file = PathBuf::from(id_file);
    match std::fs::read_to_string(&id_file) {
        Ok(id) if !id.trim().is_empty() => return Ok(Some(id.trim().to_owned())),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return Ok(None); // not a log yet, or a device
    }
    let mut lines = Lines::open(path)?;
    let mut first = Vec::new();
    if !lines.next_line(&mut first)? {
        return Ok(None);
    }
    let id = crate::line_hash(&first)[..16].to_owned();
    if persist && seq_of(&first) == Some(1) {
        valet_durable::write_atomically(&id_file, format!("{id}\n").as_bytes())?;
    }
    Ok(Some(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_seq_and_other_files_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let current = dir.path().join("audit.log");
        for seq in [1000, 1, 20] {
            std::fs::write(sealed_name(&current, seq), format!("{{\"seq\":{seq}}}\n")).unwrap();
        }
        std::fs::write(dir.path().join("audit.log.tmp"), "x\n").unwrap();
        std::fs::write(dir.path().join("audit.logx.00000000000000000005"), "x\n").unwrap();
        std::fs::write(&current, "{\"seq\":1001}\n{\"seq\":10").unwrap();
        let seqs: Vec<u64> = sealed(&current).unwrap().iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, [1, 20, 1000]);
        let mut lines = Lines::open(&current).unwrap();
        let mut buf = Vec::new();
        let mut read = Vec::new();
        while lines.next_line(&mut buf).unwrap() {
            read.push(seq_of(&buf).unwrap());
        }
        assert_eq!(read, [1, 20, 1000, 1001], "the partial last line is not read");
    }
}
