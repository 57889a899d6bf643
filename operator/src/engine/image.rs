//! What the operator needs to know about an engine's official container image: where its
//! programs are, which OS user the server runs as, and the environment its tools expect.

/// The layout of a database image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageLayout {
    pub bin_dir: String,
    /// The image's database OS user and group: the manager and the server run as them.
    pub uid: i64,
    pub gid: i64,
    pub env: Vec<(String, String)>,
}

/// The official openGauss images (checked against openGauss-server
/// `docker/dockerfiles/7.0.0-RC2/dockerfile_x86`): GAUSSHOME `/usr/local/opengauss`, OS user
/// `omm` with uid and gid 70.
pub fn opengauss() -> ImageLayout {
    ImageLayout {
        bin_dir: "/usr/local/opengauss/bin".into(),
        uid: 70,
        gid: 70,
        env: vec![
            ("GAUSSHOME".into(), "/usr/local/opengauss".into()),
            ("LD_LIBRARY_PATH".into(), "/usr/local/opengauss/lib".into()),
            (
                "PATH".into(),
                "/usr/local/opengauss/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
                    .into(),
            ),
        ],
    }
}

/// The official PostgreSQL images (Debian based): `/usr/lib/postgresql/<major>/bin`, OS user
/// `postgres` with uid and gid 999. The major version comes from the tag (`postgres:16.4` is
/// 16); 17 when the tag does not say.
pub fn postgres(image: &str) -> ImageLayout {
    let major = postgres_major(image).unwrap_or(17);
    ImageLayout { bin_dir: format!("/usr/lib/postgresql/{major}/bin"), uid: 999, gid: 999, env: vec![] }
}

/// The PostgreSQL major version in an official image reference (`postgres:16.4-bookworm` is
/// 16), when the tag starts with one.
pub fn postgres_major(image: &str) -> Option<u32> {
    let last = image.rsplit('/').next()?;
    let tag = last.split('@').next()?.split_once(':')?.1;
    let digits: String = tag.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_major_from_tags() {
        assert_eq!(postgres_major("postgres:17"), Some(17));
        assert_eq!(postgres_major("docker.io/library/postgres:16.4-bookworm"), Some(16));
        assert_eq!(postgres_major("registry:5000/postgres:15@sha256:abc"), Some(15));
        assert_eq!(postgres_major("registry:5000/postgres"), None);
        assert_eq!(postgres_major("postgres:latest"), None);
        assert_eq!(postgres("localhost/postgres:15-bookworm").bin_dir, "/usr/lib/postgresql/15/bin");
    }
}
