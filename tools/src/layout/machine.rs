//! The machine: CPUs, caches, NUMA nodes and NICs with their interrupts,
//! read from sysfs and procfs under a root directory.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::Path;

use serde::Serialize;
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Machine {
    /// Online CPUs, by id.
    pub cpus: Vec<Cpu>,
    /// Physical cores: each the CPUs (SMT threads) that share it.
    pub cores: Vec<Vec<usize>>,
    pub packages: Vec<i64>,
    pub numa_nodes: Vec<NumaNode>,
    /// `/sys/devices/system/cpu/isolated` (boot's `isolcpus=`).
    pub isolated: Vec<usize>,
    /// `/sys/devices/system/cpu/nohz_full`.
    pub nohz_full: Vec<usize>,
    /// `/sys/devices/system/cpu/smt/control` (`on`, `off`, `notsupported`, ...).
    pub smt_control: Option<String>,
    /// Caches shared beyond one physical core (an L3 per package or CCX).
    pub shared_caches: Vec<SharedCache>,
    /// Network interfaces backed by a device (with IRQs).
    pub nics: Vec<Nic>,
    /// Interfaces without a device (bridges, veth, ifb, ...), `lo` left out.
    pub virtual_interfaces: Vec<String>,
    /// Whether an `irqbalance` process runs (it rewrites IRQ affinities).
    pub irqbalance_running: bool,
    /// `isolcpus=`, `nohz_full=`, `irqaffinity=` from the kernel command line.
    pub kernel_cpu_parameters: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cpu {
    pub id: usize,
    pub core_id: Option<i64>,
    pub package: Option<i64>,
    pub node: Option<usize>,
    /// CPUs sharing this CPU's physical core, itself included.
    pub smt_siblings: Vec<usize>,
    pub caches: Vec<Cache>,
    pub governor: Option<String>,
    pub frequency_khz: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cache {
    pub level: u32,
    /// `Data`, `Instruction` or `Unified`.
    pub kind: String,
    pub size: String,
    pub shared_cpus: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct SharedCache {
    pub level: u32,
    pub kind: String,
    pub size: String,
    pub cpus: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NumaNode {
    pub id: usize,
    pub cpus: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Nic {
    pub name: String,
    pub numa_node: Option<usize>,
    pub driver: Option<String>,
    pub irqs: Vec<Irq>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Irq {
    pub irq: u32,
    /// The device name `/proc/interrupts` gives it (`eth0-TxRx-0`, `virtio2-input.0`).
    pub name: Option<String>,
    /// `/proc/irq/N/smp_affinity_list`: where it may run.
    pub affinity: Option<Vec<usize>>,
    /// `/proc/irq/N/effective_affinity_list`: where it runs.
    pub effective_affinity: Option<Vec<usize>>,
    /// Interrupts taken per CPU since boot (CPUs with none left out).
    pub counts: Vec<(usize, u64)>,
}

impl Irq {
    /// The CPUs that handle it: the effective affinity if known, else the
    /// CPUs that took its interrupts.
    pub fn handled_on(&self) -> Vec<usize> {
        match &self.effective_affinity {
            Some(cpus) if !cpus.is_empty() => cpus.clone(),
            _ => self.counts.iter().map(|(cpu, _)| *cpu).collect(),
        }
    }
}

/// Parses a kernel CPU list (`0-3,8,10-11`); `None` if it is not one.
/// Empty text and `(null)` (an unset `nohz_full`) are the empty list.
pub fn parse_cpu_list(text: &str) -> Option<Vec<usize>> {
    let text = text.trim();
    if text.is_empty() || text == "(null)" {
        return Some(Vec::new());
    }
    let mut cpus = BTreeSet::new();
    for part in text.split(',') {
        let part = part.trim();
        match part.split_once('-') {
            Some((first, last)) => {
                let first: usize = first.trim().parse().ok()?;
                let last: usize = last.trim().parse().ok()?;
                // A bound on what one range may add: CPUs ids stay small.
                if last < first || last - first > 65_536 {
                    return None;
                }
                cpus.extend(first..=last);
            }
            None => {
                cpus.insert(part.parse().ok()?);
            }
        }
    }
    Some(cpus.into_iter().collect())
}

/// Formats CPUs as a kernel CPU list, ranges folded: `0-3,8`.
pub fn format_cpu_list(cpus: &[usize]) -> String {
    let mut sorted: Vec<usize> = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut index = 0;
    while index < sorted.len() {
        let start = sorted[index];
        let mut end = start;
        while index + 1 < sorted.len() && sorted[index + 1] == end + 1 {
            index += 1;
            end = sorted[index];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        index += 1;
    }
    parts.join(",")
}

fn read_text(path: &Path) -> Option<String> {
    // sysfs files are small; a bound keeps a fixture or a FUSE mount honest.
    let file = fs::File::open(path).ok()?;
    let mut text = String::new();
    file.take(1 << 20).read_to_string(&mut text).ok()?;
    Some(text.trim().to_string())
}

fn read_cpu_list(path: &Path) -> Option<Vec<usize>> {
    parse_cpu_list(&read_text(path)?)
}

fn read_number<T: std::str::FromStr>(path: &Path) -> Option<T> {
    read_text(path)?.parse().ok()
}

/// Names of the entries of `dir` that are `prefix` followed by a number,
/// as those numbers, sorted.
fn numbered_entries(dir: &Path, prefix: &str) -> Vec<usize> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut numbers: Vec<usize> = entries
        .filter_map(|entry| {
            let name = entry.ok()?.file_name();
            name.to_str()?.strip_prefix(prefix)?.parse().ok()
        })
        .collect();
    numbers.sort_unstable();
    numbers
}

/// Reads the machine's layout under `root` (`/` for the real one).
pub fn read_machine(root: &Path) -> Machine {
    let sys_cpu = root.join("sys/devices/system/cpu");
    let mut machine = Machine::default();
    let online = read_cpu_list(&sys_cpu.join("online"))
        .filter(|cpus| !cpus.is_empty())
        .unwrap_or_else(|| numbered_entries(&sys_cpu, "cpu"));

    for node in numbered_entries(&root.join("sys/devices/system/node"), "node") {
        let cpus = read_cpu_list(&root.join(format!("sys/devices/system/node/node{node}/cpulist")))
            .unwrap_or_default();
        machine.numa_nodes.push(NumaNode { id: node, cpus });
    }
    let node_of = |cpu: usize| {
        machine
            .numa_nodes
            .iter()
            .find(|node| node.cpus.contains(&cpu))
            .map(|node| node.id)
    };

    let mut cpus = Vec::new();
    for id in online {
        let dir = sys_cpu.join(format!("cpu{id}"));
        let topology = dir.join("topology");
        let smt_siblings = read_cpu_list(&topology.join("thread_siblings_list"))
            .or_else(|| read_cpu_list(&topology.join("core_cpus_list")))
            .filter(|siblings| siblings.contains(&id))
            .unwrap_or_else(|| vec![id]);
        let mut caches = Vec::new();
        for index in numbered_entries(&dir.join("cache"), "index") {
            let cache = dir.join(format!("cache/index{index}"));
            let (Some(level), Some(kind)) = (
                read_number::<u32>(&cache.join("level")),
                read_text(&cache.join("type")),
            ) else {
                continue;
            };
            caches.push(Cache {
                level,
                kind,
                size: read_text(&cache.join("size")).unwrap_or_default(),
                shared_cpus: read_cpu_list(&cache.join("shared_cpu_list")).unwrap_or_default(),
            });
        }
        let governor = read_text(&dir.join("cpufreq/scaling_governor"))
            .or_else(|| read_text(&sys_cpu.join(format!("cpufreq/policy{id}/scaling_governor"))));
        cpus.push(Cpu {
            id,
            core_id: read_number(&topology.join("core_id")),
            package: read_number(&topology.join("physical_package_id")),
            node: node_of(id),
            smt_siblings,
            caches,
            governor,
            frequency_khz: read_number(&dir.join("cpufreq/scaling_cur_freq")),
        });
    }
    machine.cores = physical_cores(&cpus);
    machine.packages = cpus
        .iter()
        .filter_map(|cpu| cpu.package)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    machine.shared_caches = cpus
        .iter()
        .flat_map(|cpu| cpu.caches.iter().map(move |cache| (cpu, cache)))
        // Caches private to a physical core (L1, usually L2) are left out:
        // the SMT sibling lists say that already.
        .filter(|(cpu, cache)| {
            cache.shared_cpus.len() > 1
                && cache
                    .shared_cpus
                    .iter()
                    .any(|shared| !cpu.smt_siblings.contains(shared))
        })
        .map(|(_, cache)| cache)
        .map(|cache| SharedCache {
            level: cache.level,
            kind: cache.kind.clone(),
            size: cache.size.clone(),
            cpus: cache.shared_cpus.clone(),
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    machine.cpus = cpus;
    machine.isolated = read_cpu_list(&sys_cpu.join("isolated")).unwrap_or_default();
    machine.nohz_full = read_cpu_list(&sys_cpu.join("nohz_full")).unwrap_or_default();
    machine.smt_control = read_text(&sys_cpu.join("smt/control"));

    let interrupts = read_text(&root.join("proc/interrupts"))
        .map(|text| parse_interrupts(&text))
        .unwrap_or_default();
    read_nics(root, &interrupts, &mut machine);
    machine.irqbalance_running = process_running(&root.join("proc"), "irqbalance");
    machine.kernel_cpu_parameters = read_text(&root.join("proc/cmdline"))
        .map(|cmdline| {
            cmdline
                .split_whitespace()
                .filter(|word| {
                    ["isolcpus=", "nohz_full=", "irqaffinity=", "rcu_nocbs="]
                        .iter()
                        .any(|prefix| word.starts_with(prefix))
                })
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    machine
}

/// Groups CPUs into physical cores by their SMT sibling lists.
pub(super) fn physical_cores(cpus: &[Cpu]) -> Vec<Vec<usize>> {
    let online: BTreeSet<usize> = cpus.iter().map(|cpu| cpu.id).collect();
    let mut cores: BTreeSet<Vec<usize>> = BTreeSet::new();
    for cpu in cpus {
        let siblings: Vec<usize> = cpu
            .smt_siblings
            .iter()
            .copied()
            .filter(|sibling| online.contains(sibling))
            .collect();
        cores.insert(siblings);
    }
    cores.into_iter().collect()
}

/// One line of `/proc/interrupts` for a numbered IRQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterruptLine {
    pub irq: u32,
    /// (CPU, count) for every CPU column.
    pub counts: Vec<(usize, u64)>,
    /// What follows the counts: chip, hardware IRQ, device name(s).
    pub description: String,
    /// The device name(s): the last field(s) of the description.
    pub name: String,
}

/// Parses `/proc/interrupts`: the header names the CPU columns (offline
/// CPUs have none), each numbered line gives counts then a description.
pub fn parse_interrupts(text: &str) -> BTreeMap<u32, InterruptLine> {
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return BTreeMap::new();
    };
    let columns: Vec<usize> = header
        .split_whitespace()
        .filter_map(|word| word.strip_prefix("CPU")?.parse().ok())
        .collect();
    let mut parsed = BTreeMap::new();
    for line in lines {
        let Some((label, rest)) = line.split_once(':') else {
            continue;
        };
        let Ok(irq) = label.trim().parse::<u32>() else {
            continue;
        };
        let mut words = rest.split_whitespace().peekable();
        let mut counts = Vec::new();
        for cpu in &columns {
            match words.peek().and_then(|word| word.parse::<u64>().ok()) {
                Some(count) => {
                    words.next();
                    if count > 0 {
                        counts.push((*cpu, count));
                    }
                }
                None => break,
            }
        }
        let description: Vec<&str> = words.collect();
        // "PCI-MSIX-0000:00:03.0 1-edge virtio2-input.0": chip, hwirq, name.
        let name = match description.len() {
            0 => String::new(),
            1 | 2 => description[description.len() - 1].to_string(),
            _ => description[2..].join(" "),
        };
        parsed.insert(
            irq,
            InterruptLine {
                irq,
                counts,
                description: description.join(" "),
                name,
            },
        );
    }
    parsed
}

fn read_nics(root: &Path, interrupts: &BTreeMap<u32, InterruptLine>, machine: &mut Machine) {
    let class_net = root.join("sys/class/net");
    let Ok(entries) = fs::read_dir(&class_net) else {
        return;
    };
    let mut names: Vec<String> = entries
        .filter_map(|entry| Some(entry.ok()?.file_name().to_str()?.to_string()))
        .filter(|name| name != "lo")
        .collect();
    names.sort();
    for name in names {
        let device = class_net.join(&name).join("device");
        if !device.exists() {
            machine.virtual_interfaces.push(name);
            continue;
        }
        // A virtio NIC's `device` is the virtio device; its PCI function,
        // with the NUMA node and MSI vectors, is the parent.
        let parent = device.join("..");
        let numa_node = [device.join("numa_node"), parent.join("numa_node")]
            .iter()
            .find_map(|path| read_number::<i64>(path))
            .and_then(|node| usize::try_from(node).ok());
        let driver = fs::read_link(device.join("driver"))
            .ok()
            .and_then(|target| Some(target.file_name()?.to_str()?.to_string()));
        let mut numbers: BTreeSet<u32> = [device.join("msi_irqs"), parent.join("msi_irqs")]
            .iter()
            .flat_map(|dir| numbered_entries(dir, ""))
            .filter_map(|irq| u32::try_from(irq).ok())
            .collect();
        if numbers.is_empty() {
            // Legacy INTx, or a driver that names its vectors after the
            // interface: `/proc/interrupts` lines naming it.
            numbers.extend(read_number::<u32>(&device.join("irq")).filter(|irq| *irq > 0));
            numbers.extend(
                interrupts
                    .values()
                    .filter(|line| names_interface(&line.name, &name))
                    .map(|line| line.irq),
            );
        }
        let irqs = numbers
            .into_iter()
            .map(|irq| {
                let line = interrupts.get(&irq);
                let proc_irq = root.join(format!("proc/irq/{irq}"));
                Irq {
                    irq,
                    name: line
                        .map(|line| line.name.clone())
                        .filter(|name| !name.is_empty()),
                    affinity: read_cpu_list(&proc_irq.join("smp_affinity_list")),
                    effective_affinity: read_cpu_list(&proc_irq.join("effective_affinity_list")),
                    counts: line.map(|line| line.counts.clone()).unwrap_or_default(),
                }
            })
            .collect();
        machine.nics.push(Nic {
            name,
            numa_node,
            driver,
            irqs,
        });
    }
}

/// Whether an IRQ's device name belongs to interface `interface`
/// (`eth0`, `eth0-TxRx-3`, `eth0:rx-1`), not to `eth01`.
fn names_interface(irq_name: &str, interface: &str) -> bool {
    irq_name.split([' ', ',']).any(|word| {
        word.strip_prefix(interface)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['-', ':', '@', '.']))
    })
}

fn process_running(proc_dir: &Path, command: &str) -> bool {
    let Ok(entries) = fs::read_dir(proc_dir) else {
        return false;
    };
    entries.filter_map(Result::ok).any(|entry| {
        let is_pid = entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.bytes().all(|byte| byte.is_ascii_digit()));
        is_pid && read_text(&entry.path().join("comm")).is_some_and(|comm| comm == command)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_and_format() {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11\n"),
            Some(vec![0, 1, 2, 3, 8, 10, 11])
        );
        assert_eq!(parse_cpu_list(""), Some(vec![]));
        assert_eq!(parse_cpu_list("(null)\n"), Some(vec![]));
        assert_eq!(parse_cpu_list("5"), Some(vec![5]));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("0-99999999"), None);
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(format_cpu_list(&[8, 0, 1, 2, 3, 10, 11, 3]), "0-3,8,10-11");
        assert_eq!(format_cpu_list(&[]), "");
    }

    #[test]
    fn interrupts_parse_counts_and_names() {
        let text = "           CPU0       CPU1       \n \
            26:          0         15  IO-APIC   4-edge      ttyS0\n \
            38:          0      11559 PCI-MSIX-0000:00:03.0   1-edge      virtio2-input.0\n \
           120:          7          0  IR-PCI-MSI 1048576-edge      eth0-TxRx-0\n \
           NMI:          0          0   Non-maskable interrupts\n";
        let parsed = parse_interrupts(text);
        assert_eq!(parsed.len(), 3);
        assert_eq!(parsed[&38].counts, vec![(1, 11559)]);
        assert_eq!(parsed[&38].name, "virtio2-input.0");
        assert_eq!(parsed[&120].name, "eth0-TxRx-0");
        assert_eq!(parsed[&26].description, "IO-APIC 4-edge ttyS0");
        assert!(parse_interrupts("").is_empty());
        assert!(parse_interrupts("garbage\n1: x y\n:::").contains_key(&1));
    }

    #[test]
    fn irq_names_match_their_interface_only() {
        assert!(names_interface("eth0-TxRx-3", "eth0"));
        assert!(names_interface("eth0", "eth0"));
        assert!(names_interface(
            "mlx5_comp0@pci:0000:af:00.0, eth0:rx-1",
            "eth0"
        ));
        assert!(!names_interface("eth01-TxRx-0", "eth0"));
        assert!(!names_interface("veth0", "eth0"));
    }
}
