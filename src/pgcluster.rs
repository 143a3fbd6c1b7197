//! A throw-away local PostgreSQL with `wal_level=logical`, from the machine's
//! server binaries. Used by `calendar-sync demo` and by the integration tests.
//!
//! initdb and postgres refuse to run as root: when we are root, the cluster is
//! created and run as the unprivileged `postgres` user (which Debian's
//! postgresql package creates). A watchdog process removes the cluster when the
//! process that started it exits, also after kill -9.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Why no cluster could be started. The message says what to install or check.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("CALENDAR_SYNC_PG_BINDIR is {0}, which has no initdb and pg_ctl; point it at the directory holding PostgreSQL's server binaries (e.g. /usr/lib/postgresql/17/bin), or unset it to search PATH, `pg_config --bindir` and /usr/lib/postgresql/*/bin")]
    BadBindir(String),
    #[error("no PostgreSQL server binaries found (looked for initdb and pg_ctl in PATH, `pg_config --bindir` and /usr/lib/postgresql/*/bin); install them, e.g. `apt-get install postgresql` on Debian/Ubuntu, or set CALENDAR_SYNC_PG_BINDIR to their directory")]
    NoBinaries,
    #[error("running as root, but there is no unprivileged `postgres` user to run initdb as (initdb refuses root); create one or install Debian's postgresql package, which does")]
    NoUnprivilegedUser,
    #[error("{step} failed: {detail}")]
    Step { step: &'static str, detail: String },
}

fn step(step: &'static str) -> impl Fn(std::io::Error) -> ClusterError {
    move |e| ClusterError::Step {
        step,
        detail: e.to_string(),
    }
}

/// A running cluster; stopped and removed on drop.
pub struct LocalCluster {
    dir: PathBuf,
    bindir: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
}

/// Finds the directory holding `initdb` and `pg_ctl`: `CALENDAR_SYNC_PG_BINDIR`
/// when set (and nothing else then), else `PATH`, `pg_config --bindir`, and
/// the newest /usr/lib/postgresql/*/bin.
pub fn find_bindir() -> Result<PathBuf, ClusterError> {
    find_bindir_with(std::env::var_os("CALENDAR_SYNC_PG_BINDIR"))
}

fn has_server_binaries(d: &Path) -> bool {
    d.join("initdb").is_file() && d.join("pg_ctl").is_file()
}

/// [`find_bindir`] with the value of `CALENDAR_SYNC_PG_BINDIR` given. A set
/// but wrong directory is an error, not a reason to look elsewhere: whoever
/// set it asked for those binaries (CI runs the tests once per major this
/// way), and a fallback would run everything on another server, unnoticed.
fn find_bindir_with(explicit: Option<std::ffi::OsString>) -> Result<PathBuf, ClusterError> {
    let has = has_server_binaries;
    if let Some(d) = explicit.filter(|d| !d.is_empty()).map(PathBuf::from) {
        return if has(&d) {
            Ok(d)
        } else {
            Err(ClusterError::BadBindir(d.display().to_string()))
        };
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(d) = std::env::split_paths(&path).find(|d| has(d)) {
            return Ok(d);
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has(&d) {
            return Ok(d);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let d = e.path().join("bin");
            has(&d).then_some((v, d))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, d)| d)
        .ok_or(ClusterError::NoBinaries)
}

/// uid/gid of `name` from /etc/passwd.
fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&name) && f.len() > 3)
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

fn is_root() -> bool {
    // /proc/self/status "Uid:" real uid; avoids a libc dependency.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn free_port() -> Result<u16, ClusterError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(step("finding a free port"))?;
    Ok(l.local_addr().map_err(step("finding a free port"))?.port())
}

impl LocalCluster {
    /// initdb + start on a free port. `extra_conf` is appended to postgresql.conf.
    pub fn start(name: &str, extra_conf: &str) -> Result<LocalCluster, ClusterError> {
        let bindir = find_bindir()?;
        let run_as = if is_root() {
            Some(lookup_user("postgres").ok_or(ClusterError::NoUnprivilegedUser)?)
        } else {
            None
        };
        let base = std::env::temp_dir().join(format!(
            "calendar-sync-{name}-{}-{}",
            std::process::id(),
            free_port()?
        ));
        std::fs::create_dir_all(&base).map_err(step("creating the cluster directory"))?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&base, Some(uid), Some(gid))
                .map_err(step("handing the cluster directory to postgres"))?;
        }
        let mut cluster = LocalCluster {
            dir: base,
            bindir,
            port: 0,
            run_as,
        };
        cluster.watchdog();
        cluster.run(
            "initdb",
            Command::new(cluster.bindir.join("initdb"))
                .args(["-D"])
                .arg(cluster.data())
                .args([
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ]),
        )?;
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nwal_level = logical\nmax_replication_slots = 100\nmax_wal_senders = 100\nmax_connections = 300\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\nwal_sender_timeout = 30s\nshared_buffers = 64MB\n{extra_conf}\n",
            cluster.dir.display()
        );
        std::fs::OpenOptions::new()
            .append(true)
            .open(cluster.data().join("postgresql.conf"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, conf.as_bytes()))
            .map_err(step("writing postgresql.conf"))?;
        cluster.start_on_free_port()?;
        Ok(cluster)
    }

    /// pg_ctl start on a free port. A port can be taken between probe and
    /// bind: tries a few.
    fn start_on_free_port(&mut self) -> Result<(), ClusterError> {
        let mut last = None;
        for _ in 0..5 {
            self.port = free_port()?;
            match self.pg_ctl_start() {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(ClusterError::Step {
            step: "pg_ctl start",
            detail: "no attempt".into(),
        }))
    }

    /// A new, stopped cluster `name` holding a file copy of this one's data
    /// directory: a base backup without pg_basebackup (the npm server
    /// binaries the CI uses for 17 and 18 have none). Taken while this server
    /// runs, between `pg_backup_start` and `pg_backup_stop`; the caller then
    /// writes the `backup_label` ([`LocalCluster::write_data_file`]), its
    /// standby settings ([`LocalCluster::append_conf`]) and starts it
    /// ([`LocalCluster::start_copy`]). Left out, as pg_basebackup leaves them
    /// out: `postmaster.pid` and `.opts`, and the contents of `pg_wal` (a
    /// standby streams it; a physical slot on this server keeps it),
    /// `pg_replslot` (slots belong to their server) and the runtime
    /// directories. Its own directory, socket directory and watchdog; owned
    /// by the cluster's user. Until it is started, its port is 0.
    pub fn copy_data(&self, name: &str) -> Result<LocalCluster, ClusterError> {
        let base = std::env::temp_dir().join(format!(
            "calendar-sync-{name}-{}-{}",
            std::process::id(),
            free_port()?
        ));
        std::fs::create_dir_all(&base).map_err(step("creating the cluster directory"))?;
        self.chown(&base)?;
        let copy = LocalCluster {
            dir: base,
            bindir: self.bindir.clone(),
            port: 0,
            run_as: self.run_as,
        };
        copy.watchdog();
        copy_dir(&self.data(), &copy.data(), true, &|p| copy.chown(p))?;
        copy.append_conf(&format!(
            "unix_socket_directories = '{}'\n",
            copy.dir.display()
        ))?;
        Ok(copy)
    }

    /// Hands `path` to the cluster's user (when we are root).
    fn chown(&self, path: &Path) -> Result<(), ClusterError> {
        match self.run_as {
            Some((uid, gid)) => std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(step("handing a cluster file to postgres")),
            None => Ok(()),
        }
    }

    /// Writes `file` (e.g. `backup_label`, `standby.signal`) into the data
    /// directory, owned by the cluster's user.
    pub fn write_data_file(&self, file: &str, contents: &str) -> Result<(), ClusterError> {
        let path = self.data().join(file);
        std::fs::write(&path, contents).map_err(step("writing a file of the data directory"))?;
        self.chown(&path)
    }

    /// Appends `conf` to postgresql.conf (a later line wins over an earlier
    /// one); read at the next start or reload.
    pub fn append_conf(&self, conf: &str) -> Result<(), ClusterError> {
        std::fs::OpenOptions::new()
            .append(true)
            .open(self.data().join("postgresql.conf"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, format!("\n{conf}\n").as_bytes()))
            .map_err(step("writing postgresql.conf"))
    }

    /// Starts a cluster made by [`LocalCluster::copy_data`] on a free port
    /// (a standby: once it accepts connections).
    pub fn start_copy(&mut self) -> Result<(), ClusterError> {
        self.start_on_free_port()
    }

    /// `pg_ctl promote`: a standby becomes a primary; returns once it accepts
    /// writes.
    pub fn promote(&self) -> Result<(), ClusterError> {
        self.run(
            "pg_ctl promote",
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-w", "-t", "60", "promote"]),
        )
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/db` (trust authentication).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(self.bindir.join(program));
        if let Some((uid, gid)) = self.run_as {
            c.uid(uid).gid(gid);
        }
        c.current_dir(&self.dir);
        c
    }

    fn run(&self, what: &'static str, c: &mut Command) -> Result<(), ClusterError> {
        if let Some((uid, gid)) = self.run_as {
            c.uid(uid).gid(gid);
        }
        c.current_dir(&self.dir);
        let out = c.output().map_err(step(what))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(ClusterError::Step {
                step: what,
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        }
    }

    fn pg_ctl_start(&self) -> Result<(), ClusterError> {
        let log = self.dir.join("postgres.log");
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-o"])
            .arg(format!("-p {}", self.port))
            .arg("start")
            .stdin(Stdio::null())
            .output()
            .map_err(step("pg_ctl start"))?;
        if out.status.success() {
            Ok(())
        } else {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: String = tail.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
            Err(ClusterError::Step {
                step: "pg_ctl start",
                detail: format!("{} {tail}", String::from_utf8_lossy(&out.stderr)),
            })
        }
    }

    /// Turns TLS on and refuses unencrypted TCP connections: a CA and a server
    /// certificate for `localhost` / 127.0.0.1 are made with `openssl` (run as
    /// the cluster's user), then the server reloads. Returns the CA file for
    /// `sslrootcert`. For tests of `sslmode=verify-full`.
    pub fn enable_tls(&self) -> Result<PathBuf, ClusterError> {
        let script = r#"set -e
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=calendar-sync-test-ca -keyout ca.key -out ca.pem 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1
' > san.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext -out server.crt 2>/dev/null
chmod 600 server.key
"#;
        self.run(
            "openssl (test certificates)",
            Command::new("sh").args(["-c", script]),
        )?;
        let conf = format!(
            "
ssl = on
ssl_cert_file = '{dir}/server.crt'
ssl_key_file = '{dir}/server.key'
",
            dir = self.dir.display()
        );
        let hba = "local all all trust
local replication all trust
hostssl all all 127.0.0.1/32 trust
hostssl replication all 127.0.0.1/32 trust
host all all 0.0.0.0/0 reject
";
        std::fs::OpenOptions::new()
            .append(true)
            .open(self.data().join("postgresql.conf"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, conf.as_bytes()))
            .map_err(step("writing postgresql.conf"))?;
        std::fs::write(self.data().join("pg_hba.conf"), hba)
            .map_err(step("writing pg_hba.conf"))?;
        self.run(
            "pg_ctl reload",
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .arg("reload"),
        )?;
        Ok(self.dir.join("ca.pem"))
    }

    /// Stops the server: `fast` (clean) or `immediate` (like a crash).
    pub fn stop(&self, mode: &str) -> Result<(), ClusterError> {
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-w", "-m", mode, "stop"])
            .output()
            .map_err(step("pg_ctl stop"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(ClusterError::Step {
                step: "pg_ctl stop",
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        }
    }

    /// Starts a stopped server again on the same port.
    pub fn restart(&self) -> Result<(), ClusterError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.pg_ctl_start() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// A shell that waits for this process to exit, then stops the server and
    /// removes the directory: no cluster outlives its owner, even after kill -9.
    fn watchdog(&self) {
        let script = format!(
            "while [ -d /proc/{pid} ]; do sleep 1; done; \"{pg_ctl}\" -D \"{data}\" -m immediate -w stop >/dev/null 2>&1; rm -rf \"{dir}\"",
            pid = std::process::id(),
            pg_ctl = self.bindir.join("pg_ctl").display(),
            data = self.data().display(),
            dir = self.dir.display(),
        );
        let mut c = Command::new("sh");
        c.args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            c.uid(uid).gid(gid);
        }
        // Its own process group, so a Ctrl-C to the owner does not kill it first.
        c.process_group(0);
        if let Err(e) = c.spawn() {
            tracing::warn!(error = %e, "could not start the cluster watchdog; stop the cluster by hand if this process is killed");
        }
    }
}

/// What a copy of a data directory leaves out at its top level: whole files,
/// and directories copied empty.
const NOT_COPIED: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "tablespace_map",
];
const COPIED_EMPTY: &[&str] = &[
    "pg_wal",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
];

/// Copies `from` into a new directory `to` (mode 0700), calling `own` on
/// every created path. At the top (`top`) it leaves out [`NOT_COPIED`] and
/// the contents of [`COPIED_EMPTY`] (but `pg_wal/archive_status` and
/// `pg_wal/summaries` are created, as pg_basebackup does). A file that
/// vanishes while it is copied (a running server removes temporary files) is
/// skipped.
fn copy_dir(
    from: &Path,
    to: &Path,
    top: bool,
    own: &dyn Fn(&Path) -> Result<(), ClusterError>,
) -> Result<(), ClusterError> {
    use std::os::unix::fs::DirBuilderExt;
    let mkdir = |d: &Path| -> Result<(), ClusterError> {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(d)
            .map_err(step("creating a directory of the copy"))?;
        own(d)
    };
    mkdir(to)?;
    let entries = std::fs::read_dir(from).map_err(step("reading the data directory"))?;
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(step("reading the data directory")(e)),
        };
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if top && NOT_COPIED.contains(&name.as_ref())
            || name == "pg_internal.init"
            || name.starts_with("pgsql_tmp")
        {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = match entry.file_type() {
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(step("reading the data directory")(e)),
        };
        if kind.is_dir() {
            if top && COPIED_EMPTY.contains(&name.as_ref()) {
                mkdir(&dst)?;
                if name == "pg_wal" {
                    mkdir(&dst.join("archive_status"))?;
                    mkdir(&dst.join("summaries"))?;
                }
            } else {
                copy_dir(&src, &dst, false, own)?;
            }
        } else if kind.is_file() {
            match std::fs::copy(&src, &dst) {
                Ok(_) => own(&dst)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(step("copying the data directory")(e)),
            }
        }
    }
    Ok(())
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let _ = self.stop("immediate");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_bindir_without_the_binaries_is_an_error_not_a_fallback() {
        let empty =
            std::env::temp_dir().join(format!("calendar-sync-no-bin-{}", std::process::id()));
        std::fs::create_dir_all(&empty).expect("temp dir");
        let got = find_bindir_with(Some(empty.clone().into_os_string()));
        let _ = std::fs::remove_dir(&empty);
        match got {
            Err(ClusterError::BadBindir(d)) => assert_eq!(d, empty.display().to_string()),
            other => panic!("expected BadBindir for a directory without initdb, got {other:?}"),
        }
    }

    #[test]
    fn a_set_bindir_with_the_binaries_is_used() {
        let dir = std::env::temp_dir().join(format!("calendar-sync-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        for f in ["initdb", "pg_ctl"] {
            std::fs::write(dir.join(f), "").expect("stub binary");
        }
        let got = find_bindir_with(Some(dir.clone().into_os_string()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(got.expect("the set directory"), dir);
    }
}
