//! The obvious alternative, measured with the same gates and the same in-flight depth:
//! Redis holding one key per ticket and a Lua script that checks a ticket in (exists? set
//! it used if still valid; answer admitted, already_used or unknown). Redis cannot check a
//! code's signature, so a forged code is simply `unknown`. Rail tickets get the entry/exit
//! script a user would write for them (entries left, inside or not).
//!
//! Each gate is one TCP connection carrying up to N script calls back to back (Redis
//! answers a connection's commands in order), written and read by hand, so the client adds
//! as little as it can to Redis's own time.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use rand::RngCore;
use redis::aio::MultiplexedConnection;
use stile_protocol::{CodeBytes, Outcome, OutcomeKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::leftovers::{Server, TempTree};
use crate::link::{Answer, LinkError, LinkRx, LinkTx, NodeReading, TargetKind};
use crate::plan::{Item, Kind};
use crate::{Config, LoadError};

/// The check-in a user would script: one round trip, atomic inside Redis.
const CHECKIN_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return 'unknown' end
if v == 'valid' then
  redis.call('SET', KEYS[1], 'used:' .. ARGV[1])
  return 'admitted'
end
return 'already_used'
"#;
/// Entry and exit for rail tickets: the value is `LEFT:INSIDE`, entries left (`u`:
/// unlimited) and 1 while the holder is inside.
const ENTRY_EXIT_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then return 'unknown' end
local left, inside = string.match(v, '^(%w+):(%d)$')
if not left then
  if ARGV[2] == 'exit' then return 'not_inside' end
  if v == 'valid' then
    redis.call('SET', KEYS[1], 'used:' .. ARGV[1])
    return 'admitted'
  end
  return 'already_used'
end
if ARGV[2] == 'exit' then
  if inside ~= '1' then return 'not_inside' end
  redis.call('SET', KEYS[1], left .. ':0')
  return 'exited'
end
if inside == '1' or left == '0' then return 'already_used' end
if left ~= 'u' then left = tostring(tonumber(left) - 1) end
redis.call('SET', KEYS[1], left .. ':1')
return 'admitted'
"#;
/// Keys written per pipeline while loading tickets.
const LOAD_CHUNK: usize = 10_000;
/// How long a spawned redis-server may take to accept connections.
const SPAWN_TIMEOUT_MS: u64 = 10_000;
/// Longest reply line accepted from Redis.
const REPLY_MAX: usize = 64 * 1024;

/// Redis: a connection for loading, and the scripts' digests.
pub struct Redis {
    /// The URL as given.
    pub url: String,
    /// The server's address.
    addr: SocketAddr,
    /// For loading tickets and reading the configuration.
    conn: MultiplexedConnection,
    /// SHA-1 of [`CHECKIN_LUA`].
    sha_checkin: String,
    /// SHA-1 of [`ENTRY_EXIT_LUA`].
    sha_entry_exit: String,
    /// Rail tickets were loaded: every call goes through the entry/exit script.
    rail: AtomicBool,
    /// `appendfsync …` as the server reports it.
    pub sync: String,
    /// The server, if this run started it.
    _spawned: Option<Server>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").field("url", &self.url).finish()
    }
}

/// The sending half of a gate's connection.
pub(crate) struct RedisTx {
    w: OwnedWriteHalf,
    buf: Vec<u8>,
    /// Ids of the calls written and not answered, oldest first.
    order: Arc<Mutex<VecDeque<u32>>>,
    gate: String,
    sha_checkin: String,
    sha_entry_exit: String,
    rail: bool,
}

/// The receiving half.
pub(crate) struct RedisRx {
    r: OwnedReadHalf,
    buf: BytesMut,
    order: Arc<Mutex<VecDeque<u32>>>,
}

impl Redis {
    /// Connects (starting the server first with `--spawn-redis`) and loads the scripts.
    pub async fn open(config: &Config) -> Result<Redis, LoadError> {
        let err = |reason: String| LoadError::Target {
            target: config.target.clone(),
            reason,
        };
        let rest = config
            .target
            .trim_start_matches("redis://")
            .trim_end_matches('/');
        let addr: SocketAddr = tokio::net::lookup_host(rest)
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| err("not a host:port".into()))?;
        let mut spawned = if config.spawn_redis {
            Some(spawn(addr.port()).map_err(err)?)
        } else {
            None
        };
        let client =
            redis::Client::open(format!("redis://{addr}/")).map_err(|e| err(e.to_string()))?;
        let deadline = Instant::now() + Duration::from_millis(SPAWN_TIMEOUT_MS);
        let mut conn = loop {
            // A server that exited (its port taken after all) must not be mistaken for
            // whatever answers on the port.
            if let Some(status) = spawned.as_mut().and_then(Server::exited) {
                return Err(err(format!("redis-server exited at once ({status})")));
            }
            match client.get_multiplexed_async_connection().await {
                Ok(c) if spawned.is_none() => break c,
                Ok(c) => {
                    // Connected: to the server this run started, unless it died meanwhile.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    match spawned.as_mut().and_then(Server::exited) {
                        Some(status) => {
                            return Err(err(format!("redis-server exited at once ({status})")))
                        }
                        None => break c,
                    }
                }
                Err(e) if spawned.is_some() && Instant::now() < deadline => {
                    tracing::debug!(error = %e, "waiting for redis-server");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(err(format!("connecting: {e}"))),
            }
        };
        let aof: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("appendonly")
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        let fsync: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("appendfsync")
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        let sync = match (aof.get(1).map(String::as_str), fsync.get(1)) {
            (Some("yes"), Some(f)) => format!("appendfsync {f}"),
            (Some(_), _) => "no aof".to_string(),
            _ => "unknown".to_string(),
        };
        let load = |lua: &'static str| {
            let mut conn = conn.clone();
            async move {
                redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(lua)
                    .query_async::<String>(&mut conn)
                    .await
            }
        };
        let sha_checkin = load(CHECKIN_LUA)
            .await
            .map_err(|e| err(format!("loading the script: {e}")))?;
        let sha_entry_exit = load(ENTRY_EXIT_LUA)
            .await
            .map_err(|e| err(format!("loading the script: {e}")))?;
        Ok(Redis {
            url: config.target.clone(),
            addr,
            conn,
            sha_checkin,
            sha_entry_exit,
            rail: AtomicBool::new(false),
            sync,
            _spawned: spawned,
        })
    }

    /// Writes `n` valid tickets of `kind` (random codes: Redis has no keys to sign with),
    /// emptying the database first if `first`.
    pub async fn load(&self, kind: Kind, n: u32, first: bool) -> Result<Vec<CodeBytes>, LoadError> {
        let value = match kind {
            Kind::Single => "valid",
            Kind::Journey => "1:0",
            Kind::DayPass => "u:0",
        };
        if kind != Kind::Single {
            self.rail.store(true, Ordering::Relaxed);
        }
        let mut rng = rand::thread_rng();
        let mut codes = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let mut b = [0u8; 20];
            b[0] = 1; // static code
            b[2..4].copy_from_slice(&crate::link::PROVIDER.to_be_bytes());
            rng.fill_bytes(&mut b[6..]);
            codes.push(CodeBytes::from_slice(&b).expect("20 bytes of format 1"));
        }
        let mut c = self.conn.clone();
        if first {
            let _: () = redis::cmd("FLUSHDB")
                .query_async(&mut c)
                .await
                .map_err(|e| self.err(e))?;
        }
        for chunk in codes.chunks(LOAD_CHUNK) {
            let mut pipe = redis::pipe();
            for code in chunk {
                pipe.set(key(code), value).ignore();
            }
            let _: () = pipe.query_async(&mut c).await.map_err(|e| self.err(e))?;
        }
        Ok(codes)
    }

    fn err(&self, e: redis::RedisError) -> LoadError {
        LoadError::Target {
            target: self.url.clone(),
            reason: e.to_string(),
        }
    }

    /// Opens gate `gate`'s connection.
    async fn open_link(&self, gate: u16, inflight: u32) -> Result<(RedisTx, RedisRx), LoadError> {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| LoadError::Target {
                target: self.url.clone(),
                reason: format!("gate {gate}: connecting: {e}"),
            })?;
        let _ = stream.set_nodelay(true);
        let (r, w) = stream.into_split();
        let order = Arc::new(Mutex::new(VecDeque::with_capacity(inflight as usize)));
        Ok((
            RedisTx {
                w,
                buf: Vec::with_capacity(128 * inflight as usize),
                order: order.clone(),
                gate: gate.to_string(),
                sha_checkin: self.sha_checkin.clone(),
                sha_entry_exit: self.sha_entry_exit.clone(),
                rail: self.rail.load(Ordering::Relaxed),
            },
            RedisRx {
                r,
                buf: BytesMut::with_capacity(64 * 1024),
                order,
            },
        ))
    }
}

impl TargetKind for Redis {
    type Tx = RedisTx;
    type Rx = RedisRx;

    async fn mint_kind(
        &self,
        kind: Kind,
        n: u32,
        first: bool,
    ) -> Result<Vec<CodeBytes>, LoadError> {
        self.load(kind, n, first).await
    }

    async fn sync_name(&self) -> String {
        self.sync.clone()
    }

    /// Redis says nothing of its own of a run.
    async fn reading(&self) -> Option<NodeReading> {
        None
    }

    /// Redis's own CPU time, from `INFO cpu` (`used_cpu_sys` + `used_cpu_user`, seconds).
    async fn server_cpu_us(&self) -> Option<u64> {
        let mut conn = self.conn.clone();
        let info: String = redis::cmd("INFO")
            .arg("cpu")
            .query_async(&mut conn)
            .await
            .ok()?;
        cpu_us_of_info(&info)
    }

    /// Redis's resident memory, from `INFO memory` (`used_memory_rss`).
    async fn server_memory_bytes(&self) -> Option<u64> {
        let mut conn = self.conn.clone();
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await
            .ok()?;
        info.lines()
            .find_map(|l| l.trim().strip_prefix("used_memory_rss:"))?
            .trim()
            .parse()
            .ok()
    }

    async fn link(&self, gate: u16, inflight: u32) -> Result<(RedisTx, RedisRx), LoadError> {
        self.open_link(gate, inflight).await
    }
}

impl LinkTx for RedisTx {
    /// Writes one `EVALSHA` per request, all in one write.
    async fn send(&mut self, reqs: &[(u32, Item)]) -> Result<(), LinkError> {
        self.buf.clear();
        for (_, item) in reqs {
            let key = key(&item.code);
            if self.rail || item.exit {
                let op = if item.exit { "exit" } else { "entry" };
                command(
                    &mut self.buf,
                    &["EVALSHA", &self.sha_entry_exit, "1", &key, &self.gate, op],
                );
            } else {
                command(
                    &mut self.buf,
                    &["EVALSHA", &self.sha_checkin, "1", &key, &self.gate],
                );
            }
        }
        self.order
            .lock()
            .expect("not poisoned")
            .extend(reqs.iter().map(|(id, _)| *id));
        self.w
            .write_all(&self.buf)
            .await
            .map_err(|e| LinkError(format!("writing: {e}")))
    }
}

impl LinkRx for RedisRx {
    /// Reads replies; the n-th answers the n-th call written. Cancel-safe.
    async fn recv(&mut self, out: &mut Vec<Answer>) -> Result<(), LinkError> {
        loop {
            while let Some((len, reply)) = parse_reply(&self.buf)? {
                let id = self
                    .order
                    .lock()
                    .expect("not poisoned")
                    .pop_front()
                    .ok_or_else(|| LinkError("a reply to no request".into()))?;
                out.push((id, reply));
                self.buf.advance(len);
            }
            if !out.is_empty() {
                return Ok(());
            }
            if self.buf.len() > REPLY_MAX {
                return Err(LinkError("a reply longer than 64 KiB".into()));
            }
            match self.r.read_buf(&mut self.buf).await {
                Ok(0) => return Err(LinkError("redis closed the connection".into())),
                Ok(_) => {}
                Err(e) => return Err(LinkError(format!("reading: {e}"))),
            }
        }
    }
}

/// One RESP command.
/// The CPU time an `INFO cpu` answer reports, microseconds.
fn cpu_us_of_info(info: &str) -> Option<u64> {
    let field = |name: &str| -> Option<f64> {
        info.lines()
            .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))?
            .trim()
            .parse()
            .ok()
    };
    let s = field("used_cpu_sys")? + field("used_cpu_user")?;
    Some((s * 1e6).round() as u64)
}

fn command(out: &mut Vec<u8>, args: &[&str]) {
    use std::io::Write;
    let _ = write!(out, "*{}\r\n", args.len());
    for a in args {
        let _ = write!(out, "${}\r\n{a}\r\n", a.len());
    }
}

/// The first complete reply in `buf`: its length and the outcome it names.
/// A reply parsed: its length in bytes, and the outcome it names or the error it carries.
type Reply = (usize, Result<Outcome, String>);

fn parse_reply(buf: &[u8]) -> Result<Option<Reply>, LinkError> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = String::from_utf8_lossy(&buf[1..eol]);
    let (len, text) = match buf.first() {
        Some(b'+') | Some(b'-') | Some(b':') => (eol + 2, line.to_string()),
        Some(b'$') => {
            let n: usize = line
                .parse()
                .map_err(|_| LinkError(format!("bad bulk length {line:?}")))?;
            let end = eol + 2 + n + 2;
            if buf.len() < end {
                return Ok(None);
            }
            (
                end,
                String::from_utf8_lossy(&buf[eol + 2..eol + 2 + n]).to_string(),
            )
        }
        _ => return Err(LinkError(format!("unexpected reply {line:?}"))),
    };
    let answer = if buf[0] == b'-' {
        Err(text)
    } else {
        match text.as_str() {
            "admitted" => Ok(Outcome::bare(OutcomeKind::Admitted)),
            "already_used" => Ok(Outcome::bare(OutcomeKind::AlreadyUsed)),
            "exited" => Ok(Outcome::bare(OutcomeKind::Exited)),
            "not_inside" => Ok(Outcome::bare(OutcomeKind::NotInside)),
            "unknown" => Ok(Outcome::bare(OutcomeKind::Unknown)),
            other => Err(format!("unexpected answer {other:?}")),
        }
    };
    Ok(Some((len, answer)))
}

fn key(code: &CodeBytes) -> String {
    format!("t:{}", code.to_text().as_str())
}

/// Before any run: `redis-server` starts (`--version`), and the port of `host_port` is free.
pub(crate) fn precheck_spawn(host_port: &str) -> Result<(), String> {
    let port = host_port
        .trim_end_matches('/')
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .ok_or_else(|| "not a host:port".to_string())?;
    match Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => {}
        Ok(s) => return Err(format!("redis-server --version failed ({s})")),
        Err(e) => {
            return Err(format!(
                "starting redis-server (is it on PATH? apt-get install redis-server): {e}"
            ))
        }
    }
    port_is_free(port)
}

/// A server already on `port` would answer in place of the one this run starts.
fn port_is_free(port: u16) -> Result<(), String> {
    match std::net::TcpListener::bind(("127.0.0.1", port)) {
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "--spawn-redis: port {port} is taken ({e}): stop what listens there, or name \
             another port in the URL"
        )),
    }
}

/// Starts redis-server on 127.0.0.1:`port` with the AOF synced on every write.
fn spawn(port: u16) -> Result<Server, String> {
    port_is_free(port)?;
    let dir = TempTree::new_in(&[Path::new(".")], ".stile-redis-")
        .map_err(|e| format!("making a directory for redis-server: {e}"))?;
    let mut command = Command::new("redis-server");
    command
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args([
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--daemonize",
            "no",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // A group of its own: a terminal's Ctrl-C reaches the tester, which ends the run
        // and then stops this server, instead of the server dying under the run.
        .process_group(0);
    let parent = std::process::id();
    let owner = dir.owner_fd();
    // SAFETY: the closure runs in the child between fork and exec and calls only prctl,
    // getppid and fcntl, which are async-signal-safe. The server is killed when the thread that
    // started it ends, so a tester killed outright leaves no server behind: that is the
    // thread that awaits the run (`block_on`, or a runtime's worker), which outlives the
    // run (never start one from `spawn_blocking`, whose idle threads end).
    unsafe {
        command.pre_exec(move || {
            use rustix::process::{getppid, set_parent_process_death_signal, Signal};
            set_parent_process_death_signal(Some(Signal::KILL))?;
            // The tester may have died before the line above. (No allocation here: another
            // thread may have held the allocator's lock at the fork.)
            if getppid().map(|p| p.as_raw_nonzero().get() as u32) != Some(parent) {
                return Err(std::io::Error::from(rustix::io::Errno::SRCH));
            }
            // The server keeps its directory's owner lock too (the descriptor survives the
            // exec), so the directory counts as in use until both processes are gone.
            if let Some(fd) = owner {
                // SAFETY: `fd` is the directory owner's descriptor, open in this child.
                let fd = std::os::fd::BorrowedFd::borrow_raw(fd);
                rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(|e| {
        format!("starting redis-server (is it on PATH? apt-get install redis-server): {e}")
    })?;
    Ok(Server::new(child, dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_whole_or_not_at_all() {
        let buf = b"$8\r\nadmitted\r\n$12\r\nalready_used\r\n-ERR boom\r\n$4\r\nexi";
        let (a, o) = parse_reply(buf).expect("ok").expect("whole");
        assert_eq!(a, 14);
        assert_eq!(o.expect("outcome").kind, OutcomeKind::Admitted);
        let (b, o) = parse_reply(&buf[a..]).expect("ok").expect("whole");
        assert_eq!(o.expect("outcome").kind, OutcomeKind::AlreadyUsed);
        let (c, o) = parse_reply(&buf[a + b..]).expect("ok").expect("whole");
        assert_eq!(o, Err("ERR boom".to_string()));
        assert!(parse_reply(&buf[a + b + c..]).expect("ok").is_none());
        assert!(parse_reply(b"?what\r\n").is_err());
    }

    #[test]
    fn cpu_time_is_read_from_info() {
        let info = "# CPU\r\nused_cpu_sys:1.250000\r\nused_cpu_user:0.500001\r\n\
                    used_cpu_sys_children:9.0\r\n";
        assert_eq!(cpu_us_of_info(info), Some(1_750_001));
        assert_eq!(cpu_us_of_info("# CPU\r\n"), None);
    }

    #[test]
    fn commands_are_resp_arrays() {
        let mut out = Vec::new();
        command(&mut out, &["EVALSHA", "ab", "1", "t:X"]);
        assert_eq!(
            out,
            b"*4\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n1\r\n$3\r\nt:X\r\n"
        );
    }
}
