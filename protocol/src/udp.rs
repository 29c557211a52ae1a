//! UDP sockets for QUIC endpoints, with kernel buffers sized for bursts.
//!
//! Every check-in is a datagram each way. At tens of thousands a second the kernel's default
//! receive buffer (about 200 KiB, a few hundred small datagrams) fills within milliseconds
//! whenever the process is slow to read, for instance while both cores are busy, and the
//! kernel drops every datagram past it. QUIC recovers a lost datagram only when its loss is
//! detected, tens of milliseconds later: a handful of drops a second is the whole latency
//! tail. So each endpoint asks for [`BUFFER_BYTES`] each way: first within the system's
//! limit (`net.core.rmem_max`, `net.core.wmem_max`), then, if that is short and the process
//! may (`CAP_NET_ADMIN`), past it.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};

/// The kernel buffer an endpoint asks for, each way, as the kernel reports it (Linux counts
/// its bookkeeping too, and reports twice the size a process sets).
pub const BUFFER_BYTES: usize = 8 << 20;

/// What the kernel granted a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffers {
    /// Receive buffer, bytes, as `SO_RCVBUF` reports it.
    pub recv: usize,
    /// Send buffer, bytes, as `SO_SNDBUF` reports it.
    pub send: usize,
}

impl Buffers {
    /// Whether both buffers reach [`BUFFER_BYTES`].
    pub fn sufficient(&self) -> bool {
        self.recv >= BUFFER_BYTES && self.send >= BUFFER_BYTES
    }

    /// A line for the log when a buffer is short: what was granted and how to raise it.
    pub fn shortfall(&self) -> Option<String> {
        if self.sufficient() {
            return None;
        }
        Some(format!(
            "UDP buffers are {} KiB to receive and {} KiB to send, short of the {} KiB asked: \
             bursts may overflow them and lose datagrams (seen as latency spikes); raise \
             net.core.rmem_max and net.core.wmem_max to {} or more",
            self.recv >> 10,
            self.send >> 10,
            BUFFER_BYTES >> 10,
            BUFFER_BYTES / 2
        ))
    }
}

/// Binds a UDP socket at `addr` with buffers as large as the system allows, up to
/// [`BUFFER_BYTES`].
pub fn bind(addr: SocketAddr) -> io::Result<(UdpSocket, Buffers)> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Dual-stack where the system allows it, as a plain bind would be.
        let _ = socket.set_only_v6(false);
    }
    let recv = grow(&socket, Direction::Recv);
    let send = grow(&socket, Direction::Send);
    socket.bind(&addr.into())?;
    Ok((socket.into(), Buffers { recv, send }))
}

/// The kernel's number for a socket (its inode), to find it in `/proc/net/udp`.
pub fn inode(socket: &UdpSocket) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", socket.as_raw_fd())).ok()?;
    let link = link.to_str()?;
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Datagrams the kernel dropped for the socket `inode` because its receive buffer was full
/// (or for another reason it counts the same way), from `/proc/net/udp` and `udp6`. `None`
/// where the system does not say.
pub fn receive_drops(inode: u64) -> Option<u64> {
    ["/proc/net/udp", "/proc/net/udp6"].iter().find_map(|path| {
        let table = std::fs::read_to_string(path).ok()?;
        drops_in(&table, inode)
    })
}

/// The `drops` column of the row for `inode` in a `/proc/net/udp` table.
fn drops_in(table: &str, inode: u64) -> Option<u64> {
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next()?.split_whitespace().collect();
    // The header names `tx_queue rx_queue` and `tr tm->when` as one column each in the rows.
    let drops_col = header.iter().position(|h| *h == "drops")?;
    let inode_col = header.iter().position(|h| *h == "inode")?;
    let shift = header.len() - drops_col;
    let inode_shift = header.len() - inode_col;
    lines.find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let at = |from_end: usize| cols.get(cols.len().checked_sub(from_end)?);
        let row_inode: u64 = at(inode_shift)?.parse().ok()?;
        (row_inode == inode).then(|| at(shift)?.parse().ok())?
    })
}

#[derive(Clone, Copy)]
enum Direction {
    Recv,
    Send,
}

/// Asks for [`BUFFER_BYTES`] one way and returns what the kernel reports (0 if it does not
/// say). Best effort: a socket that keeps its default buffers still works, and the caller
/// reports the shortfall.
fn grow(socket: &Socket, dir: Direction) -> usize {
    // The kernel doubles what it is given; ask for half, so the report is comparable.
    let ask = BUFFER_BYTES / 2;
    let size = || match dir {
        Direction::Recv => socket.recv_buffer_size().unwrap_or(0),
        Direction::Send => socket.send_buffer_size().unwrap_or(0),
    };
    let _ = match dir {
        Direction::Recv => socket.set_recv_buffer_size(ask),
        Direction::Send => socket.set_send_buffer_size(ask),
    };
    let got = size();
    if got >= BUFFER_BYTES {
        return got;
    }
    // Past the system limit: only with CAP_NET_ADMIN. Failing is fine; the caller reports
    // what it got.
    let option = match dir {
        Direction::Recv => libc::SO_RCVBUFFORCE,
        Direction::Send => libc::SO_SNDBUFFORCE,
    };
    let value = ask as libc::c_int;
    // SAFETY: a valid socket descriptor, an int option with a pointer to an int and its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return got;
    }
    size()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_with_buffers_at_least_the_defaults_and_reports_them() {
        let (socket, buffers) = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let plain = UdpSocket::bind("127.0.0.1:0").unwrap();
        let plain = Socket::from(plain);
        assert!(buffers.recv >= plain.recv_buffer_size().unwrap());
        assert!(buffers.send >= plain.send_buffer_size().unwrap());
        // What is reported is what the socket has.
        let socket = Socket::from(socket);
        assert_eq!(socket.recv_buffer_size().unwrap(), buffers.recv);
        assert_eq!(socket.send_buffer_size().unwrap(), buffers.send);
        assert_eq!(buffers.shortfall().is_none(), buffers.sufficient());
    }

    #[test]
    fn a_short_buffer_names_the_setting_to_raise() {
        let short = Buffers {
            recv: 212_992,
            send: BUFFER_BYTES,
        };
        let line = short.shortfall().unwrap();
        assert!(line.contains("net.core.rmem_max"), "{line}");
        assert!(line.contains("208 KiB"), "{line}");
        assert!(Buffers {
            recv: BUFFER_BYTES,
            send: BUFFER_BYTES
        }
        .shortfall()
        .is_none());
    }

    #[test]
    fn counts_the_datagrams_a_full_receive_buffer_dropped() {
        // A socket with a small buffer that nobody reads: datagrams past the buffer drop.
        let small = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        small.set_recv_buffer_size(4096).unwrap();
        small
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let small: UdpSocket = small.into();
        let inode = inode(&small).expect("a socket has an inode on Linux");
        assert_eq!(receive_drops(inode), Some(0));
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = small.local_addr().unwrap();
        for _ in 0..500 {
            sender.send_to(&[7u8; 512], to).unwrap();
        }
        let drops = receive_drops(inode).unwrap();
        assert!(drops > 0 && drops <= 500, "{drops}");
        // A socket that is not there has no row.
        drop(small);
        assert_eq!(receive_drops(inode), None);
    }

    #[test]
    fn reads_the_drops_column_of_the_right_row() {
        let table = "\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
 1045: 0100007F:1D13 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 81234 2 0000000000000000 17
 1046: 00000000:D516 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 81299 2 0000000000000000 0
";
        assert_eq!(drops_in(table, 81234), Some(17));
        assert_eq!(drops_in(table, 81299), Some(0));
        assert_eq!(drops_in(table, 5), None);
        assert_eq!(drops_in("", 5), None);
    }

    #[test]
    fn binds_ipv6_too() {
        // Loopback v6 may be missing on a host; skip quietly then.
        if UdpSocket::bind("[::1]:0").is_err() {
            return;
        }
        let (socket, _) = bind("[::1]:0".parse().unwrap()).unwrap();
        assert!(socket.local_addr().unwrap().is_ipv6());
    }
}
