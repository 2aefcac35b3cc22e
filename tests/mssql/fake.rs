//! The fake SQL Server's state: its history, backups, sessions and the
//! knobs a test turns (`Fake`), shared with the responder through `Mock`;
//! and the certificates of the TLS tests (`TestCert`).

use super::*;

#[derive(Debug, Clone, PartialEq)]
pub(super) struct HistoryRow {
    pub(super) name: String,
    pub(super) version: String,
    pub(super) checksum: String,
    pub(super) duration_ms: i64,
    pub(super) applied_by: String,
}

#[derive(Clone, Copy, PartialEq)]
pub(super) enum BackupMode {
    Ok,
    /// Hold the BACKUP until the progress monitor has read every queued value.
    WaitForProgress,
    /// Fail as SQL Server does when the folder does not exist.
    Error3201,
    /// Never answer (for at most 30 s).
    Silent,
    /// Stream "N percent processed." and run until cancelled (an attention),
    /// then report error 3204 as SQL Server does for an aborted backup.
    Long,
}

/// The backup set `RESTORE HEADERONLY` reports for a backup taken by the fake.
pub(super) const SET_GUID: &str = "6F9619FF-8B86-D011-B42D-00C04FC964FF";
pub(super) const FIRST_LSN: i128 = 37_000_000_012_300_001;
pub(super) const LAST_LSN: i128 = 37_000_000_012_600_001;

/// What happens to the backup file on the "server" after some HEADERONLY reads.
#[derive(Clone, PartialEq)]
pub(super) enum Tamper {
    /// The file now holds another backup set (this GUID).
    OtherSet(String),
    /// The file is gone (error 3201 on HEADERONLY).
    Missing,
    /// The header reads, but VERIFYONLY finds the media damaged.
    Damaged,
}

/// A write a session made inside its transaction, kept apart until it commits.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Write {
    History(HistoryRow),
    Version(String),
    /// A migration statement (its text).
    Change(String),
}

/// The fake database behind the responder. Writes made inside a transaction
/// stay in `pending` (by connection) until the session's outermost COMMIT;
/// a ROLLBACK, an error under XACT_ABORT, or the end of the connection drops
/// them (see `support::tds::Session`).
pub(super) struct Fake {
    pub(super) version: String,
    pub(super) history: Vec<HistoryRow>,
    /// Migration statements that are durable, in order.
    pub(super) changes: Vec<String>,
    /// History rows written while the session was in another database.
    pub(super) elsewhere: Vec<(String, HistoryRow)>,
    /// Written in an open transaction, per connection.
    pub(super) pending: Vec<(usize, Write)>,
    pub(super) lock_result: i64,
    pub(super) engine_edition: i64,
    pub(super) edition: String,
    pub(super) backup: BackupMode,
    pub(super) progress: VecDeque<i64>,
    /// Drop the connection on a batch containing this text.
    pub(super) drop_on: Option<String>,
    pub(super) reject_login: bool,
    /// Full backups known to "msdb": file, finished.
    pub(super) backups: Vec<(String, String)>,
    /// RESTORE HEADERONLY requests answered so far.
    pub(super) headers_read: usize,
    /// After this many HEADERONLY reads, the backup file is tampered with.
    pub(super) tamper: Option<(usize, Tamper)>,
    /// The login may not read msdb (error 229).
    pub(super) msdb_denied: bool,
    /// Told the connection number when a request that runs until cancelled
    /// (`WAITFOR`, a `BackupMode::Long` BACKUP) arrives.
    pub(super) hung: Option<std::sync::mpsc::Sender<usize>>,
    /// The connection running a `BackupMode::Long` BACKUP.
    pub(super) backing_up: Option<usize>,
    /// RESTORE VERIFYONLY requests answered so far, and which one (1: the
    /// verification after the backup, 2: the proof before the upgrade) runs
    /// until cancelled.
    pub(super) verifies: usize,
    pub(super) hang_verify: Option<usize>,
    /// Data and log bytes in use (None: VIEW DATABASE STATE denied).
    pub(super) space_used: Option<(i64, i64)>,
    /// `sys.dm_os_volume_stats` of the database files: mount point, free
    /// bytes (None: VIEW SERVER STATE denied).
    pub(super) volumes: Option<Vec<(String, i64)>>,
    /// DATABASEPROPERTYEX(..., 'Updateability').
    pub(super) updateability: String,
    /// Other sessions in the database: id, login, host, program.
    pub(super) other_sessions: Vec<(i64, String, String, String)>,
}

impl Default for Fake {
    fn default() -> Self {
        Fake {
            version: "1.0.0".into(),
            history: Vec::new(),
            changes: Vec::new(),
            elsewhere: Vec::new(),
            pending: Vec::new(),
            lock_result: 0,
            engine_edition: 3,
            edition: "Developer Edition (64-bit)".into(),
            backup: BackupMode::Ok,
            progress: VecDeque::new(),
            drop_on: None,
            reject_login: false,
            backups: Vec::new(),
            headers_read: 0,
            tamper: None,
            msdb_denied: false,
            hung: None,
            backing_up: None,
            verifies: 0,
            hang_verify: None,
            space_used: Some((5 << 20, 1 << 20)),
            volumes: Some(vec![("/var/opt/mssql/".into(), 50 << 30)]),
            updateability: "READ_WRITE".into(),
            other_sessions: Vec::new(),
        }
    }
}

impl Fake {
    /// How the backup file is tampered with now, if it is.
    pub(super) fn tampered(&self) -> Option<&Tamper> {
        match &self.tamper {
            Some((after, t)) if self.headers_read > *after => Some(t),
            _ => None,
        }
    }
}

impl Fake {
    /// A write by connection `conn`: kept apart while it has a transaction open.
    pub(super) fn write(&mut self, conn: usize, in_transaction: bool, w: Write) {
        if in_transaction {
            self.pending.push((conn, w));
        } else {
            self.apply(w);
        }
    }

    pub(super) fn apply(&mut self, w: Write) {
        match w {
            Write::History(r) => self.history.push(r),
            Write::Version(v) => self.version = v,
            Write::Change(c) => self.changes.push(c),
        }
    }

    /// What a session's transaction control did to the data.
    pub(super) fn settle(&mut self, conn: usize, c: &Control) {
        let (mine, others): (Vec<_>, Vec<_>) =
            self.pending.drain(..).partition(|(c, _)| *c == conn);
        self.pending = others;
        match c {
            Control::Committed => mine.into_iter().for_each(|(_, w)| self.apply(w)),
            Control::RolledBack => {}
            _ => self.pending.extend(mine),
        }
    }

    /// The version as connection `conn` sees it (its own uncommitted write first).
    pub(super) fn version_seen_by(&self, conn: usize) -> String {
        self.pending
            .iter()
            .rev()
            .find_map(|(c, w)| match w {
                Write::Version(v) if *c == conn => Some(v.clone()),
                _ => None,
            })
            .unwrap_or_else(|| self.version.clone())
    }
}

pub(super) struct Mock {
    pub(super) server: TdsServer,
    pub(super) fake: Arc<Mutex<Fake>>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Mock {
    pub(super) fn start(fake: Fake) -> Mock {
        Mock::spawn(fake, None)
    }

    /// A responder that is the named instance `name`.
    pub(super) fn start_instance(fake: Fake, name: &str) -> Mock {
        Mock::spawn(fake, Some(name))
    }

    /// A responder with a certificate (TLS as SQL Server does it).
    pub(super) fn start_tls(fake: Fake, cert: &TestCert) -> Mock {
        Mock::spawn_with(fake, None, Some(cert.server_config()))
    }

    pub(super) fn spawn(fake: Fake, name: Option<&str>) -> Mock {
        Mock::spawn_with(fake, name, None)
    }

    pub(super) fn spawn_with(
        fake: Fake,
        name: Option<&str>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Mock {
        let fake = Arc::new(Mutex::new(fake));
        // Set once the progress monitor has asked after the last queued value.
        let progress_read = Arc::new((Mutex::new(false), Condvar::new()));
        let (f, p) = (fake.clone(), progress_read.clone());
        let handler = Arc::new(move |ctx: &Ctx, req: &Request| answer(&f, &p, ctx, req));
        let server = match (name, tls) {
            (Some(name), _) => TdsServer::start_instance(handler, name),
            (None, Some(tls)) => TdsServer::start_tls(handler, tls),
            (None, None) => TdsServer::start(handler),
        };
        Mock { server, fake }
    }

    pub(super) fn fake(&self) -> std::sync::MutexGuard<'_, Fake> {
        lock(&self.fake)
    }

    /// A connection string for the responder (no TLS: this one has no
    /// certificate; see `start_tls`).
    pub(super) fn connection(&self, password: &str) -> String {
        connection_to(&format!("127.0.0.1,{}", self.server.port()), password)
    }

    /// Lay out the demo sandbox and point its site at the responder. The
    /// password comes from the environment, as on a real site.
    pub(super) fn sandbox(&self) -> Sandbox {
        self.sandbox_with("")
    }

    /// `sandbox`, with more `[database]` keys.
    pub(super) fn sandbox_with(&self, extra: &str) -> Sandbox {
        sandbox_at(&self.connection("${env:UPRUN_TEST_MSSQL_PASSWORD}"), extra)
    }

    pub(super) fn sql(&self) -> Vec<String> {
        self.server.sql()
    }
}

/// A server certificate made for a test, with the CA that signed it (None:
/// self-signed).
pub(super) struct TestCert {
    pub(super) chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    pub(super) key: Vec<u8>,
    /// PEM of what a client is to trust: the CA, or the certificate itself.
    pub(super) trust_pem: String,
}

impl TestCert {
    /// Like SQL Server's self-generated certificate: a name in the subject CN
    /// only, no subjectAltName, self-signed.
    pub(super) fn self_signed_cn_only(cn: &str) -> TestCert {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params.self_signed(&key).expect("self-signed");
        TestCert {
            trust_pem: cert.pem(),
            chain: vec![cert.der().clone()],
            key: key.serialize_der(),
        }
    }

    /// Signed by a test CA, for the DNS name `san`.
    pub(super) fn ca_signed(san: &str) -> TestCert {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name = rcgen::DistinguishedName::new();
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "uprun test CA");
        let ca_cert = ca.self_signed(&ca_key).expect("CA");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut leaf = rcgen::CertificateParams::new(vec![san.to_string()]).expect("params");
        leaf.distinguished_name = rcgen::DistinguishedName::new();
        leaf.distinguished_name.push(rcgen::DnType::CommonName, san);
        let cert = leaf.signed_by(&key, &ca_cert, &ca_key).expect("signed");
        TestCert {
            trust_pem: ca_cert.pem(),
            chain: vec![cert.der().clone()],
            key: key.serialize_der(),
        }
    }

    pub(super) fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(self.key.clone().into());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), key)
            .expect("server config");
        // No tickets: nothing but the handshake before the login.
        config.send_tls13_tickets = 0;
        Arc::new(config)
    }

    /// Write what the client is to trust to `dir/name`; its path.
    pub(super) fn write_trust(&self, dir: &Path, name: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, &self.trust_pem).expect("write CA file");
        path
    }
}
