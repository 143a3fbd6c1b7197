//! The real `calendar-sync` binary: a command for a test's database, `run`
//! spawned with extra environment, signals, and bounded waits for its exit
//! (never a bare sleep). A child that outlives its wait is killed before the
//! test fails, so no consumer is left behind.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::TestDb;

/// The binary under test, with `RUST_LOG=info` and no TARGET_DATABASE_URL
/// from the environment.
pub fn binary() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_calendar-sync"));
    c.env_remove("TARGET_DATABASE_URL").env("RUST_LOG", "info");
    c
}

/// A finished command's exit code and its stdout then stderr as one text.
pub fn code_and_text(out: &std::process::Output) -> (Option<i32>, String) {
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// [`binary`] for `db`: its URL, and its name as slot and publication.
pub fn binary_for(db: &TestDb) -> Command {
    let mut c = binary();
    c.env("DATABASE_URL", &db.url)
        .env("CALENDAR_SYNC_SLOT", &db.name)
        .env("CALENDAR_SYNC_PUBLICATION", &db.name);
    c
}

/// `calendar-sync run` for `db` (its slot and publication), with extra
/// environment; stdout discarded, stderr as given.
pub fn spawn_run(db: &TestDb, extra: &[(&str, String)], stderr: Stdio) -> Child {
    let mut c = binary_for(db);
    c.args(["run"]).stdout(Stdio::null()).stderr(stderr);
    for (k, v) in extra {
        c.env(k, v);
    }
    c.spawn().expect("spawn calendar-sync run")
}

/// kill -9 of `child`, and reaps it.
pub fn kill9(child: &mut Child) {
    signal("KILL", child.id());
    let _ = child.wait();
}

/// Sends `SIG<sig>` (e.g. `TERM`, `STOP`, `CONT`) to process `pid`.
pub fn signal(sig: &str, pid: u32) {
    let ok = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// Sends SIGTERM and waits for the exit: the exit code and how long it took.
/// Still running after `within`: killed, and the test fails.
pub async fn sigterm_within(child: &mut Child, within: Duration) -> (Option<i32>, Duration) {
    let sent = Instant::now();
    signal("TERM", child.id());
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return (s.code(), sent.elapsed());
        }
        if sent.elapsed() > within {
            let _ = child.kill();
            panic!("no exit within {within:?} of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`sigterm_within`] 15 s.
pub async fn sigterm_and_wait(child: &mut Child) -> (Option<i32>, Duration) {
    sigterm_within(child, Duration::from_secs(15)).await
}

/// Waits until the binary exits (killing it after `within`): exit code and
/// stderr (piped).
pub async fn exit_of(mut child: Child, within: Duration) -> (Option<i32>, String) {
    let started = Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            break;
        }
        if started.elapsed() > within {
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait");
            panic!(
                "calendar-sync run still running after {within:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The rest of an exited child's piped stderr.
pub fn stderr_of(child: &mut Child) -> String {
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr is piped")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    stderr
}
