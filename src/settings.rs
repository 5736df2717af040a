//! `tokend serve`'s settings, resolved once in one typed step: a flag (or
//! its environment variable, via clap) beats the config file, which beats
//! the defaults. The defaults live here and nowhere else.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

use tokend_server::config::{ConfigError, FileConfig};

/// Where tokend listens when nothing says otherwise: loopback only.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 50051);

/// The data dir when nothing says otherwise.
pub const DEFAULT_DATA_DIR: &str = "./tokend-data";

/// Where the admin listener (metrics, health) listens when nothing says
/// otherwise: loopback only, Prometheus exporters' usual port range.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 9464);

/// The admin listener's address, resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admin {
    Off,
    /// The default address: if it is taken (another tokend on this host),
    /// the server warns and goes on without it.
    Default(SocketAddr),
    /// Asked for: not being able to listen there is an error.
    At(SocketAddr),
}

/// What the flags said, before resolution.
#[derive(Debug, Default)]
pub struct Flags<'a> {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<&'a Path>,
    pub config: Option<&'a Path>,
    pub admin_listen: Option<&'a str>,
}

/// Resolved settings.
#[derive(Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub admin: Admin,
    /// The file as written (providers, identities, limits...).
    pub file: FileConfig,
}

impl Settings {
    pub fn resolve(flags: Flags<'_>) -> Result<Self, ConfigError> {
        let file = match flags.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        Self::from_parts(flags, file)
    }

    fn from_parts(flags: Flags<'_>, file: FileConfig) -> Result<Self, ConfigError> {
        let admin = match flags.admin_listen.or(file.admin_listen.as_deref()) {
            None => Admin::Default(DEFAULT_ADMIN_LISTEN),
            Some("off") => Admin::Off,
            Some(text) => Admin::At(text.parse().map_err(|_| {
                ConfigError::Limits(format!(
                    "admin_listen {text:?}: expected an address like 127.0.0.1:9464, or \"off\""
                ))
            })?),
        };
        Ok(Settings {
            admin,
            listen: flags.listen.or(file.listen).unwrap_or(DEFAULT_LISTEN),
            data_dir: flags
                .data_dir
                .map(Path::to_owned)
                .or_else(|| file.data_dir.clone())
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            file,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> FileConfig {
        FileConfig::parse(text, Path::new("t.toml")).unwrap()
    }

    #[test]
    fn flags_beat_the_file_which_beats_the_defaults() {
        let defaults = Settings::from_parts(Flags::default(), FileConfig::default()).unwrap();
        assert_eq!(defaults.listen, DEFAULT_LISTEN);
        assert_eq!(defaults.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(defaults.admin, Admin::Default(DEFAULT_ADMIN_LISTEN));

        let written = "listen = \"127.0.0.1:7000\"\ndata_dir = \"/var/lib/tokend\"\n";
        let from_file = Settings::from_parts(Flags::default(), file(written)).unwrap();
        assert_eq!(from_file.listen.port(), 7000);
        assert_eq!(from_file.data_dir, PathBuf::from("/var/lib/tokend"));

        let flagged = Settings::from_parts(
            Flags {
                listen: Some("127.0.0.1:8000".parse().unwrap()),
                data_dir: Some(Path::new("/tmp/d")),
                config: None,
                admin_listen: Some("off"),
            },
            file(written),
        )
        .unwrap();
        assert_eq!(flagged.listen.port(), 8000);
        assert_eq!(flagged.data_dir, PathBuf::from("/tmp/d"));
        assert_eq!(flagged.admin, Admin::Off);
        let at = Settings::from_parts(
            Flags::default(),
            file("admin_listen = \"127.0.0.1:9999\"\n"),
        )
        .unwrap();
        assert_eq!(at.admin, Admin::At("127.0.0.1:9999".parse().unwrap()));
        assert!(Settings::from_parts(Flags::default(), file("admin_listen = \"nine\"\n")).is_err());
    }
}
