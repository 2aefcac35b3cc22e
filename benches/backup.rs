//! Backup throughput and memory, against `cp` of the same file on the same disk,
//! measured in the same run.
//!
//!     cargo bench --bench backup                    # 1 GiB database
//!     UPRUN_BENCH_BACKUP_MIB=256 cargo bench --bench backup
//!
//! Prints the MiB/s of `cp`, of `cp` followed by `sync FILE` (uprun's backup is
//! durable: it fsyncs), and of uprun's backup copy; the ratios; the time of the
//! verification (integrity check of the copy); the time of the proof that
//! `upgrade_db` runs right before its first migration (re-hash of the backup,
//! SHA-256), against `sha256sum` and `openssl dgst -sha256` of the same file
//! (the backup's own hash is taken during the verification, on a second
//! thread, so it is inside the verification time); and the peak RSS of a whole
//! `uprun run` of a backup-only procedure (plan pass, backup, verification).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use uprun::db::{Database, SqliteDatabase};

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn make_db(path: &Path, mib_target: u64) {
    let conn = rusqlite::Connection::open(path).expect("create bench db");
    conn.execute_batch(
        "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;
         CREATE TABLE app_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
         INSERT INTO app_meta VALUES ('schema_version', '1.0.0');
         CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB NOT NULL);",
    )
    .expect("schema");
    let rows = mib_target * 1024; // ~1 KiB per row
    let tx = conn.unchecked_transaction().expect("tx");
    {
        let mut stmt = tx
            .prepare("INSERT INTO blobs (data) VALUES (randomblob(1000))")
            .expect("prepare");
        for _ in 0..rows {
            stmt.execute([]).expect("insert");
        }
    }
    tx.commit().expect("commit");
}

fn time_cmd(args: &[&str]) -> f64 {
    let t = Instant::now();
    let st = Command::new(args[0])
        .args(&args[1..])
        .status()
        .expect("command");
    assert!(st.success(), "{args:?} failed");
    t.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("not NaN"));
    v[v.len() / 2]
}

fn main() {
    let size_mib: u64 = std::env::var("UPRUN_BENCH_BACKUP_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    // On the same disk as the build (not a tmpfs /tmp).
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-backup");
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).expect("bench dir");
    let db = base.join("app.sqlite");
    eprintln!(
        "creating a {size_mib} MiB SQLite database in {} ...",
        base.display()
    );
    make_db(&db, size_mib);
    let bytes = std::fs::metadata(&db).expect("stat").len();
    let (src, out_dir) = (db.to_str().expect("utf-8 path"), base.join("backups"));
    let copy = base.join("copy.sqlite");
    let copy_s = copy.to_str().expect("utf-8 path");

    // Every measurement starts with no dirty pages waiting to be written back.
    let settle = || {
        let _ = Command::new("sync").status();
    };
    let runs = 5;
    let (mut cp, mut cp_sync, mut up, mut verify) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut prove, mut sha256sum, mut openssl) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let _ = std::fs::remove_file(&copy);
        settle();
        cp.push(time_cmd(&["cp", src, copy_s]));
        let _ = std::fs::remove_file(&copy);
        settle();
        cp_sync.push(time_cmd(&[
            "sh",
            "-c",
            &format!("cp '{src}' '{copy_s}' && sync '{copy_s}'"),
        ]));
        let _ = std::fs::remove_file(&copy);

        let _ = std::fs::remove_dir_all(&out_dir);
        settle();
        let mut d = SqliteDatabase::open_path("app", &db, false).expect("open");
        let t = Instant::now();
        let mut receipt = d.backup(&out_dir, &mut |_, _| {}).expect("backup");
        up.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        d.verify_backup(&mut receipt).expect("verify");
        verify.push(t.elapsed().as_secs_f64());
        // The proof before the upgrade, and the same hash by coreutils. The
        // backup was just written and read back: both read it from the page
        // cache, as the proof does when the upgrade follows the backup.
        let t = Instant::now();
        d.prove_backup(&receipt).expect("prove");
        prove.push(t.elapsed().as_secs_f64());
        sha256sum.push(time_cmd(&[
            "sh",
            "-c",
            &format!("sha256sum '{}' > /dev/null", receipt.file),
        ]));
        openssl.push(time_cmd(&[
            "sh",
            "-c",
            &format!("openssl dgst -sha256 '{}' > /dev/null", receipt.file),
        ]));
    }
    let (cp, cp_sync, up, verify) = (median(cp), median(cp_sync), median(up), median(verify));
    let (prove, sha256sum, openssl) = (median(prove), median(sha256sum), median(openssl));
    let rate = |s: f64| mib(bytes) / s;

    // Peak memory of a whole `uprun run` of a backup-only procedure.
    let site_dir = base.join("site");
    std::fs::create_dir_all(site_dir.join("node")).expect("site dir");
    std::fs::create_dir_all(site_dir.join("release/payload")).expect("release dir");
    std::fs::write(
        site_dir.join("site.toml"),
        format!(
            "[application]\nname = \"Bench\"\ncustomizations = \"none\"\n[database]\nkind = \"sqlite\"\npath = \"{src}\"\nbackup_dir = \"{}\"\n[[node]]\nname = \"n1\"\nrole = \"primary\"\nroot = \"node\"\n",
            out_dir.display()
        ),
    )
    .expect("site");
    std::fs::write(
        site_dir.join("release/release.toml"),
        "version = \"1.0.0\"\nmin_upgrade_from = \"1.0.0\"\n",
    )
    .expect("release");
    std::fs::write(
        site_dir.join("backup.rhai"),
        "let b = backup_db(#{ verify: true });\n",
    )
    .expect("script");
    let t = Instant::now();
    let st = Command::new(env!("CARGO_BIN_EXE_uprun"))
        .arg("run")
        .arg(site_dir.join("backup.rhai"))
        .arg("--site")
        .arg(site_dir.join("site.toml"))
        .arg("--release")
        .arg(site_dir.join("release"))
        .arg("--yes")
        .stdout(std::process::Stdio::null())
        .status()
        .expect("uprun");
    let whole = t.elapsed().as_secs_f64();
    assert!(st.success(), "uprun run failed");
    let peak_kib = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
        ru.ru_maxrss
    };

    println!(
        "backup of a {:.0} MiB SQLite database (median of {runs}):",
        mib(bytes)
    );
    println!(
        "  cp                 {:>7.3} s  {:>7.1} MiB/s",
        cp,
        rate(cp)
    );
    println!(
        "  cp + sync FILE     {:>7.3} s  {:>7.1} MiB/s",
        cp_sync,
        rate(cp_sync)
    );
    println!(
        "  uprun backup copy  {:>7.3} s  {:>7.1} MiB/s (durable: fsync)",
        up,
        rate(up)
    );
    println!("  ratio uprun / cp          {:.2}x", cp / up);
    println!("  ratio uprun / (cp + sync) {:.2}x", cp_sync / up);
    println!(
        "  verification (integrity_check of the copy + SHA-256 beside it) {:.3} s",
        verify
    );
    println!(
        "  proof before the upgrade (re-hash, SHA-256) {:.3} s  {:>7.1} MiB/s",
        prove,
        rate(prove)
    );
    println!(
        "  sha256sum of the backup                     {:.3} s  {:>7.1} MiB/s",
        sha256sum,
        rate(sha256sum)
    );
    println!(
        "  openssl dgst -sha256 of the backup          {:.3} s  {:>7.1} MiB/s",
        openssl,
        rate(openssl)
    );
    println!(
        "  ratio proof / sha256sum {:.2}x; proof / openssl {:.2}x; proof / backup copy {:.2}x",
        prove / sha256sum,
        prove / openssl,
        prove / up
    );
    println!(
        "  whole `uprun run` of backup_db(#{{ verify: true }}): {whole:.3} s, peak RSS {:.1} MiB",
        peak_kib as f64 / 1024.0
    );
    let _ = std::fs::remove_dir_all(&base);
}
