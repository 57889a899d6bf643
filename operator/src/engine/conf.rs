//! Quoting for `postgresql.conf` values and libpq connection strings.

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
    out
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
    fn standby_names() {
        assert_eq!(quote_standby_name("standby1"), "standby1");
        assert_eq!(quote_standby_name("demo-1"), "\"demo-1\"");
    }
}
