//! `shardmcp doctor`: checks this host against what `serve` needs and what
//! `tuning/` recommends. Each check is ok, warn (serve works, but below
//! the recommendation) or fail (serve would not start or not serve).
//!
//! The facts are gathered once ([`HostFacts::gather`]) and judged by pure
//! functions ([`run_checks`]), so tests inject any host as plain strings.
//! The recommendations are read from the shipped `tuning/sysctl.conf` and
//! `tuning/limits.conf`, compiled in, so the doctor and the files cannot
//! drift apart.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;

use crate::config::Config;

/// The kernel `tuning/sysctl.conf`, as shipped.
pub const SYSCTL_CONF: &str = include_str!("../../tuning/sysctl.conf");
/// `tuning/limits.conf`, as shipped.
pub const LIMITS_CONF: &str = include_str!("../../tuning/limits.conf");

/// Oldest kernel glommio (and so every shard) runs on.
pub const KERNEL_MIN: (u32, u32) = (5, 8);
/// RLIMIT_MEMLOCK a glommio executor needs to start (its rings).
pub const MEMLOCK_PER_SHARD_MIN_BYTES: u64 = 512 << 10;
/// File descriptors a shard holds besides connections (listeners, rings,
/// eventfds, timers), generously.
pub const FDS_PER_SHARD: u64 = 32;
/// File descriptors the process holds besides the shards.
pub const FDS_BASE: u64 = 64;

/// io_uring operations a shard uses on its request path: without any of
/// them `serve` cannot run.
pub const URING_REQUIRED: &[(&str, u8)] = &[
    ("nop", io_uring::opcode::Nop::CODE),
    ("accept", io_uring::opcode::Accept::CODE),
    ("recv", io_uring::opcode::Recv::CODE),
    ("send", io_uring::opcode::Send::CODE),
    ("read", io_uring::opcode::Read::CODE),
    ("write", io_uring::opcode::Write::CODE),
    ("poll_add", io_uring::opcode::PollAdd::CODE),
    ("poll_remove", io_uring::opcode::PollRemove::CODE),
    ("timeout", io_uring::opcode::Timeout::CODE),
    ("timeout_remove", io_uring::opcode::TimeoutRemove::CODE),
    ("link_timeout", io_uring::opcode::LinkTimeout::CODE),
    ("async_cancel", io_uring::opcode::AsyncCancel::CODE),
    ("close", io_uring::opcode::Close::CODE),
];

/// io_uring operations glommio uses when present (registered buffers,
/// connect, file I/O); without them some paths fall back or fail.
pub const URING_OPTIONAL: &[(&str, u8)] = &[
    ("read_fixed", io_uring::opcode::ReadFixed::CODE),
    ("write_fixed", io_uring::opcode::WriteFixed::CODE),
    ("connect", io_uring::opcode::Connect::CODE),
    ("provide_buffers", io_uring::opcode::ProvideBuffers::CODE),
    ("openat", io_uring::opcode::OpenAt::CODE),
    ("statx", io_uring::opcode::Statx::CODE),
];

/// The sysctls the doctor reads, by name.
pub const SYSCTLS: &[(&str, &str)] = &[
    ("net.core.somaxconn", "/proc/sys/net/core/somaxconn"),
    (
        "net.ipv4.tcp_max_syn_backlog",
        "/proc/sys/net/ipv4/tcp_max_syn_backlog",
    ),
    (
        "net.ipv4.ip_local_port_range",
        "/proc/sys/net/ipv4/ip_local_port_range",
    ),
    ("fs.nr_open", "/proc/sys/fs/nr_open"),
    ("fs.file-max", "/proc/sys/fs/file-max"),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "fail",
        }
    }
}

/// One check's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub level: Level,
    /// What was found, and what it means.
    pub found: String,
    /// How to fix it (for warn and fail).
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: &'static str, found: impl Into<String>) -> Check {
        Check {
            name,
            level: Level::Ok,
            found: found.into(),
            fix: None,
        }
    }

    fn warn(name: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name,
            level: Level::Warn,
            found: found.into(),
            fix: Some(fix.into()),
        }
    }

    fn fail(name: &'static str, found: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name,
            level: Level::Fail,
            found: found.into(),
            fix: Some(fix.into()),
        }
    }
}

/// A resource limit; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// What the io_uring probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UringProbe {
    /// A ring was created; the opcodes the kernel supports.
    Supported(Vec<u8>),
    /// No ring could be created (the error says why).
    Unavailable(String),
}

/// Everything the checks look at, as read from the host (or made up by a
/// test).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// `/proc/sys/kernel/osrelease`.
    pub kernel_release: Option<String>,
    pub io_uring: UringProbe,
    /// `/proc/sys/kernel/io_uring_disabled` (kernels 6.6+).
    pub io_uring_disabled: Option<String>,
    /// RLIMIT_MEMLOCK in bytes.
    pub memlock: Option<Rlimit>,
    pub nofile: Option<Rlimit>,
    /// The sysctls of [`SYSCTLS`] by name, as their files read.
    pub sysctls: BTreeMap<&'static str, String>,
    /// Cores this process may run on (its affinity mask).
    pub cpus: Vec<usize>,
    /// `/sys/devices/system/cpu/isolated`.
    pub isolated: Option<String>,
    /// `/sys/kernel/mm/transparent_hugepage/enabled`.
    pub thp_enabled: Option<String>,
    /// Configured listen addresses that could not be bound, with the error.
    pub unbindable: Vec<(&'static str, String, String)>,
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|text| text.trim().to_string())
}

fn rlimit(resource: libc::__rlimit_resource_t) -> Option<Rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we pass.
    if unsafe { libc::getrlimit(resource, &mut limit) } != 0 {
        return None;
    }
    let finite = |value: libc::rlim_t| (value != libc::RLIM_INFINITY).then_some(value);
    Some(Rlimit {
        soft: finite(limit.rlim_cur),
        hard: finite(limit.rlim_max),
    })
}

fn probe_io_uring() -> UringProbe {
    let ring = match io_uring::IoUring::new(8) {
        Ok(ring) => ring,
        Err(error) => return UringProbe::Unavailable(error.to_string()),
    };
    let mut probe = io_uring::Probe::new();
    if let Err(error) = ring.submitter().register_probe(&mut probe) {
        return UringProbe::Unavailable(format!("ring created but not probed: {error}"));
    }
    UringProbe::Supported((0..=u8::MAX).filter(|&op| probe.is_supported(op)).collect())
}

impl HostFacts {
    /// Reads this host, and tries to bind the listen addresses of `config`.
    pub fn gather(config: &Config) -> HostFacts {
        let sysctls = SYSCTLS
            .iter()
            .filter_map(|&(name, path)| read_trimmed(path).map(|value| (name, value)))
            .collect();
        let mut unbindable = Vec::new();
        for (kind, text) in [
            ("tcp", &config.listen.tcp),
            ("http", &config.listen.http),
            ("admin", &config.listen.admin),
        ] {
            if text.is_empty() {
                continue;
            }
            let Ok(addr) = text.parse::<SocketAddr>() else {
                continue; // validate() has already refused it
            };
            if let Err(error) = std::net::TcpListener::bind(addr) {
                unbindable.push((kind, text.clone(), error.to_string()));
            }
        }
        HostFacts {
            kernel_release: read_trimmed("/proc/sys/kernel/osrelease"),
            io_uring: probe_io_uring(),
            io_uring_disabled: read_trimmed("/proc/sys/kernel/io_uring_disabled"),
            memlock: rlimit(libc::RLIMIT_MEMLOCK),
            nofile: rlimit(libc::RLIMIT_NOFILE),
            sysctls,
            cpus: crate::runtime::available_cpus(),
            isolated: read_trimmed("/sys/devices/system/cpu/isolated"),
            thp_enabled: read_trimmed("/sys/kernel/mm/transparent_hugepage/enabled"),
            unbindable,
        }
    }
}

/// What `tuning/` recommends, parsed from the shipped files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recommended {
    /// Every active `key = value` of sysctl.conf.
    pub sysctls: BTreeMap<String, String>,
    /// The `nofile` limit of limits.conf.
    pub nofile: u64,
    /// The `memlock` limit of limits.conf, in bytes (the file says KiB).
    pub memlock_bytes: u64,
}

impl Recommended {
    /// From the files compiled into this binary.
    pub fn shipped() -> Recommended {
        Recommended::parse(SYSCTL_CONF, LIMITS_CONF)
    }

    pub fn parse(sysctl_conf: &str, limits_conf: &str) -> Recommended {
        Recommended {
            sysctls: parse_sysctl_conf(sysctl_conf),
            nofile: limits_value(limits_conf, "nofile").unwrap_or(0),
            memlock_bytes: limits_value(limits_conf, "memlock").unwrap_or(0) * 1_024,
        }
    }

    fn sysctl(&self, key: &str) -> Option<&str> {
        self.sysctls.get(key).map(String::as_str)
    }
}

/// `key = value` lines of a sysctl.d file, without comments.
pub fn parse_sysctl_conf(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#') && !line.starts_with(';'))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| {
            let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
            (key.trim().to_string(), value)
        })
        .collect()
}

/// The soft limit of `item` in a limits.conf (`domain type item value`).
pub fn limits_value(text: &str, item: &str) -> Option<u64> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.len() == 4 && fields[1] == "soft" && fields[2] == item)
        .and_then(|fields| fields[3].parse().ok())
}

/// `6.18.44-fc-v669` → (6, 18, 44).
pub fn parse_kernel_version(release: &str) -> Option<(u32, u32, u32)> {
    let mut numbers = release.split(|c: char| !c.is_ascii_digit());
    let major = numbers.next()?.parse().ok()?;
    let minor = numbers.next()?.parse().ok()?;
    let patch = numbers.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    Some((major, minor, patch))
}

/// `32768\t60999` → (32768, 60999).
pub fn parse_port_range(text: &str) -> Option<(u32, u32)> {
    let mut words = text.split_whitespace();
    let low = words.next()?.parse().ok()?;
    let high = words.next()?.parse().ok()?;
    (low <= high && words.next().is_none()).then_some((low, high))
}

/// A kernel CPU list, `0-3,8,10-11` → [0, 1, 2, 3, 8, 10, 11]; empty is no CPUs.
pub fn parse_cpu_list(text: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((low, high)) => {
                let (low, high): (usize, usize) = (low.parse().ok()?, high.parse().ok()?);
                if low > high || high - low > 65_536 {
                    return None;
                }
                cpus.extend(low..=high);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

/// The bracketed choice of a sysfs selector, `always [madvise] never` → madvise.
pub fn parse_selected(text: &str) -> Option<&str> {
    let start = text.find('[')? + 1;
    let end = start + text[start..].find(']')?;
    Some(&text[start..end])
}

/// `[0, 1, 2, 5]` → `0-2,5`.
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if j > i {
            let _ = write!(out, "{}-{}", cpus[i], cpus[j]);
        } else {
            let _ = write!(out, "{}", cpus[i]);
        }
        i = j + 1;
    }
    out
}

fn mib(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

fn limit_text(value: Option<u64>) -> String {
    value.map_or("unlimited".to_string(), |v| v.to_string())
}

/// Judges `facts` for a node run with `config`, against `rec`.
pub fn run_checks(facts: &HostFacts, config: &Config, rec: &Recommended) -> Vec<Check> {
    let shards = config.shard_count(facts.cpus.len()) as u64;
    vec![
        check_kernel(facts),
        check_io_uring(facts),
        check_memlock(facts, config, shards),
        check_nofile(facts, rec, shards),
        check_listen(facts),
        check_somaxconn(facts, config, rec),
        check_sysctl_at_least(facts, rec, "net.ipv4.tcp_max_syn_backlog", "syn_backlog"),
        check_port_range(facts, rec),
        check_nr_open(facts, rec),
        check_sysctl_at_least(facts, rec, "fs.file-max", "file_max"),
        check_cores(facts, shards as usize),
        check_isolation(facts, shards as usize),
        check_thp(facts),
    ]
}

fn check_kernel(facts: &HostFacts) -> Check {
    const NAME: &str = "kernel";
    let Some(release) = &facts.kernel_release else {
        return Check::warn(
            NAME,
            "cannot read /proc/sys/kernel/osrelease",
            "run on Linux 5.8 or later with /proc mounted",
        );
    };
    match parse_kernel_version(release) {
        Some((major, minor, _)) if (major, minor) >= KERNEL_MIN => Check::ok(
            NAME,
            format!("{release} (io_uring as glommio uses it needs 5.8 or later)"),
        ),
        Some(_) => Check::fail(
            NAME,
            format!("{release}: older than 5.8, which glommio's io_uring use needs"),
            "upgrade the kernel to 5.8 or later (5.15+ recommended)",
        ),
        None => Check::warn(
            NAME,
            format!("cannot read a version from `{release}`"),
            "make sure the kernel is 5.8 or later",
        ),
    }
}

fn check_io_uring(facts: &HostFacts) -> Check {
    const NAME: &str = "io_uring";
    if facts.io_uring_disabled.as_deref() == Some("2") {
        return Check::fail(
            NAME,
            "kernel.io_uring_disabled = 2: io_uring is switched off for every process",
            "sysctl -w kernel.io_uring_disabled=0 (and persist it in /etc/sysctl.d)",
        );
    }
    let supported = match &facts.io_uring {
        UringProbe::Supported(codes) => codes,
        UringProbe::Unavailable(error) => {
            let hint = if facts.io_uring_disabled.as_deref() == Some("1") {
                "kernel.io_uring_disabled = 1 allows only the group in kernel.io_uring_group: \
                 add the service user to it, or set kernel.io_uring_disabled=0"
            } else {
                "a container or seccomp profile may block io_uring_setup(2): allow it; \
                 check that RLIMIT_MEMLOCK is not tiny"
            };
            return Check::fail(NAME, format!("cannot create a ring: {error}"), hint);
        }
    };
    let missing = |ops: &[(&'static str, u8)]| -> Vec<&'static str> {
        ops.iter()
            .filter(|(_, code)| !supported.contains(code))
            .map(|&(name, _)| name)
            .collect()
    };
    let required = missing(URING_REQUIRED);
    let optional = missing(URING_OPTIONAL);
    if !required.is_empty() {
        return Check::fail(
            NAME,
            format!(
                "the kernel lacks operations serve needs: {}",
                required.join(", ")
            ),
            "upgrade the kernel (5.8 or later has them all)",
        );
    }
    if !optional.is_empty() {
        return Check::warn(
            NAME,
            format!(
                "ring created; the {} operations serve needs are supported, but not: {}",
                URING_REQUIRED.len(),
                optional.join(", ")
            ),
            "upgrade the kernel for registered buffers and the other optional operations",
        );
    }
    Check::ok(
        NAME,
        format!(
            "ring created; all {} operations serve uses are supported ({} in all)",
            URING_REQUIRED.len() + URING_OPTIONAL.len(),
            supported.len()
        ),
    )
}

fn check_memlock(facts: &HostFacts, config: &Config, shards: u64) -> Check {
    const NAME: &str = "memlock";
    let fix = "raise memlock for the service user (tuning/limits.conf, LimitMEMLOCK= in \
               tuning/shardmcp.service), or lower runtime.io_memory_bytes";
    let Some(limit) = facts.memlock else {
        return Check::warn(NAME, "cannot read RLIMIT_MEMLOCK", fix);
    };
    let Some(soft) = limit.soft else {
        return Check::ok(NAME, "unlimited");
    };
    let minimum = shards * MEMLOCK_PER_SHARD_MIN_BYTES;
    let full = shards * (MEMLOCK_PER_SHARD_MIN_BYTES + config.runtime.io_memory_bytes as u64);
    if soft < minimum {
        Check::fail(
            NAME,
            format!(
                "{}: {shards} shards need at least {} to start their executors",
                mib(soft),
                mib(minimum)
            ),
            fix,
        )
    } else if soft < full {
        Check::warn(
            NAME,
            format!(
                "{}: enough to start {shards} shards, not to register their {} io buffers each \
                 ({} in all); they run without registered buffers",
                mib(soft),
                mib(config.runtime.io_memory_bytes as u64),
                mib(full)
            ),
            fix,
        )
    } else {
        Check::ok(
            NAME,
            format!(
                "{}: {shards} shards with {} of registered buffers each need {}",
                mib(soft),
                mib(config.runtime.io_memory_bytes as u64),
                mib(full)
            ),
        )
    }
}

fn check_nofile(facts: &HostFacts, rec: &Recommended, shards: u64) -> Check {
    const NAME: &str = "nofile";
    let fix = |hard: Option<u64>| {
        let mut fix = format!(
            "raise nofile to {} for the service user (tuning/limits.conf, LimitNOFILE= in \
             tuning/shardmcp.service); fs.nr_open must allow it",
            rec.nofile
        );
        if hard.is_none_or(|hard| hard >= rec.nofile) {
            let _ = write!(
                fix,
                "; the hard limit already allows `ulimit -n {}`",
                rec.nofile
            );
        }
        fix
    };
    let Some(limit) = facts.nofile else {
        return Check::warn(NAME, "cannot read RLIMIT_NOFILE", fix(None));
    };
    let Some(soft) = limit.soft else {
        return Check::ok(NAME, "unlimited");
    };
    let reserved = FDS_BASE + shards * FDS_PER_SHARD;
    let text = format!("soft {soft}, hard {}", limit_text(limit.hard));
    if soft < reserved {
        Check::fail(
            NAME,
            format!("{text}: {shards} shards need about {reserved} before any connection"),
            fix(limit.hard),
        )
    } else if soft < rec.nofile {
        Check::warn(
            NAME,
            format!(
                "{text}: about {} connections at most; tuning/limits.conf asks {}",
                soft - reserved,
                rec.nofile
            ),
            fix(limit.hard),
        )
    } else {
        Check::ok(
            NAME,
            format!("{text}: about {} connections", soft - reserved),
        )
    }
}

fn check_listen(facts: &HostFacts) -> Check {
    const NAME: &str = "listen";
    if facts.unbindable.is_empty() {
        return Check::ok(NAME, "every configured listen address can be bound");
    }
    let found = facts
        .unbindable
        .iter()
        .map(|(kind, addr, error)| format!("{kind} {addr}: {error}"))
        .collect::<Vec<_>>()
        .join("; ");
    Check::fail(
        NAME,
        found,
        "stop what holds the port, or choose another address (listen.* in the config, --tcp/--http/--admin)",
    )
}

fn sysctl_number(facts: &HostFacts, key: &str) -> Option<u64> {
    facts.sysctls.get(key).and_then(|v| v.trim().parse().ok())
}

fn check_somaxconn(facts: &HostFacts, config: &Config, rec: &Recommended) -> Check {
    const NAME: &str = "somaxconn";
    let key = "net.core.somaxconn";
    let wanted = rec.sysctl(key).and_then(|v| v.parse::<u64>().ok());
    let fix = format!(
        "sysctl -w {key}={} (persist with tuning/sysctl.conf in /etc/sysctl.d)",
        wanted.unwrap_or(65_535)
    );
    let Some(value) = sysctl_number(facts, key) else {
        return Check::warn(NAME, format!("cannot read {key}"), fix);
    };
    let backlog = u64::from(config.listen.backlog);
    if value < backlog {
        Check::warn(
            NAME,
            format!(
                "{key} = {value}: listen.backlog {backlog} is cut to {value} per shard listener"
            ),
            fix,
        )
    } else if wanted.is_some_and(|wanted| value < wanted) {
        Check::warn(
            NAME,
            format!(
                "{key} = {value}: covers listen.backlog {backlog}; tuning/sysctl.conf asks {}",
                wanted.unwrap_or(0)
            ),
            fix,
        )
    } else {
        Check::ok(NAME, format!("{key} = {value}"))
    }
}

/// A numeric sysctl against tuning/sysctl.conf: below it is a warning.
fn check_sysctl_at_least(
    facts: &HostFacts,
    rec: &Recommended,
    key: &'static str,
    name: &'static str,
) -> Check {
    let wanted = rec.sysctl(key).and_then(|v| v.parse::<u64>().ok());
    let fix = format!(
        "sysctl -w {key}={} (persist with tuning/sysctl.conf in /etc/sysctl.d)",
        wanted.map_or("?".to_string(), |w| w.to_string())
    );
    match (sysctl_number(facts, key), wanted) {
        (None, _) => Check::warn(name, format!("cannot read {key}"), fix),
        (Some(value), Some(wanted)) if value < wanted => Check::warn(
            name,
            format!("{key} = {value}; tuning/sysctl.conf asks {wanted}"),
            fix,
        ),
        (Some(value), _) => Check::ok(name, format!("{key} = {value}")),
    }
}

fn check_port_range(facts: &HostFacts, rec: &Recommended) -> Check {
    const NAME: &str = "port_range";
    let key = "net.ipv4.ip_local_port_range";
    let wanted = rec.sysctl(key).and_then(parse_port_range);
    let fix = format!(
        "sysctl -w {key}=\"{}\" (matters for outgoing connections: a load generator or proxy on this host)",
        wanted.map_or("1024 65535".to_string(), |(l, h)| format!("{l} {h}"))
    );
    let Some((low, high)) = facts
        .sysctls
        .get(key)
        .and_then(|value| parse_port_range(value))
    else {
        return Check::warn(NAME, format!("cannot read {key}"), fix);
    };
    let ports = high - low + 1;
    let text = format!("{key} = {low} {high} ({ports} ephemeral ports)");
    match wanted {
        Some((wl, wh)) if ports < wh - wl + 1 => Check::warn(
            NAME,
            format!("{text}; tuning/sysctl.conf asks {wl} {wh}"),
            fix,
        ),
        _ => Check::ok(NAME, text),
    }
}

fn check_nr_open(facts: &HostFacts, rec: &Recommended) -> Check {
    const NAME: &str = "nr_open";
    let key = "fs.nr_open";
    let fix = format!(
        "sysctl -w {key}={} so nofile can be raised that far",
        rec.nofile
    );
    match sysctl_number(facts, key) {
        None => Check::warn(NAME, format!("cannot read {key}"), fix),
        Some(value) if value < rec.nofile => Check::warn(
            NAME,
            format!(
                "{key} = {value}: nofile cannot be raised to the {} tuning/limits.conf asks",
                rec.nofile
            ),
            fix,
        ),
        Some(value) => Check::ok(NAME, format!("{key} = {value}")),
    }
}

fn check_cores(facts: &HostFacts, shards: usize) -> Check {
    const NAME: &str = "cores";
    let cores = facts.cpus.len();
    let list = format_cpu_list(&facts.cpus);
    if cores == 0 {
        return Check::warn(
            NAME,
            "cannot read this process's CPU affinity",
            "check sched_getaffinity",
        );
    }
    if shards > cores {
        Check::warn(
            NAME,
            format!("{shards} shards on {cores} cores ({list}): some shards share a core"),
            "set runtime.shards to at most the cores available (0 = one per core), or widen CPUAffinity",
        )
    } else if cores == 1 {
        Check::warn(
            NAME,
            format!("one core ({list}): one shard, no parallelism"),
            "give the service more cores (CPUAffinity= in tuning/shardmcp.service)",
        )
    } else {
        Check::ok(
            NAME,
            format!("{cores} cores available ({list}), {shards} shards, one per core"),
        )
    }
}

fn check_isolation(facts: &HostFacts, shards: usize) -> Check {
    const NAME: &str = "isolation";
    let fix = "isolate the shard cores from the scheduler and timers (kernel parameters \
               isolcpus=LIST nohz_full=LIST rcu_nocbs=LIST), then pin the service to them \
               (CPUAffinity= in tuning/shardmcp.service) and move NIC IRQs there \
               (tuning/irq-affinity.sh)";
    let isolated = facts
        .isolated
        .as_deref()
        .and_then(parse_cpu_list)
        .unwrap_or_default();
    let shard_cores: Vec<usize> = facts.cpus.iter().take(shards).copied().collect();
    if isolated.is_empty() {
        return Check::warn(
            NAME,
            "no isolated cores: other processes and kernel work share the shard cores",
            fix,
        );
    }
    let covered: Vec<usize> = shard_cores
        .iter()
        .filter(|core| isolated.contains(core))
        .copied()
        .collect();
    let unused: Vec<usize> = isolated
        .iter()
        .filter(|core| !facts.cpus.contains(core))
        .copied()
        .collect();
    if covered.len() == shard_cores.len() {
        Check::ok(
            NAME,
            format!("shard cores {} are isolated", format_cpu_list(&shard_cores)),
        )
    } else if !unused.is_empty() {
        Check::warn(
            NAME,
            format!(
                "isolated cores {} are outside this process's affinity ({}): shards cannot use them",
                format_cpu_list(&unused),
                format_cpu_list(&facts.cpus)
            ),
            "run with CPUAffinity= (systemd) or taskset -c set to the isolated cores",
        )
    } else {
        Check::warn(
            NAME,
            format!(
                "only {} of the shard cores {} are isolated",
                covered.len(),
                format_cpu_list(&shard_cores)
            ),
            fix,
        )
    }
}

fn check_thp(facts: &HostFacts) -> Check {
    const NAME: &str = "thp";
    let fix = "echo madvise > /sys/kernel/mm/transparent_hugepage/enabled (or the kernel \
               parameter transparent_hugepage=madvise)";
    let Some(selected) = facts.thp_enabled.as_deref().and_then(parse_selected) else {
        return Check::ok(NAME, "transparent huge pages not available");
    };
    match selected {
        "always" => Check::warn(
            NAME,
            "transparent_hugepage = always: background compaction and khugepaged can stall \
             shard threads (latency spikes) and grow memory",
            fix,
        ),
        other => Check::ok(NAME, format!("transparent_hugepage = {other}")),
    }
}

/// The report as `serve`'s operator reads it, one check a line (with its fix
/// below when there is one), then the totals.
pub fn render(checks: &[Check], shards: usize) -> String {
    let mut out = format!("shardmcp doctor: this host against tuning/ ({shards} shards)\n");
    for check in checks {
        let _ = writeln!(
            out,
            "{:<5} {:<12} {}",
            check.level.as_str(),
            check.name,
            check.found
        );
        if let Some(fix) = &check.fix {
            let _ = writeln!(out, "{:<18} fix: {fix}", "");
        }
    }
    let count = |level| checks.iter().filter(|c| c.level == level).count();
    let _ = writeln!(
        out,
        "doctor: {} ok, {} warn, {} fail{}",
        count(Level::Ok),
        count(Level::Warn),
        count(Level::Fail),
        if count(Level::Fail) > 0 {
            ": serve would not work on this host"
        } else {
            ""
        }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_ops() -> UringProbe {
        UringProbe::Supported((0..=60).collect())
    }

    /// A host that meets every recommendation.
    fn tuned() -> HostFacts {
        let rec = Recommended::shipped();
        let mut sysctls = BTreeMap::new();
        for &(key, _) in SYSCTLS {
            sysctls.insert(key, rec.sysctls[key].clone());
        }
        HostFacts {
            kernel_release: Some("6.1.0-18-amd64".into()),
            io_uring: all_ops(),
            io_uring_disabled: Some("0".into()),
            memlock: Some(Rlimit {
                soft: Some(rec.memlock_bytes),
                hard: Some(rec.memlock_bytes),
            }),
            nofile: Some(Rlimit {
                soft: Some(rec.nofile),
                hard: Some(rec.nofile),
            }),
            sysctls,
            cpus: vec![2, 3, 4, 5],
            isolated: Some("2-5".into()),
            thp_enabled: Some("always [madvise] never".into()),
            unbindable: Vec::new(),
        }
    }

    fn check(facts: &HostFacts, name: &str) -> Check {
        run_checks(facts, &Config::default(), &Recommended::shipped())
            .into_iter()
            .find(|c| c.name == name)
            .unwrap()
    }

    #[test]
    fn a_tuned_host_passes_every_check() {
        let checks = run_checks(&tuned(), &Config::default(), &Recommended::shipped());
        for c in &checks {
            assert_eq!(c.level, Level::Ok, "{c:?}");
        }
        assert_eq!(checks.len(), 13);
    }

    #[test]
    fn the_shipped_files_parse_into_recommendations() {
        let rec = Recommended::shipped();
        assert_eq!(rec.nofile, 1_048_576);
        assert_eq!(rec.memlock_bytes, 256 << 20);
        assert_eq!(rec.sysctl("net.core.somaxconn"), Some("65535"));
        assert_eq!(
            rec.sysctl("net.ipv4.ip_local_port_range"),
            Some("1024 65535")
        );
        assert!(rec.sysctl("net.core.busy_poll").is_none(), "commented out");
        for &(key, _) in SYSCTLS {
            assert!(
                rec.sysctls.contains_key(key),
                "{key} missing from sysctl.conf"
            );
        }
        let nr_open: u64 = rec.sysctl("fs.nr_open").unwrap().parse().unwrap();
        assert!(nr_open >= rec.nofile, "nofile must fit under fs.nr_open");
    }

    #[test]
    fn parsers_read_kernel_formats() {
        assert_eq!(parse_kernel_version("6.18.44-fc-v669"), Some((6, 18, 44)));
        assert_eq!(parse_kernel_version("5.4"), Some((5, 4, 0)));
        assert_eq!(parse_kernel_version("linux"), None);
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32_768, 60_999)));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range("1 2 3"), None);
        assert_eq!(
            parse_cpu_list("0-3,8,10-11\n"),
            Some(vec![0, 1, 2, 3, 8, 10, 11])
        );
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(parse_selected("always [madvise] never"), Some("madvise"));
        assert_eq!(parse_selected("never"), None);
        assert_eq!(format_cpu_list(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        assert_eq!(
            limits_value(
                "# x\nshardmcp soft nofile 42\nshardmcp hard nofile 43\n",
                "nofile"
            ),
            Some(42)
        );
        let conf = parse_sysctl_conf("# c\n a.b = 1 \n\nc.d=2   3\n; e = 4\n");
        assert_eq!(conf.len(), 2);
        assert_eq!(conf["c.d"], "2 3");
    }

    #[test]
    fn an_old_kernel_or_no_io_uring_fails() {
        let mut facts = tuned();
        facts.kernel_release = Some("5.4.0-150-generic".into());
        assert_eq!(check(&facts, "kernel").level, Level::Fail);

        let mut facts = tuned();
        facts.io_uring = UringProbe::Unavailable("Operation not permitted (os error 1)".into());
        let c = check(&facts, "io_uring");
        assert_eq!(c.level, Level::Fail);
        assert!(c.fix.unwrap().contains("seccomp"));

        let mut facts = tuned();
        facts.io_uring_disabled = Some("2".into());
        assert_eq!(check(&facts, "io_uring").level, Level::Fail);

        let mut facts = tuned();
        let accept = io_uring::opcode::Accept::CODE;
        facts.io_uring = UringProbe::Supported((0..=60).filter(|&op| op != accept).collect());
        let c = check(&facts, "io_uring");
        assert_eq!(c.level, Level::Fail);
        assert!(c.found.contains("accept"), "{}", c.found);

        let mut facts = tuned();
        let fixed = io_uring::opcode::ReadFixed::CODE;
        facts.io_uring = UringProbe::Supported((0..=60).filter(|&op| op != fixed).collect());
        let c = check(&facts, "io_uring");
        assert_eq!(c.level, Level::Warn);
        assert!(c.found.contains("read_fixed"), "{}", c.found);
    }

    #[test]
    fn memlock_fails_below_what_executors_need_and_warns_below_buffers() {
        let mut facts = tuned(); // 4 cores: 4 shards
        let limit = |kib: u64| {
            Some(Rlimit {
                soft: Some(kib << 10),
                hard: Some(kib << 10),
            })
        };
        facts.memlock = limit(64);
        assert_eq!(check(&facts, "memlock").level, Level::Fail);
        facts.memlock = limit(4 * 512);
        assert_eq!(check(&facts, "memlock").level, Level::Warn);
        facts.memlock = limit(4 * (512 + 1_024));
        assert_eq!(check(&facts, "memlock").level, Level::Ok);
        facts.memlock = Some(Rlimit {
            soft: None,
            hard: None,
        });
        assert_eq!(check(&facts, "memlock").level, Level::Ok);
    }

    #[test]
    fn nofile_fails_when_shards_cannot_open_and_warns_below_the_recommendation() {
        let mut facts = tuned();
        facts.nofile = Some(Rlimit {
            soft: Some(100),
            hard: Some(4_096),
        });
        assert_eq!(check(&facts, "nofile").level, Level::Fail);
        facts.nofile = Some(Rlimit {
            soft: Some(20_000),
            hard: Some(20_000),
        });
        let c = check(&facts, "nofile");
        assert_eq!(c.level, Level::Warn);
        assert!(c.found.contains("about 19808 connections"), "{}", c.found);
        assert!(c.fix.unwrap().contains("limits.conf"));
    }

    #[test]
    fn a_taken_port_fails() {
        let mut facts = tuned();
        facts.unbindable = vec![(
            "http",
            "127.0.0.1:8080".into(),
            "Address in use (os error 98)".into(),
        )];
        let c = check(&facts, "listen");
        assert_eq!(c.level, Level::Fail);
        assert!(c.found.contains("http 127.0.0.1:8080"));
    }

    #[test]
    fn sysctls_below_the_files_warn_and_name_the_key() {
        let mut facts = tuned();
        facts.sysctls.insert("net.core.somaxconn", "4096".into());
        let c = check(&facts, "somaxconn");
        assert_eq!(c.level, Level::Warn);
        assert!(
            c.found.contains("covers listen.backlog 4096"),
            "{}",
            c.found
        );
        facts.sysctls.insert("net.core.somaxconn", "128".into());
        assert!(check(&facts, "somaxconn").found.contains("cut to 128"));
        facts
            .sysctls
            .insert("net.ipv4.ip_local_port_range", "32768\t60999".into());
        let c = check(&facts, "port_range");
        assert_eq!(c.level, Level::Warn);
        assert!(c.found.contains("28232 ephemeral ports"), "{}", c.found);
        facts.sysctls.insert("fs.nr_open", "65536".into());
        assert_eq!(check(&facts, "nr_open").level, Level::Warn);
        facts.sysctls.remove("fs.file-max");
        assert_eq!(check(&facts, "file_max").level, Level::Warn);
        facts
            .sysctls
            .insert("net.ipv4.tcp_max_syn_backlog", "2048".into());
        assert_eq!(check(&facts, "syn_backlog").level, Level::Warn);
    }

    #[test]
    fn cores_isolation_and_huge_pages() {
        let mut facts = tuned();
        facts.isolated = Some(String::new());
        assert_eq!(check(&facts, "isolation").level, Level::Warn);
        facts.isolated = Some("6-7".into());
        assert!(check(&facts, "isolation")
            .found
            .contains("outside this process's affinity"));
        facts.isolated = Some("2-3".into());
        assert!(check(&facts, "isolation").found.contains("only 2 of"));

        let mut config = Config::default();
        config.runtime.shards = 8;
        let c = run_checks(&tuned(), &config, &Recommended::shipped())
            .into_iter()
            .find(|c| c.name == "cores")
            .unwrap();
        assert_eq!(c.level, Level::Warn);
        assert!(c.found.contains("share a core"));

        let mut facts = tuned();
        facts.thp_enabled = Some("[always] madvise never".into());
        assert_eq!(check(&facts, "thp").level, Level::Warn);
        facts.thp_enabled = Some("always madvise [never]".into());
        assert_eq!(check(&facts, "thp").level, Level::Ok);
    }

    #[test]
    fn the_report_has_a_line_per_check_fixes_and_totals() {
        let mut facts = tuned();
        facts.kernel_release = Some("4.19.0".into());
        facts.thp_enabled = Some("[always] madvise never".into());
        let checks = run_checks(&facts, &Config::default(), &Recommended::shipped());
        let text = render(&checks, 4);
        assert!(text.starts_with("shardmcp doctor: this host against tuning/ (4 shards)\n"));
        assert!(
            text.contains("\nfail  kernel       4.19.0: older than 5.8"),
            "{text}"
        );
        assert!(text.contains("\nwarn  thp          transparent_hugepage = always"));
        assert!(text.contains("fix: upgrade the kernel"));
        assert!(
            text.ends_with("doctor: 11 ok, 1 warn, 1 fail: serve would not work on this host\n")
        );
    }
}
