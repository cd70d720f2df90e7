//! A YAML document as a tree of nodes that each know where they start.
//!
//! Built from saphyr-parser's event stream (a maintained, YAML 1.2 parser whose every event
//! carries a span) rather than through serde, so that every later check can point at the
//! exact line and column, duplicate keys are caught with both places, and a quoted `"16"`
//! stays distinguishable from a plain `16`.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle};

/// 1-based line and column of a node's first character; `index` is in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
    pub index: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    /// One past the last character (index in characters), for locating text inside scalars.
    pub end: usize,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// `plain` is false for quoted and block scalars: those are always strings.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    /// Keys are scalars (checked while building); order as in the file.
    Map(Vec<(Node, Node)>),
}

/// A YAML 1.2 core-schema value of a plain scalar.
#[derive(Debug, Clone, PartialEq)]
pub enum Plain {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str,
}

impl Node {
    pub fn type_name(&self) -> &'static str {
        match &self.kind {
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
            Kind::Scalar { text, plain } => {
                if !plain {
                    return "a string";
                }
                match resolve_plain(text) {
                    Plain::Null => "null",
                    Plain::Bool(_) => "a boolean",
                    Plain::Int(_) => "an integer",
                    Plain::Float(_) => "a number",
                    Plain::Str => "a string",
                }
            }
        }
    }

    /// The text of a scalar that is a string (quoted, or plain and not a number/bool/null).
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { text, plain: false } => Some(text),
            Kind::Scalar { text, plain: true } if resolve_plain(text) == Plain::Str => Some(text),
            _ => None,
        }
    }

    /// The text of any scalar (numbers and booleans too), for places where anything scalar
    /// reads as text (env values, foreach items used in names).
    pub fn scalar_text(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { text, plain: true } if resolve_plain(text) == Plain::Null)
    }
}

/// YAML 1.2 core schema resolution of a plain scalar.
pub fn resolve_plain(s: &str) -> Plain {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Plain::Null,
        "true" | "True" | "TRUE" => return Plain::Bool(true),
        "false" | "False" | "FALSE" => return Plain::Bool(false),
        _ => {}
    }
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        // Out-of-range integers fall through to float, as most YAML loaders do.
        if let Ok(i) = s.parse::<i64>() {
            return Plain::Int(i);
        }
    }
    if let Some(h) = s.strip_prefix("0x")
        && !h.is_empty()
        && let Ok(i) = i64::from_str_radix(h, 16)
    {
        return Plain::Int(i);
    }
    if let Some(o) = s.strip_prefix("0o")
        && !o.is_empty()
        && let Ok(i) = i64::from_str_radix(o, 8)
    {
        return Plain::Int(i);
    }
    if is_core_float(s)
        && let Ok(f) = s.parse::<f64>()
        && f.is_finite()
    {
        return Plain::Float(f);
    }
    // `.inf` and `.nan` have no JSON form; they stay strings.
    Plain::Str
}

/// `[-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?`
fn is_core_float(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
        i += 1;
    }
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let int_digits = i - int_start;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let f = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if int_digits == 0 && i == f {
            return false;
        }
    } else if int_digits == 0 {
        return false;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
            i += 1;
        }
        let e = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == e {
            return false;
        }
    }
    i == b.len()
}

/// A problem found while reading the YAML itself.
#[derive(Debug, Clone, PartialEq)]
pub struct YamlError {
    pub pos: Pos,
    pub message: String,
}

/// Nodes made by expanding aliases, at most; guards against "billion laughs" documents.
const NODE_BUDGET: usize = 1_000_000;

/// Lists and mappings nest at most this deep, in block style, flow style and through
/// aliases alike. Every later walk over a document or a value made from it (interpolation,
/// JSON conversion, the fingerprint's canonical encoding, `Drop`) recurses once per level,
/// so this bound is what keeps them all off the end of the stack; it is also well inside
/// the 128 levels serde_json reads back, with room for the records that wrap a value.
pub const MAX_DEPTH: usize = 64;

/// The error for a document nested deeper than [`MAX_DEPTH`].
pub fn too_deep_message() -> String {
    format!(
        "lists and mappings nested more than {MAX_DEPTH} levels deep (the limit for a pipeline file)"
    )
}

/// Parses one YAML document. Returns the root (None for an empty document) and every
/// problem found: a syntax error stops the parse, duplicate keys and non-scalar keys do not.
pub fn parse(src: &str) -> (Option<Node>, Vec<YamlError>) {
    let mut errors = Vec::new();
    if let Some(e) = tab_indentation(src) {
        // The parser's own message for a tab is about "indentation" in general; say what it is.
        errors.push(e);
        return (None, errors);
    }
    if let Some((line, col)) = find_char(src, |c| c == OPEN || c == CLOSE) {
        errors.push(YamlError {
            pos: Pos {
                line,
                col,
                index: 0,
            },
            message:
                "characters U+E000/U+E001 are reserved (they cannot appear in a pipeline file)"
                    .into(),
        });
        return (None, errors);
    }
    let shielded = shield_refs(src);
    let mut b = Builder {
        stack: Vec::new(),
        anchors: HashMap::new(),
        root: None,
        docs: 0,
        nodes: 0,
        errors: Vec::new(),
    };
    for ev in Parser::new_from_str(&shielded) {
        match ev {
            Ok((event, span)) => {
                let pos = Pos {
                    line: span.start.line(),
                    col: span.start.col() + 1,
                    index: span.start.index(),
                };
                if let Err(e) = b.event(event, pos, span.end.index()) {
                    b.errors.push(e);
                    return (None, b.errors);
                }
            }
            Err(e) => {
                let m = e.marker();
                let pos = Pos {
                    line: m.line(),
                    col: m.col() + 1,
                    index: m.index(),
                };
                // The scanner's own limit (255 open flow collections) can come first: flow
                // style looks ahead. Say it as for block style.
                let message = if e.info() == "recursion limit exceeded" {
                    too_deep_message()
                } else {
                    format!("invalid YAML: {}", unshield(e.info()))
                };
                b.errors.push(YamlError { pos, message });
                return (None, b.errors);
            }
        }
    }
    errors.extend(b.errors);
    (b.root, errors)
}

/// Stand-ins for the braces of `${…}` while YAML is parsed; see [`shield_refs`].
const OPEN: char = '\u{E000}';
const CLOSE: char = '\u{E001}';

/// Plain YAML scalars inside flow collections cannot hold `{` or `}`, so `[out/${item}.txt]`
/// or `{r: ${params.rank}}` would be syntax errors. The braces of every `${…}` that closes
/// on its line are swapped for private-use characters before parsing and swapped back in
/// every scalar afterwards. One character for one keeps every line and column true.
fn shield_refs(src: &str) -> String {
    let chars: Vec<char> = src.chars().collect();
    let mut out = chars.clone();
    let mut i = 0;
    while i + 1 < chars.len() {
        if chars[i] == '$' && chars[i + 1] == '{' {
            let close = (i + 2..chars.len())
                .take_while(|&j| chars[j] != '\n' && chars[j] != '{')
                .find(|&j| chars[j] == '}');
            if let Some(j) = close {
                out[i + 1] = OPEN;
                out[j] = CLOSE;
                i = j + 1;
                continue;
            }
        }
        i += 1;
    }
    out.into_iter().collect()
}

fn unshield(s: &str) -> String {
    s.replace(OPEN, "{").replace(CLOSE, "}")
}

fn find_char(src: &str, f: impl Fn(char) -> bool) -> Option<(usize, usize)> {
    for (n, line) in src.split('\n').enumerate() {
        if let Some(col) = line.chars().position(&f) {
            return Some((n + 1, col + 1));
        }
    }
    None
}

/// A tab in the indentation of a line outside block scalars is never valid YAML; name it.
fn tab_indentation(src: &str) -> Option<YamlError> {
    let mut index = 0;
    let mut block_indent: Option<usize> = None;
    for (i, line) in src.split('\n').enumerate() {
        let indent = line.len() - line.trim_start_matches(' ').len();
        let rest = &line[indent..];
        // Inside a `|`/`>` block scalar, deeper lines are content where tabs are allowed.
        if let Some(bi) = block_indent {
            if rest.trim().is_empty() || indent > bi {
                index += line.chars().count() + 1;
                continue;
            }
            block_indent = None;
        }
        if rest.starts_with('\t') {
            return Some(YamlError {
                pos: Pos {
                    line: i + 1,
                    col: indent + 1,
                    index: index + indent,
                },
                message: "tab character in indentation (YAML indents with spaces only)".into(),
            });
        }
        let t = rest.trim_end();
        let t = t.split(" #").next().unwrap_or(t).trim_end();
        if t.ends_with('|')
            || t.ends_with('>')
            || t.ends_with("|-")
            || t.ends_with(">-")
            || t.ends_with("|+")
            || t.ends_with(">+")
        {
            block_indent = Some(indent);
        }
        index += line.chars().count() + 1;
    }
    None
}

enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
        seen: HashMap<String, Pos>,
    },
}

struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    docs: usize,
    nodes: usize,
    errors: Vec<YamlError>,
}

impl Builder {
    fn event(&mut self, event: Event<'_>, pos: Pos, end: usize) -> Result<(), YamlError> {
        match event {
            Event::DocumentStart(_) => {
                self.docs += 1;
                if self.docs > 1 {
                    return Err(YamlError {
                        pos,
                        message: "a pipeline file holds one YAML document (found a second '---')"
                            .into(),
                    });
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                let mut plain = style == ScalarStyle::Plain;
                if let Some(tag) = tag {
                    // `!!str 16` is the one tag worth honouring: it forces a string.
                    if (tag.handle == "tag:yaml.org,2002:" || tag.handle == "!!")
                        && tag.suffix == "str"
                    {
                        plain = false;
                    } else {
                        return Err(YamlError {
                            pos,
                            message: format!(
                                "unsupported YAML tag '{}' (only !!str is accepted)",
                                tag_text(&tag)
                            ),
                        });
                    }
                }
                let node = Node {
                    pos,
                    end,
                    kind: Kind::Scalar {
                        text: unshield(&text),
                        plain,
                    },
                };
                if anchor != 0 {
                    self.anchors.insert(anchor, node.clone());
                }
                self.push(node)?;
            }
            Event::SequenceStart(anchor, tag) => {
                self.check_depth(pos, 1)?;
                if let Some(tag) = tag {
                    return Err(YamlError {
                        pos,
                        message: format!("unsupported YAML tag '{}'", tag_text(&tag)),
                    });
                }
                self.stack.push(Frame::Seq {
                    pos,
                    anchor,
                    items: Vec::new(),
                });
            }
            Event::MappingStart(anchor, tag) => {
                self.check_depth(pos, 1)?;
                if let Some(tag) = tag {
                    return Err(YamlError {
                        pos,
                        message: format!("unsupported YAML tag '{}'", tag_text(&tag)),
                    });
                }
                self.stack.push(Frame::Map {
                    pos,
                    anchor,
                    entries: Vec::new(),
                    key: None,
                    seen: HashMap::new(),
                });
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq { pos, anchor, items }) = self.stack.pop() {
                    let node = Node {
                        pos,
                        end,
                        kind: Kind::Seq(items),
                    };
                    if anchor != 0 {
                        self.anchors.insert(anchor, node.clone());
                    }
                    self.push(node)?;
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map {
                    pos,
                    anchor,
                    entries,
                    ..
                }) = self.stack.pop()
                {
                    let node = Node {
                        pos,
                        end,
                        kind: Kind::Map(merge_keys(entries)?),
                    };
                    if anchor != 0 {
                        self.anchors.insert(anchor, node.clone());
                    }
                    self.push(node)?;
                }
            }
            Event::Alias(id) => {
                let Some(target) = self.anchors.get(&id) else {
                    return Err(YamlError {
                        pos,
                        message: "alias to an unknown anchor".into(),
                    });
                };
                // A copy of a nested anchor nests as deep as it does, wherever it lands.
                self.check_depth(pos, height(target))?;
                let mut node = target.clone();
                self.nodes += count(&node);
                if self.nodes > NODE_BUDGET {
                    return Err(YamlError {
                        pos,
                        message: "aliases expand to too many nodes".into(),
                    });
                }
                // Errors inside the copy point at the alias, where the user wrote it.
                node.pos = pos;
                node.end = end;
                self.push(node)?;
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
        Ok(())
    }

    /// A node `levels` deep (a collection's own level included) about to open here.
    fn check_depth(&self, pos: Pos, levels: usize) -> Result<(), YamlError> {
        if self.stack.len() + levels > MAX_DEPTH {
            return Err(YamlError {
                pos,
                message: too_deep_message(),
            });
        }
        Ok(())
    }

    fn push(&mut self, node: Node) -> Result<(), YamlError> {
        self.nodes += 1;
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries, key, seen, ..
            }) => match key.take() {
                None => {
                    if !matches!(node.kind, Kind::Scalar { .. }) {
                        self.errors.push(YamlError {
                            pos: node.pos,
                            message: format!(
                                "mapping keys must be strings, found {}",
                                node.type_name()
                            ),
                        });
                    }
                    *key = Some(node);
                }
                Some(k) => {
                    let Kind::Scalar { text, .. } = &k.kind else {
                        return Ok(());
                    };
                    if let Some(first) = seen.get(text) {
                        self.errors.push(YamlError {
                            pos: k.pos,
                            message: format!(
                                "duplicate key '{text}' (first defined at line {})",
                                first.line
                            ),
                        });
                    } else {
                        seen.insert(text.clone(), k.pos);
                        entries.push((k, node));
                    }
                }
            },
        }
        Ok(())
    }
}

/// YAML merge keys (`<<: *base`, `<<: [*a, *b]`): the merged mappings' entries are added
/// unless the mapping sets the key itself; earlier merged mappings win over later ones.
/// This is how a pipeline shares settings between stages (a stage template).
fn merge_keys(entries: Vec<(Node, Node)>) -> Result<Vec<(Node, Node)>, YamlError> {
    let is_merge = |k: &Node| matches!(&k.kind, Kind::Scalar { text, plain: true } if text == "<<");
    if !entries.iter().any(|(k, _)| is_merge(k)) {
        return Ok(entries);
    }
    let mut out = Vec::new();
    let mut merged = Vec::new();
    for (k, v) in entries {
        if !is_merge(&k) {
            out.push((k, v));
            continue;
        }
        let maps = match v.kind {
            Kind::Map(e) => vec![e],
            Kind::Seq(items) => {
                let mut maps = Vec::new();
                for it in items {
                    match it.kind {
                        Kind::Map(e) => maps.push(e),
                        _ => {
                            return Err(YamlError {
                                pos: it.pos,
                                message: format!("'<<' merges mappings, found {}", it.type_name()),
                            });
                        }
                    }
                }
                maps
            }
            _ => {
                return Err(YamlError {
                    pos: v.pos,
                    message: format!(
                        "'<<' merges a mapping or a list of mappings, found {}",
                        v.type_name()
                    ),
                });
            }
        };
        merged.extend(maps.into_iter().flatten());
    }
    for (k, v) in merged {
        let text = k.scalar_text();
        if !out.iter().any(|(k2, _)| k2.scalar_text() == text) {
            out.push((k, v));
        }
    }
    Ok(out)
}

/// `!!int` rather than `tag:yaml.org,2002:int`, as the user wrote it.
fn tag_text(tag: &saphyr_parser::Tag) -> String {
    let handle = if tag.handle == "tag:yaml.org,2002:" {
        "!!"
    } else {
        tag.handle.as_str()
    };
    format!("{handle}{}", tag.suffix)
}

/// Levels of lists and mappings in a node: 0 for a scalar. Only called on nodes already
/// built, which are at most [`MAX_DEPTH`] deep.
fn height(n: &Node) -> usize {
    match &n.kind {
        Kind::Scalar { .. } => 0,
        Kind::Seq(items) => 1 + items.iter().map(height).max().unwrap_or(0),
        Kind::Map(e) => 1 + e.iter().map(|(_, v)| height(v)).max().unwrap_or(0),
    }
}

fn count(n: &Node) -> usize {
    match &n.kind {
        Kind::Scalar { .. } => 1,
        Kind::Seq(items) => 1 + items.iter().map(count).sum::<usize>(),
        Kind::Map(e) => 1 + e.iter().map(|(k, v)| count(k) + count(v)).sum::<usize>(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_schema() {
        assert_eq!(resolve_plain("16"), Plain::Int(16));
        assert_eq!(resolve_plain("5e-4"), Plain::Float(5e-4));
        assert_eq!(resolve_plain("0.5"), Plain::Float(0.5));
        assert_eq!(resolve_plain(".5"), Plain::Float(0.5));
        assert_eq!(resolve_plain("true"), Plain::Bool(true));
        assert_eq!(resolve_plain("yes"), Plain::Str);
        assert_eq!(resolve_plain("~"), Plain::Null);
        assert_eq!(resolve_plain("1.2.3"), Plain::Str);
        assert_eq!(resolve_plain("e5"), Plain::Str);
        assert_eq!(resolve_plain(".inf"), Plain::Str);
        assert_eq!(resolve_plain("0x1F"), Plain::Int(31));
    }

    #[test]
    fn positions_and_duplicates() {
        let (root, errs) = parse("a: 1\nb:\n  c: x\na: 2\n");
        let root = root.unwrap();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].pos.line, 4);
        assert!(
            errs[0]
                .message
                .contains("duplicate key 'a' (first defined at line 1)"),
            "{}",
            errs[0].message
        );
        let Kind::Map(e) = root.kind else { panic!() };
        assert_eq!(e[1].1.pos.line, 3);
        assert_eq!(e[1].1.pos.col, 3);
    }

    #[test]
    fn tabs_and_syntax() {
        let (_, errs) = parse("a:\n\tb: 1\n");
        assert_eq!((errs[0].pos.line, errs[0].pos.col), (2, 1));
        let (_, errs) = parse("a: [1, 2\n");
        assert!(errs[0].message.starts_with("invalid YAML"));
        // Tabs inside a block scalar are content.
        let (root, errs) = parse("a: |\n  x\n  \ty\n");
        assert!(errs.is_empty(), "{errs:?}");
        assert!(root.is_some());
    }

    #[test]
    fn references_in_flow_collections() {
        let (root, errs) = parse("a: [out/${item}.txt, x]\nb: {r: ${params.rank}}\nc: '${x}'\n");
        assert!(errs.is_empty(), "{errs:?}");
        let Kind::Map(e) = root.unwrap().kind else {
            panic!()
        };
        assert!(
            matches!(&e[0].1.kind, Kind::Seq(v) if v[0].scalar_text() == Some("out/${item}.txt"))
        );
        assert!(
            matches!(&e[1].1.kind, Kind::Map(m) if m[0].1.scalar_text() == Some("${params.rank}") && m[0].1.pos.col == 8)
        );
        assert_eq!(e[2].1.scalar_text(), Some("${x}"));
    }

    #[test]
    fn merge_keys_share_settings() {
        let (root, errs) = parse(
            "base: &b {cmd: x, timeout: 1m}\ns:\n  <<: *b\n  cmd: y\nt: {<<: [*b], deps: [a]}\n",
        );
        assert!(errs.is_empty(), "{errs:?}");
        let Kind::Map(e) = root.unwrap().kind else {
            panic!()
        };
        let Kind::Map(s) = &e[1].1.kind else { panic!() };
        let keys: Vec<_> = s
            .iter()
            .map(|(k, v)| (k.scalar_text().unwrap(), v.scalar_text().unwrap()))
            .collect();
        assert_eq!(keys, vec![("cmd", "y"), ("timeout", "1m")]);
        let Kind::Map(t) = &e[2].1.kind else { panic!() };
        assert_eq!(t.len(), 3);
        let (_, errs) = parse("a: {<<: 3}\n");
        assert!(
            errs[0].message.contains("'<<' merges a mapping"),
            "{errs:?}"
        );
    }

    #[test]
    fn nesting_is_limited_in_every_style() {
        let deep = |levels: usize, open: &str, close: &str| {
            format!("a: {}1{}\n", open.repeat(levels), close.repeat(levels))
        };
        // The root mapping is one level.
        let (root, errs) = parse(&deep(MAX_DEPTH - 1, "[", "]"));
        assert!(errs.is_empty() && root.is_some(), "{errs:?}");
        let (root, errs) = parse(&deep(MAX_DEPTH, "[", "]"));
        assert!(root.is_none());
        assert_eq!(errs[0].message, too_deep_message());
        assert_eq!((errs[0].pos.line, errs[0].pos.col), (1, 4 + MAX_DEPTH - 1));
        // Block style: `- - - … 1`, one level per dash.
        let block = format!("a:\n  {}1\n", "- ".repeat(10_000));
        let (root, errs) = parse(&block);
        assert!(root.is_none());
        assert_eq!(errs[0].message, too_deep_message());
        assert_eq!(
            (errs[0].pos.line, errs[0].pos.col),
            (2, 3 + 2 * (MAX_DEPTH - 1))
        );
        // Through aliases: each anchor one level deeper than the last.
        let mut chain = String::from("a0: &a0 [1]\n");
        for i in 1..MAX_DEPTH {
            chain.push_str(&format!("a{i}: &a{i} [*a{}]\n", i - 1));
        }
        let (root, errs) = parse(&chain);
        assert!(root.is_none());
        assert_eq!(errs[0].message, too_deep_message());
        assert_eq!(errs[0].pos.line, MAX_DEPTH);
    }

    #[test]
    fn aliases_expand() {
        let (root, errs) = parse("a: &x [1, 2]\nb: *x\n");
        assert!(errs.is_empty());
        let Kind::Map(e) = root.unwrap().kind else {
            panic!()
        };
        assert!(matches!(&e[1].1.kind, Kind::Seq(v) if v.len() == 2));
    }
}
