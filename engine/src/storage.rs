//! The one narrow interface the log and snapshots reach the disk through.
//!
//! Everything the write-ahead log (`wal/`) and snapshots (`snapshot.rs`) do to files goes
//! through [`Storage`] and [`StorageFile`]: create, open, positional reads and writes,
//! `set_len`, `fdatasync`/`fsync` of a file, rename, unlink, listing a directory, and a
//! directory's fsync. [`StdStorage`] is the real one, a thin layer over `std::fs` (one
//! indirect call per system call; the log writer's hot path is one `write_at` and one
//! `sync_data` per group). The simulated disk of the tests (`sim::SimDisk`) implements the
//! same trait and keeps written and synced state apart, so a power cut can be played out.
//!
//! The key ring (`keys.rs`), the data dir's `flock` and `node.secret` stay on `std::fs`:
//! they are written once, never on a path the simulation drives.
//!
//! **Failure.** What the log cannot write or sync stops the process ([`Storage::fail_stop`]):
//! the real storage aborts; the simulated one records the death and returns, and the
//! writer then does nothing more, as if the process had gone.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How [`Storage::create`] makes a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// A new file; fails if the name exists (`O_CREAT | O_EXCL`).
    New,
    /// A new file, or an existing one emptied (`O_CREAT | O_TRUNC`).
    Truncate,
}

/// An open file of a [`Storage`]. Writes are positional; a file has no cursor.
pub trait StorageFile: Send + Sync + fmt::Debug {
    /// Writes all of `buf` at `offset` (`pwrite`, repeated until done).
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Reads into `buf` from `offset`; the bytes read (0 at the end of the file).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// The file's length in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Cuts or extends the file to `len` bytes (zeros past the old end).
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// `fdatasync`: the data written, and the length if it changed, survive a power cut.
    fn sync_data(&self) -> io::Result<()>;
    /// `fsync`: [`Self::sync_data`] and the rest of the file's metadata.
    fn sync_all(&self) -> io::Result<()>;
}

/// Files and directories as the log and snapshots use them. Paths are absolute or relative
/// to the process, as `std::fs` takes them; names in directories are plain file names.
pub trait Storage: Send + Sync + fmt::Debug {
    /// Makes a private file (mode 0600), open for reading and writing.
    fn create(&self, path: &Path, how: Create) -> io::Result<Box<dyn StorageFile>>;
    /// Opens an existing file, for reading (and writing if `write`).
    fn open(&self, path: &Path, write: bool) -> io::Result<Box<dyn StorageFile>>;
    /// Renames `from` to `to` (replacing it), both in the same directory. Durable only once
    /// the directory is synced.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Unlinks a file. Durable only once its directory is synced.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// The names in directory `dir` (`NotFound` if it does not exist).
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Makes the creates, renames and unlinks done in `dir` durable (`fsync` of the directory).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Creates directory `dir` and its parents if missing, and makes it private (0700).
    fn ensure_dir(&self, dir: &Path) -> io::Result<()>;
    /// The directory's device and inode: what its path must still name while in use.
    fn dir_id(&self, dir: &Path) -> io::Result<(u64, u64)>;
    /// Bytes the filesystem holding `dir` has free for this process, if it says.
    fn free_bytes(&self, dir: &Path) -> Option<u64>;
    /// Whether a file or directory exists at `path`.
    fn exists(&self, path: &Path) -> bool;
    /// Pauses between the steps of a long job (removing a large file): sleeps on a real
    /// disk; the simulation does not wait.
    fn pause(&self, d: std::time::Duration);
    /// Stops the process after a failed write or sync of the log, whose data the kernel may
    /// have dropped (a retry could report lost data as durable). The real storage aborts
    /// and never returns; the simulated one records the death and returns, and the caller
    /// then stops doing anything.
    fn fail_stop(&self, what: &str, path: &Path, e: &io::Error);

    /// Reads the whole file at `path`.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let f = self.open(path, false)?;
        let len = f.size()?;
        let mut buf = vec![0u8; len as usize];
        let mut at = 0;
        while at < buf.len() {
            match f.read_at(&mut buf[at..], at as u64)? {
                0 => {
                    buf.truncate(at);
                    break;
                }
                n => at += n,
            }
        }
        Ok(buf)
    }
}

/// The storage of a data dir: shared by the log, its writer and spares, and snapshots.
pub type SharedStorage = Arc<dyn Storage>;

/// The real disk, through `std::fs`.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdStorage;

impl StdStorage {
    /// The real disk, shared.
    pub fn shared() -> SharedStorage {
        Arc::new(StdStorage)
    }
}

/// A file of [`StdStorage`].
#[derive(Debug)]
struct StdFile(fs::File);

impl StorageFile for StdFile {
    #[inline]
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_all_at(buf, offset)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(&self.0, buf, offset)
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    #[inline]
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn sync_all(&self) -> io::Result<()> {
        self.0.sync_all()
    }
}

impl Storage for StdStorage {
    fn create(&self, path: &Path, how: Create) -> io::Result<Box<dyn StorageFile>> {
        let mut o = fs::OpenOptions::new();
        o.read(true).write(true).mode(0o600);
        match how {
            Create::New => o.create_new(true),
            Create::Truncate => o.create(true).truncate(true),
        };
        Ok(Box::new(StdFile(o.open(path)?)))
    }
    fn open(&self, path: &Path, write: bool) -> io::Result<Box<dyn StorageFile>> {
        let f = fs::OpenOptions::new().read(true).write(write).open(path)?;
        Ok(Box::new(StdFile(f)))
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        // Into a buffer of the file's size, not zeroed first: recovery reads every segment
        // whole, and zeroing 580 MB of them first showed in the `durable` bench's recovery
        // (0.87 and 0.89 s against 0.85 and 0.85 s, 10 M records).
        fs::read(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for e in fs::read_dir(dir)? {
            if let Some(name) = e?.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        fs::File::open(dir)?.sync_all()
    }
    fn ensure_dir(&self, dir: &Path) -> io::Result<()> {
        crate::datadir::ensure(dir)
    }
    fn dir_id(&self, dir: &Path) -> io::Result<(u64, u64)> {
        Ok(crate::datadir::dir_id(&fs::metadata(dir)?))
    }
    fn free_bytes(&self, dir: &Path) -> Option<u64> {
        statvfs_free_bytes(dir)
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn pause(&self, d: std::time::Duration) {
        std::thread::sleep(d);
    }
    fn fail_stop(&self, what: &str, path: &Path, e: &io::Error) {
        eprintln!(
            "stile: fatal: {what} {}: {e}; stopping so no answer claims lost data is durable",
            path.display()
        );
        std::process::abort();
    }
}

/// Bytes the filesystem holding `dir` has free for this process, if it says.
fn statvfs_free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string and `st` a buffer of the right type, which
    // statvfs fills when it returns 0.
    let st = unsafe {
        if libc::statvfs(path.as_ptr(), st.as_mut_ptr()) != 0 {
            return None;
        }
        st.assume_init()
    };
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// The names in `dir` as paths; none if it does not exist.
pub fn list_paths(storage: &dyn Storage, dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    match storage.list(dir) {
        Ok(names) => Ok(names
            .into_iter()
            .map(|n| {
                let p = dir.join(&n);
                (n, p)
            })
            .collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Writes `parts` to a new private file `tmp` (mode 0600) and fsyncs it: the first half of
/// an atomic replace. Written and synced [`crate::datadir::WRITE_STEP`] bytes at a time.
pub fn write_private_synced(storage: &dyn Storage, tmp: &Path, parts: &[&[u8]]) -> io::Result<()> {
    let f = storage.create(tmp, Create::Truncate)?;
    let (mut at, mut unsynced) = (0u64, 0usize);
    for part in parts {
        for chunk in part.chunks(crate::datadir::WRITE_STEP) {
            f.write_at(chunk, at)?;
            at += chunk.len() as u64;
            unsynced += chunk.len();
            if unsynced >= crate::datadir::WRITE_STEP {
                f.sync_data()?;
                unsynced = 0;
            }
        }
    }
    f.sync_all()
}

/// Renames `tmp` over `path` and fsyncs the directory: the second half of an atomic replace.
pub fn rename_synced(storage: &dyn Storage, tmp: &Path, path: &Path) -> io::Result<()> {
    storage.rename(tmp, path)?;
    storage.sync_dir(path.parent().expect("files live in a directory"))
}

/// Bytes a large file is shortened by at a time when it is removed.
pub(crate) const REMOVE_STEP: u64 = 16 << 20;
/// Pause between those steps.
const REMOVE_PAUSE: std::time::Duration = std::time::Duration::from_millis(25);

/// Removes a large file a step at a time: shortened by [`REMOVE_STEP`] bytes and synced,
/// again and again, then unlinked. On a filesystem mounted with online discard, unlinking a
/// 1.3 GB snapshot at once makes the device trim all of it at once, and the log's syncs
/// wait behind that: a loop of 2 KiB writes and `fdatasync` beside it saw per-second
/// maxima of 175 to 518 ms, against 123 and 196 ms in these steps.
pub fn remove_in_steps(storage: &dyn Storage, path: &Path) -> io::Result<()> {
    let f = storage.open(path, true)?;
    let mut len = f.size()?;
    while len > REMOVE_STEP {
        len -= REMOVE_STEP;
        f.set_len(len)?;
        f.sync_all()?;
        storage.pause(REMOVE_PAUSE);
    }
    drop(f);
    storage.remove(path)
}
