//! The credentials of a cluster, on both platforms: the replication user's name, the passwords
//! and the managers' API token, and the libpq password file they make. Generated passwords
//! satisfy openGauss's policy (at least 8 characters with upper case, lower case, digits and a
//! special character) and avoid characters that need escaping in libpq password files or
//! connection strings.

use rand::RngExt;
use rand::seq::SliceRandom;

/// The role standbys replicate as.
pub const REPLICATION_USER: &str = "replicator";

/// The superuser and replication passwords and the API token of one cluster.
#[derive(Clone, PartialEq, Eq)]
pub struct Secrets {
    pub superuser_password: String,
    pub replication_password: String,
    pub token: String,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(redacted)")
    }
}

/// libpq password-file lines: `host:port:database:user:password`.
pub fn pgpass_lines(superuser: &str, replication_user: &str, secrets: &Secrets) -> String {
    format!(
        "*:*:*:{superuser}:{}\n*:*:replication:{replication_user}:{}\n*:*:*:{replication_user}:{}\n",
        secrets.superuser_password, secrets.replication_password, secrets.replication_password
    )
}

const UPPER: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ";
const LOWER: &[u8] = b"abcdefghijkmnopqrstuvwxyz";
const DIGITS: &[u8] = b"23456789";
const SPECIAL: &[u8] = b"#%+-_.";

fn pick(rng: &mut impl rand::Rng, set: &[u8]) -> u8 {
    set[rng.random_range(0..set.len())]
}

/// A random password of `len` (at least 8) characters with every required class.
pub fn password(len: usize) -> String {
    let len = len.max(8);
    let mut rng = rand::rng();
    let all: Vec<u8> = [UPPER, LOWER, DIGITS, SPECIAL].concat();
    let mut chars =
        vec![pick(&mut rng, UPPER), pick(&mut rng, LOWER), pick(&mut rng, DIGITS), pick(&mut rng, SPECIAL)];
    while chars.len() < len {
        chars.push(pick(&mut rng, &all));
    }
    chars.shuffle(&mut rng);
    String::from_utf8(chars).expect("ASCII")
}

/// A bearer token: 32 random bytes, hex.
pub fn token() -> String {
    let mut rng = rand::rng();
    (0..32).map(|_| format!("{:02x}", rng.random_range(0..=255u8))).collect()
}

/// The special characters gs_initdb accepts in a password (initdb.cpp CheckInitialPasswd).
const OPENGAUSS_SPECIAL: &str = "~!@#$%^&*()-_=+\\|[{}];:,<.>/?";

/// Why `p` would be refused by openGauss's gs_initdb as the initial user `user`'s password:
/// 8 to 32 characters, letters, digits and `~!@#$%^&*()-_=+\|[{}];:,<.>/?` only, at least three
/// of the four classes, and neither the user name nor it reversed.
pub fn opengauss_password_problem(p: &str, user: &str) -> Option<String> {
    if !(8..=32).contains(&p.len()) {
        return Some(format!("has {} characters; openGauss needs 8 to 32", p.len()));
    }
    if let Some(c) = p.chars().find(|c| !c.is_ascii_alphanumeric() && !OPENGAUSS_SPECIAL.contains(*c)) {
        return Some(format!("contains {c:?}; openGauss allows letters, digits and {OPENGAUSS_SPECIAL}"));
    }
    let classes = [
        p.bytes().any(|b| b.is_ascii_uppercase()),
        p.bytes().any(|b| b.is_ascii_lowercase()),
        p.bytes().any(|b| b.is_ascii_digit()),
        p.bytes().any(|b| !b.is_ascii_alphanumeric()),
    ];
    if classes.iter().filter(|c| **c).count() < 3 {
        return Some("needs three of: upper case, lower case, digits, special characters".into());
    }
    let reversed: String = user.chars().rev().collect();
    if p.eq_ignore_ascii_case(user) || p.eq_ignore_ascii_case(&reversed) {
        return Some("must not be the user name or the user name reversed".into());
    }
    None
}

/// Whether a password meets openGauss's rule.
pub fn meets_policy(p: &str, user: &str) -> bool {
    opengauss_password_problem(p, user).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_meet_the_policy_and_differ() {
        let a = password(24);
        let b = password(24);
        assert_eq!(a.len(), 24);
        assert_ne!(a, b);
        for _ in 0..200 {
            let p = password(8);
            assert!(meets_policy(&p, "omm"), "{p}");
            assert!(!p.contains([':', '\\', '\'', ' ']), "{p}");
        }
    }

    #[test]
    fn policy_follows_gs_initdb() {
        for weak in
            ["Ab1#", "abcdefgh", "ABCDEFGH", "12345678", "Omm12345#", "#54321mmO", "Abc def1!x", "Abcdefg1'"]
        {
            assert!(!meets_policy(weak, "omm12345#"), "{weak}");
        }
        assert!(!meets_policy(&"Aa1#".repeat(9), "omm"), "over 32 characters");
        // Three of four classes are enough.
        for good in ["abcdefg1#", "ABCDEFG1#", "Abcdefgh#", "Abcdefg12"] {
            assert!(meets_policy(good, "omm"), "{good}");
        }
        let why = opengauss_password_problem("short", "omm").expect("refused");
        assert!(why.contains("8 to 32"), "{why}");
    }

    #[test]
    fn tokens_are_hex_and_long() {
        let t = token();
        assert_eq!(t.len(), 64);
        assert!(t.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
