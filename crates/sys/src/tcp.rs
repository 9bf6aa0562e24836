//! TCP socket options for BGP sessions: `TCP_MD5SIG` keys per peer address
//! and the minimum accepted TTL / hop limit (`IP_MINTTL`,
//! `IPV6_MINHOPCOUNT`).
#![allow(unsafe_code)]

use std::io;
use std::mem::{size_of, zeroed};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Longest key the kernel accepts (`TCP_MD5SIG_MAXKEYLEN`).
pub const TCP_MD5SIG_MAXKEYLEN: usize = 80;

/// `struct tcp_md5sig` from `linux/tcp.h`.
#[repr(C)]
struct TcpMd5Sig {
    addr: libc::sockaddr_storage,
    flags: u8,
    prefixlen: u8,
    keylen: u16,
    ifindex: i32,
    key: [u8; TCP_MD5SIG_MAXKEYLEN],
}

fn sockaddr_of(addr: IpAddr) -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    match addr {
        IpAddr::V4(a) => {
            // SAFETY: sockaddr_storage is larger than and suitably aligned
            // for sockaddr_in; we only write plain fields.
            let sin = unsafe {
                &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
        }
        IpAddr::V6(a) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe {
                &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_addr.s6_addr = a.octets();
        }
    }
    ss
}

/// Installs (or, with an empty key, removes) the TCP MD5 key for segments
/// exchanged with `peer` on `fd`. On a listening socket this applies to
/// connections accepted from `peer`; on a connecting socket it must be set
/// before `connect`.
pub fn set_tcp_md5sig(fd: BorrowedFd<'_>, peer: IpAddr, key: &[u8]) -> io::Result<()> {
    if key.len() > TCP_MD5SIG_MAXKEYLEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "TCP MD5 key for {peer} is {} bytes, longer than {TCP_MD5SIG_MAXKEYLEN}",
                key.len()
            ),
        ));
    }
    let mut sig = TcpMd5Sig {
        addr: sockaddr_of(peer),
        flags: 0,
        prefixlen: 0,
        keylen: key.len() as u16,
        ifindex: 0,
        key: [0; TCP_MD5SIG_MAXKEYLEN],
    };
    sig.key[..key.len()].copy_from_slice(key);
    // SAFETY: `sig` is a properly initialised `struct tcp_md5sig` that lives
    // across the call, and the length passed is its exact size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MD5SIG,
            (&sig as *const TcpMd5Sig).cast(),
            size_of::<TcpMd5Sig>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Drops packets whose TTL (IPv4) or hop limit (IPv6) is below `min`:
/// GTSM, where peers send with TTL 255 and accept only 255 - hops + 1.
pub fn set_min_ttl(fd: BorrowedFd<'_>, ipv6: bool, min: u8) -> io::Result<()> {
    let (level, name) = if ipv6 {
        (libc::IPPROTO_IPV6, libc::IPV6_MINHOPCOUNT)
    } else {
        (libc::IPPROTO_IP, libc::IP_MINTTL)
    };
    let v: libc::c_int = min.into();
    // SAFETY: passes a pointer to a live c_int with its exact size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&v as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;

    #[test]
    fn md5_key_set_and_cleared_on_listener() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        set_tcp_md5sig(l.as_fd(), peer, b"s3cret").unwrap();
        set_tcp_md5sig(l.as_fd(), peer, b"").unwrap();
        let long = [b'x'; 81];
        assert!(set_tcp_md5sig(l.as_fd(), peer, &long).is_err());
    }

    #[test]
    fn md5_mismatch_blocks_connection() {
        // Listener requires a key from 127.0.0.1; a plain connect must not
        // complete (the SYN is dropped), a keyed one must.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        set_tcp_md5sig(l.as_fd(), addr.ip(), b"s3cret").unwrap();
        let plain = TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(300));
        assert!(plain.is_err(), "unsigned connect succeeded");
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        set_tcp_md5sig(s.as_fd(), addr.ip(), b"s3cret").unwrap();
        s.connect_timeout(&addr.into(), std::time::Duration::from_secs(2))
            .expect("signed connect");
    }

    #[test]
    fn min_ttl_accepted() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        set_min_ttl(l.as_fd(), false, 254).unwrap();
        let l6 = TcpListener::bind("[::1]:0");
        if let Ok(l6) = l6 {
            set_min_ttl(l6.as_fd(), true, 254).unwrap();
        }
    }
}
