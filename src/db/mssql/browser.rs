//! The SQL Server Browser (SSRP, MS-SQLR): the TCP port of a named instance.

use std::net::SocketAddr;
use std::time::Duration;

/// SQL Server's TCP port when `Server=` names neither a port nor an instance.
pub(super) const DEFAULT_PORT: u16 = 1433;

/// The SQL Server Browser's UDP port (MS-SQLR).
pub const BROWSER_PORT: u16 = 1434;
/// SSRP messages (MS-SQLR 2.2): the ports of one instance, of all instances,
/// and the server's answer.
pub(super) const CLNT_UCAST_EX: u8 = 0x03;
pub(super) const CLNT_UCAST_INST: u8 = 0x04;
pub(super) const SVR_RESP: u8 = 0x05;
/// UDP may lose a request: the Browser is asked again this often (and, from
/// the second time, also for its list of instances, since it does not answer
/// for an instance it does not know).
pub(super) const BROWSER_RETRY: Duration = Duration::from_secs(1);

/// Test builds only (the `failpoints` feature): moves the SQL Server Browser
/// to another UDP port, so that tests can run one on a free loopback port.
pub const BROWSER_PORT_ENV: &str = "UPRUN_TEST_SQL_BROWSER_PORT";

/// Where the SQL Server Browser listens: always 1434, except in test builds
/// where `UPRUN_TEST_SQL_BROWSER_PORT` may say otherwise.
pub(super) fn browser_port() -> u16 {
    #[cfg(feature = "failpoints")]
    if let Some(port) = std::env::var(BROWSER_PORT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u16>().ok())
    {
        return port;
    }
    BROWSER_PORT
}

/// One instance as the SQL Server Browser describes it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct BrowsedInstance {
    name: String,
    /// Its TCP port, if it listens on TCP.
    tcp: Option<u16>,
    /// Every protocol reported (`tcp`, `np`, `via`...), for messages.
    protocols: Vec<String>,
}

/// The instances in an SVR_RESP datagram: `0x05`, the size (u16 LE), then
/// `ServerName;H;InstanceName;I;IsClustered;No;Version;V;tcp;PORT;np;PIPE;;`
/// once per instance. None if the datagram is not an SVR_RESP.
pub(super) fn parse_svr_resp(datagram: &[u8]) -> Option<Vec<BrowsedInstance>> {
    let (&kind, rest) = datagram.split_first()?;
    if kind != SVR_RESP || rest.len() < 2 {
        return None;
    }
    let size = u16::from_le_bytes([rest[0], rest[1]]) as usize;
    let data = &rest[2..];
    let text = String::from_utf8_lossy(&data[..size.min(data.len())]);
    let mut out = Vec::new();
    for record in text.split(";;") {
        let tokens: Vec<&str> = record.split(';').collect();
        let (mut name, mut tcp, mut protocols) = (None, None, Vec::new());
        for pair in tokens.chunks(2) {
            let [key, value] = pair else { break };
            let key = key.trim().to_ascii_lowercase();
            match key.as_str() {
                "instancename" => name = Some(value.trim().to_string()),
                "servername" | "isclustered" | "version" => {}
                // Banyan VINES carries a list: nothing known follows it.
                "bv" => {
                    protocols.push(key);
                    break;
                }
                _ => {
                    if key == "tcp" {
                        tcp = value.trim().parse::<u16>().ok().filter(|p| *p > 0);
                    }
                    protocols.push(key);
                }
            }
        }
        if let Some(name) = name {
            out.push(BrowsedInstance {
                name,
                tcp,
                protocols,
            });
        }
    }
    Some(out)
}

/// What one address of the Browser's host said.
pub(super) enum Heard {
    /// The instances it reported: the one asked for, or, when it does not know
    /// that one, its whole list.
    Instances(Vec<BrowsedInstance>),
    /// Nothing listens there (ICMP port unreachable).
    Refused,
    /// No answer in time; `garbage` if datagrams that are not SSRP came back.
    Silent {
        garbage: bool,
    },
    Failed(String),
}

/// Ask the Browser at `at` for `instance` until `until`: `CLNT_UCAST_INST`
/// at once, then every `BROWSER_RETRY` again together with `CLNT_UCAST_EX`
/// (the list of all instances). A list without the instance is taken as the
/// answer if the instance's own request stays unanswered one retry longer.
pub(super) async fn ask_browser(
    at: SocketAddr,
    instance: &str,
    until: tokio::time::Instant,
) -> Heard {
    use std::io::ErrorKind;
    use tokio::time::{timeout_at, Instant};
    let local: SocketAddr = if at.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = match tokio::net::UdpSocket::bind(local).await {
        Ok(s) => s,
        Err(e) => return Heard::Failed(format!("cannot open a UDP socket: {e}")),
    };
    // Connected: only datagrams from `at` are received, and a closed port is
    // reported (ECONNREFUSED) instead of looking like silence.
    if let Err(e) = socket.connect(at).await {
        return Heard::Failed(e.to_string());
    }
    let mut one = vec![CLNT_UCAST_INST];
    one.extend_from_slice(instance.as_bytes());
    one.push(0);
    let io_error = |e: std::io::Error| match e.kind() {
        ErrorKind::ConnectionRefused => Heard::Refused,
        _ => Heard::Failed(e.to_string()),
    };
    if let Err(e) = socket.send(&one).await {
        return io_error(e);
    }
    let mut next = Instant::now() + BROWSER_RETRY;
    let mut garbage = false;
    // A list without the instance, and when to settle for it.
    let mut list: Option<(Vec<BrowsedInstance>, Instant)> = None;
    let mut buf = vec![0u8; 65_536];
    loop {
        let wake = match &list {
            Some((_, settle)) => next.min(until).min(*settle),
            None => next.min(until),
        };
        match timeout_at(wake, socket.recv(&mut buf)).await {
            Ok(Ok(n)) => match parse_svr_resp(&buf[..n]) {
                Some(found) if found.iter().any(|i| i.name.eq_ignore_ascii_case(instance)) => {
                    return Heard::Instances(found)
                }
                Some(found) => {
                    if list.is_none() {
                        list = Some((found, (Instant::now() + BROWSER_RETRY).min(until)));
                    }
                }
                None => garbage = true,
            },
            Ok(Err(e)) => return io_error(e),
            Err(_) => {
                let now = Instant::now();
                if let Some((found, settle)) = &list {
                    if now >= *settle {
                        return Heard::Instances(found.clone());
                    }
                }
                if now >= until {
                    return Heard::Silent { garbage };
                }
                if now >= next {
                    next = now + BROWSER_RETRY;
                    for request in [&one[..], &[CLNT_UCAST_EX][..]] {
                        if let Err(e) = socket.send(request).await {
                            return io_error(e);
                        }
                    }
                }
            }
        }
    }
}

/// Find the TCP address of a named instance through the SQL Server Browser
/// on `host`:`port`, within `limit`. Errors are whole sentences that name the
/// host, the instance and what to do.
pub(super) async fn browse(
    host: &str,
    port: u16,
    instance: &str,
    limit: Duration,
) -> std::result::Result<SocketAddr, String> {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let until = tokio::time::Instant::now() + limit;
    let secs = limit.as_secs();
    let browser = format!("SQL Server Browser on {host}:{port}");
    let give_port = format!(
        "or give the instance's TCP port in `database.connection` (`Server=tcp:{host}\\{instance},<port>`)"
    );
    let name = host.trim_start_matches('[').trim_end_matches(']');
    let mut addrs: Vec<SocketAddr> =
        match tokio::time::timeout_at(until, tokio::net::lookup_host((name, port))).await {
            Ok(Ok(found)) => found.collect(),
            Ok(Err(e)) => {
                return Err(format!(
                    "cannot resolve host `{host}` to find instance `{instance}`: {e}; check the host name in `Server=` of `database.connection`"
                ))
            }
            Err(_) => {
                return Err(format!(
                    "cannot resolve host `{host}` to find instance `{instance}` within {secs} s (`database.connect_timeout_secs`)"
                ))
            }
        };
    addrs.dedup();
    if addrs.is_empty() {
        return Err(format!(
            "host `{host}` has no address; check the host name in `Server=` of `database.connection`"
        ));
    }
    let mut asks: FuturesUnordered<_> = addrs
        .iter()
        .map(|&at| async move { (at, ask_browser(at, instance, until).await) })
        .collect();
    let (mut refused, mut garbage, mut failed) = (0, false, None);
    while let Some((at, heard)) = asks.next().await {
        match heard {
            Heard::Instances(found) => {
                let Some(me) = found.iter().find(|i| i.name.eq_ignore_ascii_case(instance)) else {
                    let names = if found.is_empty() {
                        "no instances".to_string()
                    } else {
                        found
                            .iter()
                            .map(|i| format!("`{}`", i.name))
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    return Err(format!(
                        "{browser} knows no instance `{instance}`; it reported {names}: correct the instance name in `Server=` of `database.connection`"
                    ));
                };
                return match me.tcp {
                    Some(tcp) => Ok(SocketAddr::new(at.ip(), tcp)),
                    None => Err(format!(
                        "instance `{instance}` on {host} does not accept TCP connections ({browser} reports only: {}): enable TCP/IP for the instance (SQL Server Configuration Manager) and restart it",
                        if me.protocols.is_empty() { "none".to_string() } else { me.protocols.join(", ") }
                    )),
                };
            }
            Heard::Refused => refused += 1,
            Heard::Silent { garbage: g } => garbage |= g,
            Heard::Failed(e) => failed = Some(e),
        }
    }
    if refused == addrs.len() {
        return Err(format!(
            "{browser} is not running (UDP port {port} is closed), so instance `{instance}` cannot be found: start the SQL Server Browser service on {host}, {give_port}"
        ));
    }
    if let Some(e) = failed {
        return Err(format!(
            "{browser} could not be asked for instance `{instance}`: {e}; {give_port}"
        ));
    }
    let odd = if garbage {
        " (what came back was not an SSRP answer)"
    } else {
        ""
    };
    Err(format!(
        "{browser} did not answer for instance `{instance}` within {secs} s (`database.connect_timeout_secs`){odd}: start the SQL Server Browser service on {host} and let UDP port {port} through its firewall, {give_port}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svr_resp(text: &str) -> Vec<u8> {
        let mut d = vec![SVR_RESP];
        d.extend_from_slice(&(text.len() as u16).to_le_bytes());
        d.extend_from_slice(text.as_bytes());
        d
    }

    #[test]
    fn browser_answers_are_read() {
        let one = svr_resp("ServerName;DB01;InstanceName;SQL2019;IsClustered;No;Version;15.0.2000.5;tcp;49731;np;\\\\DB01\\pipe\\MSSQL$SQL2019\\sql\\query;;");
        assert_eq!(
            parse_svr_resp(&one),
            Some(vec![BrowsedInstance {
                name: "SQL2019".into(),
                tcp: Some(49731),
                protocols: vec!["tcp".into(), "np".into()],
            }])
        );
        let all = svr_resp("ServerName;DB01;InstanceName;MSSQLSERVER;IsClustered;No;Version;16.0.1000.6;tcp;1433;;ServerName;DB01;InstanceName;PIPES;IsClustered;No;Version;16.0.1000.6;np;\\\\DB01\\pipe\\sql\\query;;");
        let found = parse_svr_resp(&all).expect("answer");
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].tcp, Some(1433));
        assert_eq!((found[1].name.as_str(), found[1].tcp), ("PIPES", None));
        assert_eq!(found[1].protocols, ["np"]);
        // Not SVR_RESP, truncated, or a size larger than what came.
        assert_eq!(parse_svr_resp(b""), None);
        assert_eq!(parse_svr_resp(&[SVR_RESP, 9]), None);
        assert_eq!(parse_svr_resp(b"\x04SQL2019"), None);
        let mut short = svr_resp("ServerName;H;InstanceName;A;tcp;1500;;");
        short[1] = 0xff;
        assert_eq!(parse_svr_resp(&short).expect("answer")[0].tcp, Some(1500));
        assert_eq!(
            parse_svr_resp(&svr_resp("")).expect("answer"),
            Vec::<BrowsedInstance>::new()
        );
        let bad_port = svr_resp("InstanceName;A;tcp;99999;;");
        assert_eq!(parse_svr_resp(&bad_port).expect("answer")[0].tcp, None);
    }
}
