//! Each crate's module tree, followed from its root file through its `mod`
//! declarations and parsed with `syn` (what is under `#[cfg(test)]` left
//! out), and the arrows between its top-level modules.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fs,
    path::{Path, PathBuf},
};

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::{self, Visit};

use super::relative;

/// Where a path was written.
#[derive(Clone, Debug)]
pub(super) struct Place {
    pub(super) file: String,
    line: usize,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// A path written in some module that starts at `crate`, `self` or `super`.
pub(super) struct Reference {
    /// The module it is written in, from the root (empty: the root).
    module: Vec<String>,
    segments: Vec<String>,
    place: Place,
}

/// One crate, as read from its root file.
#[derive(Default)]
pub(super) struct Crate {
    /// The top-level modules.
    pub(super) modules: BTreeSet<String>,
    /// The names the root file defines itself (and `#[macro_export]` macros).
    defined: BTreeSet<String>,
    /// The root's imports and re-exports: name -> the path it comes from.
    imported: BTreeMap<String, Vec<String>>,
    references: Vec<Reference>,
}

/// `#[cfg(test)]`.
fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.meta
                .require_list()
                .is_ok_and(|l| l.tokens.to_string().trim() == "test")
    })
}

/// The value of `#[path = "..."]`.
fn path_attribute(attrs: &[syn::Attribute]) -> Option<String> {
    attrs.iter().find_map(|a| match &a.meta {
        syn::Meta::NameValue(nv) if nv.path.is_ident("path") => match &nv.value {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) => Some(s.value()),
            _ => None,
        },
        _ => None,
    })
}

/// One leaf of a `use` tree: its full path (`self` dropped), the name it
/// brings in, and its line.
struct Leaf {
    path: Vec<String>,
    name: String,
    line: usize,
}

/// Every leaf of a `use` tree.
fn use_leaves(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<Leaf>) {
    let mut leaf = |last: Option<String>, name: String, span: proc_macro2::Span| {
        let mut path = prefix.clone();
        path.extend(last);
        let line = span.start().line;
        out.push(Leaf { path, name, line });
    };
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            use_leaves(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) if n.ident == "self" => {
            let name = prefix.last().cloned().unwrap_or_default();
            leaf(None, name, n.ident.span())
        }
        syn::UseTree::Name(n) => leaf(
            Some(n.ident.to_string()),
            n.ident.to_string(),
            n.ident.span(),
        ),
        syn::UseTree::Rename(r) if r.ident == "self" => {
            leaf(None, r.rename.to_string(), r.ident.span())
        }
        syn::UseTree::Rename(r) => leaf(
            Some(r.ident.to_string()),
            r.rename.to_string(),
            r.ident.span(),
        ),
        syn::UseTree::Glob(g) => leaf(Some("*".into()), "*".into(), g.star_token.span),
        syn::UseTree::Group(g) => g.items.iter().for_each(|t| use_leaves(t, prefix, out)),
    }
}

/// Collects the references of one module's items (not of its submodules,
/// which it queues).
struct ModuleVisitor<'a> {
    krate: &'a mut Crate,
    module: Vec<String>,
    /// The source file it is in.
    path: PathBuf,
    file: String,
    /// Where this module's `mod x;` files are.
    dir: PathBuf,
    pending: &'a mut Vec<Pending>,
}

/// A module still to read: its path, where its `mod x;` files are, its
/// source file and its items.
type Pending = (Vec<String>, PathBuf, PathBuf, Vec<syn::Item>);

impl ModuleVisitor<'_> {
    fn refer(&mut self, segments: Vec<String>, line: usize) {
        if matches!(
            segments.first().map(String::as_str),
            Some("crate" | "self" | "super")
        ) && segments.len() > 1
        {
            self.krate.references.push(Reference {
                module: self.module.clone(),
                segments,
                place: Place {
                    file: self.file.clone(),
                    line,
                },
            });
        }
    }

    /// `crate::a::b`, `super::x` inside a macro's tokens.
    fn scan(&mut self, tokens: TokenStream) {
        let tokens: Vec<TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < tokens.len() {
            match &tokens[i] {
                TokenTree::Group(g) => self.scan(g.stream()),
                TokenTree::Ident(id)
                    if matches!(id.to_string().as_str(), "crate" | "self" | "super") =>
                {
                    let line = id.span().start().line;
                    let mut segments = vec![id.to_string()];
                    while let (
                        Some(TokenTree::Punct(a)),
                        Some(TokenTree::Punct(b)),
                        Some(TokenTree::Ident(next)),
                    ) = (tokens.get(i + 1), tokens.get(i + 2), tokens.get(i + 3))
                    {
                        if a.as_char() != ':' || b.as_char() != ':' {
                            break;
                        }
                        segments.push(next.to_string());
                        i += 3;
                    }
                    self.refer(segments, line);
                }
                _ => {}
            }
            i += 1;
        }
    }

    fn submodule(&mut self, m: &syn::ItemMod) {
        let name = m.ident.to_string();
        let mut module = self.module.clone();
        module.push(name.clone());
        if self.module.is_empty() {
            self.krate.modules.insert(name.clone());
        }
        match &m.content {
            Some((_, items)) => {
                let dir = self.dir.join(&name);
                self.pending
                    .push((module, dir, self.path.clone(), items.clone()));
            }
            None => {
                let file = match path_attribute(&m.attrs) {
                    Some(p) => self.path.parent().expect("a file's directory").join(p),
                    None => {
                        let flat = self.dir.join(format!("{name}.rs"));
                        if flat.exists() {
                            flat
                        } else {
                            self.dir.join(&name).join("mod.rs")
                        }
                    }
                };
                let text =
                    fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                let parsed =
                    syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                let file_dir = file.parent().expect("a file's directory").to_path_buf();
                let dir = if file.ends_with("mod.rs") {
                    file_dir.clone()
                } else {
                    file_dir.join(&name)
                };
                self.pending.push((module, dir, file, parsed.items));
            }
        }
    }
}

impl<'ast> Visit<'ast> for ModuleVisitor<'_> {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = match item {
            syn::Item::Const(i) => &i.attrs,
            syn::Item::Enum(i) => &i.attrs,
            syn::Item::Fn(i) => &i.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Macro(i) => &i.attrs,
            syn::Item::Mod(i) => &i.attrs,
            syn::Item::Static(i) => &i.attrs,
            syn::Item::Struct(i) => &i.attrs,
            syn::Item::Trait(i) => &i.attrs,
            syn::Item::Type(i) => &i.attrs,
            syn::Item::Use(i) => &i.attrs,
            _ => return visit::visit_item(self, item),
        };
        if is_test_only(attrs) {
            return;
        }
        match item {
            syn::Item::Mod(m) => self.submodule(m),
            syn::Item::Macro(m) => {
                let exported = m.attrs.iter().any(|a| a.path().is_ident("macro_export"));
                if let (true, Some(name)) = (exported, &m.ident) {
                    self.krate.defined.insert(name.to_string());
                }
                visit::visit_item(self, item);
            }
            _ => visit::visit_item(self, item),
        }
    }

    fn visit_impl_item(&mut self, item: &'ast syn::ImplItem) {
        let test_only = match item {
            syn::ImplItem::Const(i) => is_test_only(&i.attrs),
            syn::ImplItem::Fn(i) => is_test_only(&i.attrs),
            syn::ImplItem::Type(i) => is_test_only(&i.attrs),
            _ => false,
        };
        if !test_only {
            visit::visit_impl_item(self, item);
        }
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        let mut leaves = Vec::new();
        use_leaves(&item.tree, &mut Vec::new(), &mut leaves);
        for leaf in leaves {
            self.refer(leaf.path, leaf.line);
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        if let Some(first) = path.segments.first() {
            let segments = path.segments.iter().map(|s| s.ident.to_string()).collect();
            self.refer(segments, first.ident.span().start().line);
        }
        visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.scan(mac.tokens.clone());
        visit::visit_macro(self, mac);
    }
}

/// Reads the crate whose root file is `root`.
pub(super) fn read_crate(root: &Path) -> Crate {
    let text = fs::read_to_string(root).unwrap_or_else(|e| panic!("{}: {e}", root.display()));
    let file = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", root.display()));
    let mut krate = Crate::default();
    for item in &file.items {
        let (name, test_only) = match item {
            syn::Item::Const(i) => (i.ident.to_string(), is_test_only(&i.attrs)),
            syn::Item::Enum(i) => (i.ident.to_string(), is_test_only(&i.attrs)),
            syn::Item::ExternCrate(i) => (
                i.rename.as_ref().map_or(&i.ident, |(_, r)| r).to_string(),
                false,
            ),
            syn::Item::Fn(i) => (i.sig.ident.to_string(), is_test_only(&i.attrs)),
            syn::Item::Macro(i) => match &i.ident {
                Some(id) => (id.to_string(), is_test_only(&i.attrs)),
                None => continue,
            },
            syn::Item::Static(i) => (i.ident.to_string(), is_test_only(&i.attrs)),
            syn::Item::Struct(i) => (i.ident.to_string(), is_test_only(&i.attrs)),
            syn::Item::Trait(i) => (i.ident.to_string(), is_test_only(&i.attrs)),
            syn::Item::TraitAlias(i) => (i.ident.to_string(), false),
            syn::Item::Type(i) => (i.ident.to_string(), is_test_only(&i.attrs)),
            syn::Item::Union(i) => (i.ident.to_string(), is_test_only(&i.attrs)),
            syn::Item::Use(u) if !is_test_only(&u.attrs) => {
                let mut leaves = Vec::new();
                use_leaves(&u.tree, &mut Vec::new(), &mut leaves);
                for leaf in leaves {
                    krate.imported.insert(leaf.name, leaf.path);
                }
                continue;
            }
            _ => continue,
        };
        if !test_only {
            krate.defined.insert(name);
        }
    }
    let dir = root.parent().expect("src").to_path_buf();
    let mut pending: Vec<Pending> = vec![(Vec::new(), dir, root.to_path_buf(), file.items)];
    while let Some((module, dir, file, items)) = pending.pop() {
        let mut visitor = ModuleVisitor {
            krate: &mut krate,
            module,
            file: relative(&file),
            path: file,
            dir,
            pending: &mut pending,
        };
        for item in &items {
            visitor.visit_item(item);
        }
    }
    krate
}

/// `segments` (from `crate`, `self` or `super`) written in `module`, from the root.
fn absolute(module: &[String], segments: &[String]) -> Option<Vec<String>> {
    let mut at = match segments[0].as_str() {
        "crate" => Vec::new(),
        _ => module.to_vec(),
    };
    let mut rest = &segments[1..];
    if segments[0] == "super" {
        at.pop()?;
        while rest.first().is_some_and(|s| s == "super") {
            at.pop()?;
            rest = &rest[1..];
        }
    }
    at.extend(rest.iter().cloned());
    Some(at)
}

/// An arrow between top-level modules, and where it was written.
pub(super) type Arrows = BTreeMap<String, BTreeMap<String, Place>>;

/// The crate's arrows between top-level modules, and the places that take
/// a name through the root that the root does not define.
pub(super) fn analyse(krate: &Crate) -> (Arrows, Vec<(Place, String)>) {
    let mut arrows = Arrows::new();
    let mut via_root = Vec::new();
    for r in &krate.references {
        let Some(from) = r.module.first() else {
            continue;
        };
        let Some(path) = absolute(&r.module, &r.segments) else {
            continue;
        };
        let Some(first) = path.first() else { continue };
        let target = if krate.modules.contains(first) {
            Some(first.clone())
        } else if krate.defined.contains(first) {
            None
        } else {
            via_root.push((r.place.clone(), first.clone()));
            // Through a re-export: an arrow to the module it comes from.
            krate.imported.get(first).and_then(|source| {
                let source: Vec<_> = source
                    .iter()
                    .skip_while(|s| *s == "crate" || *s == "self")
                    .collect();
                source
                    .first()
                    .filter(|s| krate.modules.contains(**s))
                    .map(|s| s.to_string())
            })
        };
        if let Some(target) = target.filter(|t| t != from) {
            arrows
                .entry(from.clone())
                .or_default()
                .entry(target)
                .or_insert_with(|| r.place.clone());
        }
    }
    (arrows, via_root)
}

/// The strongly connected components of more than one module.
pub(super) fn cycles(modules: &BTreeSet<String>, arrows: &Arrows) -> Vec<BTreeSet<String>> {
    let reach = |from: &String| {
        let mut seen = BTreeSet::from([from.clone()]);
        let mut queue = VecDeque::from([from.clone()]);
        while let Some(m) = queue.pop_front() {
            for next in arrows.get(&m).into_iter().flat_map(|a| a.keys()) {
                if seen.insert(next.clone()) {
                    queue.push_back(next.clone());
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<_, _> = modules.iter().map(|m| (m.clone(), reach(m))).collect();
    let mut found: Vec<BTreeSet<String>> = Vec::new();
    for m in modules {
        let component: BTreeSet<String> = reachable[m]
            .iter()
            .filter(|o| reachable[*o].contains(m))
            .cloned()
            .collect();
        if component.len() > 1 && !found.contains(&component) {
            found.push(component);
        }
    }
    found
}

/// One cycle through `component`, each arrow with where it was written.
pub(super) fn describe(component: &BTreeSet<String>, arrows: &Arrows) -> String {
    let start = component.first().expect("a module").clone();
    // Shortest way from `start` back to itself within the component.
    let mut back: BTreeMap<String, String> = BTreeMap::new();
    let mut queue = VecDeque::from([start.clone()]);
    'search: while let Some(m) = queue.pop_front() {
        for next in arrows.get(&m).into_iter().flat_map(|a| a.keys()) {
            if !component.contains(next) {
                continue;
            }
            if *next == start {
                back.insert(start.clone(), m.clone());
                break 'search;
            }
            if !back.contains_key(next) {
                back.insert(next.clone(), m.clone());
                queue.push_back(next.clone());
            }
        }
    }
    let mut path = vec![start.clone()];
    let mut at = back[&start].clone();
    while at != start {
        path.push(at.clone());
        at = back[&at].clone();
    }
    path.push(start);
    path.reverse();
    let steps: Vec<String> = path
        .windows(2)
        .map(|w| format!("  {} -> {} ({})", w[0], w[1], arrows[&w[0]][&w[1]]))
        .collect();
    format!("among {component:?}:\n{}", steps.join("\n"))
}
