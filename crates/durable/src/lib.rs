//! Durable files: the few filesystem moves every embedded store of Valet's
//! makes, done one way.
//!
//! - [`write_atomically`]: replace a file so that a crash leaves the old or
//!   the new content, never a mix: write `<name>.tmp` (mode 0600), fsync,
//!   rename over the target, fsync the directory.
//! - [`shred`]: overwrite a file with zeros and fsync before unlinking it, so
//!   deleted ciphertext is not left in the file's blocks.
//! - [`create_new`]: create a file durably, never replacing one (the master
//!   key).
//! - [`create_private_dir`]: a directory (and parents) with mode 0700, the
//!   new entries fsync'd into their parents.
//! - [`open_private`]: open a file for writing, creating it with mode 0600
//!   (and tightening an existing one), for files another library writes.
//!
//! Errors are plain `io::Error`s; callers add which record they concern.
#![forbid(unsafe_code)]

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

/// The temporary file [`write_atomically`] writes beside `path`.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Creates `dir` and its missing parents with mode 0700, and fsyncs the
/// parent of each directory it created, so the new entries survive a crash.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.as_os_str().is_empty() && !at.exists() {
        missing.push(at.to_owned());
        at = parent(at);
    }
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    for created in missing.iter().rev() {
        sync_dir(parent(created))?;
    }
    Ok(())
}

/// Creates `path` with `bytes` (mode 0600) durably, failing if it exists:
/// written to a temporary file and hard-linked into place, so the file is
/// never seen half-written and never replaces another.
pub fn create_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = write_temp(path, bytes)?;
    let linked = fs::hard_link(&tmp, path);
    fs::remove_file(&tmp)?;
    linked?;
    sync_dir(parent(path))
}

/// Opens `path` for reading and writing, creating it with mode 0600 if it is
/// missing and tightening it to 0600 if it is not: for the files Valet hands
/// to others (the state-dir lock, the idempotency database), which would
/// otherwise be created with the process umask.
pub fn open_private(path: &Path) -> io::Result<fs::File> {
    use std::os::unix::fs::PermissionsExt as _;
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    if file.metadata()?.permissions().mode() & 0o077 != 0 {
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

/// Makes a directory's entries (renames, unlinks) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Replaces `path` with `bytes` (mode 0600), atomically and durably.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = write_temp(path, bytes)?;
    fs::rename(&tmp, path)?;
    sync_dir(parent(path))
}

/// Writes `bytes` to [`temp_path`] (mode 0600) and fsyncs it.
fn write_temp(path: &Path, bytes: &[u8]) -> io::Result<PathBuf> {
    let tmp = temp_path(path);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(tmp)
}

/// Overwrites `path` with zeros, fsyncs, then unlinks it durably.
pub fn shred(path: &Path) -> io::Result<()> {
    let len = fs::metadata(path)?.len();
    let mut file = fs::OpenOptions::new().write(true).open(path)?;
    file.write_all(&vec![0u8; len as usize])?;
    file.sync_all()?;
    fs::remove_file(path)?;
    sync_dir(parent(path))
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn replaces_privately_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!temp_path(&path).exists());
    }

    #[test]
    fn create_new_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        create_new(&path, b"first").unwrap();
        assert_eq!(
            create_new(&path, b"second").unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(fs::read(&path).unwrap(), b"first");
        assert!(!temp_path(&path).exists());
        create_private_dir(&dir.path().join("a/b/c")).unwrap();
        assert!(dir.path().join("a/b/c").is_dir());
    }

    #[test]
    fn shredding_zeroes_before_unlinking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        write_atomically(&path, b"ciphertext").unwrap();
        let mut open = fs::File::open(&path).unwrap();
        shred(&path).unwrap();
        assert!(!path.exists());
        let mut left = Vec::new();
        open.read_to_end(&mut left).unwrap();
        assert_eq!(left, vec![0u8; 10]);
    }
}
