//! A PostgreSQL for the tests: `ORCH_TEST_DATABASE_URL` when set, else a private server started
//! once per test binary from `initdb`/`pg_ctl` on PATH, in a temporary folder, on a free
//! loopback port, as an unprivileged user when running as root, with `pg_ctl` (so a test can
//! have a private server and restart it). A watchdog shell stops each server and removes its
//! folder when the test binary exits (however it exits).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use sqlx::Connection as _;
use tokio::sync::OnceCell;

/// Where the server is: a URL to the maintenance database, from which tests create their own.
pub(crate) struct Server {
    admin_url: String,
}

static SERVER: OnceCell<Result<Option<Server>, String>> = OnceCell::const_new();

/// Whether the caller demands PostgreSQL (CI sets `ORCH_REQUIRE_POSTGRES=1`).
fn required() -> bool {
    std::env::var("ORCH_REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
}

/// A URL to a new, empty database, or `None` when there is no PostgreSQL and it is not
/// required (the test then passes after printing that it was skipped).
pub(crate) async fn fresh_database() -> anyhow::Result<Option<String>> {
    let server = SERVER
        .get_or_init(|| async {
            match std::env::var("ORCH_TEST_DATABASE_URL") {
                Ok(url) if !url.is_empty() => Ok(Some(Server { admin_url: url })),
                _ => tokio::task::spawn_blocking(start_server)
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|started| started.map_err(|e| format!("{e:#}"))),
            }
        })
        .await;
    let server = match server {
        Ok(Some(server)) => server,
        Ok(None) if required() => bail!("no PostgreSQL found and ORCH_REQUIRE_POSTGRES=1"),
        Ok(None) => {
            println!("skipped: no PostgreSQL (initdb/postgres not on PATH)");
            return Ok(None);
        }
        Err(why) if required() => bail!("PostgreSQL did not start: {why}"),
        Err(why) => {
            println!("skipped: no PostgreSQL ({why})");
            return Ok(None);
        }
    };
    Ok(Some(create_database(&server.admin_url).await?))
}

/// Creates a database with a fresh name on the server of `admin_url`; returns its URL.
async fn create_database(admin_url: &str) -> anyhow::Result<String> {
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let mut admin = connect_retrying(admin_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .context("CREATE DATABASE")?;
    admin.close().await.ok();
    Ok(with_database(admin_url, &name))
}

/// `url` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let root = match base[after_scheme..].find('/') {
        Some(i) => &base[..after_scheme + i],
        None => base,
    };
    match query {
        Some(query) => format!("{root}/{name}?{query}"),
        None => format!("{root}/{name}"),
    }
}

async fn connect_retrying(url: &str) -> anyhow::Result<sqlx::PgConnection> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match sqlx::PgConnection::connect(url).await {
            Ok(conn) => return Ok(conn),
            Err(e) if Instant::now() > deadline => {
                return Err(e).context("connecting to the test PostgreSQL");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A program on PATH, or in Debian's versioned folder.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    if let Ok(versions) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut found: Vec<PathBuf> = versions.flatten().map(|v| v.path().join("bin")).collect();
        found.sort();
        dirs.extend(found.into_iter().rev());
    }
    dirs.into_iter()
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The effective uid of this process, from /proc.
fn current_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// uid and gid of an unprivileged account to run PostgreSQL as.
fn unprivileged_account() -> anyhow::Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    for wanted in ["postgres", "nobody"] {
        for line in passwd.lines() {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() > 3 && fields[0] == wanted {
                let uid = fields[2].parse().context("uid")?;
                let gid = fields[3].parse().context("gid")?;
                if uid != 0 {
                    return Ok((uid, gid));
                }
            }
        }
    }
    bail!("no unprivileged account (postgres or nobody) to run PostgreSQL as root")
}

fn chown_tree(path: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", path.display()))?;
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

fn as_account(command: &mut Command, account: Option<(u32, u32)>) -> &mut Command {
    use std::os::unix::process::CommandExt as _;
    if let Some((uid, gid)) = account {
        command.gid(gid).uid(uid);
    }
    command
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Starts the server shared by the test binary; `Ok(None)` when the programs are not
/// installed.
fn start_server() -> anyhow::Result<Option<Server>> {
    // Speed over durability: nothing here outlives the test binary, and nothing restarts it.
    let durability = [
        "fsync=off",
        "synchronous_commit=off",
        "full_page_writes=off",
    ];
    Ok(PrivateServer::start(&durability)?.map(|server| {
        let admin_url = server.admin_url.clone();
        // Stopped by the watchdog when the test binary exits.
        std::mem::forget(server);
        Server { admin_url }
    }))
}

/// A server of one's own, started with `pg_ctl` (so it can be restarted), stopped and removed
/// on drop, and by a watchdog shell when the test binary exits however it exits.
pub(crate) struct PrivateServer {
    /// URL of the maintenance database.
    pub(crate) admin_url: String,
    dir: PathBuf,
    data: PathBuf,
    pg_ctl: PathBuf,
    account: Option<(u32, u32)>,
    /// The server options (`pg_ctl -o`).
    options: String,
}

/// A private server for a test that must stop or restart it, or `None` (after printing why)
/// when there is none to be had and `ORCH_REQUIRE_POSTGRES` is not `1`.
pub(crate) fn private_server(durability: &[&str]) -> anyhow::Result<Option<PrivateServer>> {
    match PrivateServer::start(durability) {
        Ok(Some(server)) => Ok(Some(server)),
        Ok(None) if required() => bail!("no PostgreSQL found and ORCH_REQUIRE_POSTGRES=1"),
        Ok(None) => {
            println!("skipped: no PostgreSQL (initdb/pg_ctl not on PATH)");
            Ok(None)
        }
        Err(why) if required() => Err(why.context("PostgreSQL did not start")),
        Err(why) => {
            println!("skipped: no PostgreSQL ({why:#})");
            Ok(None)
        }
    }
}

impl PrivateServer {
    /// Starts a server with the settings `durability` (`name=value`); `Ok(None)` when the
    /// programs are not installed.
    fn start(durability: &[&str]) -> anyhow::Result<Option<PrivateServer>> {
        let (Some(initdb), Some(pg_ctl)) = (find_program("initdb"), find_program("pg_ctl")) else {
            return Ok(None);
        };
        let dir = tempfile::Builder::new()
            .prefix("orch-pg-")
            .tempdir()
            .context("temp dir")?
            .keep();
        let data = dir.join("data");
        let account = if current_uid() == Some(0) {
            let account = unprivileged_account()?;
            chown_tree(&dir, account.0, account.1)?;
            Some(account)
        } else {
            None
        };
        let log = std::fs::File::create(dir.join("initdb.log"))?;
        let status = as_account(&mut Command::new(&initdb), account)
            .args(["-D"])
            .arg(&data)
            .args([
                "-U",
                "orch",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .context("running initdb")?;
        if !status.success() {
            let log = std::fs::read_to_string(dir.join("initdb.log")).unwrap_or_default();
            bail!("initdb failed ({status}): {log}");
        }
        let port = free_port()?;
        let mut options = format!(
            "-h 127.0.0.1 -p {port} -k {} -c max_connections=300",
            dir.display()
        );
        for setting in durability {
            options.push_str(" -c ");
            options.push_str(setting);
        }
        // The watchdog outlives this process: once the test binary is gone it stops the
        // server (fast shutdown, then SIGKILL) and removes the folder. It reads the pid from
        // postmaster.pid each time, so a restarted server is stopped too.
        let pid_file = data.join("postmaster.pid");
        let script = format!(
            "while kill -0 {test} 2>/dev/null; do sleep 0.5; done; \
             pg=$(head -1 '{pid}' 2>/dev/null); \
             if [ -n \"$pg\" ]; then kill -INT $pg 2>/dev/null; \
             for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 $pg 2>/dev/null || break; sleep 0.5; done; \
             kill -KILL $pg 2>/dev/null; fi; rm -rf '{dir}'",
            test = std::process::id(),
            pid = pid_file.display(),
            dir = dir.display(),
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the watchdog")?;
        let server = PrivateServer {
            admin_url: format!("postgres://orch@127.0.0.1:{port}/postgres"),
            dir,
            data,
            pg_ctl,
            account,
            options,
        };
        server.pg_ctl(&["start", "-w", "-t", "60"])?;
        Ok(Some(server))
    }

    /// Runs `pg_ctl <args>` on this server's data folder, as its account.
    fn pg_ctl(&self, args: &[&str]) -> anyhow::Result<()> {
        let log = self.dir.join("postgres.log");
        let status = as_account(&mut Command::new(&self.pg_ctl), self.account)
            .args(args)
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&log)
            .arg("-o")
            .arg(&self.options)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running pg_ctl")?;
        if !status.success() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            bail!("pg_ctl {args:?} failed ({status}): {log}");
        }
        Ok(())
    }

    /// `pg_ctl restart -m immediate`: every session is cut and the server recovers from its
    /// WAL, as after a crash. Returns once it accepts connections again.
    pub(crate) fn restart_immediately(&self) -> anyhow::Result<()> {
        self.pg_ctl(&["restart", "-m", "immediate", "-w", "-t", "60"])
    }

    /// `pg_ctl stop -m fast`: the server closes every session and stops.
    pub(crate) fn stop(&self) -> anyhow::Result<()> {
        self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "60"])
    }

    /// `pg_ctl start`: returns once the server accepts connections.
    pub(crate) fn start_again(&self) -> anyhow::Result<()> {
        self.pg_ctl(&["start", "-w", "-t", "60"])
    }

    /// What the server logged so far (the soak reads it; the storage binary does not).
    #[allow(dead_code)]
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default()
    }

    /// A URL to a new, empty database on this server.
    pub(crate) async fn fresh_database(&self) -> anyhow::Result<String> {
        create_database(&self.admin_url).await
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        if self.pg_ctl(&["stop", "-m", "immediate", "-w"]).is_ok() {
            std::fs::remove_dir_all(&self.dir).ok();
        }
    }
}
