use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::graph::Dag;
use crate::project::Project;
use crate::spec::{self, Pipeline};

#[derive(Debug, Args)]
pub struct DagArgs {
    /// Pipeline file (relative to the project root).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Only these stages and what they need.
    #[arg(value_name = "STAGES")]
    pub stages: Vec<String>,
    /// Print a Mermaid flowchart.
    #[arg(long, conflicts_with = "dot")]
    pub mermaid: bool,
    /// Print a Graphviz dot graph.
    #[arg(long)]
    pub dot: bool,
}

pub fn run(project: &Project, args: DagArgs) -> anyhow::Result<ExitCode> {
    let checked = spec::load(&args.file, project).and_then(|p| Dag::build(&p).map(|d| (p, d)));
    let (pipeline, dag) = match checked {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e}");
            return Ok(ExitCode::from(2));
        }
    };
    let selected: Vec<&str> = if args.stages.is_empty() {
        dag.topo_order()
    } else {
        let names: Vec<&str> = args.stages.iter().map(String::as_str).collect();
        match dag.upstream_closure(&names) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{e}");
                return Ok(ExitCode::from(2));
            }
        }
    };
    let out = if args.mermaid {
        mermaid(&dag, &selected)
    } else if args.dot {
        dot(&pipeline, &dag, &selected)
    } else {
        text(&dag, &selected)
    };
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

fn edges<'a>(dag: &'a Dag, selected: &[&str]) -> Vec<(&'a str, &'a str)> {
    dag.edges()
        .into_iter()
        .filter(|(a, b)| selected.contains(a) && selected.contains(b))
        .collect()
}

/// One line per stage in run order: `stage <- what it needs`.
pub fn text(dag: &Dag, selected: &[&str]) -> String {
    let mut s = String::new();
    for name in selected {
        let deps = dag.dependencies(name).unwrap_or_default();
        if deps.is_empty() {
            let _ = writeln!(s, "{name}");
        } else {
            let _ = writeln!(s, "{name} <- {}", deps.join(", "));
        }
    }
    s
}

pub fn mermaid(dag: &Dag, selected: &[&str]) -> String {
    // Stage names may hold '@', '.', '-': ids are positional, names are quoted labels.
    let id = |n: &str| {
        selected
            .iter()
            .position(|s| *s == n)
            .map(|i| format!("s{i}"))
            .unwrap_or_default()
    };
    let mut s = String::from("flowchart TD\n");
    for (i, name) in selected.iter().enumerate() {
        let _ = writeln!(s, "    s{i}[\"{}\"]", name.replace('"', "#quot;"));
    }
    for (a, b) in edges(dag, selected) {
        let _ = writeln!(s, "    {} --> {}", id(a), id(b));
    }
    s
}

pub fn dot(p: &Pipeline, dag: &Dag, selected: &[&str]) -> String {
    let q = |n: &str| format!("\"{}\"", n.replace('\\', "\\\\").replace('"', "\\\""));
    let mut s = format!(
        "digraph {} {{\n    rankdir=LR;\n    node [shape=box];\n",
        q(&p.name)
    );
    for name in selected {
        let _ = writeln!(s, "    {};", q(name));
    }
    for (a, b) in edges(dag, selected) {
        let _ = writeln!(s, "    {} -> {};", q(a), q(b));
    }
    s.push_str("}\n");
    s
}
