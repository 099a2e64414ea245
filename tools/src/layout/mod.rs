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
//! Rooms: `machine` (sysfs/procfs), `broker` (the admin listener, asked with
//! ureq, bounded in time and size), `advice` (one function per rule),
//! `render` (text; `--json` serialises the same report).

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use serde::Serialize;

mod advice;
pub(crate) mod broker;
mod machine;
mod render;

use advice::{advise, Advice};
use broker::{fetch_broker_layout, BrokerAnswer};
use machine::{read_machine, Machine};
use render::render_text;

/// Default address of the broker's admin listener (`kafki serve --admin-listen`).
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9644";

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

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub broker: BrokerAnswer,
    pub advice: Advice,
}
