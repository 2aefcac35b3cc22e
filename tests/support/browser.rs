//! A SQL Server Browser on 127.0.0.1 (UDP, MS-SQLR): answers `CLNT_UCAST_INST`
//! (0x04 + instance name) for the instances it knows, with the `SVR_RESP` a
//! real Browser sends, and ignores it for the others, as a real Browser does;
//! answers `CLNT_UCAST_EX` (0x03) with every instance. Or it stays silent.
//!
//! It listens on a free port, not 1434: uprun's test builds read the port
//! from `UPRUN_TEST_SQL_BROWSER_PORT` (see `Browser::env`).

#![allow(dead_code)]

use std::net::UdpSocket;
use std::sync::{Arc, Mutex};

/// One instance the Browser reports: its name and TCP port (None: named
/// pipes only).
#[derive(Debug, Clone)]
pub struct Instance {
    pub name: String,
    pub tcp: Option<u16>,
}

pub fn instance(name: &str, tcp: Option<u16>) -> Instance {
    Instance {
        name: name.to_string(),
        tcp,
    }
}

pub struct Browser {
    pub port: u16,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Browser {
    /// A Browser that knows `instances`.
    pub fn start(instances: Vec<Instance>) -> Browser {
        Browser::spawn(Some(instances))
    }

    /// A Browser that receives requests and never answers (as behind a
    /// firewall that drops the replies, or a hung service).
    pub fn silent() -> Browser {
        Browser::spawn(None)
    }

    fn spawn(instances: Option<Vec<Instance>>) -> Browser {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind udp 127.0.0.1");
        let port = socket.local_addr().expect("local addr").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    return;
                };
                let request = buf[..n].to_vec();
                log.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(request.clone());
                let Some(known) = &instances else { continue };
                if let Some(reply) = answer(known, &request) {
                    let _ = socket.send_to(&reply, from);
                }
            }
        });
        Browser { port, requests }
    }

    /// Every datagram received so far, in order.
    pub fn requests(&self) -> Vec<Vec<u8>> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The environment variable that points uprun's test build at this Browser.
    pub fn env(&self) -> (&'static str, String) {
        (uprun::db::mssql::BROWSER_PORT_ENV, self.port.to_string())
    }
}

/// A `CLNT_UCAST_INST` request for `name`, as uprun sends it.
pub fn instance_request(name: &str) -> Vec<u8> {
    let mut r = vec![0x04];
    r.extend_from_slice(name.as_bytes());
    r.push(0);
    r
}

/// A UDP port on 127.0.0.1 that nothing listens on (bound, then released).
pub fn free_udp_port() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind udp 127.0.0.1");
    socket.local_addr().expect("local addr").port()
}

fn record(i: &Instance) -> String {
    let mut r = format!(
        "ServerName;MOCKHOST;InstanceName;{};IsClustered;No;Version;16.0.1000.6;",
        i.name
    );
    if let Some(port) = i.tcp {
        r.push_str(&format!("tcp;{port};"));
    }
    r.push_str(&format!(
        "np;\\\\MOCKHOST\\pipe\\MSSQL${}\\sql\\query;;",
        i.name
    ));
    r
}

fn answer(known: &[Instance], request: &[u8]) -> Option<Vec<u8>> {
    let text = match request.split_first()? {
        (0x03, _) => known.iter().map(record).collect::<String>(),
        (0x04, name) => {
            let name = name.strip_suffix(&[0]).unwrap_or(name);
            let name = String::from_utf8_lossy(name);
            record(known.iter().find(|i| i.name.eq_ignore_ascii_case(&name))?)
        }
        _ => return None,
    };
    let mut reply = vec![0x05];
    reply.extend_from_slice(&(text.len() as u16).to_le_bytes());
    reply.extend_from_slice(text.as_bytes());
    Some(reply)
}
