//! The obvious alternative, measured with the same gates and the same in-flight depth:
//! Redis holding one key per ticket and a Lua script that checks a ticket in (exists? set
//! it used if still valid; answer admitted, already_used or unknown). Redis cannot check a
//! code's signature, so a forged code is simply `unknown`.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::RngCore;
use redis::aio::MultiplexedConnection;
use stile_protocol::{CodeBytes, Outcome, OutcomeKind};

use crate::target::CallError;
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
/// Keys written per pipeline while loading tickets.
const LOAD_CHUNK: usize = 10_000;
/// How long a spawned redis-server may take to accept connections.
const SPAWN_TIMEOUT_MS: u64 = 10_000;

/// A redis-server this run started; stopped on drop.
#[derive(Debug)]
struct Spawned {
    /// The server process.
    child: Child,
    /// Its working directory (the AOF), removed on drop.
    _dir: tempfile::TempDir,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Redis, with one connection per gate.
pub struct Redis {
    /// The URL as given.
    pub url: String,
    /// Gate `i + 1`'s connection (requests on it are pipelined).
    conns: Vec<MultiplexedConnection>,
    /// The check-in script.
    script: redis::Script,
    /// `appendfsync …` as the server reports it.
    pub sync: String,
    /// The server, if this run started it.
    _spawned: Option<Spawned>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").field("url", &self.url).finish()
    }
}

impl Redis {
    /// Connects G times (starting the server first with `--spawn-redis`).
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
        let spawned = if config.spawn_redis {
            Some(spawn(addr.port()).map_err(err)?)
        } else {
            None
        };
        let client =
            redis::Client::open(format!("redis://{addr}/")).map_err(|e| err(e.to_string()))?;
        let deadline = Instant::now() + Duration::from_millis(SPAWN_TIMEOUT_MS);
        let first = loop {
            match client.get_multiplexed_async_connection().await {
                Ok(c) => break c,
                Err(e) if spawned.is_some() && Instant::now() < deadline => {
                    tracing::debug!(error = %e, "waiting for redis-server");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(err(format!("connecting: {e}"))),
            }
        };
        let mut conns = vec![first];
        for _ in 1..config.gates {
            conns.push(
                client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|e| err(e.to_string()))?,
            );
        }
        let mut c = conns[0].clone();
        let aof: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("appendonly")
            .query_async(&mut c)
            .await
            .unwrap_or_default();
        let fsync: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("appendfsync")
            .query_async(&mut c)
            .await
            .unwrap_or_default();
        let sync = match (aof.get(1).map(String::as_str), fsync.get(1)) {
            (Some("yes"), Some(f)) => format!("appendfsync {f}"),
            (Some(_), _) => "no aof".to_string(),
            _ => "unknown".to_string(),
        };
        let script = redis::Script::new(CHECKIN_LUA);
        script
            .prepare_invoke()
            .load_async(&mut c)
            .await
            .map_err(|e| err(format!("loading the script: {e}")))?;
        Ok(Redis {
            url: config.target.clone(),
            conns,
            script,
            sync,
            _spawned: spawned,
        })
    }

    /// Writes `n` valid tickets (random codes: Redis has no keys to sign with).
    pub async fn load(&self, n: u32) -> Result<Vec<CodeBytes>, LoadError> {
        let mut rng = rand::thread_rng();
        let mut codes = Vec::with_capacity(n as usize);
        for serial in 0..n {
            let mut b = [0u8; 20];
            b[0] = 1; // static code
            b[2..4].copy_from_slice(&crate::target::PROVIDER.to_be_bytes());
            b[6..10].copy_from_slice(&serial.to_be_bytes());
            rng.fill_bytes(&mut b[10..]);
            codes.push(CodeBytes::from_slice(&b).expect("20 bytes of format 1"));
        }
        let mut c = self.conns[0].clone();
        let _: () = redis::cmd("FLUSHDB")
            .query_async(&mut c)
            .await
            .map_err(|e| self.err(e))?;
        for chunk in codes.chunks(LOAD_CHUNK) {
            let mut pipe = redis::pipe();
            for code in chunk {
                pipe.set(key(code), "valid").ignore();
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

    /// Checks `codes` in at gate `gate`, one script call each.
    pub async fn checkin(&self, gate: u16, codes: &[CodeBytes]) -> Result<Vec<Outcome>, CallError> {
        let mut conn = self.conns[gate as usize - 1].clone();
        let mut out = Vec::with_capacity(codes.len());
        for code in codes {
            let answer: String = self
                .script
                .key(key(code))
                .arg(gate)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| CallError::Other(e.to_string()))?;
            let kind = match answer.as_str() {
                "admitted" => OutcomeKind::Admitted,
                "already_used" => OutcomeKind::AlreadyUsed,
                _ => OutcomeKind::Unknown,
            };
            out.push(Outcome::bare(kind));
        }
        Ok(out)
    }
}

fn key(code: &CodeBytes) -> String {
    format!("t:{}", code.to_text().as_str())
}

/// Starts redis-server on 127.0.0.1:`port` with the AOF synced on every write.
fn spawn(port: u16) -> Result<Spawned, String> {
    let dir = tempfile::Builder::new()
        .prefix(".stile-redis-")
        .tempdir_in(".")
        .map_err(|e| format!("making a directory for redis-server: {e}"))?;
    let child = Command::new("redis-server")
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
        .spawn()
        .map_err(|e| {
            format!("starting redis-server (is it on PATH? apt-get install redis-server): {e}")
        })?;
    Ok(Spawned { child, _dir: dir })
}
