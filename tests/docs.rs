//! The documentation cannot drift from the code:
//! - `docs/configuration.md` names every long flag and every environment
//!   variable that `objmeta --help` and each subcommand's `--help` show,
//!   each subcommand's in its own section;
//! - every relative link in `README.md` and `docs/*.md` points at a file that
//!   exists and, when it has an anchor into a Markdown file, at a heading of
//!   that file.
//!
//! No services needed: it runs the built binary and reads files.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const REFERENCE: &str = "docs/configuration.md";

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `objmeta <subcommand> --help`, with an empty environment so that no
/// variable of the caller shows up in it.
fn help(subcommand: Option<&str>) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_objmeta"));
    command.env_clear();
    if let Some(subcommand) = subcommand {
        command.arg(subcommand);
    }
    let output = command.arg("--help").output().expect("run objmeta --help");
    assert!(
        output.status.success(),
        "objmeta {subcommand:?} --help failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("help is UTF-8")
}

/// Every `--long-flag` in a help text.
fn long_flags(help: &str) -> BTreeSet<String> {
    let mut flags = BTreeSet::new();
    let mut rest = help;
    while let Some(at) = rest.find("--") {
        let before = rest[..at].chars().next_back();
        let name: String = rest[at + 2..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect();
        let starts_a_word = before.is_none_or(|c| !(c.is_alphanumeric() || c == '-'));
        if starts_a_word && name.starts_with(|c: char| c.is_ascii_alphabetic()) {
            flags.insert(format!("--{name}"));
        }
        rest = &rest[at + 2 + name.len()..];
    }
    flags
}

/// Every `NAME` of `[env: NAME=value]` or `[env: NAME]` (hidden values) in a
/// help text. Whitespace is collapsed first, in case clap wraps a line
/// between `[env:` and the name.
fn env_vars(help: &str) -> BTreeSet<String> {
    let text = help.split_whitespace().collect::<Vec<_>>().join(" ");
    text.split("[env: ")
        .skip(1)
        .map(|after| {
            after
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect::<String>()
        })
        .filter(|name| !name.is_empty())
        .collect()
}

/// Whether `text` contains `word` with no identifier character of `kind`
/// directly before or after it (so `--topic` is not found in `--topics`,
/// nor `KAFKA_GROUP_ID` in `KAFKA_GROUP_IDS`).
fn mentions(text: &str, word: &str, continues: impl Fn(char) -> bool) -> bool {
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(&continues) && !after.is_some_and(&continues)
    })
}

/// The text of the `## heading` section of a Markdown file, up to the next
/// `## ` heading (its `###` subsections included); empty when it is missing.
fn section(text: &str, heading: &str) -> String {
    let mut inside = false;
    let mut lines = Vec::new();
    for line in text.lines() {
        if let Some(title) = line.strip_prefix("## ") {
            inside = title.trim() == heading;
        } else if inside {
            lines.push(line);
        }
    }
    lines.join("\n")
}

/// The options every subcommand shares (`--log-format`, `--help`).
const COMMON_SECTION: &str = "Options of every subcommand";

#[test]
fn the_configuration_reference_names_every_flag_and_variable() {
    let reference = std::fs::read_to_string(repo_root().join(REFERENCE)).expect(REFERENCE);
    let common = section(&reference, COMMON_SECTION);
    assert!(
        !common.is_empty(),
        "{REFERENCE} has no section \"## {COMMON_SECTION}\""
    );
    let mut missing = Vec::new();
    let mut seen = 0;
    for subcommand in [
        None,
        Some("run"),
        Some("migrate"),
        Some("produce"),
        Some("backfill"),
        Some("reconcile"),
    ] {
        let help = help(subcommand);
        let label = format!(
            "objmeta {}--help",
            subcommand.map_or(String::new(), |s| format!("{s} "))
        );
        // Each subcommand's options belong in its own section, so that every
        // table is complete, not merely the page.
        let (heading, own) = match subcommand {
            Some(name) => {
                let heading = format!("`objmeta {name}`");
                let own = section(&reference, &heading);
                assert!(
                    !own.is_empty(),
                    "{REFERENCE} has no section \"## {heading}\""
                );
                (heading, own)
            }
            None => (COMMON_SECTION.to_string(), String::new()),
        };
        let documented = format!("{common}\n{own}");
        let flags = long_flags(&help);
        let vars = env_vars(&help);
        if subcommand.is_some() {
            assert!(
                flags.len() > 3 && !vars.is_empty(),
                "{label}: found only {flags:?} and {vars:?}; has clap's help format changed?\n{help}"
            );
        }
        seen += flags.len() + vars.len();
        for flag in &flags {
            if !mentions(&documented, flag, |c| c.is_ascii_alphanumeric() || c == '-') {
                missing.push(format!("{label}: flag {flag} (section \"{heading}\")"));
            }
        }
        for var in &vars {
            if !mentions(&documented, var, |c| c.is_ascii_alphanumeric() || c == '_') {
                missing.push(format!(
                    "{label}: environment variable {var} (section \"{heading}\")"
                ));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{REFERENCE} does not mention:\n  {}\n(add a row to the section's table: flag, environment variable, default, meaning)",
        missing.join("\n  ")
    );
    println!("{REFERENCE}: all {seen} flags and variables of the help texts are documented");
}

/// README.md and every Markdown file under docs/.
fn documentation_files() -> Vec<PathBuf> {
    let root = repo_root();
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|entry| entry.expect("docs/ entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// The lines of a Markdown file outside fenced code blocks.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut lines = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            lines.push((index + 1, line));
        }
    }
    lines
}

/// The targets of inline links `[text](target)` and of reference
/// definitions `[label]: target`, with their line numbers. Inline code is
/// left out, since it may show link syntax without being a link.
fn link_targets(text: &str) -> Vec<(usize, String)> {
    let mut targets = Vec::new();
    for (number, line) in prose_lines(text) {
        let prose: String = line
            .split('`')
            .enumerate()
            .map(|(i, part)| if i % 2 == 0 { part } else { "" })
            .collect();
        let mut rest = prose.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let end = after.find(')').unwrap_or(after.len());
            let target = after[..end].split_whitespace().next().unwrap_or("");
            targets.push((number, target.trim_matches(['<', '>']).to_string()));
            rest = &after[end..];
        }
        let trimmed = prose.trim_start();
        if let Some(definition) = trimmed.strip_prefix('[').and_then(|r| r.split_once("]:")) {
            if let Some(target) = definition.1.split_whitespace().next() {
                targets.push((number, target.to_string()));
            }
        }
    }
    targets
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces
/// as hyphens; inline code and link syntax reduced to their text.
fn anchor(heading: &str) -> String {
    let mut text = String::new();
    let mut rest = heading;
    // [text](url) -> text
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find("](").map(|i| open + i) else {
            break;
        };
        let Some(end) = rest[close..].find(')').map(|i| close + i) else {
            break;
        };
        text.push_str(&rest[..open]);
        text.push_str(&rest[open + 1..close]);
        rest = &rest[end + 1..];
    }
    text.push_str(rest);
    text.chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .flat_map(char::to_lowercase)
        .collect()
}

/// The anchors of a Markdown file's headings, with GitHub's `-1`, `-2`
/// suffixes for repeated ones.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = anchor(line[hashes..].trim());
        let mut candidate = base.clone();
        let mut n = 0;
        while found.contains(&candidate) {
            n += 1;
            candidate = format!("{base}-{n}");
        }
        found.insert(candidate);
    }
    found
}

fn is_external(target: &str) -> bool {
    target.contains("://") || target.starts_with("mailto:")
}

#[test]
fn relative_links_point_at_existing_files_and_headings() {
    let root = repo_root();
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in documentation_files() {
        let text = std::fs::read_to_string(&file).expect("documentation file");
        let shown = file
            .strip_prefix(&root)
            .unwrap_or(&file)
            .display()
            .to_string();
        for (line, target) in link_targets(&text) {
            if target.is_empty() || is_external(&target) {
                continue;
            }
            checked += 1;
            let (path, fragment) = match target.split_once('#') {
                Some((path, fragment)) => (path, Some(fragment)),
                None => (target.as_str(), None),
            };
            let resolved: PathBuf = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap_or(Path::new(".")).join(path)
            };
            if !resolved.exists() {
                broken.push(format!("{shown}:{line}: {target}: no such file"));
                continue;
            }
            let Some(fragment) = fragment else { continue };
            if resolved.extension().is_none_or(|ext| ext != "md") {
                continue;
            }
            let linked = std::fs::read_to_string(&resolved).expect("linked file");
            if !anchors(&linked).contains(fragment) {
                broken.push(format!(
                    "{shown}:{line}: {target}: no heading with anchor #{fragment}"
                ));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "broken relative links:\n  {}",
        broken.join("\n  ")
    );
    println!("{checked} relative links checked");
}

#[test]
fn the_helpers_find_what_they_should() {
    let help = "  -X, --kafka-property <KAFKA_PROPERTY>\n          Any property [env: KAFKA_PROPERTIES]\n      --batch-max-age <BATCH_MAX_AGE>\n          wait [env: \n BATCH_MAX_AGE=] [default: 50ms] (see --count)\n";
    assert_eq!(
        long_flags(help).into_iter().collect::<Vec<_>>(),
        ["--batch-max-age", "--count", "--kafka-property"]
    );
    assert_eq!(
        env_vars(help).into_iter().collect::<Vec<_>>(),
        ["BATCH_MAX_AGE", "KAFKA_PROPERTIES"]
    );
    let word = |c: char| c.is_ascii_alphanumeric() || c == '-';
    assert!(mentions("| `--topic` |", "--topic", word));
    assert!(!mentions("| `--topics` |", "--topic", word));
    assert!(!mentions("--database-url-x", "--database-url", word));
    assert_eq!(anchor("`objmeta run`"), "objmeta-run");
    assert_eq!(
        anchor("The compose stack's defaults"),
        "the-compose-stacks-defaults"
    );
    assert_eq!(
        anchor("Secrets stay out of logs, errors and metrics"),
        "secrets-stay-out-of-logs-errors-and-metrics"
    );
    let page = "## One\nalpha\n### Sub\nbeta\n## Two\ngamma\n";
    assert_eq!(section(page, "One"), "alpha\n### Sub\nbeta");
    assert_eq!(section(page, "Two"), "gamma");
    assert_eq!(section(page, "Three"), "");
    let text = "# A\n```\n# not a heading [x](nowhere.md)\n```\n## A\nsee [b](b.md#a-1) and `[c](code.md)`\n[d]: d.md\n";
    assert_eq!(anchors(text).into_iter().collect::<Vec<_>>(), ["a", "a-1"]);
    assert_eq!(
        link_targets(text),
        [(6, "b.md#a-1".to_string()), (7, "d.md".to_string())]
    );
}
