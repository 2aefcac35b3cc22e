//! The command line sent for a command, per shell: POSIX sh (with the pid
//! line that lets a command past its timeout be killed) or PowerShell
//! (`-EncodedCommand`, so cmd.exe quoting never applies).

use crate::config::Shell;

/// Marks the line with the remote shell's pid on stderr (posix nodes).
pub(super) const PID_MARK: &str = "uprun-pid:";

/// Split the pid line written by `command_line` off the start of stderr.
pub(super) fn take_pid(stderr: &[u8]) -> (Option<u32>, &[u8]) {
    let Some(rest) = stderr.strip_prefix(PID_MARK.as_bytes()) else {
        return (None, stderr);
    };
    let end = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
    let pid = std::str::from_utf8(&rest[..end])
        .ok()
        .and_then(|p| p.trim().parse().ok());
    (pid, rest.get(end + 1..).unwrap_or(&[]))
}

/// Single-quote for `sh`.
pub(super) fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The command line sent for `command` run in `cwd`.
pub(super) fn command_line(shell: Shell, command: &str, cwd: &str) -> String {
    match shell {
        // The shell's pid (its process group: sshd starts it with setsid)
        // comes first on stderr, so a command past its timeout can be killed.
        Shell::Posix => format!(
            "printf '{PID_MARK}%s\\n' $$ >&2\ncd {} || exit 125\n{command}",
            sh_quote(cwd)
        ),
        Shell::Powershell => {
            // PowerShell also ends a single-quoted string at typographic quotes.
            let cwd: String = cwd
                .replace('/', "\\")
                .chars()
                .flat_map(|c| match c {
                    '\'' | '\u{2018}' | '\u{2019}' | '\u{201a}' | '\u{201b}' => vec![c, c],
                    c => vec![c],
                })
                .collect();
            let script = format!(
                "$ErrorActionPreference = 'Stop'\nSet-Location -LiteralPath '{cwd}'\n{command}\nif ($LASTEXITCODE) {{ exit $LASTEXITCODE }}\n"
            );
            format!(
                "powershell.exe -NoProfile -NonInteractive -EncodedCommand {}",
                powershell_encode(&script)
            )
        }
    }
}

/// Base64 of the UTF-16LE bytes of `script`, as `-EncodedCommand` wants.
pub(super) fn powershell_encode(script: &str) -> String {
    let bytes: Vec<u8> = script
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect();
    base64(&bytes)
}

pub(super) fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A node path as the node's SFTP server wants it: `/`-separated, and on
/// Windows `/C:/x` for `C:\x`.
pub(super) fn sftp_path(shell: Shell, path: &str) -> String {
    match shell {
        Shell::Posix => path.to_string(),
        Shell::Powershell => {
            let p = path.replace('\\', "/");
            let b = p.as_bytes();
            if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
                format!("/{p}")
            } else {
                p
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_paths_for_sftp() {
        assert_eq!(sftp_path(Shell::Powershell, "C:\\Apps\\x"), "/C:/Apps/x");
        assert_eq!(sftp_path(Shell::Posix, "/opt/x"), "/opt/x");
    }

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn powershell_commands_are_encoded() {
        // `dir` in UTF-16LE, as `powershell -EncodedCommand` documents it.
        assert_eq!(powershell_encode("dir"), "ZABpAHIA");
        let line = command_line(
            Shell::Powershell,
            "appcmd start site 'x'",
            "C:/Apps/it's \u{2019}",
        );
        let b64 = line
            .strip_prefix("powershell.exe -NoProfile -NonInteractive -EncodedCommand ")
            .unwrap();
        assert!(b64
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"+/=".contains(&c)));
        let bytes = decode_b64(b64);
        let units: Vec<u16> = bytes
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        let script = String::from_utf16(&units).unwrap();
        assert!(
            script.contains("Set-Location -LiteralPath 'C:\\Apps\\it''s \u{2019}\u{2019}'"),
            "{script}"
        );
        assert!(script.contains("appcmd start site 'x'"));
    }

    fn decode_b64(s: &str) -> Vec<u8> {
        const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut bits = 0u32;
        let mut n = 0;
        let mut out = Vec::new();
        for c in s.bytes().filter(|c| *c != b'=') {
            bits = (bits << 6) | ABC.iter().position(|a| *a == c).unwrap() as u32;
            n += 6;
            if n >= 8 {
                n -= 8;
                out.push((bits >> n) as u8);
            }
        }
        out
    }

    #[test]
    fn posix_commands_change_folder_safely() {
        assert_eq!(
            command_line(Shell::Posix, "echo hi", "/opt/it's here"),
            "printf 'uprun-pid:%s\\n' $$ >&2\ncd '/opt/it'\\''s here' || exit 125\necho hi"
        );
        assert_eq!(take_pid(b"uprun-pid:42\nboom"), (Some(42), &b"boom"[..]));
        assert_eq!(take_pid(b"other"), (None, &b"other"[..]));
    }
}
