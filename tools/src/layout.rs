//! `kafki layout`: the machine's CPU, cache, NUMA and NIC interrupt layout
//! (from sysfs and procfs), a running broker's shard → CPU → partitions map
//! (its admin listener's `GET /v1/layout`), and suggestions computed from
//! both: which `--cores` to give the broker, where the NIC interrupts should
//! go (with the exact commands), and warnings about shards on SMT siblings,
//! across NUMA nodes, on interrupt CPUs or with unbalanced partitions.
//!
//! Everything is read under a root directory (`<root>/sys`, `<root>/proc`;
//! `/` by default) so tests run against fixture trees. Files that are
//! missing are normal (VMs expose less: no cpufreq, no NUMA distance, a NIC
//! without `numa_node`) and only leave that part out; nothing here fails on
//! what a file says.
//!
//! The broker is asked with a minimal blocking HTTP/1.1 GET over a std
//! `TcpStream` (a local admin endpoint answering one small JSON document;
//! bounded in time and size), so the tool needs no HTTP client crate.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, BufWriter, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

/// Default address of the broker's admin listener (`kafki serve --admin-listen`).
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9644";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The broker gives its layout callback 5 s before answering 503.
const READ_TIMEOUT: Duration = Duration::from_secs(7);
/// Largest admin response read.
const RESPONSE_MAX: usize = 8 << 20;
/// Below this many CPUs, reserving one for the OS costs too many shards.
const RESERVE_FROM_CPUS: usize = 4;

/// `kafki layout` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct LayoutArgs {
    /// Admin listener of a running broker, asked for `GET /v1/layout`.
    #[arg(long, value_name = "HOST:PORT", default_value = DEFAULT_ADMIN)]
    pub admin: String,
    /// Do not ask a broker: the machine and suggestions only.
    #[arg(long)]
    pub no_broker: bool,
    /// Print one JSON document.
    #[arg(long)]
    pub json: bool,
    /// Read `<root>/sys` and `<root>/proc` instead of the real ones (tests).
    #[arg(long, hide = true, value_name = "DIR", default_value = "/")]
    pub fs_root: PathBuf,
}

/// Runs `kafki layout`.
pub fn run(args: &LayoutArgs) -> anyhow::Result<()> {
    let machine = read_machine(&args.fs_root);
    let broker = if args.no_broker {
        BrokerAnswer::NotAsked
    } else {
        match fetch_broker_layout(&args.admin) {
            Ok(layout) => BrokerAnswer::Layout(layout),
            Err(reason) => BrokerAnswer::NoAnswer {
                admin: args.admin.clone(),
                reason,
            },
        }
    };
    let advice = advise(&machine, broker.layout());
    let report = Report {
        machine,
        broker,
        advice,
    };
    let mut out = BufWriter::new(io::stdout().lock());
    let written = if args.json {
        serde_json::to_writer_pretty(&mut out, &report)
            .map_err(io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        out.write_all(render_text(&report).as_bytes())
    };
    match written.and_then(|()| out.flush()) {
        Err(error) if error.kind() != io::ErrorKind::BrokenPipe => Err(error.into()),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------
// The machine.

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub broker: BrokerAnswer,
    pub advice: Advice,
}

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
fn physical_cores(cpus: &[Cpu]) -> Vec<Vec<usize>> {
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

// ---------------------------------------------------------------------------
// The broker.

/// What the broker's admin listener said, if anything.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum BrokerAnswer {
    Layout(BrokerLayout),
    NoAnswer { admin: String, reason: String },
    NotAsked,
}

impl BrokerAnswer {
    pub fn layout(&self) -> Option<&BrokerLayout> {
        match self {
            BrokerAnswer::Layout(layout) => Some(layout),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BrokerLayout {
    pub admin: String,
    pub shards: Vec<BrokerShard>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BrokerShard {
    pub shard: usize,
    /// `None` while the shard has not reported its CPU yet.
    pub cpu: Option<usize>,
    pub partitions: Vec<String>,
}

/// Asks the admin listener at `admin` for its layout.
pub fn fetch_broker_layout(admin: &str) -> Result<BrokerLayout, String> {
    let body = http_get(admin, "/v1/layout")?;
    let shards = parse_broker_layout(&body)?;
    Ok(BrokerLayout {
        admin: admin.to_string(),
        shards,
    })
}

/// Parses `{"shards":[{"shard":0,"cpu":1,"partitions":["t-0"]}]}` (see
/// `broker/src/server.rs`); a CPU the broker has not set yet is
/// `usize::MAX` there.
pub fn parse_broker_layout(body: &str) -> Result<Vec<BrokerShard>, String> {
    let document: serde_json::Value =
        serde_json::from_str(body).map_err(|error| format!("the layout is not JSON: {error}"))?;
    let shards = document
        .get("shards")
        .and_then(|shards| shards.as_array())
        .ok_or("the layout has no \"shards\" list")?;
    let mut parsed = Vec::with_capacity(shards.len());
    for shard in shards {
        let id = shard
            .get("shard")
            .and_then(|id| id.as_u64())
            .and_then(|id| usize::try_from(id).ok())
            .ok_or("a shard without a numeric \"shard\" id")?;
        let cpu = shard
            .get("cpu")
            .and_then(|cpu| cpu.as_u64())
            .and_then(|cpu| usize::try_from(cpu).ok())
            .filter(|cpu| *cpu != usize::MAX);
        let partitions = shard
            .get("partitions")
            .and_then(|partitions| partitions.as_array())
            .map(|partitions| {
                partitions
                    .iter()
                    .filter_map(|name| name.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        parsed.push(BrokerShard {
            shard: id,
            cpu,
            partitions,
        });
    }
    parsed.sort_by_key(|shard| shard.shard);
    Ok(parsed)
}

/// A blocking HTTP/1.1 GET of `path` from `address`; the body of a `200`.
pub fn http_get(address: &str, path: &str) -> Result<String, String> {
    let target = address
        .to_socket_addrs()
        .map_err(|error| format!("cannot resolve {address}: {error}"))?
        .next()
        .ok_or_else(|| format!("{address} resolves to no address"))?;
    let mut stream = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT)
        .map_err(|error| format!("cannot connect: {error}"))?;
    let io_error = |error: io::Error| format!("talking to it failed: {error}");
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .map_err(io_error)?;
    stream
        .set_write_timeout(Some(READ_TIMEOUT))
        .map_err(io_error)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(io_error)?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let read = match stream.read(&mut chunk) {
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(io_error(error)),
        };
        if read == 0 {
            break;
        }
        response.extend_from_slice(&chunk[..read]);
        if response.len() > RESPONSE_MAX {
            return Err(format!("the answer is larger than {RESPONSE_MAX} bytes"));
        }
        if let Some(HttpResponse::Complete { .. }) = parse_http_response(&response) {
            break;
        }
    }
    match parse_http_response(&response) {
        Some(HttpResponse::Complete { status: 200, body }) => {
            String::from_utf8(body).map_err(|_| "the answer is not UTF-8".to_string())
        }
        Some(HttpResponse::Complete { status, body }) => Err(format!(
            "it answered HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
        )),
        Some(HttpResponse::Partial) | None => Err("the answer ended early or is not HTTP".into()),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum HttpResponse {
    Complete {
        status: u16,
        body: Vec<u8>,
    },
    /// The head is there but the body is not complete yet (or, at the end
    /// of the stream, never was).
    Partial,
}

/// Parses an HTTP/1.1 response read so far; `None` while the head is
/// incomplete or not HTTP. Without `Content-Length` or chunked framing the
/// body runs to the end of the stream (the caller's read loop decides).
fn parse_http_response(bytes: &[u8]) -> Option<HttpResponse> {
    let head_end = bytes.windows(4).position(|window| window == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..head_end]).ok()?;
    let body = &bytes[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    if !status_line.starts_with("HTTP/1.") {
        return None;
    }
    let status: u16 = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    if chunked {
        return Some(match dechunk(body) {
            Some(body) => HttpResponse::Complete { status, body },
            None => HttpResponse::Partial,
        });
    }
    match content_length {
        Some(length) if body.len() >= length => Some(HttpResponse::Complete {
            status,
            body: body[..length].to_vec(),
        }),
        Some(_) => Some(HttpResponse::Partial),
        None => Some(HttpResponse::Complete {
            status,
            body: body.to_vec(),
        }),
    }
}

/// Decodes a complete chunked body; `None` until its last chunk arrived.
fn dechunk(mut bytes: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = bytes.windows(2).position(|window| window == b"\r\n")?;
        let size_text = std::str::from_utf8(&bytes[..line_end]).ok()?;
        let size_text = size_text.split(';').next()?.trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        bytes = &bytes[line_end + 2..];
        if size == 0 {
            return Some(body);
        }
        if bytes.len() < size.checked_add(2)? {
            return None;
        }
        body.extend_from_slice(&bytes[..size]);
        bytes = &bytes[size + 2..];
    }
}

// ---------------------------------------------------------------------------
// Suggestions.

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Advice {
    /// The `--cores` to give the broker.
    pub broker_cores: Vec<usize>,
    /// CPUs kept for the OS and the NIC interrupts (empty: none kept).
    pub irq_cpus: Vec<usize>,
    pub suggestions: Vec<Suggestion>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Advice,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Suggestion {
    pub kind: Kind,
    /// A stable name (`cores`, `irq-affinity`, `smt-siblings`, ...).
    pub code: &'static str,
    pub text: String,
    /// Commands that carry it out, to run as root.
    pub commands: Vec<String>,
}

fn advice(code: &'static str, text: String, commands: Vec<String>) -> Suggestion {
    Suggestion {
        kind: Kind::Advice,
        code,
        text,
        commands,
    }
}

fn warn(code: &'static str, text: String, commands: Vec<String>) -> Suggestion {
    Suggestion {
        kind: Kind::Warning,
        code,
        text,
        commands,
    }
}

/// A physical core as the suggestions see it.
struct CoreInfo {
    cpus: Vec<usize>,
    node: Option<usize>,
}

/// Computes the suggestions from the machine and, if one answered, the
/// broker's layout.
pub fn advise(machine: &Machine, broker: Option<&BrokerLayout>) -> Advice {
    let mut suggestions = Vec::new();
    let cpu_count = machine.cpus.len();
    let node_of = |cpu: usize| {
        machine
            .cpus
            .iter()
            .find(|known| known.id == cpu)
            .and_then(|known| known.node)
    };
    let cores: Vec<CoreInfo> = machine
        .cores
        .iter()
        .map(|cpus| CoreInfo {
            node: cpus.first().and_then(|cpu| node_of(*cpu)),
            cpus: cpus.clone(),
        })
        .collect();
    let nodes_with_cpus: Vec<&NumaNode> = machine
        .numa_nodes
        .iter()
        .filter(|node| node.cpus.iter().any(|cpu| node_of(*cpu).is_some()))
        .collect();
    let multi_node = nodes_with_cpus.len() > 1;
    let nic_nodes: BTreeSet<usize> = machine
        .nics
        .iter()
        .filter_map(|nic| nic.numa_node)
        .collect();
    // The node whose CPUs the broker should use: the NIC's, when there are
    // several nodes and the NICs agree on one.
    let target_node = match (multi_node, nic_nodes.len()) {
        (true, 1) => nic_nodes.first().copied(),
        _ => None,
    };
    let candidates: Vec<&CoreInfo> = cores
        .iter()
        .filter(|core| target_node.is_none_or(|node| core.node == Some(node)))
        .collect();
    let nic_names = |node: usize| {
        machine
            .nics
            .iter()
            .filter(|nic| nic.numa_node == Some(node))
            .map(|nic| nic.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };

    // Keep one physical core (the first of the chosen node: CPU 0 on node
    // 0) for the OS and the NIC interrupts once there are enough CPUs.
    let reserve = cpu_count >= RESERVE_FROM_CPUS && candidates.len() >= 2;
    let irq_cpus: Vec<usize> = if reserve {
        candidates[0].cpus.clone()
    } else {
        Vec::new()
    };
    let mut shard_cores: Vec<&CoreInfo> = candidates
        .iter()
        .copied()
        .filter(|core| !core.cpus.iter().any(|cpu| irq_cpus.contains(cpu)))
        .collect();
    let isolated_cores: Vec<&CoreInfo> = shard_cores
        .iter()
        .copied()
        .filter(|core| core.cpus.iter().any(|cpu| machine.isolated.contains(cpu)))
        .collect();
    if !isolated_cores.is_empty() {
        shard_cores = isolated_cores;
    }
    // One shard per physical core: its first (isolated, if any) thread.
    let broker_cores: Vec<usize> = shard_cores
        .iter()
        .filter_map(|core| {
            core.cpus
                .iter()
                .copied()
                .find(|cpu| machine.isolated.contains(cpu))
                .or_else(|| core.cpus.first().copied())
        })
        .collect();
    let smt = machine.cores.iter().any(|core| core.len() > 1);

    // Cores.
    if cpu_count == 0 {
        suggestions.push(warn(
            "no-cpus",
            "no online CPUs could be read (is sysfs mounted?)".into(),
            Vec::new(),
        ));
    } else if !reserve {
        let list = format_cpu_list(&broker_cores);
        let mut text = format!(
            "{cpu_count} CPU{}: keeping one for the OS would leave too few shards, so run a shard on \
             every {} (`--cores {list}`{})",
            if cpu_count == 1 { "" } else { "s" },
            if smt { "physical core" } else { "CPU" },
            if broker_cores.len() == cpu_count { ", the default" } else { "" },
        );
        let mut commands = vec![format!("kafki serve --cores {list}")];
        if cpu_count >= 2 {
            let (broker_cpu, client_cpu) = (cpu_count - 1, 0);
            text.push_str(&format!(
                ". To benchmark, pin the broker and the load generator to different CPUs: the \
                 client is often the bottleneck (broker on CPU {broker_cpu}, client under `taskset -c {client_cpu}`)"
            ));
            commands.push(format!("kafki serve --cores {broker_cpu}"));
        }
        suggestions.push(advice("cores", text, commands));
    } else {
        let list = format_cpu_list(&broker_cores);
        let mut reasons = vec![format!(
            "one shard per physical core ({} shard{})",
            broker_cores.len(),
            if broker_cores.len() == 1 { "" } else { "s" }
        )];
        if let Some(node) = target_node {
            reasons.push(format!("on NUMA node {node}, where {} is", nic_names(node)));
            let elsewhere = cores.iter().filter(|core| core.node != Some(node)).count();
            if elsewhere > 0 {
                reasons.push(format!(
                    "the other nodes' {elsewhere} cores would add shards at the price of \
                     cross-node memory and NIC traffic"
                ));
            }
        }
        reasons.push(format!(
            "CPU{} {} kept for the OS and NIC interrupts",
            if irq_cpus.len() == 1 { "" } else { "s" },
            format_cpu_list(&irq_cpus)
        ));
        if smt {
            let spare: Vec<usize> = shard_cores
                .iter()
                .flat_map(|core| core.cpus.iter().copied())
                .filter(|cpu| !broker_cores.contains(cpu))
                .collect();
            if !spare.is_empty() {
                reasons.push(format!(
                    "SMT siblings {} left free (a shard there would share its core)",
                    format_cpu_list(&spare)
                ));
            }
        }
        if !machine.isolated.is_empty()
            && shard_cores
                .iter()
                .any(|core| core.cpus.iter().any(|cpu| machine.isolated.contains(cpu)))
        {
            reasons.push(format!(
                "on the isolated CPUs {}",
                format_cpu_list(&machine.isolated)
            ));
        }
        suggestions.push(advice(
            "cores",
            format!(
                "run the broker with `--cores {list}`: {}",
                reasons.join("; ")
            ),
            vec![format!("kafki serve --cores {list}")],
        ));
        if multi_node && target_node.is_none() {
            suggestions.push(advice(
                "numa",
                format!(
                    "{} NUMA nodes and no NIC tied to one: shards on several nodes reach memory and \
                     the NIC across the interconnect; for the lowest latency give the broker the cores \
                     of one node",
                    nodes_with_cpus.len()
                ),
                Vec::new(),
            ));
        }
    }

    // NIC interrupts.
    let nic_irqs: Vec<(&Nic, &Irq)> = machine
        .nics
        .iter()
        .flat_map(|nic| nic.irqs.iter().map(move |irq| (nic, irq)))
        .collect();
    if reserve && !irq_cpus.is_empty() {
        let target = format_cpu_list(&irq_cpus);
        let commands: Vec<String> = nic_irqs
            .iter()
            .filter(|(_, irq)| {
                irq.affinity.as_ref().is_none_or(|cpus| {
                    cpus.is_empty() || cpus.iter().any(|cpu| !irq_cpus.contains(cpu))
                })
            })
            .map(|(_, irq)| format!("echo {target} > /proc/irq/{}/smp_affinity_list", irq.irq))
            .collect();
        if !commands.is_empty() {
            let mut text = format!(
                "pin the NIC interrupts ({} IRQ{}) to CPU{} {target}, off the shards",
                commands.len(),
                if commands.len() == 1 { "" } else { "s" },
                if irq_cpus.len() == 1 { "" } else { "s" },
            );
            let mut commands = commands;
            if machine.irqbalance_running {
                text.push_str(&format!(
                    "; irqbalance is running and would move them back: stop it, or ban the shard CPUs \
                     (IRQBALANCE_BANNED_CPULIST={})",
                    format_cpu_list(&broker_cores)
                ));
                commands.insert(0, "systemctl stop irqbalance".into());
            }
            suggestions.push(advice("irq-affinity", text, commands));
        }
        if machine.isolated.is_empty() && machine.nohz_full.is_empty() && !broker_cores.is_empty() {
            let shards = format_cpu_list(&broker_cores);
            suggestions.push(advice(
                "isolation",
                format!(
                    "for the lowest tail latency, keep the scheduler, timer ticks and managed IRQs \
                     off the shard CPUs with boot parameters: isolcpus=managed_irq,domain,{shards} \
                     nohz_full={shards} irqaffinity={target}"
                ),
                Vec::new(),
            ));
        }
    } else if !nic_irqs.is_empty() {
        let placements: Vec<String> = nic_irqs
            .iter()
            .filter(|(_, irq)| !irq.counts.is_empty())
            .map(|(nic, irq)| {
                format!(
                    "{} IRQ {} ({}) on CPU {}",
                    nic.name,
                    irq.irq,
                    irq.name.as_deref().unwrap_or("?"),
                    format_cpu_list(&irq.handled_on())
                )
            })
            .collect();
        if !placements.is_empty() && cpu_count > 0 {
            suggestions.push(advice(
                "irq-affinity",
                format!(
                    "NIC interrupts: {}; with {cpu_count} CPU{} every CPU runs a shard, so there is \
                     no free CPU to move them to",
                    placements.join(", "),
                    if cpu_count == 1 { "" } else { "s" }
                ),
                Vec::new(),
            ));
        }
    }

    // SMT, NUMA, governors, isolation.
    if cpu_count > 0 {
        if smt {
            let threads = machine.cores.iter().map(Vec::len).max().unwrap_or(1);
            suggestions.push(advice(
                "smt",
                format!(
                    "SMT is on: {} physical cores with up to {threads} threads each; give a shard one \
                     thread per core, leave the siblings to the OS, interrupts or the load generator",
                    machine.cores.len()
                ),
                Vec::new(),
            ));
        } else {
            suggestions.push(advice(
                "smt",
                "no SMT siblings visible: every CPU is its own core (on a VM the hypervisor may still \
                 share physical cores between vCPUs)"
                    .into(),
                Vec::new(),
            ));
        }
        if !multi_node {
            suggestions.push(advice(
                "numa",
                format!(
                    "{}: no memory or NIC locality to arrange",
                    if machine.numa_nodes.is_empty() {
                        "no NUMA information (one node)".to_string()
                    } else {
                        "one NUMA node".to_string()
                    }
                ),
                Vec::new(),
            ));
        }
    }
    let governor_scope: Vec<usize> = match broker {
        Some(layout) => layout.shards.iter().filter_map(|shard| shard.cpu).collect(),
        None if broker_cores.is_empty() => machine.cpus.iter().map(|cpu| cpu.id).collect(),
        None => broker_cores.clone(),
    };
    let slow: Vec<(usize, &str)> = machine
        .cpus
        .iter()
        .filter(|cpu| governor_scope.contains(&cpu.id))
        .filter_map(|cpu| Some((cpu.id, cpu.governor.as_deref()?)))
        .filter(|(_, governor)| *governor != "performance")
        .collect();
    if !slow.is_empty() {
        let cpus: Vec<usize> = slow.iter().map(|(cpu, _)| *cpu).collect();
        let governors: BTreeSet<&str> = slow.iter().map(|(_, governor)| *governor).collect();
        let ids: Vec<String> = cpus.iter().map(usize::to_string).collect();
        suggestions.push(warn(
            "governor",
            format!(
                "CPU{} {} use{} the {} frequency governor, not `performance`: shards wake up slower \
                 and latency varies",
                if cpus.len() == 1 { "" } else { "s" },
                format_cpu_list(&cpus),
                if cpus.len() == 1 { "s" } else { "" },
                governors.into_iter().collect::<Vec<_>>().join("/")
            ),
            vec![format!(
                "for cpu in {}; do echo performance > /sys/devices/system/cpu/cpu$cpu/cpufreq/scaling_governor; done",
                ids.join(" ")
            )],
        ));
    } else if cpu_count > 0 && machine.cpus.iter().all(|cpu| cpu.governor.is_none()) {
        suggestions.push(advice(
            "governor",
            "no CPU frequency governor is exposed (usual on VMs): nothing to set".into(),
            Vec::new(),
        ));
    }

    if let Some(layout) = broker {
        check_broker(
            machine,
            layout,
            &broker_cores,
            &irq_cpus,
            reserve,
            target_node,
            &mut suggestions,
        );
    }
    Advice {
        broker_cores,
        irq_cpus,
        suggestions,
    }
}

/// Warnings about a running broker's placement.
fn check_broker(
    machine: &Machine,
    layout: &BrokerLayout,
    suggested: &[usize],
    irq_cpus: &[usize],
    reserve: bool,
    target_node: Option<usize>,
    suggestions: &mut Vec<Suggestion>,
) {
    let cpu = |id: usize| machine.cpus.iter().find(|cpu| cpu.id == id);
    let mut placed: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for shard in &layout.shards {
        match shard.cpu {
            None => suggestions.push(warn(
                "shard-unpinned",
                format!(
                    "shard {} has not reported its CPU (still starting?)",
                    shard.shard
                ),
                Vec::new(),
            )),
            Some(id) if cpu(id).is_none() => suggestions.push(warn(
                "shard-cpu-offline",
                format!(
                    "shard {} is on CPU {id}, which is not online here",
                    shard.shard
                ),
                Vec::new(),
            )),
            Some(id) => placed.entry(id).or_default().push(shard.shard),
        }
    }
    for (id, shards) in &placed {
        if shards.len() > 1 {
            suggestions.push(warn(
                "shards-share-cpu",
                format!("shards {} all run on CPU {id}", join(shards)),
                Vec::new(),
            ));
        }
    }
    // Shards on SMT siblings of one core.
    for core in &machine.cores {
        let on_core: Vec<(usize, usize)> = placed
            .iter()
            .filter(|(id, _)| core.contains(id))
            .flat_map(|(id, shards)| shards.iter().map(move |shard| (*shard, *id)))
            .collect();
        let distinct_cpus: BTreeSet<usize> = on_core.iter().map(|(_, id)| *id).collect();
        if distinct_cpus.len() > 1 {
            let described: Vec<String> = on_core
                .iter()
                .map(|(shard, id)| format!("shard {shard} on CPU {id}"))
                .collect();
            suggestions.push(warn(
                "smt-siblings",
                format!(
                    "{} are SMT siblings of one physical core (CPUs {}): they share its execution units \
                     and L1/L2 caches; use one shard per physical core",
                    described.join(" and "),
                    format_cpu_list(core)
                ),
                Vec::new(),
            ));
        }
    }
    // NUMA.
    let nodes: BTreeMap<usize, Vec<usize>> = placed
        .iter()
        .filter_map(|(id, shards)| Some((cpu(*id)?.node?, shards)))
        .fold(BTreeMap::new(), |mut nodes, (node, shards)| {
            nodes.entry(node).or_insert_with(Vec::new).extend(shards);
            nodes
        });
    if nodes.len() > 1 {
        let described: Vec<String> = nodes
            .iter()
            .map(|(node, shards)| format!("node {node}: shards {}", join(shards)))
            .collect();
        suggestions.push(warn(
            "numa-span",
            format!(
                "the shards span {} NUMA nodes ({}): cross-shard calls and NIC traffic cross the \
                 interconnect",
                nodes.len(),
                described.join("; ")
            ),
            Vec::new(),
        ));
    }
    if let Some(nic_node) = target_node {
        let away: Vec<usize> = nodes
            .iter()
            .filter(|(node, _)| **node != nic_node)
            .flat_map(|(_, shards)| shards.iter().copied())
            .collect();
        if !away.is_empty() {
            suggestions.push(warn(
                "numa-nic",
                format!(
                    "shards {} are not on NUMA node {nic_node}, where the NIC is",
                    join(&away)
                ),
                Vec::new(),
            ));
        }
    }
    // Interrupts on shard CPUs (unavoidable without a CPU to spare).
    if reserve {
        for nic in &machine.nics {
            for irq in &nic.irqs {
                let on_shards: Vec<String> = irq
                    .handled_on()
                    .iter()
                    .filter_map(|id| {
                        placed
                            .get(id)
                            .map(|shards| format!("CPU {id} (shard {})", join(shards)))
                    })
                    .collect();
                if !on_shards.is_empty() {
                    suggestions.push(warn(
                        "irq-on-shard",
                        format!(
                            "{} IRQ {} ({}) is handled on {}: interrupts steal time from that shard",
                            nic.name,
                            irq.irq,
                            irq.name.as_deref().unwrap_or("?"),
                            on_shards.join(", ")
                        ),
                        vec![format!(
                            "echo {} > /proc/irq/{}/smp_affinity_list",
                            format_cpu_list(irq_cpus),
                            irq.irq
                        )],
                    ));
                }
            }
        }
    }
    // Partition balance: flag a shard far from the mean.
    let counts: Vec<(usize, usize)> = layout
        .shards
        .iter()
        .map(|shard| (shard.shard, shard.partitions.len()))
        .collect();
    if counts.len() > 1 {
        let total: usize = counts.iter().map(|(_, count)| count).sum();
        let mean = total as f64 / counts.len() as f64;
        let (busiest, most) = counts
            .iter()
            .copied()
            .max_by_key(|(_, count)| *count)
            .unwrap_or((0, 0));
        let (idlest, least) = counts
            .iter()
            .copied()
            .min_by_key(|(_, count)| *count)
            .unwrap_or((0, 0));
        // Differences of one or two are what any placement of a few
        // partitions gives; beyond that, and half the mean, it is skew.
        if most - least > 2 && (most - least) as f64 > mean / 2.0 {
            let commands: Vec<String> = rebalancing_moves(layout)
                .into_iter()
                .map(|(topic, partition, shard)| {
                    format!(
                        "curl -X PUT -d '{{\"shard\": {shard}}}' http://{}/v1/partitions/{topic}/{partition}/shard",
                        layout.admin
                    )
                })
                .collect();
            let moves = if commands.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} move{} through the admin API even{} it out",
                    commands.len(),
                    if commands.len() == 1 { "" } else { "s" },
                    if commands.len() == 1 { "s" } else { "" }
                )
            };
            suggestions.push(warn(
                "unbalanced",
                format!(
                    "partitions are unbalanced: shard {busiest} owns {most}, shard {idlest} owns \
                     {least} (mean {mean:.1}); the busiest shard limits throughput{moves}"
                ),
                commands,
            ));
        }
    }
    // The running set against the suggested one.
    let running: Vec<usize> = placed.keys().copied().collect();
    if !suggested.is_empty() && !running.is_empty() && running != suggested {
        suggestions.push(advice(
            "cores-differ",
            format!(
                "the broker runs on CPUs {}; the suggestion above is `--cores {}`",
                format_cpu_list(&running),
                format_cpu_list(suggested)
            ),
            Vec::new(),
        ));
    }
    if !machine.isolated.is_empty() {
        let outside: Vec<usize> = running
            .iter()
            .copied()
            .filter(|id| !machine.isolated.contains(id))
            .collect();
        if !outside.is_empty() {
            suggestions.push(warn(
                "not-isolated",
                format!(
                    "CPUs {} are isolated, but shards run on CPUs {} outside them",
                    format_cpu_list(&machine.isolated),
                    format_cpu_list(&outside)
                ),
                Vec::new(),
            ));
        }
    }
}

/// Most partition moves suggested at once.
const MOVES_MAX: usize = 10;

/// Moves, `(topic, partition, to shard)`, that bring the shards' partition
/// counts within one of each other: greedily from the busiest shard to the
/// idlest. Internal topics (`__consumer_offsets`) stay: the admin API
/// refuses to move them.
fn rebalancing_moves(layout: &BrokerLayout) -> Vec<(String, i32, usize)> {
    let mut counts: Vec<usize> = layout
        .shards
        .iter()
        .map(|shard| shard.partitions.len())
        .collect();
    let mut movable: Vec<Vec<(String, i32)>> = layout
        .shards
        .iter()
        .map(|shard| {
            let mut names: Vec<(String, i32)> = shard
                .partitions
                .iter()
                .filter(|name| !name.starts_with("__"))
                .filter_map(|name| {
                    let (topic, partition) = name.rsplit_once('-')?;
                    Some((topic.to_string(), partition.parse().ok()?))
                })
                .collect();
            names.sort();
            names
        })
        .collect();
    let mut moves = Vec::new();
    while moves.len() < MOVES_MAX {
        let (Some(busiest), Some(idlest)) = (
            (0..counts.len())
                .filter(|index| !movable[*index].is_empty())
                .max_by_key(|index| (counts[*index], std::cmp::Reverse(*index))),
            (0..counts.len()).min_by_key(|index| (counts[*index], *index)),
        ) else {
            break;
        };
        if counts[busiest] <= counts[idlest] + 1 {
            break;
        }
        let Some((topic, partition)) = movable[busiest].pop() else {
            break;
        };
        counts[busiest] -= 1;
        counts[idlest] += 1;
        moves.push((topic, partition, layout.shards[idlest].shard));
    }
    moves
}

fn join(numbers: &[usize]) -> String {
    numbers
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------
// Text output.

fn optional<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_string(), |value| value.to_string())
}

/// The whole report as text.
pub fn render_text(report: &Report) -> String {
    let machine = &report.machine;
    let mut out = String::new();
    let nodes = machine.numa_nodes.len().max(1);
    out.push_str(&format!(
        "machine: {} CPUs online, {} physical cores, {} package{}, {nodes} NUMA node{}\n",
        machine.cpus.len(),
        machine.cores.len(),
        machine.packages.len().max(1),
        if machine.packages.len() > 1 { "s" } else { "" },
        if nodes > 1 { "s" } else { "" },
    ));
    let cache_size = |cpu: &Cpu, level: u32, kind: &str| {
        cpu.caches
            .iter()
            .find(|cache| cache.level == level && cache.kind == kind)
            .map_or_else(|| "-".to_string(), |cache| cache.size.clone())
    };
    let mut rows = vec![[
        "cpu",
        "core",
        "package",
        "node",
        "smt-siblings",
        "L1d",
        "L1i",
        "L2",
        "L3",
        "governor",
    ]
    .map(str::to_string)
    .to_vec()];
    for cpu in &machine.cpus {
        rows.push(vec![
            cpu.id.to_string(),
            optional(cpu.core_id),
            optional(cpu.package),
            optional(cpu.node),
            format_cpu_list(&cpu.smt_siblings),
            cache_size(cpu, 1, "Data"),
            cache_size(cpu, 1, "Instruction"),
            cache_size(cpu, 2, "Unified"),
            cache_size(cpu, 3, "Unified"),
            cpu.governor.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    out.push_str(&table(&rows, "  "));
    for cache in &machine.shared_caches {
        out.push_str(&format!(
            "  L{} {} cache {} shared by CPUs {}\n",
            cache.level,
            cache.kind.to_lowercase(),
            cache.size,
            format_cpu_list(&cache.cpus)
        ));
    }
    for node in &machine.numa_nodes {
        out.push_str(&format!(
            "  NUMA node {}: CPUs {}\n",
            node.id,
            format_cpu_list(&node.cpus)
        ));
    }
    let list_or_none = |cpus: &[usize]| {
        if cpus.is_empty() {
            "none".to_string()
        } else {
            format_cpu_list(cpus)
        }
    };
    out.push_str(&format!(
        "  isolated CPUs: {}; nohz_full: {}; SMT control: {}\n",
        list_or_none(&machine.isolated),
        list_or_none(&machine.nohz_full),
        machine.smt_control.as_deref().unwrap_or("-")
    ));
    if !machine.kernel_cpu_parameters.is_empty() {
        out.push_str(&format!(
            "  kernel parameters: {}\n",
            machine.kernel_cpu_parameters.join(" ")
        ));
    }
    for nic in &machine.nics {
        out.push_str(&format!(
            "  NIC {}: NUMA node {}, driver {}, {} IRQs\n",
            nic.name,
            optional(nic.numa_node),
            nic.driver.as_deref().unwrap_or("-"),
            nic.irqs.len()
        ));
        for irq in &nic.irqs {
            let mut line = format!(
                "    IRQ {} {}: affinity {}",
                irq.irq,
                irq.name.as_deref().unwrap_or("?"),
                irq.affinity
                    .as_deref()
                    .map_or_else(|| "-".to_string(), format_cpu_list)
            );
            if let Some(effective) = &irq.effective_affinity {
                line.push_str(&format!(", effective {}", format_cpu_list(effective)));
            }
            if !irq.counts.is_empty() {
                let counts: Vec<String> = irq
                    .counts
                    .iter()
                    .map(|(cpu, count)| format!("CPU {cpu}: {count}"))
                    .collect();
                line.push_str(&format!(", interrupts {}", counts.join(", ")));
            }
            out.push_str(&line);
            out.push('\n');
        }
    }
    if !machine.virtual_interfaces.is_empty() {
        out.push_str(&format!(
            "  virtual interfaces (no device, no IRQs): {}\n",
            machine.virtual_interfaces.join(", ")
        ));
    }
    if machine.irqbalance_running {
        out.push_str("  irqbalance: running\n");
    }

    match &report.broker {
        BrokerAnswer::Layout(layout) => {
            out.push_str(&format!(
                "broker at {}: {} shards\n",
                layout.admin,
                layout.shards.len()
            ));
            for shard in &layout.shards {
                let place = match shard.cpu.and_then(|id| machine.cpus.iter().find(|cpu| cpu.id == id)) {
                    Some(cpu) => {
                        let siblings: Vec<usize> = cpu
                            .smt_siblings
                            .iter()
                            .copied()
                            .filter(|sibling| *sibling != cpu.id)
                            .collect();
                        let shared = if siblings.is_empty() {
                            String::new()
                        } else {
                            format!(", core shared with CPU {}", format_cpu_list(&siblings))
                        };
                        format!("CPU {} (node {}{shared})", cpu.id, optional(cpu.node))
                    }
                    None => format!("CPU {}", optional(shard.cpu)),
                };
                let mut partitions = shard.partitions.iter().take(8).cloned().collect::<Vec<_>>().join(", ");
                if shard.partitions.len() > 8 {
                    partitions.push_str(&format!(", ... ({} more)", shard.partitions.len() - 8));
                }
                out.push_str(&format!(
                    "  shard {}: {place}, {} partition{}{}{partitions}\n",
                    shard.shard,
                    shard.partitions.len(),
                    if shard.partitions.len() == 1 { "" } else { "s" },
                    if partitions.is_empty() { "" } else { ": " }
                ));
            }
        }
        BrokerAnswer::NoAnswer { admin, reason } => out.push_str(&format!(
            "broker: no answer from the admin listener at {admin} ({reason}); showing the machine only\n"
        )),
        BrokerAnswer::NotAsked => {}
    }

    out.push_str("suggestions:\n");
    for suggestion in &report.advice.suggestions {
        let mark = match suggestion.kind {
            Kind::Advice => "-",
            Kind::Warning => "! warning:",
        };
        out.push_str(&format!(
            "  {mark} [{}] {}\n",
            suggestion.code, suggestion.text
        ));
        for command in &suggestion.commands {
            out.push_str(&format!("      $ {command}\n"));
        }
    }
    out
}

/// Left-aligned columns.
fn table(rows: &[Vec<String>], indent: &str) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|column| {
            rows.iter()
                .filter_map(|row| row.get(column))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(column, cell)| format!("{cell:<width$}", width = widths[column]))
            .collect();
        out.push_str(indent);
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
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

    #[test]
    fn http_responses_parse() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(
            parse_http_response(plain),
            Some(HttpResponse::Complete {
                status: 200,
                body: b"hello".to_vec()
            })
        );
        assert_eq!(
            parse_http_response(&plain[..plain.len() - 1]),
            Some(HttpResponse::Partial)
        );
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(
            parse_http_response(chunked),
            Some(HttpResponse::Complete {
                status: 200,
                body: b"abcde".to_vec()
            })
        );
        assert_eq!(
            parse_http_response(&chunked[..60]),
            Some(HttpResponse::Partial)
        );
        assert_eq!(parse_http_response(b"SSH-2.0-OpenSSH\r\n\r\n"), None);
        assert_eq!(parse_http_response(b"HTTP/1.1 200"), None);
        let huge_chunk =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nab";
        assert_eq!(parse_http_response(huge_chunk), Some(HttpResponse::Partial));
    }

    #[test]
    fn broker_layouts_parse() {
        let shards = parse_broker_layout(
            r#"{"shards":[{"shard":1,"cpu":18446744073709551615,"partitions":[]},{"shard":0,"cpu":3,"partitions":["t-0","t-2"]}]}"#,
        )
        .expect("parses");
        assert_eq!(shards[0].shard, 0);
        assert_eq!(shards[0].cpu, Some(3));
        assert_eq!(shards[0].partitions, vec!["t-0", "t-2"]);
        assert_eq!(
            shards[1].cpu, None,
            "usize::MAX is a shard that has not reported"
        );
        assert!(parse_broker_layout("not json").is_err());
        assert!(parse_broker_layout("{}").is_err());
        assert!(parse_broker_layout(r#"{"shards":[{"cpu":1}]}"#).is_err());
    }

    fn cpu(id: usize, siblings: &[usize], node: usize, governor: Option<&str>) -> Cpu {
        Cpu {
            id,
            core_id: Some(siblings[0] as i64),
            package: Some(0),
            node: Some(node),
            smt_siblings: siblings.to_vec(),
            caches: Vec::new(),
            governor: governor.map(str::to_string),
            frequency_khz: None,
        }
    }

    #[test]
    fn four_cpus_keep_cpu_zero_for_the_os() {
        let cpus: Vec<Cpu> = (0..4)
            .map(|id| cpu(id, &[id], 0, Some("performance")))
            .collect();
        let machine = Machine {
            cores: physical_cores(&cpus),
            cpus,
            numa_nodes: vec![NumaNode {
                id: 0,
                cpus: vec![0, 1, 2, 3],
            }],
            nics: vec![Nic {
                name: "eth0".into(),
                numa_node: Some(0),
                driver: None,
                irqs: vec![Irq {
                    irq: 40,
                    name: Some("eth0-TxRx-0".into()),
                    affinity: Some(vec![0, 1, 2, 3]),
                    effective_affinity: Some(vec![2]),
                    counts: vec![(2, 100)],
                }],
            }],
            ..Machine::default()
        };
        let advice = advise(&machine, None);
        assert_eq!(advice.broker_cores, vec![1, 2, 3]);
        assert_eq!(advice.irq_cpus, vec![0]);
        let irq = advice
            .suggestions
            .iter()
            .find(|s| s.code == "irq-affinity")
            .expect("irq advice");
        assert_eq!(
            irq.commands,
            vec!["echo 0 > /proc/irq/40/smp_affinity_list"]
        );
        assert!(
            !advice.suggestions.iter().any(|s| s.code == "governor"),
            "performance is fine"
        );

        // A broker on all four CPUs, with skewed partitions.
        let layout = BrokerLayout {
            admin: "a".into(),
            shards: (0..4)
                .map(|shard| BrokerShard {
                    shard,
                    cpu: Some(shard),
                    partitions: (0..if shard == 0 { 12 } else { 1 })
                        .map(|p| format!("t-{p}"))
                        .collect(),
                })
                .collect(),
        };
        let advice = advise(&machine, Some(&layout));
        let codes: Vec<&str> = advice.suggestions.iter().map(|s| s.code).collect();
        assert!(codes.contains(&"unbalanced"), "{codes:?}");
        assert!(codes.contains(&"irq-on-shard"), "{codes:?}");
        assert!(codes.contains(&"cores-differ"), "{codes:?}");
        assert!(
            !codes.contains(&"smt-siblings") && !codes.contains(&"numa-span"),
            "{codes:?}"
        );
    }

    #[test]
    fn an_empty_machine_does_not_panic() {
        let machine = read_machine(Path::new("/nonexistent/kafki-layout"));
        assert!(machine.cpus.is_empty());
        let advice = advise(&machine, None);
        assert!(advice.suggestions.iter().any(|s| s.code == "no-cpus"));
        let report = Report {
            machine,
            broker: BrokerAnswer::NotAsked,
            advice,
        };
        assert!(render_text(&report).contains("machine: 0 CPUs online"));
    }
}
