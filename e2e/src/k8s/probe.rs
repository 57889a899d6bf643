//! Readiness probes the harness runs itself: a plain HTTP GET of a local health endpoint, and
//! a DNS question for an A record (enough of RFC 1035 to ask the cluster DNS one name).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(2);

/// GETs `path` from `addr` over plain HTTP; Ok(body) on a 200.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).map_err(|e| format!("reading from {addr}: {e}"))?;
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(body.to_string())
    } else {
        Err(format!("{status} {}", body.trim()))
    }
}

fn question(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00]); // recursion desired
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // one question
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&[0, 1, 0, 1]); // type A, class IN
    q
}

/// Skips a (possibly compressed) name at `at`, returning the offset after it.
fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *msg.get(at)? as usize;
        if len == 0 {
            return Some(at + 1);
        }
        if len & 0xc0 == 0xc0 {
            return Some(at + 2);
        }
        at += 1 + len;
    }
}

fn parse_answers(id: u16, msg: &[u8]) -> Result<Vec<Ipv4Addr>, String> {
    if msg.len() < 12 || u16::from_be_bytes([msg[0], msg[1]]) != id {
        return Err("malformed or foreign reply".into());
    }
    let rcode = msg[3] & 0x0f;
    if rcode != 0 {
        return Err(format!("answered with rcode {rcode}"));
    }
    let questions = u16::from_be_bytes([msg[4], msg[5]]);
    let answers = u16::from_be_bytes([msg[6], msg[7]]);
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(msg, at).ok_or("truncated question")? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..answers {
        at = skip_name(msg, at).ok_or("truncated answer")?;
        let header = msg.get(at..at + 10).ok_or("truncated answer")?;
        let (rtype, len) =
            (u16::from_be_bytes([header[0], header[1]]), u16::from_be_bytes([header[8], header[9]]));
        let data = msg.get(at + 10..at + 10 + len as usize).ok_or("truncated answer")?;
        if rtype == 1 && data.len() == 4 {
            out.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
        }
        at += 10 + len as usize;
    }
    Ok(out)
}

/// Asks `server` for the A records of `name`.
pub fn dns_a(server: Ipv4Addr, name: &str) -> Result<Vec<Ipv4Addr>, String> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(|e| e.to_string())?;
    socket.set_read_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
    let id = (std::process::id() & 0xffff) as u16;
    socket.send_to(&question(id, name), (server, 53)).map_err(|e| format!("asking {server}: {e}"))?;
    let mut buf = [0u8; 1500];
    let (n, _) = socket.recv_from(&mut buf).map_err(|e| format!("no answer from {server}: {e}"))?;
    parse_answers(id, &buf[..n])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_with_a_compressed_answer_is_read() {
        let mut reply = question(7, "kubernetes.default.svc.cluster.local");
        reply[2] = 0x81;
        reply[3] = 0x80;
        reply[7] = 1; // one answer
        reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 96, 0, 1]);
        assert_eq!(parse_answers(7, &reply), Ok(vec![Ipv4Addr::new(10, 96, 0, 1)]));
        assert!(parse_answers(8, &reply).is_err(), "another question's reply");
        let mut refused = question(7, "example.com");
        refused[3] = 0x05;
        assert!(parse_answers(7, &refused).unwrap_err().contains("rcode 5"));
    }
}
