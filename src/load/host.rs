//! What the host allows and what the server uses: file-descriptor limits,
//! the ephemeral port range, the local server's pid (found from its
//! listening socket) and its resident memory. Linux /proc only.

use std::net::SocketAddr;
use std::path::Path;

/// File descriptors a generator process needs besides its connections:
/// stdio, io_uring rings and eventfds of each executor, the binary, pipes.
pub const FDS_PER_PROCESS_BASE: u64 = 64;
pub const FDS_PER_THREAD: u64 = 16;
/// Processes `/proc` is searched through when looking for the server.
const PROCESSES_SCANNED_MAX: usize = 100_000;
/// File descriptors of one process looked at when looking for the server.
const FDS_SCANNED_PER_PROCESS_MAX: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot read the file-descriptor limit: {0}")]
    Rlimit(std::io::Error),
    #[error("{connections} connections in one process need {needed} file descriptors, but RLIMIT_NOFILE allows {hard} (hard limit); raise it (`ulimit -Hn`, or nofile in /etc/security/limits.conf, see tuning/limits.conf) or spread the connections over more processes with --procs {procs}")]
    TooFewFds {
        connections: u64,
        needed: u64,
        hard: u64,
        procs: u64,
    },
    #[error("{connections} connections to one address need as many local ports per source address, but net.ipv4.ip_local_port_range ({low}-{high}) offers {available}; widen it with `sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\"` (see tuning/), connect from more addresses (--source-ips), or use fewer connections")]
    TooFewPorts {
        connections: u64,
        low: u32,
        high: u32,
        available: u64,
    },
}

/// RLIMIT_NOFILE (soft, hard).
pub fn fd_limits() -> Result<(u64, u64), HostError> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(HostError::Rlimit(std::io::Error::last_os_error()));
    }
    // rlim_t is u64 on Linux.
    Ok((limit.rlim_cur, limit.rlim_max))
}

/// Raises the soft RLIMIT_NOFILE to the hard one (children inherit it);
/// returns the new soft limit.
pub fn raise_fd_limit() -> Result<u64, HostError> {
    let (soft, hard) = fd_limits()?;
    if soft >= hard {
        return Ok(soft);
    }
    let limit = libc::rlimit {
        rlim_cur: hard as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    };
    // SAFETY: setrlimit reads the struct; raising soft up to hard is allowed.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Ok(soft);
    }
    Ok(hard)
}

/// File descriptors one process with `connections` and `threads` needs.
pub fn fds_needed(connections: u64, threads: u64) -> u64 {
    connections + FDS_PER_PROCESS_BASE + FDS_PER_THREAD * threads
}

/// The fewest processes whose slices of `connections` each fit under
/// `limit` file descriptors (each process running `threads_per_proc`).
pub fn procs_needed(connections: u64, threads_per_proc: u64, limit: u64) -> Option<u64> {
    let room = limit.checked_sub(fds_needed(0, threads_per_proc))?;
    if room == 0 {
        return None;
    }
    Some(connections.div_ceil(room).max(1))
}

/// Checks that `connections` spread over `procs` processes fit the limit.
pub fn check_fds(
    connections: u64,
    procs: u64,
    threads_per_proc: u64,
    limit: u64,
) -> Result<(), HostError> {
    let per_proc = connections.div_ceil(procs.max(1));
    let needed = fds_needed(per_proc, threads_per_proc);
    if needed <= limit {
        return Ok(());
    }
    Err(HostError::TooFewFds {
        connections: per_proc,
        needed,
        hard: limit,
        procs: procs_needed(connections, threads_per_proc, limit).unwrap_or(procs + 1),
    })
}

/// net.ipv4.ip_local_port_range, when readable.
pub fn ephemeral_ports() -> Option<(u32, u32)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    parse_port_range(&text)
}

pub fn parse_port_range(text: &str) -> Option<(u32, u32)> {
    let mut parts = text.split_whitespace().map(|p| p.parse::<u32>().ok());
    let (low, high) = (parts.next()??, parts.next()??);
    (low <= high).then_some((low, high))
}

/// Every connection to one server address takes one local port of one of
/// `source_addresses`.
pub fn check_ports(
    connections: u64,
    source_addresses: u64,
    range: Option<(u32, u32)>,
) -> Result<(), HostError> {
    let Some((low, high)) = range else {
        return Ok(());
    };
    let available = (u64::from(high - low) + 1) * source_addresses.max(1);
    if connections <= available {
        return Ok(());
    }
    Err(HostError::TooFewPorts {
        connections,
        low,
        high,
        available,
    })
}

/// CPU time (user + system) `pid` has used, in seconds, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu_ticks(&stat).map(|ticks| ticks as f64 / clock_ticks_per_second())
}

/// utime + stime in clock ticks. The command name may hold spaces and
/// parentheses, so fields are counted after its last ')'.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of the line, utime 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// CPU time the calling thread has used, in seconds.
pub fn thread_cpu_seconds() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } != 0 {
        return 0.0;
    }
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}

/// Resident set size of `pid` in bytes (VmRSS), when readable.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The pid of the local process listening on `target`, found through the
/// socket inodes of /proc/net/tcp{,6} and the fds in /proc/*/fd. None when
/// the target is not local or the process cannot be seen (another user's).
pub fn find_listener_pid(target: SocketAddr) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            inodes.extend(listening_inodes(&text, target));
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    let own = std::process::id();
    let entries = std::fs::read_dir("/proc").ok()?;
    for entry in entries.flatten().take(PROCESSES_SCANNED_MAX) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own {
            continue;
        }
        if holds_any(&entry.path().join("fd"), &wanted) {
            return Some(pid);
        }
    }
    None
}

fn holds_any(fd_dir: &Path, wanted: &[String]) -> bool {
    let Ok(fds) = std::fs::read_dir(fd_dir) else {
        return false;
    };
    fds.flatten()
        .take(FDS_SCANNED_PER_PROCESS_MAX)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .any(|link| link.to_str().is_some_and(|l| wanted.iter().any(|w| w == l)))
}

/// Inodes of sockets in LISTEN state on `target`'s port whose address is
/// the target's or the unspecified one, from a /proc/net/tcp{,6} table.
pub fn listening_inodes(table: &str, target: SocketAddr) -> Vec<u64> {
    const LISTEN: &str = "0A";
    let mut inodes = Vec::new();
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 10 || fields[3] != LISTEN {
            continue;
        }
        let Some((addr_hex, port_hex)) = fields[1].split_once(':') else {
            continue;
        };
        if u16::from_str_radix(port_hex, 16).ok() != Some(target.port()) {
            continue;
        }
        let Some(addr) = parse_proc_addr(addr_hex) else {
            continue;
        };
        let matches = addr.is_unspecified()
            || addr == target.ip()
            || (addr.is_loopback() && target.ip().is_loopback());
        if matches {
            if let Ok(inode) = fields[9].parse::<u64>() {
                inodes.push(inode);
            }
        }
    }
    inodes
}

/// /proc/net addresses: IPv4 as one little-endian u32 in hex; IPv6 as four
/// of them.
fn parse_proc_addr(hex: &str) -> Option<std::net::IpAddr> {
    match hex.len() {
        8 => {
            let raw = u32::from_str_radix(hex, 16).ok()?;
            Some(std::net::Ipv4Addr::from(raw.swap_bytes()).into())
        }
        32 => {
            let mut bytes = [0u8; 16];
            for word in 0..4 {
                let raw = u32::from_str_radix(&hex[word * 8..word * 8 + 8], 16).ok()?;
                bytes[word * 4..word * 4 + 4].copy_from_slice(&raw.to_le_bytes());
            }
            let v6 = std::net::Ipv6Addr::from(bytes);
            Some(match v6.to_ipv4_mapped() {
                Some(v4) => v4.into(),
                None => v6.into(),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 111 1 0000000000000000 100 0 0 10 0
   1: 00000000:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 222 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1F90 0100007F:A000 01 00000000:00000000 00:00000000 00000000  1000        0 333 1 0000000000000000 100 0 0 10 0
   3: 0200007F:1F92 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 444 1 0000000000000000 100 0 0 10 0
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F93 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 555 1 0000000000000000 100 0 0 10 0
";

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn listening_sockets_are_found_by_port_and_address() {
        assert_eq!(listening_inodes(TCP, addr("127.0.0.1:8080")), [111]);
        assert_eq!(
            listening_inodes(TCP, addr("127.0.0.1:8081")),
            [222],
            "0.0.0.0 listens on every address"
        );
        assert_eq!(
            listening_inodes(TCP, addr("127.0.0.1:8082")),
            [444],
            "127.0.0.2 is loopback too"
        );
        assert!(listening_inodes(TCP, addr("127.0.0.1:9999")).is_empty());
        assert!(listening_inodes(TCP, addr("10.0.0.1:8080")).is_empty());
        assert_eq!(listening_inodes(TCP6, addr("[::1]:8083")), [555]);
    }

    #[test]
    fn the_listener_of_a_real_socket_in_this_process_is_seen_in_proc() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = listener.local_addr().unwrap();
        let mut inodes = Vec::new();
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            inodes.extend(listening_inodes(
                &std::fs::read_to_string(table).unwrap_or_default(),
                target,
            ));
        }
        assert_eq!(inodes.len(), 1, "our listener on {target}");
        let wanted = [format!("socket:[{}]", inodes[0])];
        assert!(holds_any(Path::new("/proc/self/fd"), &wanted));
        // find_listener_pid skips this process itself (it is never the server).
        assert_eq!(find_listener_pid(target), None);
    }

    #[test]
    fn rss_and_port_ranges_parse() {
        assert_eq!(
            parse_vm_rss("Name:\tx\nVmRSS:\t  12345 kB\nVmSwap: 0 kB\n"),
            Some(12_345 * 1024)
        );
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
        assert_eq!(
            parse_stat_cpu_ticks("42 (a b) c) S 1 2 3 4 5 6 7 8 9 10 250 30 0 0 20 0"),
            Some(280)
        );
        assert_eq!(parse_stat_cpu_ticks("42 (x) S 1"), None);
        assert!(cpu_seconds(std::process::id()).is_some());
        let before = thread_cpu_seconds();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(thread_cpu_seconds() > before);
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32_768, 60_999)));
        assert_eq!(parse_port_range("5 1"), None);
    }

    #[test]
    fn limits_are_checked_with_a_way_out_named() {
        assert!(check_ports(28_232, 1, Some((32_768, 60_999))).is_ok());
        let error = check_ports(30_000, 1, Some((32_768, 60_999))).unwrap_err();
        assert!(error.to_string().contains("ip_local_port_range"), "{error}");
        assert!(check_ports(30_000, 2, Some((32_768, 60_999))).is_ok());
        assert!(check_ports(1_000_000, 1, None).is_ok());

        assert_eq!(fds_needed(15_000, 2), 15_000 + 64 + 32);
        assert!(check_fds(15_000, 1, 2, 20_000).is_ok());
        let error = check_fds(30_000, 1, 2, 20_000).unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("--procs 2") && text.contains("ulimit"),
            "{text}"
        );
        assert!(check_fds(30_000, 2, 2, 20_000).is_ok());
        assert_eq!(procs_needed(30_000, 2, 20_000), Some(2));
        assert_eq!(procs_needed(100_000, 2, 20_000), Some(6));
        assert_eq!(procs_needed(10, 2, 20_000), Some(1));
        assert_eq!(procs_needed(10, 2, 50), None);
    }
}
