//! Pings from inside a namespace without a process per ping: one raw ICMP socket
//! opened in the pod's namespace sends an echo request to every destination at
//! once and collects the replies, so a 100-node lab's reachability matrix costs a
//! socket per pod instead of ten thousand `ping` processes. [`echo_request`] and
//! [`parse_reply`] are the pure packet code.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// How long a round waits for replies after its last request (as `ping -W 1`).
const WAIT: Duration = Duration::from_secs(1);

/// The Internet checksum (RFC 1071) of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP echo request with identifier `id` and sequence `seq`, 8 bytes of payload.
pub fn echo_request(id: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![8, 0, 0, 0];
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(b"tabbylab");
    let c = checksum(&p);
    p[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

/// From an IPv4 packet as a raw ICMP socket reads it: the source and sequence of an
/// echo reply carrying identifier `id`, else `None`.
pub fn parse_reply(packet: &[u8], id: u16) -> Option<(Ipv4Addr, u16)> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    if ihl < 20 || packet.len() < ihl + 8 {
        return None;
    }
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let icmp = &packet[ihl..];
    if icmp[0] != 0 || icmp[1] != 0 || u16::from_be_bytes([icmp[4], icmp[5]]) != id {
        return None;
    }
    Some((src, u16::from_be_bytes([icmp[6], icmp[7]])))
}

/// A raw ICMP socket opened inside namespace `ns` (it stays in it).
fn open_in(ns: &str) -> Option<Socket> {
    let file = tabby_dataplane::NetnsFile::open(format!("/run/netns/{ns}")).ok()?;
    file.run(|| {
        Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4)).map_err(|e| {
            tabby_dataplane::Error::Netns {
                path: "raw ICMP socket".into(),
                reason: e.to_string(),
            }
        })
    })
    .ok()
}

fn next_id() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    (std::process::id() as u16).wrapping_mul(31) ^ NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Whether each of `dests` answers a ping from namespace `ns`: a request to every
/// one not answered yet, then up to a second for the replies, `tries` rounds.
/// `None` when no raw socket could be opened there.
pub fn ping_all(ns: &str, dests: &[Ipv4Addr], tries: u32) -> Option<Vec<bool>> {
    let mut sock = open_in(ns)?;
    let id = next_id();
    let mut ok = vec![false; dests.len()];
    let mut buf = [0u8; 1500];
    for _ in 0..tries {
        if ok.iter().all(|o| *o) {
            break;
        }
        for (i, d) in dests.iter().enumerate() {
            if !ok[i] {
                let to = SockAddr::from(SocketAddrV4::new(*d, 0));
                // A send that fails (no route) is an unanswered ping.
                let _ = sock.send_to(&echo_request(id, i as u16), &to);
            }
        }
        let deadline = Instant::now() + WAIT;
        while !ok.iter().all(|o| *o) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || sock.set_read_timeout(Some(left)).is_err() {
                break;
            }
            let Ok(n) = sock.read(&mut buf) else {
                break;
            };
            if let Some((src, seq)) = parse_reply(&buf[..n], id)
                && let Some(d) = dests.get(usize::from(seq))
                && *d == src
            {
                ok[usize::from(seq)] = true;
            }
        }
    }
    Some(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_requests_checksum_to_zero() {
        let p = echo_request(0x1234, 7);
        assert_eq!(p.len(), 16);
        assert_eq!(&p[..2], [8, 0]);
        assert_eq!(&p[4..8], [0x12, 0x34, 0, 7]);
        // A packet with its checksum in place sums to zero.
        assert_eq!(checksum(&p), 0);
        // RFC 1071's example: 0001 f203 f4f5 f6f7 sums to ddf2.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
    }

    #[test]
    fn replies_parsed() {
        let mut ip = vec![0x45, 0, 0, 36, 0, 0, 0, 0, 64, 1, 0, 0];
        ip.extend_from_slice(&[100, 64, 0, 5, 100, 64, 0, 9]);
        let mut reply = echo_request(0xbeef, 3);
        reply[0] = 0;
        let mut pkt = ip.clone();
        pkt.extend_from_slice(&reply);
        assert_eq!(
            parse_reply(&pkt, 0xbeef),
            Some((Ipv4Addr::new(100, 64, 0, 5), 3))
        );
        // Another pinger's identifier, a request (our own, looped), a short packet.
        assert_eq!(parse_reply(&pkt, 0xbeee), None);
        let mut req = ip.clone();
        req.extend_from_slice(&echo_request(0xbeef, 3));
        assert_eq!(parse_reply(&req, 0xbeef), None);
        assert_eq!(parse_reply(&pkt[..24], 0xbeef), None);
        assert_eq!(parse_reply(&[], 0xbeef), None);
    }
}
