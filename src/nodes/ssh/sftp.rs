//! Files over SFTP: reads, atomic writes, folders, removal, identity
//! (the server's realpath), and the payload upload (several files and
//! several requests per file in flight).

use std::sync::atomic::Ordering;

use futures_util::stream::{self, StreamExt, TryStreamExt};
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{FileAttributes, OpenFlags, Packet, StatusCode};

use super::is_status;
use super::pool::Op;
use super::SshTransport;
use crate::nodes::{DirState, PathIdentity, PayloadEntry};
use crate::{Error, Result};

/// Largest SFTP read or write request (OpenSSH accepts 256 KiB; 32 KiB is
/// what every server accepts).
pub(super) const CHUNK: usize = 32 * 1024;
/// SFTP write requests in flight for one file.
pub(super) const IN_FLIGHT: usize = 16;
/// Payload files copied at once.
pub(super) const FILES_IN_FLIGHT: usize = 8;

/// SSH wire string: length then bytes.
pub(super) fn ssh_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

pub(super) fn perms(mode: u32) -> FileAttributes {
    FileAttributes {
        permissions: Some(mode & 0o7777),
        ..FileAttributes::empty()
    }
}

/// An SFTP error that means the session (or the whole connection) is gone,
/// as russh-sftp =3.0.1 words it: no request can be sent, or the session
/// ended with requests pending.
pub(super) fn sftp_session_lost(e: &SftpError) -> bool {
    matches!(e, SftpError::UnexpectedBehavior(m)
        if m == "session closed" || m == "sender dropped" || m.starts_with("SendError"))
}

impl SshTransport {
    pub(super) fn sftp_err(&self, op: &Op, what: &str, path: &str, e: SftpError) -> Error {
        if sftp_session_lost(&e) {
            op.conn.sftp_lost.store(true, Ordering::SeqCst);
        }
        match e {
            SftpError::Timeout => self.err(format!(
                "{what} `{path}`: no answer within {} s (`[ssh] command_timeout_secs`)",
                self.file_timeout.as_secs()
            )),
            e => self.err(format!("{what} `{path}`: {e}")),
        }
    }

    /// Write `data` at the start of an open file, several requests in flight.
    pub(super) async fn write_all(
        &self,
        op: &Op,
        handle: &str,
        data: &[u8],
    ) -> std::result::Result<(), SftpError> {
        let sftp = op.sftp();
        stream::iter(
            data.chunks(CHUNK).enumerate().map(|(i, chunk)| {
                sftp.write(handle.to_string(), (i * CHUNK) as u64, chunk.to_vec())
            }),
        )
        .buffer_unordered(IN_FLIGHT)
        .try_for_each(|_| async { Ok(()) })
        .await
    }

    /// Copy one payload file to `to`, which must not exist yet.
    pub(super) async fn upload_file(&self, op: &Op, e: &PayloadEntry, to: String) -> Result<u64> {
        let sftp = op.sftp();
        // block_on runs this future on the calling thread: plain I/O is fine.
        let data = std::fs::read(&e.source)
            .map_err(|err| Error::io("read payload file", &e.source, err))?;
        // EXCLUDE: never write through something already there (a link).
        let handle = sftp
            .open(
                to.clone(),
                OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::EXCLUDE,
                perms(e.mode),
            )
            .await
            .map_err(|err| self.sftp_err(op, "cannot create", &to, err))?
            .handle;
        let written = self.write_all(op, &handle, &data).await;
        // The server applies its umask at creation: set the exact mode.
        let moded = match written {
            Ok(()) => sftp
                .fsetstat(handle.clone(), perms(e.mode))
                .await
                .map(|_| ()),
            Err(err) => Err(err),
        };
        let closed = sftp.close(handle).await.map(|_| ());
        moded
            .and(closed)
            .map_err(|err| self.sftp_err(op, "cannot write", &to, err))?;
        Ok(data.len() as u64)
    }

    /// Is `path` a real folder (not a link to one)?
    pub(super) async fn lstat_dir(
        &self,
        op: &Op,
        path: &str,
    ) -> std::result::Result<Option<bool>, SftpError> {
        match op.sftp().lstat(path.to_string()).await {
            Ok(a) => Ok(Some(a.attrs.is_dir() && !a.attrs.is_symlink())),
            Err(e) if is_status(&e, StatusCode::NoSuchFile) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(super) fn sftp_read_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let p = &self.path(path);
        self.run(&format!("reading `{path}`"), |op| async move {
            let sftp = op.sftp();
            let handle = match sftp
                .open(p.clone(), OpenFlags::READ, FileAttributes::empty())
                .await
            {
                Ok(h) => h.handle,
                Err(e) if is_status(&e, StatusCode::NoSuchFile) => return Ok(None),
                Err(e) => return Err(self.sftp_err(&op, "cannot read", path, e)),
            };
            let mut data = Vec::new();
            let result = loop {
                match sftp
                    .read(handle.clone(), data.len() as u64, CHUNK as u32)
                    .await
                {
                    Ok(d) if d.data.is_empty() => break Ok(()),
                    Ok(d) => data.extend_from_slice(&d.data),
                    Err(e) if is_status(&e, StatusCode::Eof) => break Ok(()),
                    Err(e) => break Err(self.sftp_err(&op, "cannot read", path, e)),
                }
            };
            let _ = sftp.close(handle).await;
            result.map(|()| Some(data))
        })
    }

    pub(super) fn sftp_write_file(&self, path: &str, data: &[u8]) -> Result<()> {
        let target = &self.path(path);
        let tmp = &format!("{target}.uprun-tmp");
        self.run(&format!("writing `{path}`"), |op| async move {
            let sftp = op.sftp();
            let fail = |e| self.sftp_err(&op, "cannot write", path, e);
            op.changes();
            let handle = sftp
                .open(
                    tmp.clone(),
                    OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE,
                    perms(0o644),
                )
                .await
                .map_err(fail)?
                .handle;
            let written = self.write_all(&op, &handle, data).await;
            let synced = match (&written, op.conn.fsync) {
                (Ok(()), true) => sftp.fsync(handle.clone()).await.map(|_| ()),
                _ => Ok(()),
            };
            let closed = sftp.close(handle).await.map(|_| ());
            written.and(synced).and(closed).map_err(fail)?;
            if op.conn.posix_rename {
                let mut args = Vec::new();
                ssh_string(&mut args, tmp);
                ssh_string(&mut args, target);
                match sftp.extended("posix-rename@openssh.com", args).await {
                    Ok(Packet::Status(s)) if s.status_code == StatusCode::Ok => Ok(()),
                    Ok(Packet::Status(s)) => Err(fail(SftpError::Status(s))),
                    Ok(_) => Err(fail(SftpError::UnexpectedPacket)),
                    Err(e) => Err(fail(e)),
                }
            } else {
                // Plain SFTP rename does not replace: remove, then rename.
                match sftp.remove(target.clone()).await {
                    Ok(_) => {}
                    Err(e) if is_status(&e, StatusCode::NoSuchFile) => {}
                    Err(e) => return Err(fail(e)),
                }
                sftp.rename(tmp.clone(), target.clone())
                    .await
                    .map(|_| ())
                    .map_err(fail)
            }
        })
    }

    pub(super) fn sftp_remove_tree(&self, path: &str) -> Result<()> {
        let root = &self.path(path);
        self.run(&format!("removing `{path}`"), |op| async move {
            let sftp = op.sftp();
            // Depth first: a folder is removed once its entries are.
            let mut stack = vec![(root.clone(), false)];
            while let Some((dir, emptied)) = stack.pop() {
                if emptied {
                    op.changes();
                    sftp.rmdir(dir.clone())
                        .await
                        .map_err(|e| self.sftp_err(&op, "cannot remove", &dir, e))?;
                    continue;
                }
                let handle = match sftp.opendir(dir.clone()).await {
                    Ok(h) => h.handle,
                    Err(e) if is_status(&e, StatusCode::NoSuchFile) => continue,
                    Err(e) => return Err(self.sftp_err(&op, "cannot list", &dir, e)),
                };
                let mut entries = Vec::new();
                let listed = loop {
                    match sftp.readdir(handle.clone()).await {
                        Ok(names) if names.files.is_empty() => break Ok(()),
                        Ok(names) => entries.extend(names.files),
                        Err(e) if is_status(&e, StatusCode::Eof) => break Ok(()),
                        Err(e) => break Err(e),
                    }
                };
                let _ = sftp.close(handle).await;
                listed.map_err(|e| self.sftp_err(&op, "cannot list", &dir, e))?;
                stack.push((dir.clone(), true));
                for f in entries {
                    if f.filename == "." || f.filename == ".." {
                        continue;
                    }
                    let p = format!("{}/{}", dir.trim_end_matches('/'), f.filename);
                    if f.attrs.file_type().is_dir() {
                        stack.push((p, false));
                    } else {
                        op.changes();
                        sftp.remove(p.clone())
                            .await
                            .map_err(|e| self.sftp_err(&op, "cannot remove", &p, e))?;
                    }
                }
            }
            Ok(())
        })
    }

    pub(super) fn sftp_dir_state(&self, path: &str) -> Result<DirState> {
        let p = &self.path(path);
        self.run(&format!("listing `{path}`"), |op| async move {
            let sftp = op.sftp();
            let handle = match sftp.opendir(p.clone()).await {
                Ok(h) => h.handle,
                Err(e) if is_status(&e, StatusCode::NoSuchFile) => return Ok(DirState::Missing),
                Err(e) => return Err(self.sftp_err(&op, "cannot list", path, e)),
            };
            let state = loop {
                match sftp.readdir(handle.clone()).await {
                    Ok(names) => {
                        if names
                            .files
                            .iter()
                            .any(|f| f.filename != "." && f.filename != "..")
                        {
                            break Ok(DirState::NotEmpty);
                        }
                        if names.files.is_empty() {
                            break Ok(DirState::Empty);
                        }
                    }
                    Err(e) if is_status(&e, StatusCode::Eof) => break Ok(DirState::Empty),
                    Err(e) => break Err(self.sftp_err(&op, "cannot list", path, e)),
                }
            };
            let _ = sftp.close(handle).await;
            state
        })
    }

    pub(super) fn sftp_create_dir_all(&self, path: &str) -> Result<()> {
        let full = &self.path(path);
        self.run(&format!("creating `{path}`"), |op| async move {
            match self
                .lstat_dir(&op, full)
                .await
                .map_err(|e| self.sftp_err(&op, "cannot create", path, e))?
            {
                Some(true) => return Ok(()),
                // Missing, usually under a parent that is there: one mkdir.
                // Otherwise the path is walked from the top.
                None => {
                    op.changes();
                    if op
                        .sftp()
                        .mkdir(full.clone(), FileAttributes::empty())
                        .await
                        .is_ok()
                    {
                        return Ok(());
                    }
                }
                Some(false) => {}
            }
            let absolute = full.starts_with('/');
            let mut prefix = String::new();
            for part in full.split('/').filter(|p| !p.is_empty()) {
                if absolute || !prefix.is_empty() {
                    prefix.push('/');
                }
                prefix.push_str(part);
                match self
                    .lstat_dir(&op, &prefix)
                    .await
                    .map_err(|e| self.sftp_err(&op, "cannot create", path, e))?
                {
                    Some(true) => continue,
                    // A drive (`/C:`) or a link to a folder is walked through.
                    Some(false)
                        if op
                            .sftp()
                            .stat(prefix.clone())
                            .await
                            .is_ok_and(|a| a.attrs.is_dir()) =>
                    {
                        continue
                    }
                    Some(false) => {
                        return Err(self.err(format!(
                            "cannot create `{path}`: `{prefix}` exists and is not a folder"
                        )))
                    }
                    None => {
                        op.changes();
                        op.sftp()
                            .mkdir(prefix.clone(), FileAttributes::empty())
                            .await
                            .map_err(|e| self.sftp_err(&op, "cannot create", &prefix, e))?;
                    }
                }
            }
            Ok(())
        })
    }

    pub(super) fn sftp_upload_entries(&self, entries: &[PayloadEntry], dest: &str) -> Result<u64> {
        let root = &self.path(dest);
        self.run(&format!("copying the payload into `{dest}`"), |op| async move {
            let sftp = op.sftp();
            match self.lstat_dir(&op, root).await {
                Ok(Some(true)) => {}
                Ok(_) => {
                    return Err(self.err(format!(
                        "instance folder `{dest}` is missing or is not a plain folder (a link?); refusing to copy into it"
                    )))
                }
                Err(e) => return Err(self.sftp_err(&op, "cannot read", dest, e)),
            }
            let target = |e: &PayloadEntry| format!("{}/{}", root.trim_end_matches('/'), e.rel);
            // Folders first (parents before children), writable by us until
            // the files are in; then the files, several at once; then the
            // folders' own modes, children before parents.
            op.changes();
            let dirs: Vec<&PayloadEntry> = entries.iter().filter(|e| e.is_dir).collect();
            for e in &dirs {
                let to = target(e);
                if let Err(err) = sftp.mkdir(to.clone(), perms(e.mode | 0o700)).await {
                    // Only an existing real folder is acceptable.
                    if self.lstat_dir(&op, &to).await.ok().flatten() != Some(true) {
                        return Err(self.sftp_err(&op, "cannot create folder", &to, err));
                    }
                }
            }
            let op = &op;
            let total = stream::iter(
                entries
                    .iter()
                    .filter(|e| !e.is_dir)
                    .map(|e| self.upload_file(op, e, target(e))),
            )
            .buffer_unordered(FILES_IN_FLIGHT)
            .try_fold(0u64, |sum, n| async move { Ok(sum + n) })
            .await?;
            for e in dirs.iter().rev() {
                let to = target(e);
                sftp.setstat(to.clone(), perms(e.mode))
                    .await
                    .map_err(|err| self.sftp_err(op, "cannot set the mode of", &to, err))?;
            }
            Ok(total)
        })
    }

    pub(super) fn sftp_identity(&self, path: &str) -> Result<Option<PathIdentity>> {
        let p = &self.path(path);
        self.run(&format!("resolving `{path}`"), |op| async move {
            let sftp = op.sftp();
            let link = match sftp.lstat(p.clone()).await {
                Ok(a) => a.attrs.is_symlink(),
                Err(e) if is_status(&e, StatusCode::NoSuchFile) => return Ok(None),
                Err(e) => return Err(self.sftp_err(&op, "cannot read", path, e)),
            };
            // SFTP reports no inode: the server's realpath is the identity.
            let canonical = match sftp.realpath(p.clone()).await {
                Ok(name) => name.files.into_iter().next().map(|f| f.filename),
                // A dangling link: name the link itself.
                Err(e) if link && is_status(&e, StatusCode::NoSuchFile) => None,
                Err(e) => return Err(self.sftp_err(&op, "cannot resolve", path, e)),
            };
            Ok(Some(PathIdentity {
                canonical: canonical.unwrap_or_else(|| p.clone()),
                file_id: None,
                link,
            }))
        })
    }

    /// One `lstat` per path, all in flight at once.
    pub(super) fn sftp_link_states(&self, paths: &[&str]) -> Result<Vec<Option<bool>>> {
        let what = format!("reading `{}`", paths.join("`, `"));
        self.run(&what, |op| async move {
            let sftp = op.sftp();
            let asks = paths.iter().map(|path| {
                let (sftp, op) = (&sftp, &op);
                async move {
                    match sftp.lstat(self.path(path)).await {
                        Ok(a) => Ok(Some(a.attrs.is_symlink())),
                        Err(e) if is_status(&e, StatusCode::NoSuchFile) => Ok(None),
                        Err(e) => Err(self.sftp_err(op, "cannot read", path, e)),
                    }
                }
            });
            futures_util::future::join_all(asks)
                .await
                .into_iter()
                .collect()
        })
    }

    pub(super) fn sftp_rename(&self, from: &str, to: &str) -> Result<()> {
        let (f, t) = (&self.path(from), &self.path(to));
        self.run(&format!("renaming `{from}` to `{to}`"), |op| async move {
            let sftp = op.sftp();
            // Plain SFTP rename; refuse anything at the target first (OpenSSH's
            // server refuses too, but not every server does).
            match sftp.lstat(t.clone()).await {
                Ok(_) => {
                    return Err(self.err(format!("cannot rename `{from}` to `{to}`: `{to}` exists")))
                }
                Err(e) if is_status(&e, StatusCode::NoSuchFile) => {}
                Err(e) => return Err(self.sftp_err(&op, "cannot read", to, e)),
            }
            op.changes();
            sftp.rename(f.clone(), t.clone())
                .await
                .map(|_| ())
                .map_err(|e| self.sftp_err(&op, "cannot rename", from, e))
        })
    }

    pub(super) fn sftp_remove_file(&self, path: &str) -> Result<()> {
        let p = &self.path(path);
        self.run(&format!("removing `{path}`"), |op| async move {
            op.changes();
            match op.sftp().remove(p.clone()).await {
                Ok(_) => Ok(()),
                Err(e) if is_status(&e, StatusCode::NoSuchFile) => Ok(()),
                Err(e) => Err(self.sftp_err(&op, "cannot remove", path, e)),
            }
        })
    }

    /// One `rmdir`: whether the folder went (it fails when not empty, not
    /// a folder or missing; nothing else is tried).
    pub(super) fn sftp_remove_empty_dir(&self, path: &str) -> Result<bool> {
        let p = &self.path(path);
        self.run(&format!("removing `{path}`"), |op| async move {
            op.changes();
            Ok(op.sftp().rmdir(p.clone()).await.is_ok())
        })
    }

    pub(super) fn sftp_list_dir(&self, path: &str) -> Result<Option<Vec<String>>> {
        let p = &self.path(path);
        self.run(&format!("listing `{path}`"), |op| async move {
            let sftp = op.sftp();
            let handle = match sftp.opendir(p.clone()).await {
                Ok(h) => h.handle,
                Err(e) if is_status(&e, StatusCode::NoSuchFile) => return Ok(None),
                Err(e) => return Err(self.sftp_err(&op, "cannot list", path, e)),
            };
            let mut names = Vec::new();
            let listed = loop {
                match sftp.readdir(handle.clone()).await {
                    Ok(n) if n.files.is_empty() => break Ok(()),
                    Ok(n) => names.extend(
                        n.files
                            .into_iter()
                            .map(|f| f.filename)
                            .filter(|f| f != "." && f != ".."),
                    ),
                    Err(e) if is_status(&e, StatusCode::Eof) => break Ok(()),
                    Err(e) => break Err(e),
                }
            };
            let _ = sftp.close(handle).await;
            listed.map_err(|e| self.sftp_err(&op, "cannot list", path, e))?;
            names.sort();
            Ok(Some(names))
        })
    }
}
