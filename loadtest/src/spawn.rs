//! `--spawn-node`: the node a run tests, started by the tester itself so that it can kill,
//! restart, stop and continue it on a schedule (`--kill-every`, `--pause-every`).
//!
//! The node runs as `PROGRAM node --data DATA/node --tls DATA/tls --listen 127.0.0.1:PORT`
//! with the operator's options after it; dev certificates are made in `DATA/tls` when it
//! holds no CA. Its output goes to `DATA/node.log`. A restart reuses the port of the first
//! start, so gates reconnect to the same address.
//!
//! Every start happens on one supervisor thread that lives as long as the [`NodeProcess`]:
//! the node is started with `PR_SET_PDEATHSIG`, which the kernel fires when the thread that
//! forked it ends, so a tester that dies however it dies (SIGKILL included) takes its node
//! with it instead of leaving it holding the data dir's lock.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use rustix::process::{Pid, Signal};

/// Longest wait for a node to say it listens: recovery of a large log takes seconds.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest wait for a node to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The line a node prints once it listens (`stile node`'s first line of output).
const LISTENING: &str = "stile node listening on quic://";

/// How to start the node.
#[derive(Debug, Clone)]
pub struct SpawnNode {
    /// The `stile` executable.
    pub program: PathBuf,
    /// The tester's data dir: certificates in `DATA/tls`, the node's data in `DATA/node`.
    pub data: PathBuf,
    /// Node options after `--`.
    pub args: Vec<String>,
}

/// A start asked of the supervisor thread, and where its child goes.
type StartRequest = (Command, mpsc::SyncSender<std::io::Result<Child>>);

/// A node this process started, restarted and stops.
#[derive(Debug)]
pub struct NodeProcess {
    spec: SpawnNode,
    /// Where it listens (the port of its first start).
    addr: SocketAddr,
    /// The running node.
    child: Mutex<Option<Child>>,
    /// Starts go to the supervisor thread (see the module's notes).
    starts: Mutex<Option<mpsc::Sender<StartRequest>>>,
    supervisor: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl NodeProcess {
    /// Makes dev certificates if `DATA/tls` holds no CA, and starts the node on a free port.
    pub fn start(spec: SpawnNode) -> Result<NodeProcess, String> {
        let tls = spec.data.join("tls");
        make_dev_certs_once(&spec.data, &tls)?;
        let (starts, requests) = mpsc::channel::<StartRequest>();
        let supervisor = std::thread::Builder::new()
            .name("stile-loadtest-node".into())
            .spawn(move || {
                for (mut cmd, reply) in requests {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .map_err(|e| format!("starting the node's supervisor thread: {e}"))?;
        let mut node = NodeProcess {
            spec,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            child: Mutex::new(None),
            starts: Mutex::new(Some(starts)),
            supervisor: Mutex::new(Some(supervisor)),
        };
        let (child, addr) = node.launch(node.addr)?;
        node.addr = addr;
        *node.child.lock().expect("not poisoned") = Some(child);
        Ok(node)
    }

    /// Where the node listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The node's data dir (`DATA/node`).
    pub fn data_dir(&self) -> PathBuf {
        self.spec.data.join("node")
    }

    /// The node's log: its standard output and error, every start appended.
    pub fn log_path(&self) -> PathBuf {
        self.spec.data.join("node.log")
    }

    /// Kills the node with SIGKILL and starts it again on the same data dir and port.
    pub fn kill_and_restart(&self) -> Result<(), String> {
        self.kill();
        self.start_again()
    }

    /// Kills the node with SIGKILL and waits until it is gone: nothing listens on its port
    /// until [`NodeProcess::start_again`]. A node already gone is left so.
    pub fn kill(&self) {
        if let Some(mut c) = self.child.lock().expect("not poisoned").take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the node again on the same data dir and port (it recovers from its log and
    /// snapshot), once it has been killed; returns when it listens. A node still running is
    /// left so.
    pub fn start_again(&self) -> Result<(), String> {
        let mut child = self.child.lock().expect("not poisoned");
        if child.is_some() {
            return Ok(());
        }
        let (c, _) = self.launch(self.addr)?;
        *child = Some(c);
        Ok(())
    }

    /// Stops (SIGSTOP) or continues (SIGCONT) the node.
    pub fn pause(&self, stop: bool) {
        let child = self.child.lock().expect("not poisoned");
        if let Some(pid) = child.as_ref().and_then(|c| Pid::from_raw(c.id() as i32)) {
            let signal = if stop { Signal::STOP } else { Signal::CONT };
            let _ = rustix::process::kill_process(pid, signal);
        }
    }

    /// Whether the node has exited by itself, and how.
    pub fn exited(&self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.lock().expect("not poisoned");
        child.as_mut()?.try_wait().ok().flatten()
    }

    /// Starts the node listening on `listen`; waits for it to say where it listens.
    fn launch(&self, listen: SocketAddr) -> Result<(Child, SocketAddr), String> {
        let log_path = self.log_path();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("opening {}: {e}", log_path.display()))?;
        let err_log = log
            .try_clone()
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let mut cmd = Command::new(&self.spec.program);
        cmd.arg("node")
            .arg("--data")
            .arg(self.data_dir())
            .arg("--tls")
            .arg(self.spec.data.join("tls"))
            .arg("--listen")
            .arg(listen.to_string())
            .args(&self.spec.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err_log)
            // Its own process group: a Ctrl-C at the terminal stops the tester (which
            // reports and then stops the node), not the node under its gates.
            .process_group(0);
        // SAFETY: between fork and exec only an async-signal-safe system call (prctl) runs.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
                    .map_err(std::io::Error::from)
            });
        }
        let (reply, child) = mpsc::sync_channel(1);
        self.starts
            .lock()
            .expect("not poisoned")
            .as_ref()
            .ok_or("the node is stopping")?
            .send((cmd, reply))
            .map_err(|_| "the node's supervisor thread is gone".to_string())?;
        let mut child = child
            .recv()
            .map_err(|_| "the node's supervisor thread is gone".to_string())?
            .map_err(|e| format!("starting {} node: {e}", self.spec.program.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let (said, addr) = mpsc::channel();
        // Reads the node's output into its log, telling the address once it is said.
        std::thread::Builder::new()
            .name("stile-loadtest-node-out".into())
            .spawn(move || copy_output(stdout, log, &said))
            .map_err(|e| format!("reading the node's output: {e}"))?;
        match addr.recv_timeout(START_TIMEOUT) {
            Ok(addr) => Ok((child, addr)),
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                Err(format!(
                    "the node did not start ({}); its log {} ends:\n{}",
                    status.map_or("no answer".to_string(), |s| s.to_string()),
                    log_path.display(),
                    log_tail(&log_path)
                ))
            }
        }
    }
}

/// Makes dev certificates in `tls` unless it holds a CA, under a lock on `DATA/.tls.lock`:
/// two testers starting on one fresh data dir must not both make a CA.
fn make_dev_certs_once(data: &Path, tls: &Path) -> Result<(), String> {
    std::fs::create_dir_all(data).map_err(|e| format!("making {}: {e}", data.display()))?;
    let lock_path = data.join(".tls.lock");
    let lock = File::create(&lock_path)
        .and_then(|f| f.lock().map(|()| f))
        .map_err(|e| format!("locking {}: {e}", lock_path.display()))?;
    let made = match tls.join(stile_certs::CA_CERT).exists() {
        true => Ok(()),
        false => stile_certs::make_dev(tls)
            .map_err(|e| format!("making dev certificates in {}: {e}", tls.display())),
    };
    drop(lock);
    made
}

/// Copies the node's standard output into `log`, sending the address it listens on.
fn copy_output(out: impl std::io::Read, mut log: File, said: &mpsc::Sender<SocketAddr>) {
    for line in BufReader::new(out).lines() {
        let Ok(line) = line else { return };
        if let Some(addr) = line.strip_prefix(LISTENING).and_then(|a| a.parse().ok()) {
            let _ = said.send(addr);
        }
        let _ = writeln!(log, "{line}");
    }
}

/// The last lines of the file at `path`.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

impl Drop for NodeProcess {
    /// Continues the node if stopped, asks it to stop (SIGTERM) and kills it if it has not
    /// within [`STOP_TIMEOUT`].
    fn drop(&mut self) {
        if let Some(mut c) = self.child.lock().expect("not poisoned").take() {
            if let Some(pid) = Pid::from_raw(c.id() as i32) {
                let _ = rustix::process::kill_process(pid, Signal::CONT);
                let _ = rustix::process::kill_process(pid, Signal::TERM);
            }
            let deadline = std::time::Instant::now() + STOP_TIMEOUT;
            while matches!(c.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.starts.lock().expect("not poisoned").take();
        if let Some(t) = self.supervisor.lock().expect("not poisoned").take() {
            let _ = t.join();
        }
    }
}
