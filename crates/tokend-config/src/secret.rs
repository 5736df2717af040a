//! Reading a secret named by the config file: from an environment
//! variable or a private file, never from the file itself.

use std::path::Path;

/// A secret from `<key>_env` (an environment variable's name) or
/// `<key>_file` (a file readable by its owner only, unless
/// `allow_readable`), never from the config file itself. The error names
/// the key and never holds the secret.
pub fn read_secret(
    key: &str,
    env_var: Option<&str>,
    file: Option<&Path>,
    allow_readable: bool,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    match (env_var, file) {
        (Some(var), None) => match env(var) {
            None => Err(format!("{key}_env: environment variable {var} is not set")),
            Some(v) if v.is_empty() => Err(format!(
                "{key}_env: environment variable {var} is set but empty"
            )),
            Some(v) => Ok(v),
        },
        (None, Some(path)) => {
            #[cfg(unix)]
            if !allow_readable {
                use std::os::unix::fs::PermissionsExt;
                if let Ok(meta) = std::fs::metadata(path)
                    && meta.permissions().mode() & 0o077 != 0
                {
                    return Err(format!(
                        "{key}_file {} is readable by group or others (mode {:o}); chmod 600 it, or set allow_readable_secret_file = true",
                        path.display(),
                        meta.permissions().mode() & 0o777
                    ));
                }
            }
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {key}_file {}: {e}", path.display()))?;
            Ok(text.trim_end_matches(['\r', '\n']).to_owned())
        }
        (Some(_), Some(_)) => Err(format!("set only one of {key}_env and {key}_file")),
        (None, None) => Err(format!(
            "set {key}_env or {key}_file (secrets are never written in the config file)"
        )),
    }
}
