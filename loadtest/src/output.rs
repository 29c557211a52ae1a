//! Where a run's figures go: `--json FILE` and `--report DIR`. Both are checked before the
//! run, so a long run's figures are not lost to a mistyped path, and files are written whole
//! or not at all (a temporary file beside the destination, synced and renamed over it), so
//! a script that reads them never sees half a file. `-` and `/dev/stdout` mean this
//! process's standard output; another path under `/dev` or `/proc`, or one that is not a
//! regular file (a pipe), is written directly; a symbolic link elsewhere is followed.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::report::Report;

/// Why an output cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// `--json` names a directory.
    #[error("--json {0}: is a directory; name a file")]
    JsonIsDir(PathBuf),
    /// Its directory does not take new files.
    #[error("--json {path}: cannot write into {dir}")]
    JsonDir {
        /// The file given.
        path: PathBuf,
        /// The directory it would go in.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The report directory cannot be made or written into.
    #[error("--report {0}: cannot write into it")]
    ReportDir(PathBuf, #[source] std::io::Error),
    /// Writing a file failed.
    #[error("writing {0}")]
    Write(PathBuf, #[source] std::io::Error),
    /// Encoding the report failed.
    #[error("encoding the report as JSON")]
    Encode(#[from] serde_json::Error),
    /// `--history` names something it cannot be written to.
    #[error("--history {0}: {1}")]
    History(PathBuf, String),
}

/// Checks `--history PATH` before anything runs: a file (not standard output: a history is
/// large and the report may go there), whose directory takes files.
pub fn check_history_path(path: &Path) -> Result<(), OutputError> {
    let bad = |m: &str| Err(OutputError::History(path.to_path_buf(), m.to_string()));
    if is_stdout(path) {
        return bad("a history goes to a file (it is large); name one");
    }
    if path.is_dir() {
        return bad("is a directory; name a file");
    }
    if is_special(path) {
        return writable(path)
            .map_err(|e| OutputError::History(path.to_path_buf(), format!("cannot write: {e}")));
    }
    let path = &resolved(path);
    takes_files(parent_of(path)).map_err(|e| {
        OutputError::History(
            path.to_path_buf(),
            format!("cannot write into {}: {e}", parent_of(path).display()),
        )
    })
}

/// The directory a file of `path` goes in.
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Checks, before a run, that `--json FILE` and `--report DIR` can be written: the file's
/// directory takes a new file, and the report directory exists (it is made if need be) and
/// takes one. Nothing is left behind but the report directory.
pub fn check(json: Option<&Path>, report_dir: Option<&Path>) -> Result<(), OutputError> {
    if let Some(path) = json {
        if path.is_dir() {
            return Err(OutputError::JsonIsDir(path.to_path_buf()));
        }
        if is_stdout(path) {
            return Ok(());
        }
        if is_special(path) {
            // Not opened: opening a pipe would wait for, or end, its reader.
            return writable(path).map_err(|source| OutputError::JsonDir {
                path: path.to_path_buf(),
                dir: path.to_path_buf(),
                source,
            });
        }
        let path = &resolved(path);
        let dir = parent_of(path);
        takes_files(dir).map_err(|source| OutputError::JsonDir {
            path: path.to_path_buf(),
            dir: dir.to_path_buf(),
            source,
        })?;
    }
    if let Some(dir) = report_dir {
        std::fs::create_dir_all(dir)
            .and_then(|()| takes_files(dir))
            .map_err(|e| OutputError::ReportDir(dir.to_path_buf(), e))?;
    }
    Ok(())
}

/// Whether `dir` is a directory that a new file can be made in (one is made and removed).
fn takes_files(dir: &Path) -> std::io::Result<()> {
    if !dir.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such directory",
        ));
    }
    // The error's kind only: its text would name the temporary file.
    tempfile::NamedTempFile::new_in(dir)
        .map(drop)
        .map_err(|e| std::io::Error::from(e.kind()))
}

/// `-` or `/dev/stdout`: this process's standard output, whatever it is connected to (a
/// file it redirects to must not be replaced or truncated under the summary).
pub fn is_stdout(path: &Path) -> bool {
    path == Path::new("-") || path == Path::new("/dev/stdout")
}

/// Whether `path` is written directly: under `/dev` or `/proc` (a descriptor's path may
/// name a regular file), or existing as something other than a regular file or a
/// directory (a pipe), following symbolic links.
fn is_special(path: &Path) -> bool {
    path.starts_with("/dev")
        || path.starts_with("/proc")
        || std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir())
}

/// Whether this process may write to `path` (without opening it).
fn writable(path: &Path) -> std::io::Result<()> {
    rustix::fs::access(path, rustix::fs::Access::WRITE_OK).map_err(std::io::Error::from)
}

/// Where `path` leads: through a symbolic link to the file it names, so that the link is
/// written through rather than replaced.
fn resolved(path: &Path) -> PathBuf {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
        }
        _ => path.to_path_buf(),
    }
}

/// Writes `bytes` to `path` whole or not at all, with the mode a file made with
/// `std::fs::write` would get (0666 less the umask).
pub fn write_whole(path: &Path, bytes: &[u8]) -> Result<(), OutputError> {
    let fail = |e: std::io::Error| OutputError::Write(path.to_path_buf(), e);
    if is_stdout(path) {
        let mut out = std::io::stdout().lock();
        return out
            .write_all(bytes)
            .and_then(|()| out.flush())
            .map_err(fail);
    }
    if is_special(path) {
        return std::fs::write(path, bytes).map_err(fail);
    }
    let path = &resolved(path);
    let mut tmp = tempfile::Builder::new()
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .tempfile_in(parent_of(path))
        .map_err(fail)?;
    tmp.write_all(bytes).map_err(fail)?;
    tmp.as_file().sync_all().map_err(fail)?;
    tmp.persist(path).map_err(|e| fail(e.error))?;
    Ok(())
}

/// Writes the report as pretty JSON to `path`, whole or not at all.
pub fn write_json(report: &Report, path: &Path) -> Result<(), OutputError> {
    let mut text = serde_json::to_vec_pretty(report)?;
    text.push(b'\n');
    write_whole(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwritable_outputs_are_refused_before_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-dir").join("r.json");
        let err = check(Some(&missing), None).unwrap_err();
        assert!(matches!(err, OutputError::JsonDir { .. }), "{err}");
        let err = check(Some(dir.path()), None).unwrap_err();
        assert!(matches!(err, OutputError::JsonIsDir(_)), "{err}");
        // A report directory under a regular file cannot be made.
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        let err = check(None, Some(&file.join("report"))).unwrap_err();
        assert!(matches!(err, OutputError::ReportDir(..)), "{err}");

        // Good paths pass, the report directory is made, and no file is left behind.
        let json = dir.path().join("r.json");
        let report = dir.path().join("html");
        check(Some(&json), Some(&report)).unwrap();
        assert!(!json.exists());
        assert!(report.is_dir());
        assert_eq!(std::fs::read_dir(&report).unwrap().count(), 0);
    }

    #[test]
    fn a_file_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        std::fs::write(&path, b"old contents, longer than the new").unwrap();
        write_whole(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["r.json"], "no temporary file is left");
        // The mode a plain write gives a new file under this umask.
        use std::os::unix::fs::PermissionsExt;
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"x").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), mode(&plain));
    }

    #[test]
    fn links_are_written_through_and_devices_written_directly() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.json");
        std::fs::write(&real, b"old").unwrap();
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        check(Some(&link), None).unwrap();
        write_whole(&link, b"new").unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&real).unwrap(), b"new");

        let null = Path::new("/dev/null");
        check(Some(null), None).unwrap();
        write_whole(null, b"{}").unwrap();
        assert!(is_special(null));
        assert!(
            is_special(Path::new("/proc/self/fd/1")),
            "a descriptor, never replaced"
        );
        assert!(is_stdout(Path::new("-")) && is_stdout(Path::new("/dev/stdout")));
        check(Some(Path::new("-")), None).unwrap();
    }
}
