//! The data directory's layout.
//!
//! ```text
//! DATA/
//!   lock             the pid of the process that has the dir open (for messages only: the
//!                    lock itself is an `flock` on the directory DATA/)
//!   keys/ring        the key ring (dir 0700, file 0600)
//!   wal/             write-ahead log segments
//!   snapshots/       index snapshots
//! ```

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use crate::storage::StdStorage;

/// Directory of the key ring.
pub const KEYS_DIR: &str = "keys";
/// The key ring file inside [`KEYS_DIR`].
pub const RING_FILE: &str = "ring";
/// Directory of log segments.
pub const WAL_DIR: &str = "wal";
/// Directory of snapshots.
pub const SNAPSHOTS_DIR: &str = "snapshots";
/// The pid file beside the lock: names the holder in a second opener's error. The lock is
/// on the data dir itself, so deleting this file (it looks like a stale pid file) lets no
/// second process in.
pub const LOCK_FILE: &str = "lock";

/// Why the data dir could not be locked.
#[derive(Debug)]
pub enum LockError {
    /// Another process holds it (its pid, if it wrote one).
    Held(Option<u32>),
    /// The lock file could not be made or locked.
    Io(io::Error),
}

/// The data dir, held for this process: an exclusive `flock` on the directory itself, held
/// while this stays alive (the kernel drops it when the process ends, however it ends).
#[derive(Debug)]
pub struct DirLock {
    /// The directory, open and locked.
    _dir: fs::File,
    /// Its path, as opened.
    path: std::path::PathBuf,
    /// Its device and inode: what the path must still name.
    id: (u64, u64),
}

impl DirLock {
    /// Whether the data dir's path still names the directory that is locked. A data dir
    /// moved or replaced while a process has it open would have that process write into
    /// whatever is at the path now (another node's files) while its lock guards the old one.
    pub fn still_at_path(&self) -> bool {
        same_dir(&self.path, self.id)
    }
}

/// A directory's device and inode.
pub fn dir_id(meta: &fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// Whether `path` names the directory with device and inode `id`.
pub fn same_dir(path: &Path, id: (u64, u64)) -> bool {
    fs::metadata(path).is_ok_and(|m| dir_id(&m) == id)
}

/// Takes the data dir for this process (see [`DirLock`]). The lock is on the directory, not
/// on a file in it: an operator deletes a file called `lock` sooner or later, and a lock on
/// an unlinked file excludes nobody. The holder's pid is written in [`LOCK_FILE`], for the
/// error a second opener gets.
pub fn lock(dir: &Path) -> Result<DirLock, LockError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let handle = fs::File::open(dir).map_err(LockError::Io)?;
    match handle.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let text = fs::read_to_string(dir.join(LOCK_FILE)).unwrap_or_default();
            return Err(LockError::Held(text.trim().parse().ok()));
        }
        Err(fs::TryLockError::Error(e)) => return Err(LockError::Io(e)),
    }
    let mut pid = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dir.join(LOCK_FILE))
        .map_err(LockError::Io)?;
    writeln!(pid, "{}", std::process::id()).map_err(LockError::Io)?;
    let id = dir_id(&handle.metadata().map_err(LockError::Io)?);
    Ok(DirLock {
        _dir: handle,
        path: dir.to_path_buf(),
        id,
    })
}

/// Creates the directory `dir` (a data dir or one inside it) if it is missing, and makes it
/// private (mode 0700, whatever the umask or its mode before: it holds codes and key
/// material).
pub fn ensure(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = fs::metadata(dir)?;
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Whether the data dir holds tickets: any file in its log or snapshot directories.
pub fn has_state(dir: &Path) -> io::Result<bool> {
    for sub in [WAL_DIR, SNAPSHOTS_DIR] {
        match fs::read_dir(dir.join(sub)) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Ok(true);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Bytes a private file is written in between syncs.
///
/// A large file (a snapshot of millions of tickets is hundreds of megabytes) written whole
/// and synced once queues all of it at the disk at once, and the log's `fdatasync`, which
/// every durable answer waits for, waits behind it: over a second for a 1.2 GB snapshot.
/// Synced a step at a time, the log waits behind one step at most.
pub const WRITE_STEP: usize = 1 << 20;

/// Writes `parts` to a new private file `tmp` (mode 0600) and fsyncs it: the first half of
/// an atomic replace (key material goes through here; snapshots stream the same way).
/// Written and synced [`WRITE_STEP`] bytes at a time.
pub fn write_private_synced(tmp: &Path, parts: &[&[u8]]) -> io::Result<()> {
    crate::storage::write_private_synced(&StdStorage, tmp, parts)
}

/// Removes a large file a step at a time (see [`crate::storage::remove_in_steps`]).
pub fn remove_in_steps(path: &Path) -> io::Result<()> {
    crate::storage::remove_in_steps(&StdStorage, path)
}

/// Renames `tmp` over `path` and fsyncs the directory: the second half of an atomic replace.
pub fn rename_synced(tmp: &Path, path: &Path) -> io::Result<()> {
    crate::storage::rename_synced(&StdStorage, tmp, path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// One holder at a time, even within one process (each open of the file is its own
    /// lock); the second is told the holder's pid; closing the file lets it go.
    #[test]
    fn one_process_at_a_time_holds_the_dir() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock(dir.path()).unwrap();
        match lock(dir.path()) {
            Err(LockError::Held(pid)) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("a second lock: {other:?}"),
        }
        drop(first);
        let again = lock(dir.path()).unwrap();
        drop(again);
    }

    /// Regression: the lock was an `flock` on `DATA/lock`, so deleting that file (a stale
    /// pid file, to an operator) let a second process lock a new one and share the dir.
    #[test]
    fn deleting_the_pid_file_lets_no_second_holder_in() {
        let dir = tempfile::tempdir().unwrap();
        let _first = lock(dir.path()).unwrap();
        fs::remove_file(dir.path().join(LOCK_FILE)).unwrap();
        assert!(
            matches!(lock(dir.path()), Err(LockError::Held(_))),
            "a second holder got in"
        );
    }

    /// A data dir moved away (or replaced) while locked is told apart from its path.
    #[test]
    fn a_moved_dir_is_no_longer_at_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        fs::create_dir(&data).unwrap();
        let held = lock(&data).unwrap();
        assert!(held.still_at_path());
        fs::rename(&data, dir.path().join("moved")).unwrap();
        assert!(!held.still_at_path(), "moved");
        fs::create_dir(&data).unwrap();
        assert!(!held.still_at_path(), "replaced by another");
    }

    /// Data dirs and their subdirectories are private whatever the umask and their mode.
    #[test]
    fn ensured_dirs_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).unwrap();
        for d in [open, dir.path().join("new/wal")] {
            ensure(&d).unwrap();
            let mode = fs::metadata(&d).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}", d.display());
        }
    }

    /// A file of many steps is removed, as are a small one and an empty one; a missing one
    /// is an error.
    #[test]
    fn files_are_removed_in_steps() {
        let dir = tempfile::tempdir().unwrap();
        for (name, len) in [
            ("big", 3 * crate::storage::REMOVE_STEP + 5),
            ("small", 10),
            ("empty", 0),
        ] {
            let path = dir.path().join(name);
            fs::File::create(&path).unwrap().set_len(len).unwrap();
            remove_in_steps(&path).unwrap();
            assert!(!path.exists(), "{name}");
        }
        let missing = remove_in_steps(&dir.path().join("big")).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }

    /// Written a step at a time, a file of many steps (parts crossing step boundaries) still
    /// holds exactly its parts, in order, and is private.
    #[test]
    fn a_file_of_many_steps_holds_its_parts_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let head: Vec<u8> = (0..100u8).collect();
        let body: Vec<u8> = (0..(2 * WRITE_STEP + 12_345))
            .map(|i| (i % 251) as u8)
            .collect();
        let tail = vec![7u8; WRITE_STEP - 100];
        let path = dir.path().join("f.tmp");
        write_private_synced(&path, &[&head, &body, &tail, &[]]).unwrap();
        let read = fs::read(&path).unwrap();
        assert_eq!(read.len(), head.len() + body.len() + tail.len());
        assert_eq!(read, [head, body, tail].concat());
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Written again, shorter: only the new parts remain.
        write_private_synced(&path, &[b"short"]).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"short");
    }
}
