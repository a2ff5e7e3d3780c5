//! Process-wide figures, read from `/proc/self` at scrape time.

/// Resident set size in bytes (`VmRSS` of `/proc/self/status`), if readable.
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_status_kib(&status, "VmRSS").map(|kib| kib * 1_024)
}

/// Peak resident set size in bytes (`VmHWM`), if readable.
pub fn resident_memory_peak_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_status_kib(&status, "VmHWM").map(|kib| kib * 1_024)
}

/// File descriptors open now (entries of `/proc/self/fd`), if readable.
pub fn open_fds() -> Option<u64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    // The directory handle itself is one of the entries; do not count it.
    Some((entries.count() as u64).saturating_sub(1))
}

/// A `Key:   1234 kB` line of a `/proc/*/status` file, in KiB.
pub fn parse_status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        let mut words = rest.split_whitespace();
        let value = words.next()?.parse().ok()?;
        (words.next() == Some("kB")).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kib_lines_of_a_status_file() {
        let status = "Name:\tshardmcp\nVmHWM:\t   20480 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(12_345));
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(20_480));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
        assert_eq!(parse_status_kib(status, "Threads"), None, "no unit");
        assert_eq!(parse_status_kib("VmRSSX: 1 kB\n", "VmRSS"), None);
    }

    #[test]
    fn this_process_has_memory_and_fds() {
        assert!(resident_memory_bytes().is_some_and(|bytes| bytes > 0));
        assert!(open_fds().is_some_and(|fds| fds >= 3));
    }
}
