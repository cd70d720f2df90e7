//! Stages → DAG. Edges come from `Stage::needs`, which the spec loader fills with `needs:`,
//! references to other stages' outputs, and deps on (or inside) other stages' outputs.
//! An edge points from the stage that must run first to the one that needs it.

use std::collections::{BTreeSet, HashMap};

use petgraph::Direction;
use petgraph::algo::{tarjan_scc, toposort};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::{Dfs, EdgeRef, Reversed};

use crate::{Diagnostic, Pipeline, Span, SpecError};

#[derive(Debug, Clone)]
pub struct Dag {
    graph: DiGraph<String, ()>,
    index: HashMap<String, NodeIndex>,
    /// Stage names in a topological order that keeps file order where it can.
    order: Vec<String>,
    /// Where the pipeline is, for messages about unknown names.
    file: std::path::PathBuf,
}

impl Dag {
    /// Builds the graph; a cycle is an error that prints it: `a -> b -> c -> a`.
    pub fn build(p: &Pipeline) -> Result<Dag, SpecError> {
        let mut graph = DiGraph::new();
        let mut index = HashMap::new();
        let mut errors = Vec::new();
        for st in &p.stages {
            // The loader never makes two stages with one name; a hand-built Pipeline might.
            if index.contains_key(&st.name) {
                errors.push(Diagnostic {
                    span: st.span.clone(),
                    message: format!("two stages are named '{}'", st.name),
                });
                continue;
            }
            index.insert(st.name.clone(), graph.add_node(st.name.clone()));
        }
        for st in &p.stages {
            let to = index[&st.name];
            for n in &st.needs {
                match index.get(n) {
                    Some(&from) => {
                        graph.update_edge(from, to, ());
                    }
                    None => errors.push(Diagnostic {
                        span: st.span.clone(),
                        message: format!("unknown stage '{n}' needed by stage '{}'", st.name),
                    }),
                }
            }
        }
        if !errors.is_empty() {
            return Err(SpecError::new(errors));
        }
        if toposort(&graph, None).is_err() {
            let errors = cycles(&graph)
                .into_iter()
                .map(|cycle| {
                    let first = &graph[cycle[0]];
                    let span = p
                        .stage(first)
                        .map(|s| s.span.clone())
                        .unwrap_or_else(|| Span {
                            file: p.file.clone(),
                            ..Span::default()
                        });
                    let mut names: Vec<&str> = cycle.iter().map(|&i| graph[i].as_str()).collect();
                    names.push(first);
                    Diagnostic {
                        span,
                        message: format!(
                            "dependency cycle: {} (each stage needs the next)",
                            names.join(" -> ")
                        ),
                    }
                })
                .collect();
            return Err(SpecError::new(errors));
        }
        let order = stable_topo(&graph, p.stages.iter().map(|s| index[&s.name]));
        Ok(Dag {
            graph,
            index,
            order,
            file: p.file.clone(),
        })
    }

    /// Every stage, each after all the stages it needs; ties keep file order.
    pub fn topo_order(&self) -> Vec<&str> {
        self.order.iter().map(String::as_str).collect()
    }

    /// The named stages and everything they need, in topological order. An unknown name
    /// is an error that lists the known ones.
    pub fn upstream_closure(&self, names: &[&str]) -> Result<Vec<&str>, SpecError> {
        let keep = self.closure(names)?;
        Ok(self
            .order
            .iter()
            .filter(|n| keep.contains(&self.index[*n]))
            .map(String::as_str)
            .collect())
    }

    /// What a run of `targets` considers: the targets and everything they need (every stage
    /// when `targets` is empty), in the one order of [`Self::topo_order`], with the edges
    /// among them. An unknown target is an error that lists the known stages.
    pub fn select(&self, targets: &[&str]) -> Result<Selection, SpecError> {
        let keep: BTreeSet<NodeIndex> = if targets.is_empty() {
            self.graph.node_indices().collect()
        } else {
            self.closure(targets)?
        };
        let order: Vec<String> = self
            .order
            .iter()
            .filter(|n| keep.contains(&self.index[*n]))
            .cloned()
            .collect();
        let rank: HashMap<NodeIndex, usize> = order
            .iter()
            .enumerate()
            .map(|(r, n)| (self.index[n], r))
            .collect();
        // Each list in the selection's order: stages become ready in the order they finish,
        // and ties among them keep the one order.
        let edges = |i: NodeIndex, dir: Direction| {
            let mut v: Vec<NodeIndex> = self
                .graph
                .neighbors_directed(i, dir)
                .filter(|j| keep.contains(j))
                .collect();
            v.sort_unstable_by_key(|j| rank[j]);
            v.dedup();
            v.into_iter()
                .map(|j| self.graph[j].clone())
                .collect::<Vec<_>>()
        };
        let mut needs = HashMap::new();
        let mut needed_by = HashMap::new();
        for n in &order {
            let i = self.index[n];
            needs.insert(n.clone(), edges(i, Direction::Incoming));
            needed_by.insert(n.clone(), edges(i, Direction::Outgoing));
        }
        Ok(Selection {
            order,
            needs,
            needed_by,
        })
    }

    /// The named stages and every stage they need, transitively.
    fn closure(&self, names: &[&str]) -> Result<BTreeSet<NodeIndex>, SpecError> {
        let mut keep = BTreeSet::new();
        let rev = Reversed(&self.graph);
        for n in names {
            let start = self.node(n)?;
            let mut dfs = Dfs::new(rev, start);
            while let Some(i) = dfs.next(rev) {
                keep.insert(i);
            }
        }
        Ok(keep)
    }

    /// Every stage that (transitively) needs `name`, not `name` itself, in topological order.
    pub fn downstream(&self, name: &str) -> Result<Vec<&str>, SpecError> {
        let start = self.node(name)?;
        let mut keep = BTreeSet::new();
        let mut dfs = Dfs::new(&self.graph, start);
        while let Some(i) = dfs.next(&self.graph) {
            if i != start {
                keep.insert(i);
            }
        }
        Ok(self
            .order
            .iter()
            .filter(|n| keep.contains(&self.index[*n]))
            .map(String::as_str)
            .collect())
    }

    /// The stages `name` directly needs, sorted by name.
    pub fn dependencies(&self, name: &str) -> Result<Vec<&str>, SpecError> {
        let i = self.node(name)?;
        let mut v: Vec<&str> = self
            .graph
            .neighbors_directed(i, Direction::Incoming)
            .map(|j| self.graph[j].as_str())
            .collect();
        v.sort_unstable();
        Ok(v)
    }

    /// The stages that directly need `name`, sorted by name.
    pub fn dependents(&self, name: &str) -> Result<Vec<&str>, SpecError> {
        let i = self.node(name)?;
        let mut v: Vec<&str> = self
            .graph
            .neighbors_directed(i, Direction::Outgoing)
            .map(|j| self.graph[j].as_str())
            .collect();
        v.sort_unstable();
        Ok(v)
    }

    /// Every edge as (before, after), in topological order of `after`, then `before`.
    pub fn edges(&self) -> Vec<(&str, &str)> {
        let pos: HashMap<&str, usize> = self
            .order
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        let mut e: Vec<(&str, &str)> = self
            .graph
            .edge_references()
            .map(|e| {
                (
                    self.graph[e.source()].as_str(),
                    self.graph[e.target()].as_str(),
                )
            })
            .collect();
        e.sort_by_key(|(a, b)| (pos[b], pos[a]));
        e
    }

    /// The underlying petgraph graph (node weights are stage names).
    pub fn graph(&self) -> &DiGraph<String, ()> {
        &self.graph
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn node(&self, name: &str) -> Result<NodeIndex, SpecError> {
        self.index.get(name).copied().ok_or_else(|| {
            let known: Vec<&str> = self.order.iter().map(String::as_str).collect();
            let hint = crate::did_you_mean(name, known.iter().copied())
                .map(|s| format!("; did you mean '{s}'?"))
                .unwrap_or_default();
            SpecError::single(
                Span {
                    file: self.file.clone(),
                    line: 0,
                    col: 0,
                },
                format!(
                    "no stage named '{name}' (stages: {}{hint})",
                    known.join(", ")
                ),
            )
        })
    }
}

/// Part of a [`Dag`], made by [`Dag::select`]: what a run schedules, in the graph's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    order: Vec<String>,
    needs: HashMap<String, Vec<String>>,
    needed_by: HashMap<String, Vec<String>>,
}

impl Selection {
    /// Every selected stage, each after all the stages it needs; ties keep file order.
    pub fn order(&self) -> &[String] {
        &self.order
    }

    /// The selected stages `name` directly needs, in [`Self::order`]; empty for a stage
    /// not selected.
    pub fn needs(&self, name: &str) -> &[String] {
        self.needs.get(name).map(Vec::as_slice).unwrap_or_default()
    }

    /// The selected stages that directly need `name`, in [`Self::order`].
    pub fn needed_by(&self, name: &str) -> &[String] {
        self.needed_by
            .get(name)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}

/// Kahn's algorithm taking, among the ready stages, the one earliest in the file.
fn stable_topo(
    graph: &DiGraph<String, ()>,
    file_order: impl Iterator<Item = NodeIndex>,
) -> Vec<String> {
    let rank: HashMap<NodeIndex, usize> = file_order.enumerate().map(|(i, n)| (n, i)).collect();
    let mut indeg: HashMap<NodeIndex, usize> = graph
        .node_indices()
        .map(|n| (n, graph.neighbors_directed(n, Direction::Incoming).count()))
        .collect();
    let mut ready: BTreeSet<(usize, NodeIndex)> = indeg
        .iter()
        .filter(|(_, d)| **d == 0)
        .map(|(n, _)| (rank[n], *n))
        .collect();
    let mut out = Vec::with_capacity(graph.node_count());
    while let Some((r, n)) = ready.iter().next().copied() {
        ready.remove(&(r, n));
        out.push(graph[n].clone());
        for m in graph.neighbors_directed(n, Direction::Outgoing) {
            let d = indeg.get_mut(&m).expect("every node has an in-degree");
            *d -= 1;
            if *d == 0 {
                ready.insert((rank[&m], m));
            }
        }
    }
    out
}

/// One concrete cycle per strongly connected component that has one, following "needs"
/// (a -> b: a needs b), each starting at the node smallest by name so messages are stable.
fn cycles(graph: &DiGraph<String, ()>) -> Vec<Vec<NodeIndex>> {
    let mut out = Vec::new();
    for scc in tarjan_scc(graph) {
        let members: BTreeSet<NodeIndex> = scc.iter().copied().collect();
        let self_loop = scc.len() == 1 && graph.contains_edge(scc[0], scc[0]);
        if scc.len() < 2 && !self_loop {
            continue;
        }
        let start = *scc
            .iter()
            .min_by_key(|&&n| &graph[n])
            .expect("scc is not empty");
        // BFS inside the component from `start` back to `start`: the shortest cycle through it.
        let mut prev: HashMap<NodeIndex, NodeIndex> = HashMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        let mut found = None;
        'bfs: while let Some(n) = queue.pop_front() {
            let mut next: Vec<NodeIndex> = graph
                .neighbors_directed(n, Direction::Incoming)
                .filter(|m| members.contains(m))
                .collect();
            next.sort_by_key(|&m| &graph[m]);
            for m in next {
                if m == start {
                    found = Some(n);
                    break 'bfs;
                }
                if let std::collections::hash_map::Entry::Vacant(e) = prev.entry(m) {
                    e.insert(n);
                    queue.push_back(m);
                }
            }
        }
        let Some(mut last) = found else { continue };
        let mut path = vec![last];
        while last != start {
            last = prev[&last];
            path.push(last);
        }
        path.reverse();
        out.push(path);
    }
    out
}
