//! The README's tour, run as written: `stile up --demo` on its default addresses in a fresh
//! directory, then every command of the tour's `sh` blocks, in order, in one shell with
//! `stile` on `PATH`. Each command must exit 0, or the status its comment names ("exit
//! status N"); a few outputs are checked too.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::support::{sigterm, tool};

/// The tour's `sh` blocks, from its heading to the next.
fn tour_blocks(readme: &str) -> Vec<String> {
    let start = readme
        .find("## A short tour")
        .expect("the README has a tour");
    let end = readme[start..]
        .find("\n## ")
        .map_or(readme.len(), |e| start + e);
    readme[start..end]
        .split("```sh\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap().to_string())
        .collect()
}

/// The tour as one script that stops at the first command whose exit status is not the one
/// it should be, naming it.
fn checked_script(blocks: &[String]) -> String {
    let mut script = String::from(
        "set -euo pipefail\ntrap 'echo \"tour failed (exit $?) at: $BASH_COMMAND\" >&2' ERR\n",
    );
    for block in blocks {
        for line in block.lines() {
            let expected = line
                .split_once('#')
                .and_then(|(_, comment)| comment.split("exit status ").nth(1))
                .and_then(|n| n.trim().parse::<i32>().ok());
            match expected {
                Some(n) => {
                    let command = line.split('#').next().unwrap().trim();
                    script += &format!(
                        "s=0; {command} || s=$?; [ $s = {n} ] || {{ echo \"exit $s, not {n}: \
                         {}\" >&2; exit 1; }}\n",
                        command.replace('"', "\\\"").replace('$', "\\$")
                    );
                }
                None => {
                    script += line;
                    script.push('\n');
                }
            }
        }
    }
    script
}

#[test]
fn the_readme_tour_runs_as_written() {
    let (Some(_), Some(_)) = (tool(&["curl"], "curl"), tool(&["jq"], "jq")) else {
        return;
    };
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("reading README.md");
    let blocks = tour_blocks(&readme);
    assert!(blocks.len() >= 3, "{blocks:?}");
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_stile"), bin.join("stile")).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    // As the README starts it (`cargo run --release -- up --demo`), on its defaults.
    let mut up = Command::new(bin.join("stile"))
        .args(["up", "--demo"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(up.stdout.take().unwrap());
    let mut said = String::new();
    while !said.contains("stop with Ctrl-C") {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            let _ = up.wait();
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut up.stderr.take().unwrap(), &mut err);
            panic!("stile up --demo ended (are 7443/udp and 8080/tcp free?): {said}{err}");
        }
        said.push_str(&line);
    }
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let mut err = up.stderr.take().unwrap();
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));

    let tour = Command::new("bash")
        .args(["-c", &checked_script(&blocks)])
        .current_dir(dir.path())
        .env("PATH", path)
        .output()
        .unwrap();
    sigterm(&up);
    let stopped = up.wait().unwrap();
    let stdout = String::from_utf8_lossy(&tour.stdout);
    let stderr = String::from_utf8_lossy(&tour.stderr);
    assert!(tour.status.success(), "{stdout}\n{stderr}");
    for said in [
        "\tadmitted\tadmitted at gate 1",
        "\talready_used\t",
        "\"outcome\":\"admitted\"",
        "open http://localhost:8080/t/",
        "\"gate\":2",
        "replay",
        "connections",
    ] {
        assert!(
            stdout.contains(said),
            "{said:?} not in the tour's output:\n{stdout}"
        );
    }
    assert!(stopped.success(), "{stopped:?}");
}

/// The checked script stops where a command's status differs from its comment's.
#[test]
fn a_tour_command_with_the_wrong_status_stops_the_tour() {
    for (line, ok) in [
        ("true", true),
        ("false", false),
        ("sh -c 'exit 2'   # refused: exit status 2", true),
        ("true   # exit status 2", false),
    ] {
        let script = checked_script(&[format!("{line}\necho reached\n")]);
        let run = Command::new("bash").args(["-c", &script]).output().unwrap();
        let reached = String::from_utf8_lossy(&run.stdout).contains("reached");
        assert_eq!((run.status.success(), reached), (ok, ok), "{line}: {run:?}");
    }
}
