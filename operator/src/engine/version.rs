//! Server versions as the engines' `--version` prints them.

/// The first `major.minor[.patch]` number after `marker` in `output` (`"openGauss 7.0.0-RC2"`,
/// `"(PostgreSQL) 15.18"`).
pub fn parse(output: &str, marker: &str) -> Option<(u32, u32, u32)> {
    let rest = &output[output.find(marker)? + marker.len()..];
    let word: String = rest.trim_start().chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    let mut parts = word.split('.').map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    Some((major, parts.next().flatten().unwrap_or(0), parts.next().flatten().unwrap_or(0)))
}

/// Refuses a version older than `oldest`, naming both.
pub fn at_least(output: &str, marker: &str, engine: &str, oldest: (u32, u32, u32)) -> Result<(), String> {
    let Some(found) = parse(output, marker) else {
        return Err(format!("cannot tell the {engine} version from {:?}", output.trim()));
    };
    if found < oldest {
        let show = |v: (u32, u32, u32)| format!("{}.{}.{}", v.0, v.1, v.2);
        return Err(format!(
            "{engine} {} is older than {}, the oldest version this operator supports",
            show(found),
            show(oldest)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_and_compared() {
        let og = "gaussdb (openGauss 7.0.0-RC2 build 7e1fc94a) compiled at 2026-11-30 23:38:19";
        assert_eq!(parse(og, "openGauss"), Some((7, 0, 0)));
        assert_eq!(parse("postgres (PostgreSQL) 15.18", "(PostgreSQL)"), Some((15, 18, 0)));
        assert!(at_least(og, "openGauss", "openGauss", (5, 0, 0)).is_ok());
        let old =
            at_least("gaussdb (openGauss 3.1.1 build x)", "openGauss", "openGauss", (5, 0, 0)).unwrap_err();
        assert!(old.contains("3.1.1 is older than 5.0.0"), "{old}");
        assert!(
            at_least("nonsense", "openGauss", "openGauss", (5, 0, 0)).unwrap_err().contains("cannot tell")
        );
    }
}
