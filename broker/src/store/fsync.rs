//! The fsync policy: when the store makes what it wrote durable. It is the store's own
//! notion; the configuration re-exports it.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// When the store makes writes durable. Written as `"always"`, `"never"` or `"every=MS"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum FsyncPolicy {
    /// Sync before every acknowledgement (PUBACK/PUBREC); nothing acknowledged is lost.
    #[default]
    Always,
    /// Never sync explicitly; the OS decides. Acknowledgements wait until the record is
    /// written (a process crash loses nothing acknowledged); a power cut may lose any.
    Never,
    /// Sync at this interval (whole milliseconds, at least 1). Acknowledgements wait until
    /// the record is written (a process crash loses nothing acknowledged); a power cut
    /// may lose up to this much acknowledged data.
    Every(Duration),
}

/// Why a string is not an [`FsyncPolicy`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseFsyncError {
    /// Not `always`, `never` or `every=MS`.
    #[error("unknown fsync policy {0:?}: expected \"always\", \"never\" or \"every=MS\"")]
    Unknown(String),
    /// `every=` without a number.
    #[error("fsync policy \"every=MS\" needs a number of milliseconds after '='")]
    MissingInterval,
    /// `every=` followed by something that is not a whole number of milliseconds.
    #[error("fsync policy {0:?}: the interval must be a whole number of milliseconds")]
    InvalidInterval(String),
    /// `every=0`.
    #[error("fsync policy \"every=0\": the interval must be at least 1 ms (use \"always\")")]
    ZeroInterval,
}

impl FromStr for FsyncPolicy {
    type Err = ParseFsyncError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        match s {
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            _ => {
                let Some(ms) = s.strip_prefix("every=") else {
                    return Err(ParseFsyncError::Unknown(s.to_owned()));
                };
                let ms = ms.trim();
                if ms.is_empty() {
                    return Err(ParseFsyncError::MissingInterval);
                }
                let ms: u64 = ms
                    .parse()
                    .map_err(|_| ParseFsyncError::InvalidInterval(s.to_owned()))?;
                if ms == 0 {
                    return Err(ParseFsyncError::ZeroInterval);
                }
                Ok(Self::Every(Duration::from_millis(ms)))
            }
        }
    }
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Always => f.write_str("always"),
            Self::Never => f.write_str("never"),
            Self::Every(d) => write!(f, "every={}", d.as_millis()),
        }
    }
}

impl TryFrom<String> for FsyncPolicy {
    type Error = ParseFsyncError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<FsyncPolicy> for String {
    fn from(p: FsyncPolicy) -> Self {
        p.to_string()
    }
}
