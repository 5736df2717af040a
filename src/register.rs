//! `tokend register-client`: dynamic client registration (RFC 7591) at an
//! authorization server that wants it (most MCP servers), found through its
//! metadata (RFC 8414). Prints the provider section to add to the config; a
//! client secret goes to a new 0600 file, never to the terminal.

use std::{io::Write as _, path::PathBuf};

use anyhow::Context as _;
use secrecy::{ExposeSecret as _, SecretString};
use tokend_provider::registration::{self, ClientMetadata};

use crate::exit::UsageError;

#[derive(clap::Args)]
pub(crate) struct RegisterArgs {
    /// The authorization server's issuer URL: its metadata names the
    /// registration and token endpoints.
    #[arg(long, conflicts_with = "registration_url")]
    issuer: Option<String>,
    /// Register here instead of discovering (then --token-url is needed).
    #[arg(long, requires = "token_url")]
    registration_url: Option<String>,
    /// The token endpoint, with --registration-url.
    #[arg(long)]
    token_url: Option<String>,
    /// The name of the provider section to print.
    #[arg(long)]
    provider: String,
    /// Redirect URIs to register (repeatable); authorization-code clients
    /// need at least one.
    #[arg(long = "redirect-uri")]
    redirect_uris: Vec<String>,
    /// `authorization_code` (users authorise) or `client_credentials`.
    #[arg(long, default_value = "authorization_code")]
    grant_type: String,
    /// `none` (a public client), `client_secret_basic` or
    /// `client_secret_post` [default: the first of basic, post, none the
    /// server supports].
    #[arg(long)]
    auth_method: Option<String>,
    /// Scopes to ask for, space-separated.
    #[arg(long)]
    scope: Option<String>,
    #[arg(long, default_value = "tokend")]
    client_name: String,
    /// An environment variable holding an initial access token, for servers
    /// that allow registration only with one (RFC 7591 §3).
    #[arg(long)]
    initial_access_token_env: Option<String>,
    /// Where to write the client secret, if the server issues one: a new
    /// file, created 0600.
    #[arg(long)]
    secret_file: Option<PathBuf>,
}

pub(crate) async fn register(args: RegisterArgs) -> anyhow::Result<()> {
    let usage = |m: String| anyhow::Error::new(UsageError(m));
    let parse = |what: &str, url: &str| {
        url.parse::<tokend_provider::Url>()
            .map_err(|e| usage(format!("{what} {url:?} is not a URL: {e}")))
    };
    if !["authorization_code", "client_credentials"].contains(&args.grant_type.as_str()) {
        return Err(usage(
            "--grant-type must be authorization_code or client_credentials".into(),
        ));
    }
    let (registration_url, token_url, revocation_url, supported) = match (
        &args.issuer,
        &args.registration_url,
    ) {
        (Some(issuer), _) => {
            let metadata = registration::discover(&parse("--issuer", issuer)?)
                .await
                .map_err(anyhow::Error::msg)?;
            let Some(registration) = metadata.registration_endpoint else {
                anyhow::bail!(
                    "{issuer} offers no registration_endpoint: register tokend by hand and configure client_id"
                );
            };
            (
                registration,
                metadata.token_endpoint,
                metadata.revocation_endpoint,
                metadata.token_endpoint_auth_methods_supported,
            )
        }
        (None, Some(url)) => (
            url.clone(),
            args.token_url.clone().unwrap_or_default(),
            None,
            Vec::new(),
        ),
        (None, None) => return Err(usage("give --issuer or --registration-url".into())),
    };
    let method = match &args.auth_method {
        Some(m) if ["none", "client_secret_basic", "client_secret_post"].contains(&m.as_str()) => {
            m.clone()
        }
        Some(m) => {
            return Err(usage(format!(
                "--auth-method {m:?} is not none, client_secret_basic or client_secret_post"
            )));
        }
        None => ["client_secret_basic", "client_secret_post", "none"]
            .into_iter()
            .find(|m| supported.is_empty() || supported.iter().any(|s| s == m))
            .unwrap_or("client_secret_basic")
            .to_owned(),
    };
    if method != "none" && args.secret_file.is_none() {
        return Err(usage(format!(
            "--auth-method {method} gets a client secret: give --secret-file to keep it"
        )));
    }
    if let Some(path) = &args.secret_file
        && path.exists()
    {
        return Err(usage(format!(
            "--secret-file {} exists: choose a new path",
            path.display()
        )));
    }
    let initial = match &args.initial_access_token_env {
        Some(var) => {
            Some(SecretString::from(std::env::var(var).map_err(|_| {
                usage(format!("environment variable {var} is not set"))
            })?))
        }
        None => None,
    };
    let mut grant_types = vec![args.grant_type.clone()];
    if args.grant_type == "authorization_code" {
        grant_types.push("refresh_token".into());
    }
    let client = registration::register(
        &parse("the registration endpoint", &registration_url)?,
        &ClientMetadata {
            client_name: args.client_name.clone(),
            redirect_uris: args.redirect_uris.clone(),
            grant_types,
            token_endpoint_auth_method: method.clone(),
            scope: args.scope.clone(),
        },
        initial.as_ref(),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let method = client.token_endpoint_auth_method.clone().unwrap_or(method);
    let mut section = format!(
        "[providers.{}]\ntoken_url = {}\nclient_id = {}\nclient_auth = {}\n",
        args.provider,
        toml_string(&token_url),
        toml_string(&client.client_id),
        toml_string(&method),
    );
    if args.grant_type == "client_credentials" {
        section.push_str("grant = \"client_credentials\"\n");
    }
    if let Some(uri) = args.redirect_uris.first() {
        section.push_str(&format!("redirect_uri = {}\n", toml_string(uri)));
    }
    if let Some(url) = revocation_url {
        section.push_str(&format!("revocation_url = {}\n", toml_string(&url)));
    }
    match (&client.client_secret, &args.secret_file) {
        (Some(secret), Some(path)) => {
            write_secret(path, secret)?;
            section.push_str(&format!(
                "client_secret_file = {}\n",
                toml_string(&path.display().to_string())
            ));
        }
        (Some(_), None) => anyhow::bail!(
            "the server issued a client secret although none was asked for; register again with --secret-file"
        ),
        (None, _) => {}
    }
    if client.client_secret_expires_at != 0 {
        section.push_str(&format!(
            "# the client secret expires at unix time {}: register again before then\n",
            client.client_secret_expires_at
        ));
    }
    std::io::stdout().write_all(section.as_bytes())?;
    Ok(())
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn write_secret(path: &std::path::Path, secret: &SecretString) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(secret.expose_secret().as_bytes())?;
    file.sync_all()?;
    Ok(())
}
