//! What a run leaves running or on disk until it ends: the `inproc` engine's temporary data
//! dir and a spawned redis-server with its directory. Each is removed when its owner drops;
//! a process that must quit at once (a second Ctrl-C), whose runs will not drop their
//! targets, removes what is left with [`clean_up_and_exit`].
//!
//! A process killed outright (SIGKILL, a crash) removes nothing. Each directory therefore
//! holds [`OWNER_LOCK`], locked (`flock`) by the process that made it for as long as it
//! lives; the kernel drops the lock when the process dies, however it dies. The next run
//! that makes a directory of the same kind beside it removes every such directory whose lock
//! it can take.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Mutex, MutexGuard};

/// The file in each directory that its owner keeps locked while it runs.
pub(crate) const OWNER_LOCK: &str = "owner.lock";

/// Everything not yet removed: a directory, and the pid of the server that works in it.
static LEFT: Mutex<Vec<(PathBuf, Option<u32>)>> = Mutex::new(Vec::new());

fn left() -> MutexGuard<'static, Vec<(PathBuf, Option<u32>)>> {
    LEFT.lock().unwrap_or_else(|e| e.into_inner())
}

/// A directory made for a run, removed (with everything in it) on drop.
#[derive(Debug)]
pub(crate) struct TempTree {
    path: PathBuf,
    /// [`OWNER_LOCK`], open and locked until the directory is removed (`None` on a
    /// filesystem without `flock`: the directory is then never taken for abandoned).
    owner: Option<std::fs::File>,
}

impl TempTree {
    /// A new directory `PREFIX…` in the first of `parents` that takes one. Directories
    /// `PREFIX…` there that a dead process left are removed first.
    pub(crate) fn new_in(parents: &[&Path], prefix: &str) -> std::io::Result<TempTree> {
        let mut last = None;
        for parent in parents {
            remove_abandoned(parent, prefix);
            match tempfile::Builder::new().prefix(prefix).tempdir_in(parent) {
                Ok(dir) => {
                    let owner = match lock_as_owner(dir.path()) {
                        Ok(f) => f,
                        Err(e) => {
                            last = Some(e);
                            continue;
                        }
                    };
                    let path = dir.keep();
                    left().push((path.clone(), None));
                    return Ok(TempTree { path, owner });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no directory to make it in")))
    }

    /// Its path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The descriptor of its locked [`OWNER_LOCK`], for a server working in it to inherit.
    pub(crate) fn owner_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.owner.as_ref().map(|f| f.as_raw_fd())
    }
}

impl Drop for TempTree {
    fn drop(&mut self) {
        // Under the lock, so that `clean_up_and_exit` meanwhile waits for this.
        let mut left = left();
        let _ = std::fs::remove_dir_all(&self.path);
        left.retain(|(p, _)| p != &self.path);
    }
}

/// The name [`OWNER_LOCK`] is made under before it is locked.
const OWNER_LOCK_MAKING: &str = ".owner.lock.new";
/// A lone [`OWNER_LOCK_MAKING`] this old (its run died between making the directory and
/// locking) is taken for abandoned.
const MAKING_ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// Creates `dir/OWNER_LOCK` already locked: made under another name, locked, then renamed,
/// so that no other process ever sees it unlocked. On a filesystem without locks the file
/// keeps its first name and the directory is never taken for abandoned.
fn lock_as_owner(dir: &Path) -> std::io::Result<Option<std::fs::File>> {
    let making = dir.join(OWNER_LOCK_MAKING);
    let file = std::fs::File::create(&making)?;
    if let Err(e) = file.lock() {
        tracing::warn!(
            "cannot lock {}: {e}; if this run is killed, remove its directory by hand",
            making.display()
        );
        return Ok(None);
    }
    std::fs::rename(&making, dir.join(OWNER_LOCK))?;
    Ok(Some(file))
}

/// Removes the directories `PREFIX…` in `parent` whose owner has died: those whose
/// [`OWNER_LOCK`] this process can lock, or whose lone [`OWNER_LOCK_MAKING`] is old and can
/// be locked. Anything else (a directory in the making, one from a version before these
/// locks) is left alone.
fn remove_abandoned(parent: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(prefix)
            || !entry.file_type().is_ok_and(|t| t.is_dir())
        {
            continue;
        }
        let path = entry.path();
        let lock = match std::fs::File::open(path.join(OWNER_LOCK)) {
            Ok(f) => f,
            Err(_) => match std::fs::File::open(path.join(OWNER_LOCK_MAKING)) {
                Ok(f)
                    if f.metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > MAKING_ABANDONED_AFTER) =>
                {
                    f
                }
                _ => continue,
            },
        };
        if lock.try_lock().is_ok() {
            match remove_owned_tree(&path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "removed what a killed run left")
                }
                // Another run removed it first.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(
                    "cannot remove {}, left by a run that was killed: {e}",
                    path.display()
                ),
            }
        }
    }
}

/// Removes `dir` with its lock files last, so that a removal cut short leaves a directory
/// the next run still recognises as abandoned.
fn remove_owned_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == OWNER_LOCK || name == OWNER_LOCK_MAKING {
            continue;
        }
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    std::fs::remove_dir_all(dir)
}

/// A server working in a [`TempTree`]: killed and reaped, then the directory removed, on
/// drop.
#[derive(Debug)]
pub(crate) struct Server {
    child: Child,
    dir: Option<TempTree>,
}

impl Server {
    /// Takes charge of `child`, which works in `dir`.
    pub(crate) fn new(child: Child, dir: TempTree) -> Server {
        if let Some(entry) = left().iter_mut().find(|(p, _)| p == dir.path()) {
            entry.1 = Some(child.id());
        }
        Server {
            child,
            dir: Some(dir),
        }
    }

    /// The directory it works in.
    pub(crate) fn dir(&self) -> Option<&Path> {
        self.dir.as_ref().map(TempTree::path)
    }

    /// The exit status, if the server has exited (it is then reaped, and forgotten by
    /// [`clean_up_and_exit`]).
    pub(crate) fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let mut left = left();
        let status = self.child.try_wait().ok().flatten()?;
        forget_pid(&mut left, self.child.id());
        Some(status)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        {
            // Reaped and forgotten under the lock: `clean_up_and_exit` never signals a pid
            // that is no longer this process's child.
            let mut left = left();
            let _ = self.child.kill();
            let _ = self.child.wait();
            forget_pid(&mut left, self.child.id());
        }
        self.dir.take();
    }
}

/// A reaped server's pid is no longer this process's to signal.
fn forget_pid(left: &mut [(PathBuf, Option<u32>)], pid: u32) {
    if let Some(entry) = left.iter_mut().find(|(_, p)| *p == Some(pid)) {
        entry.1 = None;
    }
}

/// Kills every server still running for this process, removes every directory left, and
/// exits with `code` without unwinding. The registry stays locked until the exit, so no
/// owner's drop on another thread touches a server or directory meanwhile.
pub fn clean_up_and_exit(code: i32) -> ! {
    let mut left = left();
    clean_up_where(&mut left, |_| true);
    std::process::exit(code);
}

/// Kills the servers of the directories `which` picks and removes those directories.
fn clean_up_where(left: &mut Vec<(PathBuf, Option<u32>)>, which: impl Fn(&Path) -> bool) {
    let (these, rest): (Vec<_>, Vec<_>) = left.drain(..).partition(|(p, _)| which(p));
    *left = rest;
    for (path, pid) in these {
        let pid = pid
            .and_then(|p| i32::try_from(p).ok())
            .and_then(rustix::process::Pid::from_raw);
        if let Some(pid) = pid {
            // The pid is this process's own child and not reaped: its `Server` reaps it
            // only under this lock, and forgets it then.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::empty());
        }
        let _ = std::fs::remove_dir_all(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_directory_removes_those_whose_owner_died() {
        let root = tempfile::tempdir().unwrap();
        let live = TempTree::new_in(&[root.path()], ".t-").unwrap();
        // Left by a process that died: its lock file is there, and nobody holds the lock.
        let dead = root.path().join(".t-dead");
        std::fs::create_dir_all(dead.join("data")).unwrap();
        std::fs::write(dead.join(OWNER_LOCK), b"").unwrap();
        std::fs::write(dead.join("data/aof"), b"x").unwrap();
        // Its run died between making it and locking, a while ago.
        let stale = root.path().join(".t-stale");
        std::fs::create_dir(&stale).unwrap();
        let f = std::fs::File::create(stale.join(OWNER_LOCK_MAKING)).unwrap();
        let long_ago = std::time::SystemTime::now() - 2 * MAKING_ABANDONED_AFTER;
        f.set_modified(long_ago).unwrap();
        // Not to be touched: a directory in the making, one from before these locks,
        // another kind, a file.
        let making = root.path().join(".t-making");
        std::fs::create_dir(&making).unwrap();
        std::fs::write(making.join(OWNER_LOCK_MAKING), b"").unwrap();
        let old_version = root.path().join(".t-old");
        std::fs::create_dir(&old_version).unwrap();
        let other = root.path().join(".u-dead");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join(OWNER_LOCK), b"").unwrap();
        std::fs::write(root.path().join(".t-file"), b"x").unwrap();

        let new = TempTree::new_in(&[root.path()], ".t-").unwrap();
        assert!(!dead.exists(), "the dead owner's directory is removed");
        assert!(!stale.exists(), "the directory never locked is removed");
        for kept in [live.path(), new.path(), &making, &old_version, &other] {
            assert!(kept.exists(), "{} removed", kept.display());
        }
        assert!(root.path().join(".t-file").exists());
        assert!(live.path().join(OWNER_LOCK).exists());
        assert!(!live.path().join(OWNER_LOCK_MAKING).exists());
    }

    #[test]
    fn clean_up_stops_servers_and_removes_directories() {
        let root = tempfile::tempdir().unwrap();
        let kept = TempTree::new_in(&[root.path()], ".t-").unwrap();
        std::fs::write(kept.path().join("f"), b"x").unwrap();
        let dropped = TempTree::new_in(&[root.path()], ".t-").unwrap();
        let dropped_path = dropped.path().to_path_buf();
        drop(dropped);
        assert!(!dropped_path.exists(), "removed on drop");

        let server_dir = TempTree::new_in(&[root.path()], ".t-").unwrap();
        let child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = child.id();
        let server = Server::new(child, server_dir);
        let paths: Vec<PathBuf> = left()
            .iter()
            .filter(|(p, _)| p.starts_with(root.path()))
            .map(|(p, _)| p.clone())
            .collect();
        assert_eq!(paths.len(), 2);

        // Only this test's own: other tests of this crate may have runs going.
        clean_up_where(&mut left(), |p| p.starts_with(root.path()));
        for p in &paths {
            assert!(!p.exists(), "{} left", p.display());
        }
        // The child was killed and reaped: its pid is no longer a process of ours.
        let pid = rustix::process::Pid::from_raw(pid as i32).expect("a child's pid");
        let alive = rustix::process::test_kill_process(pid).is_ok();
        assert!(!alive, "the server still runs");
        // The process would exit now; its server's owner must not signal the reaped pid.
        drop(kept);
        std::mem::forget(server);
    }
}
