//! Suggestions: which `--cores` to use, where NIC interrupts should go, and
//! warnings about the broker's placement, each with the commands that apply it.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::broker::BrokerLayout;
use super::machine::*;

/// Below this many CPUs, reserving one for the OS costs too many shards.
const RESERVE_FROM_CPUS: usize = 4;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::broker::{BrokerAnswer, BrokerShard};
    use crate::layout::machine::physical_cores;
    use crate::layout::render::render_text;
    use crate::layout::Report;
    use std::path::Path;

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
