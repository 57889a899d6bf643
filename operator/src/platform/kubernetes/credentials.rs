//! The credentials of one cluster, kept in its Secret: generated once when the Secret is
//! created and never rewritten, so a restarted or replaced operator keeps using the same ones.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use opengauss_crd::Engine;

use crate::credentials::{REPLICATION_USER, Secrets, pgpass_lines};

/// Keys of the cluster's Secret.
pub mod keys {
    pub const USERNAME: &str = "username";
    pub const PASSWORD: &str = "password";
    pub const REPLICATION_USERNAME: &str = "replication-username";
    pub const REPLICATION_PASSWORD: &str = "replication-password";
    pub const API_TOKEN: &str = "api-token";
    /// A libpq password file for replication and rewind connections; the init container copies
    /// it next to the manager with mode 0600 (libpq ignores a group-readable one).
    pub const PGPASS: &str = "pgpass";
}

/// What replaces every secret value in `render` output.
pub const REDACTED: &str = "<redacted>";

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub superuser: String,
    pub replication_user: String,
    pub secrets: Secrets,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("superuser", &self.superuser)
            .field("replication_user", &self.replication_user)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("Secret {name} lacks key {key:?} (or it is empty or not UTF-8)")]
pub struct MissingKey {
    pub name: String,
    pub key: &'static str,
}

impl Credentials {
    /// Fresh credentials: passwords that meet openGauss's policy and a random API token.
    pub fn generate(engine: Engine) -> Self {
        Self {
            superuser: crate::engine::dialect(engine).superuser().to_string(),
            replication_user: REPLICATION_USER.to_string(),
            secrets: Secrets {
                superuser_password: crate::credentials::password(24),
                replication_password: crate::credentials::password(24),
                token: crate::credentials::token(),
            },
        }
    }

    /// Placeholders, for output that must never carry secrets.
    pub fn redacted(engine: Engine) -> Self {
        Self {
            superuser: crate::engine::dialect(engine).superuser().to_string(),
            replication_user: REPLICATION_USER.to_string(),
            secrets: Secrets {
                superuser_password: REDACTED.into(),
                replication_password: REDACTED.into(),
                token: REDACTED.into(),
            },
        }
    }

    /// The Secret's keys and values.
    pub fn entries(&self) -> BTreeMap<String, String> {
        let s = &self.secrets;
        let pgpass = if s.token == REDACTED {
            REDACTED.to_string()
        } else {
            pgpass_lines(&self.superuser, &self.replication_user, s)
        };
        [
            (keys::USERNAME, self.superuser.clone()),
            (keys::PASSWORD, s.superuser_password.clone()),
            (keys::REPLICATION_USERNAME, self.replication_user.clone()),
            (keys::REPLICATION_PASSWORD, s.replication_password.clone()),
            (keys::API_TOKEN, s.token.clone()),
            (keys::PGPASS, pgpass),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Reads the credentials back from the cluster's Secret.
    /// Refuses credentials `engine` would refuse (openGauss's initial password rule), naming the
    /// key.
    pub fn check_for(&self, engine: opengauss_crd::Engine, secret_name: &str) -> anyhow::Result<()> {
        if engine == opengauss_crd::Engine::OpenGauss
            && let Some(why) = crate::credentials::opengauss_password_problem(
                &self.secrets.superuser_password,
                &self.superuser,
            )
        {
            anyhow::bail!("Secret {secret_name} key {:?} {why}", keys::PASSWORD);
        }
        Ok(())
    }

    pub fn from_secret(secret: &Secret) -> Result<Self, MissingKey> {
        let name = secret.metadata.name.clone().unwrap_or_default();
        let get = |key: &'static str| -> Result<String, MissingKey> {
            let from_data = secret
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .and_then(|b| String::from_utf8(b.0.clone()).ok());
            let from_string = secret.string_data.as_ref().and_then(|d| d.get(key)).cloned();
            from_data
                .or(from_string)
                .map(|v| v.trim_end_matches(['\n', '\r']).to_string())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| MissingKey { name: name.clone(), key })
        };
        Ok(Self {
            superuser: get(keys::USERNAME)?,
            replication_user: get(keys::REPLICATION_USERNAME)?,
            secrets: Secrets {
                superuser_password: get(keys::PASSWORD)?,
                replication_password: get(keys::REPLICATION_PASSWORD)?,
                token: get(keys::API_TOKEN)?,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    #[test]
    fn generated_credentials_meet_the_policy_and_round_trip() {
        let c = Credentials::generate(Engine::OpenGauss);
        assert_eq!(c.superuser, "omm");
        assert!(crate::credentials::meets_policy(&c.secrets.superuser_password, &c.superuser));
        assert!(crate::credentials::meets_policy(&c.secrets.replication_password, &c.replication_user));
        let data = c.entries().into_iter().map(|(k, v)| (k, ByteString(v.into_bytes()))).collect();
        let secret = Secret { data: Some(data), ..Secret::default() };
        assert_eq!(Credentials::from_secret(&secret).expect("complete"), c);
    }

    #[test]
    fn debug_never_shows_secrets() {
        let c = Credentials::generate(Engine::Postgres);
        let shown = format!("{c:?}");
        assert!(!shown.contains(&c.secrets.superuser_password), "{shown}");
        assert!(!shown.contains(&c.secrets.token), "{shown}");
    }

    #[test]
    fn missing_keys_are_named() {
        let err = Credentials::from_secret(&Secret::default()).unwrap_err();
        assert_eq!(err.key, keys::USERNAME);
    }

    #[test]
    fn redacted_entries_hold_no_secret() {
        let entries = Credentials::redacted(Engine::OpenGauss).entries();
        for key in [keys::PASSWORD, keys::REPLICATION_PASSWORD, keys::API_TOKEN, keys::PGPASS] {
            assert_eq!(entries[key], REDACTED, "{key}");
        }
    }
}
