//! The files under tuning/ against the code they describe: the systemd
//! unit's stop timeout covers the drain, and the IRQ script spreads a NIC's
//! queues one per shard core (on a made-up /proc).

use std::path::PathBuf;
use std::process::Command;

use shardmcp::config::Config;
use shardmcp::runtime::node::DRAIN_GRACE;

fn tuning(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tuning")
        .join(file)
}

/// `Key=value` of the [Service] section.
fn service_value(unit: &str, key: &str) -> Option<String> {
    unit.lines()
        .skip_while(|line| line.trim() != "[Service]")
        .take_while(|line| !line.starts_with('[') || line.trim() == "[Service]")
        .find_map(|line| line.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
}

#[test]
fn the_systemd_unit_waits_longer_than_the_drain_and_sets_the_limits_serve_needs() {
    let unit = std::fs::read_to_string(tuning("shardmcp.service")).unwrap();
    let stop = service_value(&unit, "TimeoutStopSec").expect("TimeoutStopSec");
    let stop_s: u64 = stop.trim_end_matches('s').parse().unwrap();
    let drain = Config::default().runtime.drain_deadline_ms;
    assert!(
        stop_s * 1_000 > drain + DRAIN_GRACE.as_millis() as u64,
        "TimeoutStopSec={stop} must exceed the drain deadline ({drain} ms) plus the node's grace"
    );
    assert_eq!(
        service_value(&unit, "KillSignal").as_deref(),
        Some("SIGTERM")
    );
    assert_eq!(
        service_value(&unit, "Restart").as_deref(),
        Some("on-failure")
    );
    let nofile: u64 = service_value(&unit, "LimitNOFILE")
        .unwrap()
        .parse()
        .unwrap();
    let limits = shardmcp::doctor::Recommended::shipped();
    assert_eq!(nofile, limits.nofile, "the unit and limits.conf agree");
    let memlock = service_value(&unit, "LimitMEMLOCK").unwrap();
    assert_eq!(
        memlock,
        format!("{}M", limits.memlock_bytes >> 20),
        "the unit and limits.conf agree"
    );
    assert!(service_value(&unit, "CPUAffinity").is_some());
    assert!(service_value(&unit, "ExecStart")
        .unwrap()
        .ends_with("shardmcp serve --config /etc/shardmcp/shardmcp.toml"));
}

const INTERRUPTS: &str = "           CPU0       CPU1       CPU2       CPU3
  0:         40          0          0          0   IO-APIC   2-edge      timer
 24:        100          0          0          0  PCI-MSI 49152-edge      virtio0-config
 41:      12345        678          0          0  PCI-MSI 524288-edge      eth0-TxRx-0
 42:       2345        111          0          0  PCI-MSI 524289-edge      eth0-TxRx-1
 43:        345          9          0          0  PCI-MSI 524290-edge      eth0-TxRx-2
 44:          1          0          0          0  PCI-MSI 524291-edge      eth10-TxRx-0
NMI:          0          0          0          0   Non-maskable interrupts
";

fn irq_script(args: &[&str], proc_dir: &std::path::Path) -> std::process::Output {
    Command::new("bash")
        .arg(tuning("irq-affinity.sh"))
        .args(args)
        .env("PROC_INTERRUPTS", proc_dir.join("interrupts"))
        .env("PROC_IRQ", proc_dir.join("irq"))
        .output()
        .unwrap()
}

#[test]
fn the_irq_script_spreads_queues_one_per_core_and_writes_only_with_apply() {
    let dir = std::env::temp_dir().join(format!("shardmcp-irq-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("interrupts"), INTERRUPTS).unwrap();
    for irq in [41, 42, 43] {
        std::fs::create_dir_all(dir.join("irq").join(irq.to_string())).unwrap();
    }

    let dry = irq_script(&["--cpus", "2-3", "eth0"], &dir);
    let text = String::from_utf8(dry.stdout).unwrap();
    assert!(dry.status.success(), "{text}");
    let plan: Vec<&str> = text.lines().filter(|l| l.starts_with("irq ")).collect();
    assert_eq!(
        plan,
        [
            "irq 41 (eth0-TxRx-0) -> cpu 2",
            "irq 42 (eth0-TxRx-1) -> cpu 3",
            "irq 43 (eth0-TxRx-2) -> cpu 2"
        ],
        "eth10 is another interface"
    );
    assert!(text.contains("dry run"));
    assert!(
        !dir.join("irq/41/smp_affinity_list").exists(),
        "dry run writes nothing"
    );

    let applied = irq_script(&["--apply", "--cpus", "0,2,3", "eth0"], &dir);
    assert!(applied.status.success());
    for (irq, cpu) in [(41, "0"), (42, "2"), (43, "3")] {
        let written =
            std::fs::read_to_string(dir.join(format!("irq/{irq}/smp_affinity_list"))).unwrap();
        assert_eq!(written.trim(), cpu);
    }

    let none = irq_script(&["wlan9"], &dir);
    assert_eq!(none.status.code(), Some(1));
    assert!(String::from_utf8(none.stderr).unwrap().contains("no IRQs"));
    let bad = irq_script(&["--cpus", "x", "eth0"], &dir);
    assert_eq!(bad.status.code(), Some(2));
    std::fs::remove_dir_all(&dir).ok();
}
