//! Quoting for `postgresql.conf` values and libpq connection strings, and the managed block
//! inside `postgresql.conf` for engines whose tools read only that file.

/// A configuration value as a single-quoted string; both engines accept every parameter type
/// in this form. Their parsers read `\` as an escape, so it is doubled.
pub fn quote_conf_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// The start of a managed configuration file, the same for both engines: a warning not to edit
/// it, the user's parameters (so the operator's settings below them win), the listen address,
/// the port, and `wal_level` unless the user chose one (`socket_key` and `wal_level` are the
/// engine's spelling).
pub fn managed_conf_head(c: &super::ServerConfig, socket_key: &str, wal_level: &str) -> String {
    let mut out = String::from(
        "# Managed by opengauss-operator and rewritten on every change.\n\
         # Set server parameters in the cluster spec (spec.parameters), not here.\n",
    );
    for (k, v) in &c.parameters {
        out += &conf_line(k, v);
    }
    out += &conf_line("listen_addresses", &c.listen_addresses);
    out += &conf_line("port", &c.port.to_string());
    out += &conf_line(socket_key, &c.socket_dir.display().to_string());
    if !c.parameters.contains_key("wal_level") {
        out += &conf_line("wal_level", wal_level);
    }
    out += &conf_line("hot_standby", "on");
    out += &conf_line("max_wal_senders", &c.max_wal_senders.to_string());
    if let Some(tls) = &c.tls {
        out += &conf_line("ssl", "on");
        out += &conf_line("ssl_cert_file", &tls.cert_file.display().to_string());
        out += &conf_line("ssl_key_file", &tls.key_file.display().to_string());
        out += &conf_line("ssl_ca_file", &tls.ca_file.display().to_string());
    }
    out
}

/// Marks the start and end of the managed settings inside `postgresql.conf`.
pub const BLOCK_BEGIN: &str = "# BEGIN opengauss-operator managed settings (rewritten on every change)";
pub const BLOCK_END: &str = "# END opengauss-operator managed settings";
/// What a line setting a managed name elsewhere in the file is commented out with.
const SUPERSEDED: &str = "# superseded by the managed settings below: ";

/// The parameter a configuration line sets, if it sets one (lower case).
pub fn setting_name(line: &str) -> Option<String> {
    let line = line.trim_start();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name: String =
        line.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.').collect();
    let rest = line[name.len()..].trim_start();
    (!name.is_empty()
        && (rest.starts_with('=') || rest.chars().next().is_some_and(|c| !c.is_ascii_punctuation())))
    .then(|| name.to_ascii_lowercase())
}

/// `conf` (a `postgresql.conf`) with `managed` (lines of `name = 'value'`) as the marked block
/// at its end: a previous block is replaced, an `include` of the managed file removed, and any
/// other line setting a managed name commented out, so that tools reading the first
/// occurrence of a name and the server reading the last agree.
pub fn with_managed_block(conf: &str, managed: &str) -> String {
    let names: std::collections::BTreeSet<String> = managed.lines().filter_map(setting_name).collect();
    let mut out = String::new();
    let mut in_block = false;
    for line in conf.lines() {
        if line.trim() == BLOCK_BEGIN {
            in_block = true;
            continue;
        }
        if line.trim() == BLOCK_END {
            in_block = false;
            continue;
        }
        if in_block {
            continue;
        }
        let include = line.trim().to_ascii_lowercase();
        if include.starts_with("include") && include.contains(super::MANAGED_CONF) {
            continue;
        }
        match setting_name(line) {
            Some(name) if names.contains(&name) => {
                out.push_str(SUPERSEDED);
                out.push_str(line);
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    while out.ends_with("\n\n") {
        out.pop();
    }
    out.push('\n');
    out.push_str(BLOCK_BEGIN);
    out.push('\n');
    out.push_str(managed);
    if !managed.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(BLOCK_END);
    out.push('\n');
    out
}

/// The value a configuration line sets (unquoted), after its name.
fn setting_value(line: &str, name_len: usize) -> String {
    let rest = line.trim_start()[name_len..].trim_start();
    let rest = rest.strip_prefix('=').unwrap_or(rest).trim_start();
    if let Some(quoted) = rest.strip_prefix('\'') {
        let mut value = String::new();
        let mut chars = quoted.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\'' if chars.peek() == Some(&'\'') => {
                    chars.next();
                    value.push('\'');
                }
                '\'' => break,
                '\\' => value.extend(chars.next()),
                c => value.push(c),
            }
        }
        value
    } else {
        rest.split(|c: char| c.is_whitespace() || c == '#').next().unwrap_or_default().to_string()
    }
}

/// The settings a configuration file's text makes, by name (lower case): the last line for a
/// name wins, as in the server.
pub fn parse_settings(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let name = setting_name(line)?;
            Some((name.clone(), setting_value(line, name.len())))
        })
        .collect()
}

/// One `name = 'value'` line.
pub fn conf_line(name: &str, value: &str) -> String {
    format!("{name} = {}\n", quote_conf_value(value))
}

/// A value inside a libpq `key=value` connection string.
pub fn conninfo_value(value: &str) -> String {
    let plain = !value.is_empty() && !value.contains([' ', '\'', '\\', '\t', '\n']);
    if plain { value.to_string() } else { format!("'{}'", value.replace('\\', r"\\").replace('\'', r"\'")) }
}

/// An identifier inside `synchronous_standby_names`, double-quoted when it is not a plain
/// lowercase name.
pub fn quote_standby_name(name: &str) -> String {
    let plain = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain { name.to_string() } else { format!("\"{}\"", name.replace('"', "\"\"")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_values_double_single_quotes_and_backslashes() {
        assert_eq!(conf_line("a", "it's"), "a = 'it''s'\n");
        assert_eq!(conf_line("b", r"C:\x"), "b = 'C:\\\\x'\n");
    }

    #[test]
    fn conninfo_quotes_spaces_and_escapes() {
        assert_eq!(conninfo_value("plain"), "plain");
        assert_eq!(conninfo_value("/a b/c'd\\"), r"'/a b/c\'d\\'");
        assert_eq!(conninfo_value(""), "''");
    }

    #[test]
    fn the_managed_block_replaces_itself_and_supersedes_other_lines() {
        let conf = "max_wal_senders = 4\t# from gs_initdb\n#port = 5432\nshared_buffers = 32MB\ninclude_if_exists = 'opengauss-operator.conf'\n";
        let managed = "port = '15432'\nmax_wal_senders = '10'\n";
        let once = with_managed_block(conf, managed);
        assert!(once.contains("# superseded by the managed settings below: max_wal_senders = 4"), "{once}");
        assert!(once.contains("\n#port = 5432\n"), "comments stay as they are: {once}");
        assert!(once.contains("\nshared_buffers = 32MB\n"), "other settings stay: {once}");
        assert!(!once.contains("include_if_exists"), "no include line (gs_ctl build refuses one): {once}");
        assert!(once.ends_with(&format!("{BLOCK_BEGIN}\n{managed}{BLOCK_END}\n")), "{once}");
        // Rewriting replaces the block and supersedes nothing twice.
        let twice = with_managed_block(&once, "port = '15433'\n");
        assert_eq!(twice.matches(BLOCK_BEGIN).count(), 1, "{twice}");
        assert!(twice.contains("port = '15433'") && !twice.contains("port = '15432'"), "{twice}");
        assert_eq!(twice.matches("superseded").count(), 1, "{twice}");
        // The first uncommented occurrence of a managed name is the managed one.
        let first_port = twice.lines().find(|l| setting_name(l).as_deref() == Some("port"));
        assert_eq!(first_port, Some("port = '15433'"));
    }

    #[test]
    fn settings_are_read_back_as_written() {
        let text = "port = 5432 # comment\nshared_buffers='128MB'\nx = 'it''s'\n# port = 1\nport = '15432'\n";
        let s = parse_settings(text);
        assert_eq!(s.get("port").map(String::as_str), Some("15432"), "the last line wins");
        assert_eq!(s.get("shared_buffers").map(String::as_str), Some("128MB"));
        assert_eq!(s.get("x").map(String::as_str), Some("it's"));
        assert_eq!(parse_settings(&conf_line("a", r"C:\x")).get("a").map(String::as_str), Some(r"C:\x"));
    }

    #[test]
    fn setting_names() {
        assert_eq!(setting_name("  Port=5432").as_deref(), Some("port"));
        assert_eq!(setting_name("wal_level hot_standby").as_deref(), Some("wal_level"));
        assert_eq!(setting_name("# port = 1"), None);
        assert_eq!(setting_name(""), None);
    }

    #[test]
    fn standby_names() {
        assert_eq!(quote_standby_name("standby1"), "standby1");
        assert_eq!(quote_standby_name("demo-1"), "\"demo-1\"");
    }
}
