//! Real etcd members on loopback for tests (feature `testing`).
//!
//! [`EtcdProcess::start`] starts 1 or more members of a fresh cluster on free loopback ports,
//! with data under a temporary directory in `/dev/shm` (or the system temp dir without it),
//! and quick elections (heartbeat 50 ms, election timeout 500 ms). Members can be killed and
//! started again with their data; every member is killed on drop. Without `etcd` on `PATH`
//! it panics: a test never passes by skipping.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;

/// Most members of one test cluster.
pub const MEMBERS_MAX: usize = 5;
/// How long a cluster (or a restarted member) may take to answer.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Fresh ports are tried this many times, in case another process takes one between our
/// probe and etcd's bind.
const START_ATTEMPTS: usize = 3;
/// Pause between readiness probes.
const PROBE_PAUSE: Duration = Duration::from_millis(50);
/// Longest wait for one probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Most bytes of a probe's answer read.
const PROBE_ANSWER_BYTES_MAX: u64 = 64 * 1024;
/// Lines of a member's log quoted when it fails.
const LOG_TAIL_LINES: usize = 30;
/// Makes every cluster token of this process distinct.
static CLUSTERS_STARTED: AtomicU64 = AtomicU64::new(0);

/// One etcd member of an [`EtcdProcesses`] cluster.
#[derive(Debug)]
pub struct EtcdProcess {
    /// Its name in `--initial-cluster`, `m0`, `m1`, ….
    name: String,
    /// Its client address on loopback.
    client: SocketAddr,
    /// Its peer address on loopback.
    peer: SocketAddr,
    /// Its data directory, kept across kills.
    data_dir: PathBuf,
    /// Where its stdout and stderr go, appended across restarts.
    log: PathBuf,
    /// The running process; `None` once killed.
    child: Option<Child>,
}

/// A test cluster of real etcd members; kills them all on drop.
#[derive(Debug)]
pub struct EtcdProcesses {
    /// The members, in `--initial-cluster` order.
    members: Vec<EtcdProcess>,
    /// The `--initial-cluster` value every member was started with.
    initial_cluster: String,
    /// The `--initial-cluster-token`, unique to this cluster.
    token: String,
    /// Holds every member's data directory and log; removed after the members are killed.
    dir: TempDir,
}

impl EtcdProcess {
    /// Starts a fresh cluster of `members` etcd members and waits (at most
    /// [`READY_TIMEOUT`]) until each serves a linearizable read, which needs a leader.
    ///
    /// Panics when `etcd` is not on `PATH`, or when the cluster does not come up (quoting the
    /// members' logs).
    pub fn start(members: usize) -> EtcdProcesses {
        EtcdProcesses::launch(members)
    }

    /// Its client URL.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.client)
    }

    /// Whether it has been started and not killed.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILLs it, if running, and reaps it.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether it exited by itself (it failed to bind, say).
    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| !matches!(c.try_wait(), Ok(None)))
    }

    /// The last lines of its log.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
        format!(
            "--- {} ({}) log tail:\n{tail}",
            self.name,
            self.log.display()
        )
    }
}

impl EtcdProcesses {
    /// See [`EtcdProcess::start`].
    fn launch(members: usize) -> EtcdProcesses {
        assert!(
            (1..=MEMBERS_MAX).contains(&members),
            "a test cluster has 1 to {MEMBERS_MAX} members"
        );
        if find_on_path("etcd").is_none() {
            panic!("etcd not found: run `cargo xtask test`, which installs etcd-server");
        }
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let mut cluster = EtcdProcesses::create(members);
            for i in 0..members {
                cluster.spawn(i);
            }
            match cluster.wait_until(|c, i| c.probe(i, false)) {
                Ok(()) => return cluster,
                Err(logs) => failures.push(logs),
            }
            // Drop kills the members; the next attempt takes fresh ports and directories.
        }
        panic!(
            "etcd did not start in {START_ATTEMPTS} attempts:\n{}",
            failures.join("\n")
        );
    }

    /// The cluster's members on fresh ports, none started.
    fn create(members: usize) -> EtcdProcesses {
        let dir = temp_dir();
        let ports = free_ports(2 * members);
        let members: Vec<EtcdProcess> = (0..members)
            .map(|i| {
                let name = format!("m{i}");
                EtcdProcess {
                    client: SocketAddr::from(([127, 0, 0, 1], ports[2 * i])),
                    peer: SocketAddr::from(([127, 0, 0, 1], ports[2 * i + 1])),
                    data_dir: dir.path().join(format!("{name}.etcd")),
                    log: dir.path().join(format!("{name}.log")),
                    name,
                    child: None,
                }
            })
            .collect();
        let initial_cluster: Vec<String> = members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let token = format!(
            "stile-test-{}-{}-{nanos}",
            std::process::id(),
            CLUSTERS_STARTED.fetch_add(1, Ordering::Relaxed)
        );
        EtcdProcesses {
            members,
            initial_cluster: initial_cluster.join(","),
            token,
            dir,
        }
    }

    /// Every member's client URL, killed members included, in order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(EtcdProcess::endpoint).collect()
    }

    /// The members.
    pub fn members(&self) -> &[EtcdProcess] {
        &self.members
    }

    /// The index of the member whose client URL is `endpoint`.
    pub fn index_of(&self, endpoint: &str) -> Option<usize> {
        self.members.iter().position(|m| m.endpoint() == endpoint)
    }

    /// SIGKILLs member `i`; its data stays for [`EtcdProcesses::start`].
    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// SIGKILLs every member; their data stays.
    pub fn stop_all(&mut self) {
        for m in &mut self.members {
            m.kill();
        }
    }

    /// Starts member `i` again on its ports with its data. Once a majority of the members
    /// runs, waits (at most [`READY_TIMEOUT`]) until it serves a serializable read; etcd 3.4
    /// serves nothing before it has published itself to a quorum, so a member started while
    /// most are down is not waited for: start enough, then [`EtcdProcesses::wait_healthy`].
    /// Panics if it is running.
    pub fn start(&mut self, i: usize) {
        assert!(!self.members[i].is_running(), "member {i} is running");
        self.spawn(i);
        let running = self.members.iter().filter(|m| m.is_running()).count();
        if running > self.members.len() / 2 {
            let result = self.wait_until(|c, j| j != i || c.probe(i, true));
            result.unwrap_or_else(|logs| panic!("etcd member {i} did not start again:\n{logs}"));
        }
    }

    /// Waits (at most [`READY_TIMEOUT`]) until every running member serves a linearizable
    /// read: the cluster has a leader and each member reaches it.
    pub fn wait_healthy(&mut self) {
        let result = self.wait_until(|c, i| c.probe(i, false));
        result.unwrap_or_else(|logs| panic!("the etcd cluster did not become healthy:\n{logs}"));
    }

    /// Polls until `ready(self, i)` for every running member `i`; the members' logs if one
    /// exits or time runs out.
    fn wait_until(&mut self, ready: impl Fn(&EtcdProcesses, usize) -> bool) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut pending: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].is_running())
            .collect();
        while !pending.is_empty() {
            if self.members.iter_mut().any(EtcdProcess::exited) {
                return Err(self.logs("a member exited"));
            }
            if Instant::now() > deadline {
                return Err(self.logs(&format!("no answer within {READY_TIMEOUT:?}")));
            }
            pending.retain(|&i| !ready(self, i));
            if !pending.is_empty() {
                sleep(PROBE_PAUSE);
            }
        }
        Ok(())
    }

    /// Starts member `i`'s process.
    fn spawn(&mut self, i: usize) {
        let m = &self.members[i];
        let log = OpenOptions::new().create(true).append(true).open(&m.log);
        let log = log.unwrap_or_else(|e| panic!("cannot open {}: {e}", m.log.display()));
        let err = log.try_clone().expect("a log file handle clones");
        let child = Command::new("etcd")
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &m.endpoint()])
            .args(["--advertise-client-urls", &m.endpoint()])
            .args(["--listen-peer-urls", &format!("http://{}", m.peer)])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://{}", m.peer),
            ])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run etcd: {e}"));
        self.members[i].child = Some(child);
    }

    /// Whether member `i` answers a range (`serializable`: from its own copy, no leader
    /// needed) with HTTP 200.
    fn probe(&self, i: usize, serializable: bool) -> bool {
        let body = format!(r#"{{"key":"AA==","serializable":{serializable}}}"#);
        post_status(self.members[i].client, "/v3/kv/range", &body) == Some(200)
    }

    /// Every member's log tail, after `why`.
    fn logs(&self, why: &str) -> String {
        let tails: Vec<String> = self.members.iter().map(EtcdProcess::log_tail).collect();
        format!(
            "{why} (data under {})\n{}",
            self.dir.path().display(),
            tails.join("\n")
        )
    }
}

impl Drop for EtcdProcesses {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// The status code of a minimal HTTP/1.1 POST, or `None` if there is no answer.
fn post_status(addr: SocketAddr, path: &str, body: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).ok()?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT)).ok()?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = Vec::new();
    stream
        .take(PROBE_ANSWER_BYTES_MAX)
        .read_to_end(&mut answer)
        .ok()?;
    let status_line = answer.split(|&b| b == b'\r').next()?;
    let status = std::str::from_utf8(status_line).ok()?.split(' ').nth(1)?;
    status.parse().ok()
}

/// `count` distinct loopback ports that were free a moment ago: all bound at once, so none
/// repeats, then released for etcd to take.
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("a bound address").port())
        .collect()
}

/// A fresh directory in `/dev/shm`, which spares the disk etcd's fsyncs, or in the system
/// temp dir without it.
fn temp_dir() -> TempDir {
    let shm = Path::new("/dev/shm");
    let mut builder = tempfile::Builder::new();
    builder.prefix("stile-etcd-");
    let dir = if shm.is_dir() {
        builder.tempdir_in(shm)
    } else {
        builder.tempdir()
    };
    dir.unwrap_or_else(|e| panic!("cannot make a temp dir for etcd: {e}"))
}

/// `name`'s path on `PATH`, if it is there.
fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| File::open(p).is_ok() && p.is_file())
}
