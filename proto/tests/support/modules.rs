//! How the modules of a crate import each other, read from its sources as a reviewer would:
//! every `crate::` path in code that is not a test (and every `super::` path that leaves a
//! module's root) names a top-level module, or a name the crate root re-exports from one.
//! Comments, string literals and items under `#[cfg(test)]` do not count. Shared by proto's
//! layers test and node's import-cycle test (each includes this file with `#[path]`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One import of a top-level module by another: in `file`, `module` names `target` (through
/// `name`, the module itself or a name the crate root re-exports from it).
pub struct Import {
    pub file: String,
    pub module: String,
    pub target: String,
    pub through: String,
}

/// Every import between different top-level modules of the crate whose sources are `src`.
pub fn imports(src: &Path) -> Vec<Import> {
    let modules = top_level_modules(src);
    let reexports = reexports(&code(&read(&src.join("lib.rs"))));
    let mut found = Vec::new();
    for (file, module, depth) in sources(src) {
        let text = code(&read(&file));
        let prefixes = [String::from("crate::"), "super::".repeat(depth)];
        for name in prefixes.iter().flat_map(|prefix| names_after(&text, prefix)) {
            let target = if modules.contains(&name) { Some(&name) } else { reexports.get(&name) };
            if let Some(target) = target.filter(|target| **target != module) {
                let file = file.strip_prefix(src).unwrap_or(&file).display().to_string();
                found.push(Import { file, module: module.clone(), target: target.clone(), through: name.clone() });
            }
        }
    }
    found
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

/// The crate's top-level modules: `src/*.rs` but `lib.rs`, and the directories of `src/`.
pub fn top_level_modules(src: &Path) -> BTreeSet<String> {
    let entries = std::fs::read_dir(src).expect("src is readable");
    entries
        .map(|entry| entry.expect("a readable entry").path())
        .filter_map(|path| match path.extension() {
            Some(extension) if extension == "rs" => Some(path.file_stem()?.to_str()?.to_owned()),
            None if path.is_dir() => Some(path.file_name()?.to_str()?.to_owned()),
            _ => None,
        })
        .filter(|module| module != "lib" && module != "main")
        .collect()
}

/// Every source file but the crate root and tests, with its top-level module and how many
/// `super::` reach the crate root from it.
fn sources(src: &Path) -> Vec<(PathBuf, String, usize)> {
    let mut pending = vec![src.to_path_buf()];
    let mut found = Vec::new();
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("a readable directory") {
            let path = entry.expect("a readable entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
            if path.is_dir() && name != "tests" {
                pending.push(path);
            } else if name.ends_with(".rs")
                && name != "tests.rs"
                && path != src.join("lib.rs")
                && path != src.join("main.rs")
            {
                let relative = path.strip_prefix(src).expect("under src").with_extension("");
                let mut parts: Vec<String> = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
                if parts.last().is_some_and(|last| last == "mod") {
                    parts.pop();
                }
                found.push((path, parts[0].clone(), parts.len()));
            }
        }
    }
    found
}

/// The names the crate root re-exports (`pub use module::{A, B};`), and their modules.
fn reexports(lib: &str) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    for statement in lib.split(';') {
        let Some(path) = statement.trim().strip_prefix("pub use ") else { continue };
        let Some((module, items)) = path.split_once("::") else { continue };
        let items = items.trim().trim_start_matches('{').trim_end_matches('}');
        for item in items.split(',').map(str::trim).filter(|item| !item.is_empty()) {
            names.insert(item.to_owned(), module.trim().to_owned());
        }
    }
    names
}

/// The first segments of the paths that follow `prefix` in `text`: `crate::model::Op` gives
/// `model`, `crate::{Key, log::Log}` gives `Key` and `log`.
fn names_after(text: &str, prefix: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().next_back();
        let after = &rest[at + prefix.len()..];
        rest = after;
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        match after.strip_prefix('{') {
            Some(group) => names.extend(group_heads(group)),
            None => names.extend(ident(after)),
        }
    }
    names
}

/// The first segment of each item of a `use` group, up to its closing brace.
fn group_heads(group: &str) -> Vec<String> {
    let (mut heads, mut depth, mut start) = (Vec::new(), 0, true);
    for (index, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => start = true,
            c if start && !c.is_whitespace() => {
                heads.extend(ident(&group[index..]));
                start = false;
            }
            _ => {}
        }
    }
    heads
}

fn ident(text: &str) -> Option<String> {
    let end = text.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(text.len());
    (end > 0).then(|| text[..end].to_owned())
}

/// The code of a file as the compiler of a non-test build reads it, for this purpose: without
/// comments and string or character literals, and without the items under `#[cfg(test)]`.
fn code(text: &str) -> String {
    let stripped = strip(text);
    let mut code = String::with_capacity(stripped.len());
    let mut rest = stripped.as_str();
    while let Some(at) = rest.find("#[cfg(test)]") {
        code.push_str(&rest[..at]);
        rest = &rest[at + "#[cfg(test)]".len()..];
        let mut depth = 0;
        let mut end = rest.len();
        for (index, c) in rest.char_indices() {
            match c {
                ';' if depth == 0 => {
                    end = index + 1;
                    break;
                }
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = index + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &rest[end..];
    }
    code.push_str(rest);
    code
}

/// `text` without comments, and with string and character literals emptied.
fn strip(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let at = |i: usize, s: &str| s.chars().enumerate().all(|(k, c)| chars.get(i + k) == Some(&c));
    while i < chars.len() {
        let c = chars[i];
        let after_ident = i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_');
        if at(i, "//") {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if at(i, "/*") {
            let mut depth = 0;
            loop {
                if i >= chars.len() {
                    break;
                } else if at(i, "/*") {
                    depth += 1;
                    i += 2;
                } else if at(i, "*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if (c == 'r' || (c == 'b' && chars.get(i + 1) == Some(&'r'))) && !after_ident && raw_start(&chars, i) {
            let start = if c == 'b' { i + 2 } else { i + 1 };
            let hashes = chars[start..].iter().take_while(|c| **c == '#').count();
            let close: String = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
            i = start + hashes + 1;
            while i < chars.len() && !at(i, &close) {
                i += 1;
            }
            i += close.len();
            out.push_str("\"\"");
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && chars.get(i + 1) == Some(&'\\') {
            i += 2;
            while i < chars.len() && chars[i] != '\'' {
                i += 1;
            }
            i += 1;
            out.push_str("''");
        } else if c == '\'' && chars.get(i + 2) == Some(&'\'') {
            i += 3;
            out.push_str("''");
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Whether a raw string literal (`r"`, `r#"`, `br"`) starts at `i`.
fn raw_start(chars: &[char], i: usize) -> bool {
    let start = if chars[i] == 'b' { i + 2 } else { i + 1 };
    let hashes = chars[start..].iter().take_while(|c| **c == '#').count();
    chars.get(start + hashes) == Some(&'"')
}
