//! TDS framing and parsing: packet types, reading and writing packets and
//! messages, UTF-16 and length-prefixed strings, the LOGIN7 fields and the
//! RPC decoder.

use super::*;

pub(super) const PACKET_SQL_BATCH: u8 = 0x01;
pub(super) const PACKET_RPC: u8 = 0x03;
pub(super) const PACKET_REPLY: u8 = 0x04;
pub(super) const PACKET_ATTENTION: u8 = 0x06;
pub(super) const PACKET_LOGIN7: u8 = 0x10;
pub(super) const PACKET_PRELOGIN: u8 = 0x12;

pub(super) fn read_packet(stream: &mut impl Read) -> std::io::Result<(u8, Vec<u8>)> {
    let mut payload = Vec::new();
    loop {
        let mut header = [0u8; 8];
        stream.read_exact(&mut header)?;
        let len = u16::from_be_bytes([header[2], header[3]]) as usize;
        let mut body = vec![0u8; len.saturating_sub(8)];
        stream.read_exact(&mut body)?;
        payload.extend_from_slice(&body);
        if header[1] & 0x01 == 0x01 {
            return Ok((header[0], payload));
        }
    }
}

pub(super) fn write_message(
    stream: &mut impl Write,
    ty: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    const MAX: usize = 4096 - 8;
    let chunks: Vec<&[u8]> = if payload.is_empty() {
        vec![&[][..]]
    } else {
        payload.chunks(MAX).collect()
    };
    let last = chunks.len() - 1;
    for (n, chunk) in chunks.iter().enumerate() {
        let mut packet = Vec::with_capacity(chunk.len() + 8);
        packet.push(ty);
        packet.push(if n == last { 0x01 } else { 0x00 });
        packet.extend_from_slice(&((chunk.len() + 8) as u16).to_be_bytes());
        packet.extend_from_slice(&[0, 0, (n + 1) as u8, 0]);
        packet.extend_from_slice(chunk);
        stream.write_all(&packet)?;
    }
    stream.flush()
}

/// Packets that do not end the message (status 0x00): the client reads
/// what is in them and waits for more.
pub(super) fn write_partial(
    stream: &mut impl Write,
    ty: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    for (n, chunk) in payload.chunks(4096 - 8).enumerate() {
        let mut packet = Vec::with_capacity(chunk.len() + 8);
        packet.push(ty);
        packet.push(0x00);
        packet.extend_from_slice(&((chunk.len() + 8) as u16).to_be_bytes());
        packet.extend_from_slice(&[0, 0, (n + 1) as u8, 0]);
        packet.extend_from_slice(chunk);
        stream.write_all(&packet)?;
    }
    stream.flush()
}

/// The INFO and ERROR tokens of `replies` (the rest is left out).
pub(super) fn messages(out: &mut Vec<u8>, replies: &[Reply]) {
    for r in replies {
        match r {
            Reply::Info { number, message: m } => message(out, 0xAB, *number, 0, m, 1),
            Reply::Error {
                number,
                class,
                message: m,
                line,
            } => message(out, 0xAA, *number, *class, m, *line),
            _ => {}
        }
    }
}

pub(super) fn utf16(bytes: &[u8]) -> String {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16_lossy(&units)
}

pub(super) fn put_utf16(out: &mut Vec<u8>, s: &str) {
    for u in s.encode_utf16() {
        out.extend_from_slice(&u.to_le_bytes());
    }
}

pub(super) fn b_varchar(out: &mut Vec<u8>, s: &str) {
    out.push(s.encode_utf16().count() as u8);
    put_utf16(out, s);
}

pub(super) fn us_varchar(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.encode_utf16().count() as u16).to_le_bytes());
    put_utf16(out, s);
}

/// A Login7 string field: offset and length (in characters) at `at`.
pub(super) fn login_field(p: &[u8], at: usize) -> String {
    let off = u16::from_le_bytes([p[at], p[at + 1]]) as usize;
    let len = u16::from_le_bytes([p[at + 2], p[at + 3]]) as usize * 2;
    p.get(off..off + len).map(utf16).unwrap_or_default()
}

/// The Login7 password (offset at 44): each byte XOR 0xA5, nibbles swapped.
pub(super) fn login_password(p: &[u8]) -> String {
    let off = u16::from_le_bytes([p[44], p[45]]) as usize;
    let len = u16::from_le_bytes([p[46], p[47]]) as usize * 2;
    let bytes: Vec<u8> = p
        .get(off..off + len)
        .unwrap_or_default()
        .iter()
        .map(|b| (b ^ 0xA5).rotate_left(4))
        .collect();
    utf16(&bytes)
}

/// Skip ALL_HEADERS at the start of a batch or RPC payload.
pub(super) fn skip_headers(p: &[u8]) -> usize {
    let len = u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as usize;
    len.min(p.len())
}

pub(super) struct Cursor<'a> {
    pub(super) p: &'a [u8],
    pub(super) at: usize,
}

impl Cursor<'_> {
    fn u8(&mut self) -> u8 {
        let v = self.p[self.at];
        self.at += 1;
        v
    }
    fn u16(&mut self) -> u16 {
        let v = u16::from_le_bytes([self.p[self.at], self.p[self.at + 1]]);
        self.at += 2;
        v
    }
    fn u32(&mut self) -> u32 {
        let b = &self.p[self.at..self.at + 4];
        self.at += 4;
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
    fn u64(&mut self) -> u64 {
        let lo = self.u32() as u64;
        let hi = self.u32() as u64;
        lo | (hi << 32)
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let b = &self.p[self.at..self.at + n];
        self.at += n;
        b
    }
    fn done(&self) -> bool {
        self.at >= self.p.len()
    }

    /// One RPC parameter value after its TYPE_INFO.
    fn value(&mut self) -> Value {
        let ty = self.u8();
        match ty {
            0x26 | 0x68 | 0x6D => {
                let _max = self.u8();
                let len = self.u8() as usize;
                let b = self.bytes(len).to_vec();
                match (ty, len) {
                    (_, 0) => Value::Null,
                    (0x26, _) | (0x68, _) => {
                        let mut buf = [0u8; 8];
                        buf[..len].copy_from_slice(&b);
                        // Sign-extend narrower integers.
                        let v = i64::from_le_bytes(buf);
                        let shift = 64 - 8 * len as u32;
                        Value::Int((v << shift) >> shift)
                    }
                    _ => Value::Str(format!("<float {len} bytes>")),
                }
            }
            0xE7 | 0xEF => {
                let max = self.u16();
                let _collation = self.bytes(5);
                if max == 0xffff {
                    let total = self.u64();
                    if total == u64::MAX {
                        return Value::Null;
                    }
                    let mut data = Vec::new();
                    loop {
                        let n = self.u32() as usize;
                        if n == 0 {
                            break;
                        }
                        data.extend_from_slice(self.bytes(n));
                    }
                    Value::Str(utf16(&data))
                } else {
                    let n = self.u16();
                    if n == 0xffff {
                        return Value::Null;
                    }
                    Value::Str(utf16(self.bytes(n as usize)))
                }
            }
            other => panic!("tds mock: parameter type 0x{other:02x} not supported"),
        }
    }
}

pub(super) fn decode_rpc(p: &[u8]) -> Request {
    let mut c = Cursor {
        p,
        at: skip_headers(p),
    };
    let id_or_len = c.u16();
    if id_or_len == 0xffff {
        let id = c.u16();
        assert_eq!(id, 10, "tds mock: only sp_executesql (10) is supported");
    } else {
        let _name = c.bytes(id_or_len as usize * 2);
    }
    let _flags = c.u16();
    let mut values = Vec::new();
    while !c.done() {
        let name_len = c.u8() as usize;
        let _name = c.bytes(name_len * 2);
        let _status = c.u8();
        values.push(c.value());
    }
    let mut it = values.into_iter();
    let sql = it.next().and_then(|v| v.as_str().map(str::to_string));
    let declaration = it
        .next()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    Request::Rpc {
        sql: sql.unwrap_or_default(),
        declaration,
        params: it.collect(),
    }
}
