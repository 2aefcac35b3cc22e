//! A real OpenSSH server on 127.0.0.1 for the SSH tests: its own host key,
//! client key, authorized_keys and known_hosts in a temporary folder, on a
//! free port, killed on drop. OpenSSH's default `MaxStartups 10:30:100`, as
//! on a real node: a client opening too many handshakes at once is dropped. Loopback only. `restart` kills it with its
//! sessions (every connection drops) and starts it again, same port and keys.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SSHD: &str = "/usr/sbin/sshd";

pub struct Sshd {
    _tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub port: u16,
    pub user: String,
    /// Private key the server accepts.
    pub client_key: PathBuf,
    /// A known_hosts file that lists this server's host key.
    pub known_hosts: PathBuf,
    /// The host key line (`ssh-ed25519 AAAA...`).
    pub host_key: String,
    config: PathBuf,
    child: Child,
}

/// Whether the SSH tests can run. Without OpenSSH's server they fail, so
/// that a machine without it never shows them as passed, unless
/// `UPRUN_SKIP_SSH_TESTS=1` says to skip them (never under `CI=true`).
pub fn available() -> bool {
    if Path::new(SSHD).exists() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{SSHD} is missing and CI=true: install openssh-server (.ci/run does)");
    }
    if std::env::var("UPRUN_SKIP_SSH_TESTS").as_deref() == Ok("1") {
        eprintln!("SKIP: {SSHD} is missing and UPRUN_SKIP_SSH_TESTS=1: SSH tests did not run");
        return false;
    }
    panic!(
        "{SSHD} is missing, so the SSH tests cannot run. Install OpenSSH's server \
         (Debian/Ubuntu: apt-get install -y openssh-server), or set UPRUN_SKIP_SSH_TESTS=1 \
         to skip them knowingly."
    );
}

fn keygen(path: &Path) {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "uprun-test", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("run ssh-keygen");
    assert!(st.success(), "ssh-keygen failed");
}

/// A free port on 127.0.0.1 that nothing listens on (it may be taken again
/// later, so callers retry).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

pub fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("id -un");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Sshd {
    /// Start a server; `None` when sshd is not installed (see `available`).
    pub fn start() -> Option<Sshd> {
        Self::start_with("")
    }

    /// `start` with more sshd_config lines (a benchmark raising
    /// `MaxStartups` so that every side may open all its connections at once).
    pub fn start_with(extra_config: &str) -> Option<Sshd> {
        if !available() {
            return None;
        }
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().to_path_buf();
        // sshd running as root refuses to start without its privilege-separation folder.
        let _ = std::fs::create_dir_all("/run/sshd");
        keygen(&dir.join("host_ed25519"));
        keygen(&dir.join("client_ed25519"));
        std::fs::copy(dir.join("client_ed25519.pub"), dir.join("authorized_keys"))
            .expect("authorized_keys");
        // A home without shell start-up files: root's real .bashrc may be slow.
        std::fs::create_dir_all(dir.join("home")).expect("home");
        let host_key = std::fs::read_to_string(dir.join("host_ed25519.pub")).expect("host key");
        let host_key = host_key
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");

        for _attempt in 0..5 {
            let port = free_port();
            let config = dir.join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_ed25519\nPidFile {d}/sshd.pid\n\
                     AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
                     Subsystem sftp internal-sftp\nMaxSessions 200\nSetEnv HOME={d}/home\n\
                     PrintMotd no\nLogLevel INFO\n{extra_config}",
                    d = dir.display()
                ),
            )
            .expect("sshd_config");
            let Some(child) = launch(&config, port, &dir) else {
                continue; // port taken meanwhile, most likely: try another
            };
            let known_hosts = dir.join("known_hosts");
            std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {host_key}\n"))
                .expect("known_hosts");
            return Some(Sshd {
                port,
                user: current_user(),
                client_key: dir.join("client_ed25519"),
                known_hosts,
                host_key,
                config,
                child,
                dir,
                _tmp: tmp,
            });
        }
        panic!(
            "sshd did not start after 5 attempts; its log:\n{}",
            read_log(&dir)
        );
    }

    /// Kill the server and every process it started (its sessions and their
    /// commands: every connection to it drops, as when the node reboots),
    /// then start it again on the same port with the same keys. Returns once
    /// it accepts connections.
    pub fn restart(&mut self) {
        self.restart_with(|_| {});
    }

    /// `restart`, the server coming back with another host key (the one of
    /// `other_host_key`), as a reinstalled node or an impostor would.
    pub fn restart_as_another_host(&mut self) {
        self.other_host_key();
        self.restart_with(|dir| {
            std::fs::copy(dir.join("other_host_ed25519"), dir.join("host_ed25519"))
                .expect("swap the host key");
        });
    }

    fn restart_with(&mut self, while_down: impl FnOnce(&Path)) {
        let pid = self.child.id();
        let mut doomed = descendants(pid);
        doomed.push(pid);
        for p in &doomed {
            // SAFETY: plain kill(2) on processes this server started.
            unsafe {
                libc::kill(*p as i32, libc::SIGKILL);
            }
        }
        let _ = self.child.wait();
        // The sessions are not our children: wait (bounded) until each is
        // gone or a zombie, so no connection is still served. SIGKILL takes
        // effect asynchronously and there is nothing to block on for a
        // process that is not our child, hence a short yielding poll.
        let deadline = Instant::now() + Duration::from_secs(10);
        for p in &doomed {
            while alive(*p) {
                assert!(
                    Instant::now() < deadline,
                    "sshd process {p} survived SIGKILL"
                );
                std::thread::yield_now();
            }
        }
        while_down(&self.dir);
        self.child = launch(&self.config, self.port, &self.dir).unwrap_or_else(|| {
            panic!(
                "sshd did not start again on port {}; its log:\n{}",
                self.port,
                read_log(&self.dir)
            )
        });
    }

    /// What the server logged so far (LogLevel INFO: connections it dropped
    /// past `MaxStartups` show as `drop connection #N ...`).
    pub fn log(&self) -> String {
        read_log(&self.dir)
    }

    /// `ssh://user@127.0.0.1:port`
    /// The listening sshd's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The per-connection processes alive now (sessions, their shells).
    pub fn descendants(&self) -> Vec<u32> {
        descendants(self.child.id())
    }

    pub fn address(&self) -> String {
        format!("ssh://{}@127.0.0.1:{}", self.user, self.port)
    }

    /// An `[ssh]` section for a site file using this server's keys.
    pub fn ssh_section(&self) -> String {
        format!(
            "[ssh]\nidentity = {:?}\nknown_hosts = {:?}\nconnect_timeout_secs = 5\n",
            self.client_key.display().to_string(),
            self.known_hosts.display().to_string()
        )
    }

    /// A key line of another host key, to play a changed or foreign key.
    pub fn other_host_key(&self) -> String {
        let p = self.dir.join("other_host_ed25519");
        if !p.exists() {
            keygen(&p);
        }
        let text = std::fs::read_to_string(p.with_extension("pub")).expect("other key");
        text.split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Start sshd with `config` and wait (bounded) until `port` accepts
/// connections; `None` when it exits first or never listens.
fn launch(config: &Path, port: u16, dir: &Path) -> Option<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("sshd.log"))
        .expect("log");
    let mut child = Command::new(SSHD)
        .args(["-D", "-e", "-f"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start sshd");
    // Ready when the port accepts connections; gone when sshd exited.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(child);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn read_log(dir: &Path) -> String {
    let mut log = String::new();
    let _ = std::fs::File::open(dir.join("sshd.log")).and_then(|mut f| f.read_to_string(&mut log));
    log
}

/// `(state, parent pid)` of a process, from `/proc/PID/stat`.
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (command) state ppid ...`; the command may hold spaces and `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether a process still runs (a zombie has finished).
pub fn alive(pid: u32) -> bool {
    matches!(proc_stat(pid), Some((state, _)) if state != 'Z' && state != 'X')
}

/// Every process below `root` (children, their children...).
fn descendants(root: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
                if let Some((_, ppid)) = proc_stat(pid) {
                    parents.push((pid, ppid));
                }
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for (pid, _) in parents.iter().filter(|(_, ppid)| *ppid == p) {
            out.push(*pid);
            frontier.push(*pid);
        }
    }
    out
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
