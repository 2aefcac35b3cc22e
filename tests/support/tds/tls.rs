//! The prelogin exchange (encryption and instance options) and TLS as SQL
//! Server does it with TDS 7.x: the handshake inside PRELOGIN packets, then
//! TLS on the connection, for all of it or for the login only.

use super::*;

pub(super) const PRELOGIN_INSTOPT: u8 = 0x02;

/// The bytes of option `option` of a client prelogin (empty when absent).
pub(super) fn prelogin_option(p: &[u8], option: u8) -> &[u8] {
    let mut at = 0;
    while let Some(&token) = p.get(at) {
        if token == 0xff || at + 5 > p.len() {
            break;
        }
        let offset = u16::from_be_bytes([p[at + 1], p[at + 2]]) as usize;
        let len = u16::from_be_bytes([p[at + 3], p[at + 4]]) as usize;
        if token == option {
            return p.get(offset..offset + len).unwrap_or_default();
        }
        at += 5;
    }
    &[]
}

/// The instance name of a client prelogin ("" when none).
pub(super) fn prelogin_instance(p: &[u8]) -> String {
    let bytes = prelogin_option(p, PRELOGIN_INSTOPT);
    let name = bytes.split(|b| *b == 0).next().unwrap_or_default();
    String::from_utf8_lossy(name).into_owned()
}

pub(super) const ENCRYPT_OFF: u8 = 0x00;
pub(super) const ENCRYPT_ON: u8 = 0x01;
pub(super) const ENCRYPT_NOT_SUP: u8 = 0x02;

/// The connection as it stands: plain TCP, or TLS (after the handshake that
/// travelled in PRELOGIN packets).
pub(super) enum Wire {
    Raw(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl Wire {
    /// Back to plain TCP (after the login, when only the login was to be
    /// encrypted).
    pub(super) fn into_raw(self) -> Wire {
        match self {
            Wire::Tls(s) => Wire::Raw(s.sock),
            raw => raw,
        }
    }
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Wire::Raw(s) => s.read(buf),
            Wire::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Wire::Raw(s) => s.write(buf),
            Wire::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Wire::Raw(s) => s.flush(),
            Wire::Tls(s) => s.flush(),
        }
    }
}

/// The server side of the TLS handshake as SQL Server (TDS 7.x) runs it: the
/// TLS records travel inside PRELOGIN packets until the handshake is done.
/// Fails when the client gives up (it rejected the certificate).
pub(super) fn tls_handshake(
    mut tcp: TcpStream,
    config: &Arc<rustls::ServerConfig>,
) -> std::io::Result<Wire> {
    let other = |e: rustls::Error| std::io::Error::other(e.to_string());
    let mut conn = rustls::ServerConnection::new(config.clone()).map_err(other)?;
    while conn.is_handshaking() {
        let (_, payload) = read_packet(&mut tcp)?;
        let mut at = &payload[..];
        while !at.is_empty() {
            conn.read_tls(&mut at)?;
        }
        let processed = conn.process_new_packets();
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out)?;
        }
        if !out.is_empty() {
            write_message(&mut tcp, PACKET_PRELOGIN, &out)?;
        }
        processed.map_err(other)?;
    }
    Ok(Wire::Tls(Box::new(rustls::StreamOwned::new(conn, tcp))))
}

/// Version and encryption (`ENCRYPT_NOT_SUP` without TLS); for a named instance also the
/// instance check (0x00 valid, 0x01 not this instance), the thread id and
/// MARS, in the order and layout SQL Server uses.
pub(super) fn prelogin_reply(instance_check: Option<bool>, encryption: u8) -> Vec<u8> {
    let version = [16, 0, 0x10, 0x00, 0, 0]; // 16.0.4096
    match instance_check {
        None => {
            // Two options + terminator = 11 bytes of table.
            let mut p = vec![0x00, 0, 11, 0, 6, 0x01, 0, 17, 0, 1, 0xff];
            p.extend_from_slice(&version);
            p.push(encryption);
            p
        }
        Some(valid) => {
            // Five options + terminator = 26 bytes of table.
            let mut p = vec![
                0x00,
                0,
                26,
                0,
                6, // version
                0x01,
                0,
                32,
                0,
                1, // encryption
                PRELOGIN_INSTOPT,
                0,
                33,
                0,
                1, // instance check
                0x03,
                0,
                34,
                0,
                0, // thread id (empty from a server)
                0x04,
                0,
                34,
                0,
                1, // MARS
                0xff,
            ];
            p.extend_from_slice(&version);
            p.push(encryption);
            p.push(if valid { 0x00 } else { 0x01 });
            p.push(0x00); // MARS off
            p
        }
    }
}
