//! Shared set-up: an in-memory engine on a clock the test controls, and helpers for tests
//! that run the `stile` binary.

use std::sync::Arc;

use stile_engine::{Engine, EngineConfig, KeyRing, ManualClock, MintRequest, Policy, PolicyId};
use stile_protocol::CodeBytes;

/// A fixed "now" for tests: 2027-01-15T08:00:00Z.
pub const T0: u64 = 1_800_000_000;

/// An engine serving partitions 0 and 1, with its clock.
pub fn engine() -> (Engine, Arc<ManualClock>) {
    engine_with(EngineConfig {
        partitions: vec![0, 1],
        ..EngineConfig::default()
    })
}

/// An engine with a given configuration, with its clock.
pub fn engine_with(config: EngineConfig) -> (Engine, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(T0));
    let engine = Engine::in_memory(config, clock.clone(), KeyRing::ephemeral()).unwrap();
    (engine, clock)
}

/// Mints `count` tickets of `policy` in partition 0.
pub fn mint(engine: &Engine, policy: Policy, count: u32) -> (PolicyId, Vec<CodeBytes>) {
    let id = engine.add_policy(policy).unwrap();
    let codes = engine
        .mint(&MintRequest {
            policy: id,
            partition: 0,
            count,
        })
        .unwrap();
    (id, codes)
}

/// Reads `stile up`'s stdout until it names its QUIC address; the address, and every line
/// read so far.
pub fn read_up_quic_address(err: &mut impl std::io::BufRead) -> (String, String) {
    let mut said = String::new();
    loop {
        let mut line = String::new();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "stile up ended: {said}"
        );
        said.push_str(&line);
        if let Some(rest) = line.split("node on quic://").nth(1) {
            let addr = rest.split(',').next().unwrap().to_string();
            return (addr, said);
        }
    }
}

/// Asks a child to stop as an operator would.
pub fn sigterm(child: &std::process::Child) {
    // SAFETY: kill(2) with a pid we spawned and still own; it touches no memory.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
}

/// A program a test needs (`redis-server`, Chromium, chromedriver), found on `PATH` as the
/// first of `names` there. Missing, the test fails naming it (`cargo xtask test` installs
/// it), unless `STILE_SKIP_MISSING_TOOLS=1`: then it says so on a line cargo shows and the
/// caller returns early.
pub fn tool(names: &[&str], package: &str) -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        names.iter().find_map(|name| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .find(|p| {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::metadata(p)
                        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                })
        })
    });
    if found.is_some() {
        return found;
    }
    let wanted = names.join(" or ");
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    assert!(
        std::env::var("STILE_SKIP_MISSING_TOOLS").as_deref() == Ok("1"),
        "{test} needs {wanted} on PATH: run `cargo xtask test` (it installs {package} on \
         Debian and Ubuntu), or install it; STILE_SKIP_MISSING_TOOLS=1 skips such tests"
    );
    // Straight to the process's stderr, past the test harness's capture of `eprintln!`, so
    // that the skip shows in cargo's output.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {wanted} is not on PATH (STILE_SKIP_MISSING_TOOLS=1)"
    );
    None
}

/// Opens an engine with `open`, waiting out (for at most 10 s) a lock this very process
/// still holds on the data dir after the engine that took it was dropped: another test's
/// `Command::spawn` forks the process, and until the child execs it holds a copy of every
/// descriptor, the directory lock's among them. Any other holder is returned at once.
pub fn reopen<T>(
    mut open: impl FnMut() -> Result<T, stile_engine::OpenError>,
) -> Result<T, stile_engine::OpenError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match open() {
            Err(stile_engine::OpenError::InUse { pid: Some(p), .. })
                if p == std::process::id() && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// How `child` ended, waiting at most 60 s for it; `what` names it when it did not end.
pub fn exit_within_a_minute(
    child: &mut std::process::Child,
    what: &str,
) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "{what} went on");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A tmpfs of a set size mounted for a test, unmounted when dropped (a failed test
/// included). Mounting needs root, as CI has: without it the test fails, saying so.
pub struct Tmpfs {
    _dir: tempfile::TempDir,
    /// Where it is mounted.
    pub path: std::path::PathBuf,
}

impl Tmpfs {
    pub fn mount(bytes: u64) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fs");
        std::fs::create_dir(&path).unwrap();
        let c = |s: &str| std::ffi::CString::new(s).unwrap();
        let (target, options) = (c(path.to_str().unwrap()), c(&format!("size={bytes}")));
        // SAFETY: mount(2) with NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                c("tmpfs").as_ptr(),
                target.as_ptr(),
                c("tmpfs").as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        assert_eq!(
            rc,
            0,
            "mounting a {bytes}-byte tmpfs at {} failed ({}): this test fills a real \
             filesystem and needs root (CI runs as root) to mount one",
            path.display(),
            std::io::Error::last_os_error()
        );
        Tmpfs { _dir: dir, path }
    }

    /// Writes zeros into the file `name` until the filesystem refuses more; its path.
    pub fn fill(&self, name: &str) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.path.join(name);
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 4096];
        loop {
            match f.write(&block) {
                Ok(n) if n > 0 => {}
                Err(e) if e.raw_os_error() != Some(libc::ENOSPC) => {
                    panic!("filling {}: {e}", path.display())
                }
                _ => return path,
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let target = std::ffi::CString::new(self.path.to_str().unwrap()).unwrap();
        // SAFETY: umount2(2) with a NUL-terminated path; detached, so that a process still
        // holding a file there cannot keep it mounted.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}
