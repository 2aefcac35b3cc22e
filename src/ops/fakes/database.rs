//! The fake database: its state, and a `Database` over it that records every
//! call.

use super::*;

/// What the fake database holds, and every call made to it.
#[derive(Debug)]
pub struct DbState {
    pub version: Version,
    /// Rows returned by read-only queries whose SQL contains the key.
    pub rows: Vec<(String, Vec<Row>)>,
    pub history: Vec<AppliedMigration>,
    /// Every call, in order: `version`, `query <sql>`, `backup <dir>`,
    /// `verify <file>`, `history`, `apply <name>`, `set_version <v>`, `check <name>`.
    pub calls: Vec<String>,
    /// `check_migration` fails for migrations with this name.
    pub bad_migration: Option<String>,
    /// `apply` fails (and leaves nothing) for migrations with this name.
    pub failing_migration: Option<String>,
}

impl DbState {
    /// The calls that changed the database (`apply`, `set_version`).
    pub fn changes(&self) -> Vec<String> {
        self.calls
            .iter()
            .filter(|c| c.starts_with("apply ") || c.starts_with("set_version "))
            .cloned()
            .collect()
    }

    /// The calls that took a backup.
    pub fn backups(&self) -> usize {
        self.calls
            .iter()
            .filter(|c| c.starts_with("backup "))
            .count()
    }
}

/// An in-memory `Database` over a shared `DbState`.
pub struct FakeDb {
    name: String,
    pub state: Arc<Mutex<DbState>>,
}

impl FakeDb {
    pub fn new(name: &str, version: &str) -> FakeDb {
        FakeDb {
            name: name.to_string(),
            state: Arc::new(Mutex::new(DbState {
                version: Version::parse(version).unwrap_or(Version::new(0, 0, 0)),
                rows: Vec::new(),
                history: Vec::new(),
                calls: Vec::new(),
                bad_migration: None,
                failing_migration: None,
            })),
        }
    }

    /// Another handle on the same database (for a second `Ops`).
    pub fn handle(&self) -> FakeDb {
        FakeDb {
            name: self.name.clone(),
            state: self.state.clone(),
        }
    }

    pub(super) fn call(&self, what: String) -> MutexGuard<'_, DbState> {
        let mut st = lock(&self.state);
        st.calls.push(what);
        st
    }
}

impl Database for FakeDb {
    fn name(&self) -> &str {
        &self.name
    }

    fn version(&mut self) -> Result<Version> {
        let st = self.call("version".into());
        Ok(st.version.clone())
    }

    fn query_readonly(&mut self, sql: &str) -> Result<Vec<Row>> {
        let st = self.call(format!("query {sql}"));
        let first = sql.trim_start().to_ascii_uppercase();
        if !(first.starts_with("SELECT") || first.starts_with("WITH")) || sql.contains(';') {
            return Err(Error::db(
                &self.name,
                format!(
                    "check query `{sql}` would change the database; check queries must only read"
                ),
            ));
        }
        Ok(st
            .rows
            .iter()
            .find(|(k, _)| sql.contains(k.as_str()))
            .map(|(_, r)| r.clone())
            .unwrap_or_default())
    }

    fn backup(&mut self, dir: &Path, progress: Progress<'_>) -> Result<BackupReceipt> {
        let version = self
            .call(format!("backup {}", dir.display()))
            .version
            .clone();
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create backup folder", dir, e))?;
        let n = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        let file = dir.join(format!("{}-{version}-{n}.bak", self.name));
        let bytes = format!("fake backup of {} at {version}\n", self.name);
        std::fs::write(&file, &bytes).map_err(|e| Error::io("write backup", &file, e))?;
        progress(1, 1);
        // Built from JSON so that fields added later (with defaults) need no
        // change here.
        serde_json::from_value(serde_json::json!({
            "database": self.name,
            "file": file.to_string_lossy(),
            "size": bytes.len(),
            "version": version.to_string(),
            "started": "2026-01-01T00:00:00Z",
            "finished": "2026-01-01T00:00:01Z",
            "verified": false,
            "verification": "",
        }))
        .map_err(|e| Error::db(&self.name, format!("fake receipt: {e}")))
    }

    fn verify_backup(&mut self, receipt: &mut BackupReceipt) -> Result<()> {
        drop(self.call(format!("verify {}", receipt.file)));
        if !Path::new(&receipt.file).is_file() {
            return Err(Error::db(
                &self.name,
                format!("backup `{}` is missing", receipt.file),
            ));
        }
        receipt.verified = true;
        receipt.verification = "fake: read back".into();
        receipt.sha256 = file_sha256(&receipt.file).unwrap_or_default();
        Ok(())
    }

    fn prove_backup(&mut self, receipt: &BackupReceipt) -> Result<()> {
        drop(self.call(format!("prove {}", receipt.file)));
        match file_sha256(&receipt.file) {
            Some(h) if !receipt.sha256.is_empty() && h == receipt.sha256 => Ok(()),
            _ => Err(Error::Refused(format!(
                "database `{}`: the backup `{}` is missing or changed since it was taken; the database was not touched",
                self.name, receipt.file
            ))),
        }
    }

    fn history(&mut self) -> Result<Vec<AppliedMigration>> {
        Ok(self.call("history".into()).history.clone())
    }

    fn apply(&mut self, m: &Migration, applied_by: &str) -> Result<()> {
        let mut st = self.call(format!("apply {}", m.name));
        if st.failing_migration.as_deref() == Some(m.name.as_str()) {
            return Err(Error::db(
                &self.name,
                format!("migration `{}` failed and was rolled back", m.name),
            ));
        }
        st.history.push(AppliedMigration {
            name: m.name.clone(),
            version: m.version.to_string(),
            checksum: m.checksum.clone(),
            applied_at: "2026-01-01T00:00:02Z".into(),
            duration_ms: 1,
            applied_by: applied_by.to_string(),
        });
        Ok(())
    }

    fn set_version(&mut self, version: &Version) -> Result<()> {
        self.call(format!("set_version {version}")).version = version.clone();
        Ok(())
    }

    fn check_migration(&self, m: &Migration) -> Result<()> {
        let mut st = lock(&self.state);
        st.calls.push(format!("check {}", m.name));
        if st.bad_migration.as_deref() == Some(m.name.as_str()) {
            return Err(Error::Config(format!(
                "migration `{}` does not parse; fix the release (nothing was applied)",
                m.path.display()
            )));
        }
        Ok(())
    }
}
