//! The report as text.

use super::advice::*;
use super::broker::*;
use super::machine::*;
use super::Report;

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
