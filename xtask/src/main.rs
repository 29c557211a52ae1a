//! `cargo xtask test`: every test, with the tools the tests need required.
//!
//! The tests drive external programs: `redis-server` (the load tester's baseline), Chromium
//! and chromedriver (the e-ticket page), `curl` and `jq` (the README's tour), `etcd` (the
//! etcd client's tests). On Debian or Ubuntu this installs whichever is
//! missing (with `sudo` when not root); elsewhere it names what to install and stops. Then it
//! runs `cargo test --release --workspace` with `STILE_SKIP_MISSING_TOOLS` unset, so that a
//! test whose tool is missing fails instead of skipping.
//!
//! `cargo xtask sim --seeds N [--from S] [--jobs J]`: the deterministic simulation of the
//! engine on a simulated disk (`stile_engine::sim`), seeds `S..S+N`, in release mode. A
//! failing seed prints itself and the command that runs it alone; `STILE_SIM_TRACE=1`
//! prints its steps. (`cargo xtask test` runs 300 seeds as an ordinary test.)
//!
//! Depends on nothing but std, so that it builds in seconds before anything else.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{exit, Command};

/// A program the tests run, the names it may have on `PATH`, and its packages.
struct Tool {
    /// What the tests need it for.
    what: &'static str,
    /// Names on `PATH`, any one will do.
    names: &'static [&'static str],
    /// Its Debian package.
    debian: &'static str,
    /// Its Ubuntu package.
    ubuntu: &'static str,
}

const TOOLS: &[Tool] = &[
    Tool {
        what: "the README's tour",
        names: &["curl"],
        debian: "curl",
        ubuntu: "curl",
    },
    Tool {
        what: "the README's tour",
        names: &["jq"],
        debian: "jq",
        ubuntu: "jq",
    },
    Tool {
        what: "the load tester's Redis baseline",
        names: &["redis-server"],
        debian: "redis-server",
        ubuntu: "redis-server",
    },
    Tool {
        what: "the e-ticket page's browser test",
        names: &["chromium", "chromium-browser"],
        debian: "chromium",
        ubuntu: "chromium-browser",
    },
    Tool {
        what: "driving Chromium in the browser test",
        names: &["chromedriver"],
        debian: "chromium-driver",
        ubuntu: "chromium-chromedriver",
    },
    Tool {
        what: "the etcd client's tests (stile-cluster) and the failover tests",
        names: &["etcd"],
        debian: "etcd-server",
        ubuntu: "etcd-server",
    },
];

fn main() {
    let args: Vec<OsString> = env::args_os().skip(1).collect();
    match args.first().and_then(|a| a.to_str()) {
        Some("test") => test(&args[1..]),
        Some("sim") => sim(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask test [ARGS…]\n       cargo xtask sim --seeds N [--from S] \
                 [--jobs J]\n\n  test   install what the tests need (Debian, Ubuntu) and run \
                 every test;\n         ARGS go to `cargo test --release --workspace` (a filter, \
                 `-- --nocapture`, …)\n  sim    run the deterministic simulation for seeds \
                 S..S+N (S: 0; J: the cores)"
            );
            exit(1);
        }
    }
}

/// Runs the simulation's example in release mode with the `sim` feature; its exit status.
fn sim(args: &[OsString]) {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "run",
            "--quiet",
            "--release",
            "--package",
            "stile-engine",
            "--features",
            "sim",
            "--example",
            "sim",
            "--",
        ])
        .args(args)
        .status()
        .unwrap_or_else(|e| fail(&format!("could not run cargo: {e}")));
    exit(status.code().unwrap_or(1));
}

fn test(extra: &[OsString]) {
    let missing: Vec<&Tool> = TOOLS.iter().filter(|t| find(t.names).is_none()).collect();
    if !missing.is_empty() {
        install(&missing);
    }
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["test", "--release", "--workspace"])
        .args(extra)
        .env_remove("STILE_SKIP_MISSING_TOOLS")
        .status()
        .unwrap_or_else(|e| fail(&format!("could not run cargo: {e}")));
    exit(status.code().unwrap_or(1));
}

/// The first of `names` found on `PATH`. (A few lines of std instead of a crate: xtask
/// builds before anything else and depends on nothing.)
fn find(names: &[&str]) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    names.iter().find_map(|name| {
        env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| is_executable(p))
    })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Which apt-based distribution this is, from `/etc/os-release`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Distro {
    Debian,
    Ubuntu,
}

fn distro() -> Option<Distro> {
    let release = std::fs::read_to_string("/etc/os-release").ok()?;
    let field = |key: &str| {
        release
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default()
    };
    let (id, like) = (field("ID="), field("ID_LIKE="));
    if id == "ubuntu" || like.split(' ').any(|w| w == "ubuntu") {
        Some(Distro::Ubuntu)
    } else if id == "debian" || like.split(' ').any(|w| w == "debian") {
        Some(Distro::Debian)
    } else {
        None
    }
}

fn install(missing: &[&Tool]) {
    let names = |t: &Tool| t.names.join(" or ");
    let Some(distro) = distro().filter(|_| find(&["apt-get"]).is_some()) else {
        let mut text = String::from("the tests need these programs on PATH:\n");
        for t in missing {
            text += &format!("  {} ({})\n", names(t), t.what);
        }
        text += "install them with your system's package manager, then run `cargo xtask test` \
                 again";
        fail(&text);
    };
    let packages: Vec<&str> = missing
        .iter()
        .map(|t| match distro {
            Distro::Debian => t.debian,
            Distro::Ubuntu => t.ubuntu,
        })
        .collect();
    eprintln!(
        "xtask: installing {} (for {})",
        packages.join(" "),
        missing
            .iter()
            .map(|t| t.what)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let apt = |args: &[&str]| {
        let mut cmd = if root {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.arg("apt-get");
            c
        };
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        let status = cmd.status().unwrap_or_else(|e| {
            fail(&format!(
                "could not run {}apt-get: {e}; install {} yourself",
                if root { "" } else { "sudo " },
                packages.join(" ")
            ))
        });
        if !status.success() {
            fail(&format!(
                "apt-get {} failed ({status}); install {} yourself",
                args.join(" "),
                packages.join(" ")
            ));
        }
    };
    apt(&["update", "-qq"]);
    let mut args = vec!["install", "-y", "-qq"];
    args.extend(&packages);
    apt(&args);
    let still: Vec<String> = missing
        .iter()
        .filter(|t| find(t.names).is_none())
        .map(|t| names(t))
        .collect();
    if !still.is_empty() {
        fail(&format!(
            "installed {}, but {} is still not on PATH",
            packages.join(" "),
            still.join(", ")
        ));
    }
}

fn fail(message: &str) -> ! {
    eprintln!("xtask: {message}");
    exit(1);
}
