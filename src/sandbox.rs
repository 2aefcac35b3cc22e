//! The sandbox of `uprun demo`: a site with a SQLite database at 1.0.0, three
//! local nodes running a 1.0.0 instance, and a 2.0.0 release. Everything is
//! written under one folder, which is marked so that only a sandbox is ever
//! recreated (deleted) by uprun.
//!
//! Its application is realistic about the schema: like the vendor's, a
//! version only starts against a database at its own version. The start
//! command asks this very `uprun` binary (the hidden `uprun sandbox-app
//! check-db`, by absolute path) to read the version from the SQLite file, so
//! the demo needs nothing but uprun on a fresh machine (no `sqlite3`, no
//! Python). Moving the binary breaks that command: lay the sandbox out again.

use std::path::{Path, PathBuf};

use crate::db::now_rfc3339;
use crate::nodes::instances::INSTANCE_CONFIG;
use crate::nodes::{InstanceRecord, InstanceState, Manifest};
use crate::{Error, Result};

/// Marker file that makes a folder a sandbox uprun may recreate.
pub const MARKER: &str = ".uprun-sandbox";
pub const APP_NAME: &str = "FastApp";
pub const NODES: &[(&str, &str)] = &[
    ("app01", "primary"),
    ("app02", "secondary"),
    ("app03", "secondary"),
];

pub const SITE_TOML: &str = r#"# uprun site file for the demo sandbox.
# Paths are relative to this file. Secrets are never written here: use
# "${env:NAME}" to read a value from the environment.

[application]
# The application name; the new instance reuses it so users keep their URL.
name = "FastApp"
# SDK customisations (workflows, custom web applications, service-bus
# integrations) are upgraded separately: "none" or "upgraded-separately".
customizations = "none"

[database]
kind = "sqlite"
path = "db/app.sqlite"
# Where backups are written (timestamped file names).
backup_dir = "backups"

[service]
# Command templates run in the instance folder; {app} {version} {folder} {node}
# are substituted as quoted shell words (do not put them inside quotes).
# The demo application refuses to start against a database at another
# version (uprun itself reads the version from the SQLite file).
start = "echo running {app} {version} on {node} > service.state"
stop = "rm -f service.state"
health = "grep -q running service.state"
timeout_secs = 30

[checks]
# Rows returned are problems: the stock procedure stops and lists them.
strategies = "SELECT name, kind, state FROM strategies WHERE state <> 'valid' ORDER BY name"

[[node]]
name = "app01"
role = "primary"
address = "local"
root = "nodes/app01"

[[node]]
name = "app02"
role = "secondary"
address = "local"
root = "nodes/app02"

[[node]]
name = "app03"
role = "secondary"
address = "local"
root = "nodes/app03"
"#;

pub const SCHEMA_1_0_0: &str = "
CREATE TABLE app_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO app_meta VALUES ('schema_version', '1.0.0'), ('product', 'FastApp Studio');
CREATE TABLE strategies (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('matching', 'address-verification')),
    state TEXT NOT NULL
);
INSERT INTO strategies VALUES
    ('customer-match', 'matching', 'valid'),
    ('supplier-match', 'matching', 'valid'),
    ('postal-address', 'address-verification', 'valid');
CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT);
INSERT INTO customers (name, city) VALUES
    ('Ada Lovelace', 'London'), ('Grace Hopper', 'Arlington'), ('Alan Turing', 'Wilmslow'),
    ('Edsger Dijkstra', 'Nuenen'), ('Barbara Liskov', 'Boston');
";

/// The same reference schema at 1.0.0 for SQL Server (schema `dbo`). The
/// real-server tests create a throwaway database from it; a site can use it to
/// try the stock procedure against its own server.
pub const MSSQL_SCHEMA_1_0_0: &str = "
CREATE TABLE dbo.app_meta (
    [key] nvarchar(100) NOT NULL CONSTRAINT PK_app_meta PRIMARY KEY,
    value nvarchar(400) NOT NULL
);
INSERT INTO dbo.app_meta ([key], value) VALUES (N'schema_version', N'1.0.0'), (N'product', N'FastApp Studio');
CREATE TABLE dbo.strategies (
    name nvarchar(100) NOT NULL CONSTRAINT PK_strategies PRIMARY KEY,
    kind nvarchar(40) NOT NULL CONSTRAINT CK_strategies_kind CHECK (kind IN (N'matching', N'address-verification')),
    state nvarchar(40) NOT NULL
);
INSERT INTO dbo.strategies (name, kind, state) VALUES
    (N'customer-match', N'matching', N'valid'),
    (N'supplier-match', N'matching', N'valid'),
    (N'postal-address', N'address-verification', N'valid');
CREATE TABLE dbo.customers (
    id int IDENTITY(1,1) NOT NULL CONSTRAINT PK_customers PRIMARY KEY,
    name nvarchar(200) NOT NULL,
    city nvarchar(100) NULL
);
INSERT INTO dbo.customers (name, city) VALUES
    (N'Ada Lovelace', N'London'), (N'Grace Hopper', N'Arlington'), (N'Alan Turing', N'Wilmslow'),
    (N'Edsger Dijkstra', N'Nuenen'), (N'Barbara Liskov', N'Boston');
";

pub const RELEASE_TOML: &str = r#"# The release being installed.
version = "2.0.0"
# The oldest database version this release can upgrade.
min_upgrade_from = "1.0.0"
# Files that make up an instance, and migrations per database kind
# (migrations/<kind>/<version>_<description>.sql).
payload = "payload"
migrations = "migrations"
"#;

pub const SQLITE_MIGRATIONS: &[(&str, &str)] = &[
    (
        "2.0.0_01_strategy_priority.sql",
        "ALTER TABLE strategies ADD COLUMN priority INTEGER NOT NULL DEFAULT 100;\nUPDATE strategies SET priority = 10 WHERE kind = 'matching';\n",
    ),
    (
        "2.0.0_02_customer_email.sql",
        "ALTER TABLE customers ADD COLUMN email TEXT;\nUPDATE customers SET email = lower(replace(name, ' ', '.')) || '@example.com';\n",
    ),
    (
        "2.0.0_03_audit_log.sql",
        "CREATE TABLE audit_log (id INTEGER PRIMARY KEY, at TEXT NOT NULL, action TEXT NOT NULL);\nINSERT INTO audit_log (at, action) VALUES (datetime('now'), 'upgraded to 2.0.0');\n",
    ),
];

/// The SQL Server equivalents of `SQLITE_MIGRATIONS`. A column added by
/// `ALTER TABLE` cannot be used in the batch that adds it, hence the `GO`s.
pub const MSSQL_MIGRATIONS: &[(&str, &str)] = &[
    (
        "2.0.0_01_strategy_priority.sql",
        "ALTER TABLE dbo.strategies ADD priority int NOT NULL CONSTRAINT DF_strategies_priority DEFAULT 100;\nGO\nUPDATE dbo.strategies SET priority = 10 WHERE kind = N'matching';\n",
    ),
    (
        "2.0.0_02_customer_email.sql",
        "ALTER TABLE dbo.customers ADD email nvarchar(320) NULL;\nGO\nUPDATE dbo.customers SET email = LOWER(REPLACE(name, N' ', N'.')) + N'@example.com';\n",
    ),
    (
        "2.0.0_03_audit_log.sql",
        "CREATE TABLE dbo.audit_log (\n    id int IDENTITY(1,1) NOT NULL CONSTRAINT PK_audit_log PRIMARY KEY,\n    at datetime2(0) NOT NULL,\n    action nvarchar(200) NOT NULL\n);\nGO\nINSERT INTO dbo.audit_log (at, action) VALUES (SYSUTCDATETIME(), N'upgraded to 2.0.0');\n",
    ),
];

fn payload(version: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "bin/fastapp.txt",
            format!("FastApp Studio server {version}\n"),
        ),
        (
            "web/index.html",
            format!("<html><body>FastApp Studio {version}</body></html>\n"),
        ),
        (
            "subscribers/README.txt",
            format!("Subscriber DLLs of version {version} live here.\n"),
        ),
    ]
}

/// The start command of `SITE_TOML` (the plain one, for reading).
const PLAIN_START: &str = "start = \"echo running {app} {version} on {node} > service.state\"";

/// The sandbox's database as its instances' start command reaches it: from
/// the instance folder (`nodes/<node>/<folder>`, the working folder of service
/// commands), so that `uprun test`'s copies of the site check their own copy.
const DB_FROM_INSTANCE: &str = "../../../db/app.sqlite";

/// The sandbox's site file: `SITE_TOML` whose start command first checks,
/// with this uprun binary, that the sandbox's database is at the instance's
/// version (as the vendor's application does), then starts.
fn site_toml() -> Result<String> {
    let exe =
        std::env::current_exe().map_err(|e| Error::io("find the uprun binary", "uprun", e))?;
    let exe = crate::nodes::instances::quote_for_shell(
        crate::config::Shell::Posix,
        &exe.display().to_string(),
    )
    .map_err(|why| {
        Error::Config(format!(
            "the path of this uprun binary `{}` cannot be used in a start command: {why}",
            exe.display()
        ))
    })?;
    let command = format!(
        "{exe} sandbox-app check-db --database {DB_FROM_INSTANCE} --version {{version}} && echo running {{app}} {{version}} on {{node}} > service.state"
    );
    let line = format!("start = {}", toml::Value::String(command));
    Ok(SITE_TOML.replace(PLAIN_START, &line))
}

/// `uprun sandbox-app check-db`: succeed only when the sandbox database at
/// `database` records `version` (the demo application's start check).
pub fn check_db(database: &Path, version: &str) -> Result<i32> {
    use crate::db::Database;
    let mut db = crate::db::SqliteDatabase::open_path("app", database, true)?;
    let at = db.version()?;
    if at.to_string() != version {
        return Err(Error::db(
            "app",
            format!(
                "{APP_NAME} {version} cannot start: the database `{}` is at {at}, and {APP_NAME} only runs on a database at its own version (upgrade the database first)",
                std::path::absolute(database)
                    .unwrap_or_else(|_| database.to_path_buf())
                    .display()
            ),
        ));
    }
    Ok(0)
}

/// Paths of a laid-out sandbox.
pub struct Sandbox {
    pub dir: PathBuf,
    pub site: PathBuf,
    pub release: PathBuf,
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io("create folder", parent, e))?;
    }
    std::fs::write(path, text).map_err(|e| Error::io("write", path, e))
}

/// Lay out a sandbox in `dir`. An existing sandbox is refused unless `recreate`;
/// a non-empty folder that is not a sandbox is always refused.
pub fn lay_out(dir: &Path, recreate: bool) -> Result<Sandbox> {
    if dir.exists() {
        let is_sandbox = dir.join(MARKER).exists();
        let empty = std::fs::read_dir(dir)
            .map_err(|e| Error::io("list", dir, e))?
            .next()
            .is_none();
        if is_sandbox && recreate {
            std::fs::remove_dir_all(dir).map_err(|e| Error::io("remove old sandbox", dir, e))?;
        } else if is_sandbox {
            return Err(Error::Config(format!(
                "a sandbox already exists in `{}`; run `uprun demo --dir {} --recreate` to lay it out anew, or `uprun status --site {}` to look at it",
                dir.display(),
                dir.display(),
                dir.join("site.toml").display()
            )));
        } else if !empty {
            return Err(Error::Config(format!(
                "`{}` exists, is not empty and is not a uprun sandbox; choose another folder with --dir",
                dir.display()
            )));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create sandbox folder", dir, e))?;
    write(
        &dir.join(MARKER),
        "This folder is a uprun demo sandbox; `uprun demo --recreate` may delete it.\n",
    )?;
    let site = dir.join("site.toml");
    let db = dir.join("db/app.sqlite");
    write(&site, &site_toml()?)?;

    std::fs::create_dir_all(dir.join("db"))
        .map_err(|e| Error::io("create folder", dir.join("db"), e))?;
    let conn = rusqlite::Connection::open(&db).map_err(|e| Error::db("app", e.to_string()))?;
    conn.execute_batch(SCHEMA_1_0_0)
        .map_err(|e| Error::db("app", e.to_string()))?;
    drop(conn);

    for (name, role) in NODES {
        let root = dir.join("nodes").join(name);
        let folder = format!("{APP_NAME}-1.0.0");
        for (rel, text) in payload("1.0.0") {
            write(&root.join(&folder).join(rel), &text)?;
        }
        write(
            &root.join(&folder).join(INSTANCE_CONFIG),
            &format!("app_name = \"{APP_NAME}\"\nversion = \"1.0.0\"\nnode = \"{name}\"\nrole = \"{role}\"\ndatabase_kind = \"sqlite\"\ndatabase = \"app\"\n"),
        )?;
        write(
            &root.join(&folder).join("service.state"),
            &format!("running {APP_NAME} 1.0.0 on {name}\n"),
        )?;
        let rec = InstanceRecord {
            node: name.to_string(),
            app_name: APP_NAME.into(),
            version: "1.0.0".into(),
            folder: folder.clone(),
            created: now_rfc3339(),
            removed: None,
            state: Some(InstanceState::Healthy),
        };
        let manifest = Manifest {
            current: Some(rec),
            removed: Vec::new(),
            used_folders: vec![folder],
            pending: None,
        };
        let json =
            serde_json::to_string_pretty(&manifest).map_err(|e| Error::Config(e.to_string()))?;
        write(&root.join(crate::nodes::instances::MANIFEST), &json)?;
    }

    let release = dir.join("release");
    write(&release.join("release.toml"), RELEASE_TOML)?;
    for (rel, text) in payload("2.0.0") {
        write(&release.join("payload").join(rel), &text)?;
    }
    for (name, sql) in SQLITE_MIGRATIONS {
        write(&release.join("migrations/sqlite").join(name), sql)?;
    }
    for (name, sql) in MSSQL_MIGRATIONS {
        write(&release.join("migrations/mssql").join(name), sql)?;
    }
    Ok(Sandbox {
        dir: dir.to_path_buf(),
        site,
        release,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::batches::split;

    #[test]
    fn the_start_command_checks_the_database_version() {
        let text = site_toml().expect("site");
        let site: toml::Table = toml::from_str(&text).expect("toml");
        let start = site["service"]["start"].as_str().expect("start");
        assert!(
            start.contains("sandbox-app check-db --database ../../../db/app.sqlite --version {version} && echo running"),
            "{start}"
        );
    }

    #[test]
    fn mssql_scripts_split_into_the_expected_batches() {
        let schema = split(MSSQL_SCHEMA_1_0_0, "schema").expect("schema");
        assert_eq!(schema.batches.len(), 1);
        assert_eq!(MSSQL_MIGRATIONS.len(), SQLITE_MIGRATIONS.len());
        for ((name, sql), (sqlite_name, _)) in MSSQL_MIGRATIONS.iter().zip(SQLITE_MIGRATIONS) {
            assert_eq!(name, sqlite_name, "same migration names for both kinds");
            let s = split(sql, name).expect("migration splits");
            assert!(s.transactional);
            assert_eq!(s.batches.len(), 2, "{name}");
        }
    }
}
