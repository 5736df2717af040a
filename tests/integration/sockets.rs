//! The sockets `run` accepts, read back from the kernel.

use std::os::fd::RawFd;

use tokend_proto::v1 as pb;

use crate::harness::TestServer;

/// The local port of socket `fd`, if it is an IPv4/IPv6 TCP socket.
fn local_port(fd: RawFd) -> Option<u16> {
    // SAFETY: getsockname writes at most `len` bytes into `addr`, a
    // sockaddr_storage large enough for any address family.
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let rc = unsafe { libc::getsockname(fd, (&raw mut addr).cast(), &mut len) };
    if rc != 0 {
        return None;
    }
    match i32::from(addr.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says this is a sockaddr_in.
            let v4: &libc::sockaddr_in = unsafe { &*(&raw const addr).cast() };
            Some(u16::from_be(v4.sin_port))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this is a sockaddr_in6.
            let v6: &libc::sockaddr_in6 = unsafe { &*(&raw const addr).cast() };
            Some(u16::from_be(v6.sin6_port))
        }
        _ => None,
    }
}

/// Whether the listening socket is `fd` (accepted sockets are not).
fn is_listening(fd: RawFd) -> bool {
    let mut on: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes one c_int into `on`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&raw mut on).cast(),
            &mut len,
        )
    };
    rc == 0 && on != 0
}

fn nodelay(fd: RawFd) -> bool {
    let mut on: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes one c_int into `on`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&raw mut on).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "getsockopt TCP_NODELAY on fd {fd}");
    on != 0
}

/// Issue 15. Invariant: every connection the server accepts has Nagle's
/// algorithm off (TCP_NODELAY), so a small reply is never held back waiting
/// for the caller's delayed ACK (a 40 ms tail at 16+ calls in flight).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_sockets_have_nagle_off() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let _ = client
        .get_connection(pb::GetConnectionRequest {
            connection_id: "nodelay-probe".into(),
        })
        .await;
    // Server-side sockets: this process's TCP sockets bound to the
    // server's port, not listening.
    let mut accepted = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd") {
        let Ok(fd) = entry
            .expect("fd entry")
            .file_name()
            .to_string_lossy()
            .parse::<RawFd>()
        else {
            continue;
        };
        if local_port(fd) == Some(server.addr.port()) && !is_listening(fd) {
            accepted.push(fd);
        }
    }
    assert!(!accepted.is_empty(), "found no accepted socket");
    for fd in accepted {
        assert!(nodelay(fd), "accepted socket fd {fd} has Nagle on");
    }
}
