//! Who is on the other end of a local connection. The local endpoint attaches the
//! user's credentials to whatever it forwards, so only the user's own processes (and
//! the UIDs in `allowed_uids`) may use it, and the same holds for the OAuth callback
//! listener (README, "Security").
//!
//! On Linux the owner of the client's socket is looked up once per connection, at
//! accept, by the connection's exact 4-tuple: first with NETLINK_SOCK_DIAG (an
//! inet_diag exact-socket query, one round trip to the kernel), else in
//! `/proc/net/tcp{,6}`. The netlink request is built here on rustix rather than with
//! the rust-netlink crates: it is one fixed-size request and one field of the answer.
//! Elsewhere the lookup is unavailable, which `GET /` and `doctor` say.

use std::net::SocketAddr;

/// Who may use a listener: this process's user and `allowed_uids`.
#[derive(Debug, Clone)]
pub(crate) struct LocalUsers {
    own: u32,
    allowed: Vec<u32>,
}

/// The outcome of [`LocalUsers::admit`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// The user, a UID in `allowed_uids`, or (with `allow_non_loopback`) a peer on
    /// another host, whose socket no lookup here can see.
    Admitted,
    /// Another local user.
    Refused(u32),
    /// The lookup failed for this connection: refused, since the owner is unknown.
    Unknown(String),
    /// No lookup works on this system: admitted, as `GET /` and `doctor` warn.
    Unchecked,
}

impl LocalUsers {
    pub(crate) fn new(allowed: &[u32]) -> Self {
        Self {
            own: rustix::process::getuid().as_raw(),
            allowed: allowed.to_vec(),
        }
    }

    /// Decides on the connection from `client` to our `server` address.
    pub(crate) fn admit(&self, client: SocketAddr, server: SocketAddr) -> Admission {
        if !canonical(client).ip().is_loopback() {
            return Admission::Admitted;
        }
        if !available() {
            return Admission::Unchecked;
        }
        match owner(client, server) {
            Ok(uid) if uid == self.own || self.allowed.contains(&uid) => Admission::Admitted,
            Ok(uid) => Admission::Refused(uid),
            Err(e) => Admission::Unknown(e.to_string()),
        }
    }
}

/// How connections are checked here, for `GET /` and `doctor`.
pub fn mechanism() -> &'static str {
    if netlink::works() {
        "NETLINK_SOCK_DIAG"
    } else if proc_net::works() {
        "/proc/net/tcp"
    } else {
        "unavailable"
    }
}

fn available() -> bool {
    netlink::works() || proc_net::works()
}

/// The UID that owns the TCP socket at `client` connected to `server`.
pub(crate) fn owner(client: SocketAddr, server: SocketAddr) -> std::io::Result<u32> {
    let (client, server) = (canonical(client), canonical(server));
    if netlink::works() {
        return netlink::owner(client, server);
    }
    proc_net::owner(client, server)
}

/// An IPv4 peer on a dual-stack socket shows as `::ffff:a.b.c.d`; its socket is IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(target_os = "linux")]
mod netlink {
    use std::io;
    use std::net::{IpAddr, SocketAddr};
    use std::sync::OnceLock;

    use rustix::net::netlink::{self, SocketAddrNetlink};
    use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType};

    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLM_F_REQUEST: u16 = 1;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_HEADER: usize = 16;
    /// `struct inet_diag_req_v2`: family, protocol, ext, pad, states, then the
    /// 48-byte `inet_diag_sockid`.
    const REQUEST: usize = NLMSG_HEADER + 8 + 48;
    /// `idiag_uid` in `struct inet_diag_msg`: after family, state, timer, retrans
    /// (4), the sockid (48), expires, rqueue and wqueue (12).
    const UID_AT: usize = NLMSG_HEADER + 4 + 48 + 12;

    /// Whether the kernel answers sock_diag queries here (not in some sandboxes).
    pub(super) fn works() -> bool {
        static WORKS: OnceLock<bool> = OnceLock::new();
        *WORKS.get_or_init(|| socket().is_ok())
    }

    fn socket() -> io::Result<rustix::fd::OwnedFd> {
        Ok(rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::DGRAM,
            rustix::net::SocketFlags::CLOEXEC,
            Some(netlink::SOCK_DIAG),
        )?)
    }

    pub(super) fn owner(client: SocketAddr, server: SocketAddr) -> io::Result<u32> {
        let socket = socket()?;
        rustix::net::sendto(
            &socket,
            &request(client, server),
            SendFlags::empty(),
            &SocketAddrNetlink::new(0, 0),
        )?;
        let mut answer = [0u8; 512];
        let len = rustix::net::recv(&socket, &mut answer, RecvFlags::empty())?.0;
        parse(&answer[..len.min(answer.len())])
    }

    /// An exact-socket query: the client's end of the connection (source = the
    /// client, destination = us), any state, no cookie.
    fn request(client: SocketAddr, server: SocketAddr) -> [u8; REQUEST] {
        let mut message = [0u8; REQUEST];
        message[0..4].copy_from_slice(&(REQUEST as u32).to_ne_bytes());
        message[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        message[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        let request = &mut message[NLMSG_HEADER..];
        request[0] = match client.ip() {
            IpAddr::V4(_) => rustix::net::AddressFamily::INET.as_raw() as u8,
            IpAddr::V6(_) => rustix::net::AddressFamily::INET6.as_raw() as u8,
        };
        request[1] = 6; // IPPROTO_TCP
        request[4..8].copy_from_slice(&u32::MAX.to_ne_bytes()); // every state
        let id = &mut request[8..];
        id[0..2].copy_from_slice(&client.port().to_be_bytes());
        id[2..4].copy_from_slice(&server.port().to_be_bytes());
        put_addr(&mut id[4..20], client.ip());
        put_addr(&mut id[20..36], server.ip());
        // interface 0; cookie INET_DIAG_NOCOOKIE.
        id[40..48].copy_from_slice(&[0xff; 8]);
        message
    }

    fn put_addr(slot: &mut [u8], ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => slot[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => slot.copy_from_slice(&v6.octets()),
        }
    }

    fn parse(answer: &[u8]) -> io::Result<u32> {
        let kind = answer
            .get(4..6)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
            .ok_or_else(|| io::Error::other("short sock_diag answer"))?;
        if kind == NLMSG_ERROR {
            let errno = answer
                .get(NLMSG_HEADER..NLMSG_HEADER + 4)
                .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                .unwrap_or(0);
            return Err(io::Error::from_raw_os_error(-errno));
        }
        if kind != SOCK_DIAG_BY_FAMILY {
            return Err(io::Error::other(format!(
                "unexpected sock_diag answer type {kind}"
            )));
        }
        answer
            .get(UID_AT..UID_AT + 4)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| io::Error::other("short sock_diag answer"))
    }
}

#[cfg(target_os = "linux")]
mod proc_net {
    use std::io;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    pub(super) fn works() -> bool {
        std::path::Path::new("/proc/net/tcp").exists()
    }

    pub(super) fn owner(client: SocketAddr, server: SocketAddr) -> io::Result<u32> {
        let table = match client {
            SocketAddr::V4(_) => "/proc/net/tcp",
            SocketAddr::V6(_) => "/proc/net/tcp6",
        };
        find(&std::fs::read_to_string(table)?, client, server)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    /// The `uid` column of the line whose local address is the client's and whose
    /// remote address is ours.
    pub(super) fn find(table: &str, client: SocketAddr, server: SocketAddr) -> Option<u32> {
        table.lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, remote, uid) = (fields.get(1)?, fields.get(2)?, fields.get(7)?);
            (address(local)? == client && address(remote)? == server)
                .then(|| uid.parse().ok())
                .flatten()
        })
    }

    /// `0100007F:1F90`: the address as the kernel's u32 words in host order, the port
    /// in hex.
    fn address(field: &str) -> Option<SocketAddr> {
        let (ip, port) = field.split_once(':')?;
        let port = u16::from_str_radix(port, 16).ok()?;
        let word = |i: usize| {
            ip.get(i * 8..i * 8 + 8)
                .and_then(|w| u32::from_str_radix(w, 16).ok())
                .map(u32::to_ne_bytes)
        };
        let ip = match ip.len() {
            8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
            32 => {
                let mut octets = [0u8; 16];
                for i in 0..4 {
                    octets[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
                }
                IpAddr::V6(Ipv6Addr::from(octets))
            }
            _ => return None,
        };
        Some(SocketAddr::new(ip, port))
    }
}

#[cfg(not(target_os = "linux"))]
mod netlink {
    pub(super) fn works() -> bool {
        false
    }
    pub(super) fn owner(_: super::SocketAddr, _: super::SocketAddr) -> std::io::Result<u32> {
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

#[cfg(not(target_os = "linux"))]
mod proc_net {
    pub(super) fn works() -> bool {
        false
    }
    pub(super) fn owner(_: super::SocketAddr, _: super::SocketAddr) -> std::io::Result<u32> {
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// Both lookups name this process's user for a connection it made itself.
    #[test]
    fn both_lookups_find_the_owner_of_a_loopback_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let server = listener.local_addr().expect("addr");
        let stream = std::net::TcpStream::connect(server).expect("connect");
        let client = stream.local_addr().expect("addr");
        let me = rustix::process::getuid().as_raw();
        assert_eq!(netlink::owner(client, server).expect("netlink"), me);
        assert_eq!(proc_net::owner(client, server).expect("proc"), me);
        // A 4-tuple that is not connected is nobody's.
        let other = SocketAddr::new(client.ip(), 1);
        assert!(netlink::owner(other, server).is_err());
        assert!(proc_net::owner(other, server).is_err());
    }

    #[test]
    fn proc_net_lines_are_read_as_the_kernel_writes_them() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:A2C4 0100007F:22E3 01 00000000:00000000 00:00000000 00000000  1000        0 4242 1\n";
        let client: SocketAddr = "127.0.0.1:41668".parse().expect("addr");
        let server: SocketAddr = "127.0.0.1:8931".parse().expect("addr");
        assert_eq!(proc_net::find(table, client, server), Some(1000));
        assert_eq!(proc_net::find(table, server, client), None);
    }
}
