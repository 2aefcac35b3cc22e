//! What certificate the server offered, for the message of a failed TLS
//! handshake. The driver says only why it rejected the certificate; the
//! operator needs to know what the certificate is to choose the setting that
//! trusts it. So after a failure uprun connects once more, runs the prelogin
//! and the TLS handshake as TDS 7.x does (the TLS records inside PRELOGIN
//! packets) with a verifier that only records the certificate and then ends
//! the handshake: nothing is logged in and no password is sent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use x509_cert::der::oid::AssociatedOid;
use x509_cert::der::Decode;

const PACKET_PRELOGIN: u8 = 0x12;
const ENCRYPT_ON: u8 = 0x01;
const ENCRYPT_NOT_SUP: u8 = 0x02;

/// The server's certificate chain (end entity first), as offered in a TLS
/// handshake to `target`; or why it could not be had.
pub(super) async fn offered_chain(
    target: &str,
    limit: Duration,
) -> std::result::Result<Vec<Vec<u8>>, String> {
    match tokio::time::timeout(limit, probe(target)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} s", limit.as_secs())),
    }
}

async fn probe(target: &str) -> std::result::Result<Vec<Vec<u8>>, String> {
    let mut tcp = TcpStream::connect(target)
        .await
        .map_err(|e| e.to_string())?;
    // PRELOGIN: VERSION and ENCRYPTION (on), then the terminator.
    let mut prelogin = vec![0x00, 0, 11, 0, 6, 0x01, 0, 17, 0, 1, 0xff];
    prelogin.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    prelogin.push(ENCRYPT_ON);
    send(&mut tcp, &prelogin).await?;
    let reply = receive(&mut tcp).await?;
    if prelogin_option(&reply, 0x01).first() == Some(&ENCRYPT_NOT_SUP) {
        return Err("the server now answers that it does not support encryption".into());
    }
    let seen = Arc::new(Mutex::new(None));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(Recorder {
        seen: seen.clone(),
        schemes: provider
            .signature_verification_algorithms
            .supported_schemes(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    let name = ServerName::try_from("probe.invalid").map_err(|e| e.to_string())?;
    let mut tls =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    loop {
        let mut out = Vec::new();
        while tls.wants_write() {
            tls.write_tls(&mut out).map_err(|e| e.to_string())?;
        }
        if !out.is_empty() {
            send(&mut tcp, &out).await?;
        }
        if let Some(chain) = seen.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Ok(chain);
        }
        if !tls.is_handshaking() {
            return Err("the handshake ended without a certificate".into());
        }
        let payload = receive(&mut tcp).await?;
        let mut at = &payload[..];
        while !at.is_empty() {
            tls.read_tls(&mut at).map_err(|e| e.to_string())?;
        }
        if let Err(e) = tls.process_new_packets() {
            if let Some(chain) = seen.lock().unwrap_or_else(|e| e.into_inner()).take() {
                return Ok(chain);
            }
            return Err(e.to_string());
        }
    }
}

/// One PRELOGIN message (one packet: the handshake's are small).
async fn send(tcp: &mut TcpStream, payload: &[u8]) -> std::result::Result<(), String> {
    for chunk in payload.chunks(4096 - 8) {
        let last = chunk.as_ptr_range().end == payload.as_ptr_range().end;
        let mut packet = vec![PACKET_PRELOGIN, u8::from(last)];
        packet.extend_from_slice(&((chunk.len() + 8) as u16).to_be_bytes());
        packet.extend_from_slice(&[0, 0, 1, 0]);
        packet.extend_from_slice(chunk);
        tcp.write_all(&packet).await.map_err(|e| e.to_string())?;
    }
    tcp.flush().await.map_err(|e| e.to_string())
}

/// One message from the server (its packets' payloads, to the last one).
async fn receive(tcp: &mut TcpStream) -> std::result::Result<Vec<u8>, String> {
    let mut payload = Vec::new();
    loop {
        let mut header = [0u8; 8];
        tcp.read_exact(&mut header)
            .await
            .map_err(|e| format!("the server closed the connection ({e})"))?;
        let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let mut body = vec![0u8; len.saturating_sub(8)];
        tcp.read_exact(&mut body).await.map_err(|e| e.to_string())?;
        payload.extend_from_slice(&body);
        if header[1] & 0x01 == 0x01 {
            return Ok(payload);
        }
    }
}

/// Option `option` of a PRELOGIN message (empty when absent).
fn prelogin_option(p: &[u8], option: u8) -> &[u8] {
    let mut at = 0;
    while let Some(&token) = p.get(at) {
        if token == 0xff || at + 5 > p.len() {
            break;
        }
        let offset = usize::from(u16::from_be_bytes([p[at + 1], p[at + 2]]));
        let len = usize::from(u16::from_be_bytes([p[at + 3], p[at + 4]]));
        if token == option {
            return p.get(offset..offset + len).unwrap_or_default();
        }
        at += 5;
    }
    &[]
}

/// `ServerCertVerifier` signature checks that refuse every signature.
macro_rules! unverified_signatures {
    ($($name:ident),+) => {$(
        fn $name(
            &self,
            _message: &[u8],
            _cert: &CertificateDer<'_>,
            _dss: &DigitallySignedStruct,
        ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::General("not verified".into()))
        }
    )+};
}

/// Records the chain and stops the handshake there.
#[derive(Debug)]
struct Recorder {
    seen: Arc<Mutex<Option<Vec<Vec<u8>>>>>,
    schemes: Vec<SignatureScheme>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.to_vec()];
        chain.extend(intermediates.iter().map(|c| c.to_vec()));
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(chain);
        Err(rustls::Error::General(
            "uprun's certificate probe: recorded".into(),
        ))
    }

    // The handshake ends at the certificate: no signature is ever verified.
    unverified_signatures!(verify_tls12_signature, verify_tls13_signature);

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

/// What a certificate says, for an operator: subject, subjectAltNames (or
/// "none"), issuer, self-signed or not, validity; then the certificates
/// above it, if the server sent any.
pub(super) fn describe(chain: &[Vec<u8>]) -> String {
    let Some(first) = chain.first() else {
        return "no certificate".into();
    };
    let cert = match x509_cert::Certificate::from_der(first) {
        Ok(c) => c,
        Err(e) => return format!("a certificate uprun cannot read ({e})"),
    };
    let tbs = &cert.tbs_certificate;
    let subject = tbs.subject.to_string();
    let issuer = tbs.issuer.to_string();
    let mut names = Vec::new();
    for ext in tbs.extensions.iter().flatten() {
        if ext.extn_id != <x509_cert::ext::pkix::SubjectAltName as AssociatedOid>::OID {
            continue;
        }
        let Ok(san) = x509_cert::ext::pkix::SubjectAltName::from_der(ext.extn_value.as_bytes())
        else {
            names.push("(unreadable)".to_string());
            continue;
        };
        for n in san.0 {
            use x509_cert::ext::pkix::name::GeneralName;
            names.push(match n {
                GeneralName::DnsName(d) => format!("DNS:{}", d.as_str()),
                GeneralName::IpAddress(ip) => match ip.as_bytes().len() {
                    4 => {
                        let b = ip.as_bytes();
                        format!("IP:{}.{}.{}.{}", b[0], b[1], b[2], b[3])
                    }
                    _ => format!("IP:{:02x?}", ip.as_bytes()),
                },
                other => format!("{other:?}"),
            });
        }
    }
    let sans = if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    };
    let signed = if subject == issuer {
        "self-signed".to_string()
    } else {
        format!("issued by `{issuer}`")
    };
    let more = if chain.len() > 1 {
        format!(
            ", with {} more certificate(s) in the chain",
            chain.len() - 1
        )
    } else {
        String::new()
    };
    format!(
        "subject `{subject}`, subject alternative names: {sans}, issuer `{issuer}` ({signed}), valid from {} to {}{more}",
        tbs.validity.not_before, tbs.validity.not_after
    )
}

/// What to set, for the certificate in `chain`.
pub(super) fn remedy(chain: &[Vec<u8>]) -> String {
    let no_san =
        chain
            .first()
            .and_then(|c| x509_cert::Certificate::from_der(c).ok())
            .is_some_and(|c| {
                !c.tbs_certificate.extensions.iter().flatten().any(|e| {
                    e.extn_id == <x509_cert::ext::pkix::SubjectAltName as AssociatedOid>::OID
                })
            });
    if no_san {
        "it names the server only in its subject (no subject alternative name), and uprun's TLS library (rustls) reads the server's name only from subject alternative names, so neither `database.ca_file` nor `HostNameInCertificate=` can make it pass: have the DBA install a certificate with a DNS subject alternative name for the server (SQL Server Configuration Manager, Protocols, Certificate) and give the CA that signed it in `database.ca_file` (add `HostNameInCertificate=<that name>` to `database.connection` when it differs from `Server=`); for a test server only, set `database.trust_server_certificate = true`".into()
    } else {
        "give the CA that signed it in `database.ca_file` (the certificate itself, if it is self-signed), add `HostNameInCertificate=<a DNS name above>` to `database.connection` when `Server=` names the server differently, or, for a test server only, set `database.trust_server_certificate = true`".into()
    }
}
