//! The audit log's options as the config file sets them: rotation and a
//! copy on stdout.

/// Where audit lines go besides the file, and how the file is rotated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditOptions {
    /// Rotate the file once it reaches this size (`audit_max_bytes`).
    pub max_bytes: u64,
    /// Rotated files kept, `audit.log.1` the newest (`audit_keep`).
    pub keep: usize,
    /// Also write each line to stdout, for log shippers (`audit_stdout`).
    pub stdout: bool,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            max_bytes: 100 << 20,
            keep: 5,
            stdout: false,
        }
    }
}
