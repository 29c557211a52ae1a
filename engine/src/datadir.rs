//! The data directory's layout.
//!
//! ```text
//! DATA/
//!   keys/ring        the key ring (dir 0700, file 0600)
//!   wal/             write-ahead log segments
//!   snapshots/       index snapshots
//! ```

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

/// Directory of the key ring.
pub const KEYS_DIR: &str = "keys";
/// The key ring file inside [`KEYS_DIR`].
pub const RING_FILE: &str = "ring";
/// Directory of log segments.
pub const WAL_DIR: &str = "wal";
/// Directory of snapshots.
pub const SNAPSHOTS_DIR: &str = "snapshots";

/// Creates the data dir (mode 0700: snapshots hold key material) if it is missing.
pub fn ensure(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
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

/// Writes `parts` to a new private file `tmp` (mode 0600) and fsyncs it: the first half of
/// an atomic replace (key material and snapshots go through here).
pub fn write_private_synced(tmp: &Path, parts: &[&[u8]]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(tmp)?;
    for part in parts {
        f.write_all(part)?;
    }
    f.sync_all()
}

/// Renames `tmp` over `path` and fsyncs the directory: the second half of an atomic replace.
pub fn rename_synced(tmp: &Path, path: &Path) -> io::Result<()> {
    fs::rename(tmp, path)?;
    fs::File::open(path.parent().expect("files live in a directory"))?.sync_all()
}
