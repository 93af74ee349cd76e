//! A PostgreSQL for the daemon tests, started the way orch-storage's tests start theirs:
//! `ORCH_TEST_DATABASE_URL` when set, else a private server started once per test binary from
//! `initdb`/`pg_ctl` (on PATH or in `/usr/lib/postgresql/*/bin`), in a temporary folder, on a
//! free loopback port, as an unprivileged user when running as root (PostgreSQL refuses root).
//! A watchdog shell stops the server and removes its folder when the test binary exits, however
//! it exits.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use orch_storage::sqlx::{self, Connection as _};
use tokio::sync::OnceCell;

static ADMIN_URL: OnceCell<Result<Option<String>, String>> = OnceCell::const_new();

/// Whether the caller demands PostgreSQL (CI sets `ORCH_REQUIRE_POSTGRES=1`).
fn required() -> bool {
    std::env::var("ORCH_REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
}

/// A URL to a new, empty database, or `None` when there is no PostgreSQL and it is not
/// required (the test then passes after printing that it was skipped).
pub(crate) async fn fresh_database() -> anyhow::Result<Option<String>> {
    let admin_url = ADMIN_URL
        .get_or_init(|| async {
            match std::env::var("ORCH_TEST_DATABASE_URL") {
                Ok(url) if !url.is_empty() => Ok(Some(url)),
                _ => tokio::task::spawn_blocking(start_server)
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|started| started.map_err(|e| format!("{e:#}"))),
            }
        })
        .await;
    let admin_url = match admin_url {
        Ok(Some(url)) => url,
        Ok(None) if required() => bail!("no PostgreSQL found and ORCH_REQUIRE_POSTGRES=1"),
        Ok(None) => {
            println!("skipped: no PostgreSQL (initdb/pg_ctl not found)");
            return Ok(None);
        }
        Err(why) if required() => bail!("PostgreSQL did not start: {why}"),
        Err(why) => {
            println!("skipped: no PostgreSQL ({why})");
            return Ok(None);
        }
    };
    let name = format!("orchd_{}", uuid::Uuid::new_v4().simple());
    let mut admin = connect_retrying(admin_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .context("CREATE DATABASE")?;
    admin.close().await.ok();
    Ok(Some(with_database(admin_url, &name)))
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

/// Starts the server shared by the test binary and returns the URL of its maintenance
/// database; `Ok(None)` when the programs are not installed.
fn start_server() -> anyhow::Result<Option<String>> {
    let (Some(initdb), Some(pg_ctl)) = (find_program("initdb"), find_program("pg_ctl")) else {
        return Ok(None);
    };
    let dir = std::env::temp_dir().join(format!("orchd-pg-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
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
        .arg("-D")
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
    // Speed over durability: nothing here outlives the test binary.
    let options = format!(
        "-h 127.0.0.1 -p {port} -k {} -c fsync=off -c synchronous_commit=off \
         -c full_page_writes=off",
        dir.display()
    );
    // The watchdog outlives this process: once the test binary is gone it stops the server
    // (fast shutdown, then SIGKILL) and removes the folder.
    let script = format!(
        "while kill -0 {test} 2>/dev/null; do sleep 0.5; done; \
         pg=$(head -1 '{pid}' 2>/dev/null); \
         if [ -n \"$pg\" ]; then kill -INT $pg 2>/dev/null; \
         for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 $pg 2>/dev/null || break; sleep 0.5; done; \
         kill -KILL $pg 2>/dev/null; fi; rm -rf '{dir}'",
        test = std::process::id(),
        pid = data.join("postmaster.pid").display(),
        dir = dir.display(),
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the watchdog")?;
    let server_log = dir.join("postgres.log");
    let status = as_account(&mut Command::new(&pg_ctl), account)
        .args(["start", "-w", "-t", "60", "-D"])
        .arg(&data)
        .arg("-l")
        .arg(&server_log)
        .arg("-o")
        .arg(&options)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running pg_ctl")?;
    if !status.success() {
        let log = std::fs::read_to_string(&server_log).unwrap_or_default();
        bail!("pg_ctl start failed ({status}): {log}");
    }
    Ok(Some(format!("postgres://orch@127.0.0.1:{port}/postgres")))
}
