//! Where a run's figures go: `--json FILE` and `--report DIR`. Both are checked before the
//! run, so a long run's figures are not lost to a mistyped path, and both are written whole
//! or not at all (a temporary file beside the destination, renamed over it), so a script
//! that reads them never sees half a file.

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

/// Writes `bytes` to `path` whole or not at all.
pub fn write_whole(path: &Path, bytes: &[u8]) -> Result<(), OutputError> {
    let fail = |e: std::io::Error| OutputError::Write(path.to_path_buf(), e);
    let mut tmp = tempfile::NamedTempFile::new_in(parent_of(path)).map_err(fail)?;
    tmp.write_all(bytes).map_err(fail)?;
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
    }
}
