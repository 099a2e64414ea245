//! `kafki layout` end to end: the real binary reads fixture sysfs/procfs
//! trees (a 2-vCPU VM like the project's machines, a 2-socket SMT machine
//! with its NIC on NUMA node 1), this machine's own `/sys`, and a broker
//! layout served by a tiny fake admin listener.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn kafki(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kafki"))
        .args(args)
        .output()
        .expect("run kafki")
}

fn layout_json(args: &[&str]) -> Value {
    let mut all = vec!["layout", "--json"];
    all.extend_from_slice(args);
    let output = kafki(&all);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("layout --json is JSON")
}

/// A sysfs/procfs tree under a temporary root.
struct Fixture {
    root: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Self {
            root: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self) -> &str {
        self.root.path().to_str().expect("utf-8 path")
    }

    fn write(&self, relative: &str, contents: &str) {
        let path = self.root.path().join(relative);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, format!("{contents}\n")).expect("write fixture file");
    }

    fn symlink(&self, relative: &str, target: &str) {
        let path = self.root.path().join(relative);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::os::unix::fs::symlink(target, path).expect("symlink");
    }

    fn mkdir(&self, relative: &str) {
        std::fs::create_dir_all(self.root.path().join(relative)).expect("mkdir");
    }

    /// One CPU: topology, caches `(level, type, size, shared_cpu_list)`,
    /// and a governor if it has cpufreq.
    fn cpu(
        &self,
        id: usize,
        core: usize,
        package: usize,
        siblings: &str,
        caches: &[(u32, &str, &str, &str)],
        governor: Option<&str>,
    ) {
        let dir = format!("sys/devices/system/cpu/cpu{id}");
        self.write(&format!("{dir}/topology/core_id"), &core.to_string());
        self.write(
            &format!("{dir}/topology/physical_package_id"),
            &package.to_string(),
        );
        self.write(&format!("{dir}/topology/thread_siblings_list"), siblings);
        for (index, (level, kind, size, shared)) in caches.iter().enumerate() {
            let cache = format!("{dir}/cache/index{index}");
            self.write(&format!("{cache}/level"), &level.to_string());
            self.write(&format!("{cache}/type"), kind);
            self.write(&format!("{cache}/size"), size);
            self.write(&format!("{cache}/shared_cpu_list"), shared);
        }
        if let Some(governor) = governor {
            self.write(&format!("{dir}/cpufreq/scaling_governor"), governor);
        }
    }

    fn irq(&self, irq: u32, affinity: &str, effective: &str) {
        self.write(&format!("proc/irq/{irq}/smp_affinity_list"), affinity);
        self.write(
            &format!("proc/irq/{irq}/effective_affinity_list"),
            effective,
        );
    }
}

/// This project's machines: 2 vCPUs, one NUMA node, a virtio NIC whose
/// PCI function (the parent of its `device`) has the MSI vectors.
fn two_vcpu_vm() -> Fixture {
    let fixture = Fixture::new();
    fixture.write("sys/devices/system/cpu/online", "0-1");
    fixture.write("sys/devices/system/cpu/isolated", "");
    fixture.write("sys/devices/system/cpu/smt/control", "notsupported");
    for id in 0..2 {
        let own = id.to_string();
        fixture.cpu(
            id,
            id,
            0,
            &own,
            &[
                (1, "Data", "48K", &own),
                (1, "Instruction", "32K", &own),
                (2, "Unified", "2048K", &own),
                (3, "Unified", "307200K", "0-1"),
            ],
            None,
        );
    }
    fixture.write("sys/devices/system/node/node0/cpulist", "0-1");
    let pci = "sys/devices/pci0000:00/0000:00:03.0";
    fixture.write(&format!("{pci}/numa_node"), "-1");
    for irq in [37, 38, 39] {
        fixture.write(&format!("{pci}/msi_irqs/{irq}"), "msix");
    }
    fixture.mkdir(&format!("{pci}/virtio2"));
    fixture.mkdir("sys/bus/virtio/drivers/virtio_net");
    fixture.symlink(
        &format!("{pci}/virtio2/driver"),
        "../../../../bus/virtio/drivers/virtio_net",
    );
    fixture.symlink(
        "sys/class/net/eth0/device",
        "../../../devices/pci0000:00/0000:00:03.0/virtio2",
    );
    fixture.mkdir("sys/class/net/lo");
    fixture.mkdir("sys/class/net/ifb0");
    fixture.write(
        "proc/interrupts",
        "           CPU0       CPU1       \n \
         37:          0          0 PCI-MSIX-0000:00:03.0   0-edge      virtio2-config\n \
         38:          0      11559 PCI-MSIX-0000:00:03.0   1-edge      virtio2-input.0\n \
         39:      10063          0 PCI-MSIX-0000:00:03.0   2-edge      virtio2-output.0\n\
        NMI:          0          0   Non-maskable interrupts",
    );
    fixture.irq(37, "0-1", "0");
    fixture.irq(38, "0-1", "1");
    fixture.irq(39, "0-1", "0");
    fixture
}

/// Two sockets of 4 cores × 2 threads: package 0 has CPUs 0-3 (siblings
/// 8-11, NUMA node 0), package 1 has CPUs 4-7 (siblings 12-15, node 1).
/// The NIC is on node 1; every CPU uses `powersave`; irqbalance runs.
fn two_socket_smt() -> Fixture {
    let fixture = Fixture::new();
    fixture.write("sys/devices/system/cpu/online", "0-15");
    fixture.write("sys/devices/system/cpu/isolated", "");
    fixture.write("sys/devices/system/cpu/nohz_full", "(null)");
    fixture.write("sys/devices/system/cpu/smt/control", "on");
    for id in 0..16 {
        let package = (id % 8) / 4;
        let core = id % 4;
        let first = id % 8;
        let siblings = format!("{first},{}", first + 8);
        let l3 = if package == 0 {
            "0-3,8-11"
        } else {
            "4-7,12-15"
        };
        fixture.cpu(
            id,
            core,
            package,
            &siblings,
            &[
                (1, "Data", "32K", &siblings),
                (1, "Instruction", "32K", &siblings),
                (2, "Unified", "1024K", &siblings),
                (3, "Unified", "28160K", l3),
            ],
            Some("powersave"),
        );
    }
    fixture.write("sys/devices/system/node/node0/cpulist", "0-3,8-11");
    fixture.write("sys/devices/system/node/node1/cpulist", "4-7,12-15");
    let pci = "sys/devices/pci0000:ae/0000:ae:00.0/0000:af:00.0";
    fixture.write(&format!("{pci}/numa_node"), "1");
    for irq in [100, 101, 102, 103] {
        fixture.write(&format!("{pci}/msi_irqs/{irq}"), "msix");
    }
    fixture.mkdir("sys/bus/pci/drivers/i40e");
    fixture.symlink(&format!("{pci}/driver"), "../../../../bus/pci/drivers/i40e");
    fixture.symlink(
        "sys/class/net/eth0/device",
        "../../../devices/pci0000:ae/0000:ae:00.0/0000:af:00.0",
    );
    fixture.mkdir("sys/class/net/lo");
    let mut interrupts = String::from("    ");
    for cpu in 0..16 {
        interrupts.push_str(&format!("       CPU{cpu}"));
    }
    interrupts.push('\n');
    for (irq, busy_cpu, name) in [
        (100, 4, "i40e-0000:af:00.0:misc"),
        (101, 5, "i40e-eth0-TxRx-0"),
        (102, 6, "i40e-eth0-TxRx-1"),
        (103, 4, "i40e-eth0-TxRx-2"),
    ] {
        let counts: Vec<String> = (0..16)
            .map(|cpu| {
                if cpu == busy_cpu {
                    "5000".into()
                } else {
                    "0".into()
                }
            })
            .collect();
        interrupts.push_str(&format!(
            " {irq}: {}  IR-PCI-MSI 5767168-edge      {name}\n",
            counts.join(" ")
        ));
    }
    fixture.write("proc/interrupts", &interrupts);
    fixture.irq(100, "4,12", "4");
    fixture.irq(101, "0-15", "5");
    fixture.irq(102, "0-15", "6");
    fixture.irq(103, "4,12", "4");
    fixture.write("proc/812/comm", "irqbalance");
    fixture.write("proc/1/comm", "init");
    fixture.write(
        "proc/cmdline",
        "BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro quiet",
    );
    fixture
}

fn codes(report: &Value) -> Vec<String> {
    report["advice"]["suggestions"]
        .as_array()
        .expect("suggestions")
        .iter()
        .map(|suggestion| {
            format!(
                "{}:{}",
                suggestion["kind"].as_str().unwrap_or("?"),
                suggestion["code"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

fn suggestion<'a>(report: &'a Value, code: &str) -> &'a Value {
    report["advice"]["suggestions"]
        .as_array()
        .expect("suggestions")
        .iter()
        .find(|suggestion| suggestion["code"] == code)
        .unwrap_or_else(|| panic!("no {code} suggestion in {:#}", report["advice"]))
}

#[test]
fn two_vcpu_vm_topology_and_what_applies() {
    let fixture = two_vcpu_vm();
    let report = layout_json(&["--no-broker", "--fs-root", fixture.path()]);
    let machine = &report["machine"];
    assert_eq!(machine["cpus"].as_array().map(Vec::len), Some(2));
    assert_eq!(machine["cores"], serde_json::json!([[0], [1]]));
    assert_eq!(machine["packages"], serde_json::json!([0]));
    assert_eq!(
        machine["numa_nodes"],
        serde_json::json!([{"id": 0, "cpus": [0, 1]}])
    );
    assert_eq!(machine["cpus"][1]["node"], 0);
    assert_eq!(
        machine["cpus"][1]["caches"][3]["shared_cpus"],
        serde_json::json!([0, 1])
    );
    assert_eq!(
        machine["shared_caches"],
        serde_json::json!([{"level": 3, "kind": "Unified", "size": "307200K", "cpus": [0, 1]}])
    );
    assert_eq!(machine["smt_control"], "notsupported");
    assert_eq!(machine["virtual_interfaces"], serde_json::json!(["ifb0"]));
    let nic = &machine["nics"][0];
    assert_eq!(nic["name"], "eth0");
    assert_eq!(nic["numa_node"], Value::Null, "numa_node -1 is no node");
    assert_eq!(nic["driver"], "virtio_net");
    let irqs: Vec<(u64, &str)> = nic["irqs"]
        .as_array()
        .expect("irqs")
        .iter()
        .map(|irq| {
            (
                irq["irq"].as_u64().unwrap_or(0),
                irq["name"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        irqs,
        [
            (37, "virtio2-config"),
            (38, "virtio2-input.0"),
            (39, "virtio2-output.0")
        ]
    );
    assert_eq!(nic["irqs"][1]["effective_affinity"], serde_json::json!([1]));
    assert_eq!(nic["irqs"][1]["counts"], serde_json::json!([[1, 11559]]));

    let advice = &report["advice"];
    assert_eq!(advice["broker_cores"], serde_json::json!([0, 1]));
    assert_eq!(advice["irq_cpus"], serde_json::json!([]));
    let cores = suggestion(&report, "cores");
    assert!(
        cores["text"]
            .as_str()
            .is_some_and(|text| text.contains("`--cores 0-1`, the default")),
        "{cores}"
    );
    assert_eq!(cores["commands"][1], "kafki serve --cores 1");
    let irq = suggestion(&report, "irq-affinity");
    assert!(
        irq["text"]
            .as_str()
            .is_some_and(|text| text.contains("eth0 IRQ 38 (virtio2-input.0) on CPU 1")),
        "{irq}"
    );
    assert_eq!(irq["commands"], serde_json::json!([]));
    let found = codes(&report);
    for wanted in ["advice:smt", "advice:numa", "advice:governor"] {
        assert!(found.contains(&wanted.to_string()), "{found:?}");
    }
    assert!(
        !found.iter().any(|code| code.starts_with("warning:")),
        "{found:?}"
    );

    // The text form says the same.
    let output = kafki(&["layout", "--no-broker", "--fs-root", fixture.path()]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("machine: 2 CPUs online, 2 physical cores, 1 package, 1 NUMA node"),
        "{text}"
    );
    assert!(
        text.contains("NIC eth0: NUMA node -, driver virtio_net, 3 IRQs"),
        "{text}"
    );
    assert!(
        text.contains("IRQ 38 virtio2-input.0: affinity 0-1, effective 1, interrupts CPU 1: 11559"),
        "{text}"
    );
    assert!(
        text.contains("L3 unified cache 307200K shared by CPUs 0-1"),
        "{text}"
    );
}

#[test]
fn two_socket_smt_machine_with_the_nic_on_node_one() {
    let fixture = two_socket_smt();
    let report = layout_json(&["--no-broker", "--fs-root", fixture.path()]);
    let machine = &report["machine"];
    assert_eq!(machine["cpus"].as_array().map(Vec::len), Some(16));
    assert_eq!(machine["cores"].as_array().map(Vec::len), Some(8));
    assert_eq!(machine["cores"][0], serde_json::json!([0, 8]));
    assert_eq!(machine["packages"], serde_json::json!([0, 1]));
    assert_eq!(machine["cpus"][12]["node"], 1);
    assert_eq!(
        machine["cpus"][12]["smt_siblings"],
        serde_json::json!([4, 12])
    );
    assert_eq!(machine["cpus"][5]["governor"], "powersave");
    assert_eq!(machine["nics"][0]["numa_node"], 1);
    assert_eq!(machine["nics"][0]["driver"], "i40e");
    assert_eq!(machine["nics"][0]["irqs"][1]["name"], "i40e-eth0-TxRx-0");
    assert_eq!(machine["irqbalance_running"], true);
    assert_eq!(machine["nohz_full"], serde_json::json!([]));

    // The broker goes on node 1, one shard per physical core, with the
    // node's first core (CPUs 4 and 12) kept for the NIC interrupts.
    let advice = &report["advice"];
    assert_eq!(advice["broker_cores"], serde_json::json!([5, 6, 7]));
    assert_eq!(advice["irq_cpus"], serde_json::json!([4, 12]));
    let cores = suggestion(&report, "cores");
    let text = cores["text"].as_str().unwrap_or("");
    assert!(text.contains("`--cores 5-7`"), "{text}");
    assert!(text.contains("on NUMA node 1, where eth0 is"), "{text}");
    assert!(text.contains("SMT siblings 13-15 left free"), "{text}");
    assert_eq!(
        cores["commands"],
        serde_json::json!(["kafki serve --cores 5-7"])
    );
    let irq = suggestion(&report, "irq-affinity");
    assert_eq!(
        irq["commands"],
        serde_json::json!([
            "systemctl stop irqbalance",
            "echo 4,12 > /proc/irq/101/smp_affinity_list",
            "echo 4,12 > /proc/irq/102/smp_affinity_list"
        ])
    );
    assert!(
        irq["text"]
            .as_str()
            .is_some_and(|text| text.contains("IRQBALANCE_BANNED_CPULIST=5-7")),
        "{irq}"
    );
    let governor = suggestion(&report, "governor");
    assert_eq!(governor["kind"], "warning");
    assert!(
        governor["text"]
            .as_str()
            .is_some_and(|text| text.contains("CPUs 5-7 use the powersave")),
        "{governor}"
    );
    assert!(governor["commands"][0]
        .as_str()
        .is_some_and(|command| command.starts_with("for cpu in 5 6 7; do echo performance >")));
    let isolation = suggestion(&report, "isolation");
    assert!(
        isolation["text"]
            .as_str()
            .is_some_and(|text| text
                .contains("isolcpus=managed_irq,domain,5-7 nohz_full=5-7 irqaffinity=4,12")),
        "{isolation}"
    );
    assert!(codes(&report).contains(&"advice:smt".to_string()));
}

/// Serves one `GET /v1/layout` with `body` (chunked, as some servers
/// answer), returns the address.
fn fake_admin(body: &'static str) -> (String, std::thread::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
            head.push(byte[0]);
        }
        let (first, rest) = body.split_at(body.len() / 2);
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n\
             {:x}\r\n{first}\r\n{:x}\r\n{rest}\r\n0\r\n\r\n",
            first.len(),
            rest.len()
        );
        stream.write_all(response.as_bytes()).expect("answer");
        String::from_utf8_lossy(&head).into_owned()
    });
    (address, server)
}

#[test]
fn a_broker_on_smt_siblings_across_nodes_is_warned_about() {
    let fixture = two_socket_smt();
    // Shards 0 and 1 on the two threads of core 0 (node 0), shards 2 and 3
    // on node 1, one of them where NIC IRQ 101 runs; partitions skewed.
    let (address, server) = fake_admin(
        r#"{"shards":[
            {"shard":0,"cpu":0,"partitions":["a-0","a-1","a-2","a-3","a-4","a-5","a-6","a-7","a-8","a-9"]},
            {"shard":1,"cpu":8,"partitions":["b-0"]},
            {"shard":2,"cpu":5,"partitions":["c-0","c-1"]},
            {"shard":3,"cpu":6,"partitions":["d-0","d-1","d-2"]}]}"#,
    );
    let report = layout_json(&["--admin", &address, "--fs-root", fixture.path()]);
    let request = server.join().expect("fake admin");
    assert!(
        request.starts_with("GET /v1/layout HTTP/1.1\r\n"),
        "{request}"
    );

    assert_eq!(report["broker"]["status"], "layout");
    let shards = report["broker"]["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 4);
    assert_eq!(shards[1]["cpu"], 8);
    let found = codes(&report);
    for wanted in [
        "warning:smt-siblings",
        "warning:numa-span",
        "warning:numa-nic",
        "warning:irq-on-shard",
        "warning:unbalanced",
        "warning:governor",
        "advice:cores-differ",
    ] {
        assert!(
            found.contains(&wanted.to_string()),
            "{wanted} missing from {found:?}"
        );
    }
    let smt = suggestion(&report, "smt-siblings");
    assert!(
        smt["text"]
            .as_str()
            .is_some_and(|text| text.contains("shard 0 on CPU 0 and shard 1 on CPU 8")),
        "{smt}"
    );
    let nic = suggestion(&report, "numa-nic");
    assert!(
        nic["text"]
            .as_str()
            .is_some_and(|text| text.contains("shards 0, 1 are not on NUMA node 1")),
        "{nic}"
    );
    let irq = suggestion(&report, "irq-on-shard");
    assert!(
        irq["text"].as_str().is_some_and(
            |text| text.contains("IRQ 101 (i40e-eth0-TxRx-0) is handled on CPU 5 (shard 2)")
        ),
        "{irq}"
    );
    let unbalanced = suggestion(&report, "unbalanced");
    assert!(
        unbalanced["text"]
            .as_str()
            .is_some_and(|text| text.contains("shard 0 owns 10, shard 1 owns 1")),
        "{unbalanced}"
    );
    // Greedy moves from the busiest to the idlest shard, until within one.
    let moves: Vec<String> = [(9, 1), (8, 1), (7, 2), (6, 1), (5, 2), (4, 3)]
        .iter()
        .map(|(partition, shard)| {
            format!("curl -X PUT -d '{{\"shard\": {shard}}}' http://{address}/v1/partitions/a/{partition}/shard")
        })
        .collect();
    assert_eq!(unbalanced["commands"], serde_json::json!(moves));
    // The governor warning covers the CPUs the shards run on.
    let governor = suggestion(&report, "governor");
    assert!(
        governor["text"]
            .as_str()
            .is_some_and(|text| text.contains("CPUs 0,5-6,8")),
        "{governor}"
    );
}

#[test]
fn without_a_broker_it_says_so_and_shows_the_machine() {
    let fixture = two_vcpu_vm();
    let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = closed.local_addr().expect("address").to_string();
    drop(closed);
    let output = kafki(&["layout", "--admin", &address, "--fs-root", fixture.path()]);
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains(&format!(
            "broker: no answer from the admin listener at {address}"
        )),
        "{text}"
    );
    assert!(text.contains("showing the machine only"), "{text}");
    assert!(text.contains("machine: 2 CPUs online"), "{text}");
    let report = layout_json(&["--admin", &address, "--fs-root", fixture.path()]);
    assert_eq!(report["broker"]["status"], "no_answer");
    assert_eq!(report["broker"]["admin"], address.as_str());
}

#[test]
fn this_machines_own_sys() {
    if !Path::new("/sys/devices/system/cpu/online").exists() {
        eprintln!("skipped: no /sys/devices/system/cpu/online on this machine");
        return;
    }
    let report = layout_json(&["--no-broker"]);
    let online = Command::new("getconf")
        .arg("_NPROCESSORS_ONLN")
        .output()
        .ok()
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .and_then(|text| text.trim().parse::<usize>().ok());
    let cpus = report["machine"]["cpus"].as_array().expect("cpus");
    let available = std::thread::available_parallelism().map_or(1, usize::from);
    assert!(
        cpus.len() >= available,
        "{} CPUs read, {available} usable",
        cpus.len()
    );
    if let Some(online) = online {
        assert_eq!(cpus.len(), online, "CPUs read vs getconf _NPROCESSORS_ONLN");
    }
    // Every CPU is in exactly one physical core, and is its own sibling.
    let mut in_cores: Vec<u64> = report["machine"]["cores"]
        .as_array()
        .expect("cores")
        .iter()
        .flat_map(|core| core.as_array().cloned().unwrap_or_default())
        .filter_map(|cpu| cpu.as_u64())
        .collect();
    in_cores.sort_unstable();
    let mut ids: Vec<u64> = cpus.iter().filter_map(|cpu| cpu["id"].as_u64()).collect();
    ids.sort_unstable();
    assert_eq!(in_cores, ids);
    for cpu in cpus {
        assert!(cpu["smt_siblings"]
            .as_array()
            .is_some_and(|siblings| siblings.contains(&cpu["id"])));
    }
    assert!(!report["advice"]["broker_cores"]
        .as_array()
        .expect("cores")
        .is_empty());
}
