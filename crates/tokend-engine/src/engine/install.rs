//! Install: creating or atomically replacing a connection from an
//! authorization code or an imported token set, idempotently, in a task the
//! engine owns so no caller can cancel it halfway.

use std::{sync::Arc, time::Duration};

use dashmap::DashMap;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use tokend_core::{Connection, ConnectionId, ProviderName, Status, TokenSet, derive_connection_id};
use tokend_store::StoreError;

use super::Engine;
use super::recent_installs::RecentInstalls;
use crate::{error::EngineError, hub::EventKind};

/// A validated install request.
pub struct InstallInput {
    pub provider: ProviderName,
    pub connection_id: Option<ConnectionId>,
    pub account_id: Option<String>,
    pub grant: InstallGrant,
    /// Replace a connection holding another account's grant (only with an
    /// explicit `connection_id`).
    pub replace: bool,
    /// Fill the provider's URL templates (validated by the service).
    pub params: std::collections::BTreeMap<String, String>,
    /// Replace a stored record that cannot be read (see
    /// [`refuse_unreadable`]).
    pub force: bool,
}

pub enum InstallGrant {
    Code {
        code: SecretString,
        redirect_uri: String,
        code_verifier: Option<SecretString>,
    },
    Import {
        access_token: SecretString,
        refresh_token: Option<SecretString>,
        expires_in: Duration,
        scopes: Vec<String>,
        token_type: String,
    },
    /// The provider uses the client_credentials grant: tokend asks for the
    /// first token now, with the client's own credentials.
    ClientCredentials,
}

/// What Install did.
pub struct InstallOutcome {
    pub connection: Arc<Connection>,
    pub created: bool,
    pub replayed: bool,
}

impl InstallInput {
    /// The connection id, when the request determines it without asking the
    /// provider.
    pub fn known_connection_id(&self) -> Option<ConnectionId> {
        match (&self.connection_id, &self.account_id) {
            (Some(id), _) => Some(id.clone()),
            (None, Some(account)) => derive_connection_id(&self.provider, account).ok(),
            (None, None) => None,
        }
    }

    /// A digest of the whole request, secrets included, identifying a retry
    /// of the same install without storing what it contained.
    fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        let mut field = |s: &str| {
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        };
        field(self.provider.as_str());
        field(self.connection_id.as_ref().map_or("", |c| c.as_str()));
        field(self.account_id.as_deref().unwrap_or(""));
        for (k, v) in &self.params {
            field(k);
            field(v);
        }
        match &self.grant {
            InstallGrant::Code {
                code,
                redirect_uri,
                code_verifier,
            } => {
                field("code");
                field(code.expose_secret());
                field(redirect_uri);
                field(code_verifier.as_ref().map_or("", |v| v.expose_secret()));
            }
            InstallGrant::Import {
                access_token,
                refresh_token,
                expires_in,
                scopes,
                token_type,
            } => {
                field("import");
                field(access_token.expose_secret());
                field(refresh_token.as_ref().map_or("", |v| v.expose_secret()));
                field(&expires_in.as_secs().to_string());
                field(&scopes.join(" "));
                field(token_type);
            }
            InstallGrant::ClientCredentials => field("client_credentials"),
        }
        let digest = h.finalize();
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Runs installs: one at a time per request fingerprint, each in a task the
/// engine owns. A client deadline or a reset stream drops the caller, never
/// the exchange: the single-use code may already be spent, so the grant it
/// bought is persisted whatever happens to the caller, and a retry is
/// answered from it (`replayed = true`).
#[derive(Default)]
pub(crate) struct Installer {
    /// Recent install requests, to answer retried code installs whose id
    /// came from the provider's answer.
    recent: RecentInstalls,
    /// One async mutex per in-progress install fingerprint.
    pub(super) gates: DashMap<String, Arc<tokio::sync::Mutex<()>>>,
}

/// Removes a fingerprint's gate when the last install using it ends, however
/// it ends.
struct GateGuard {
    engine: Arc<Engine>,
    fingerprint: String,
}

impl Drop for GateGuard {
    fn drop(&mut self) {
        // Checked under the shard lock: the map holds the only reference
        // once every install of this fingerprint has dropped its own.
        self.engine
            .installer
            .gates
            .remove_if(&self.fingerprint, |_, g| Arc::strong_count(g) == 1);
    }
}

impl Installer {
    /// Runs `input` in an engine-owned task, which keeps `hold` until the
    /// install ends.
    pub(crate) async fn install(
        engine: &Arc<Engine>,
        input: InstallInput,
        hold: impl Send + 'static,
    ) -> Result<InstallOutcome, EngineError> {
        let fingerprint = input.fingerprint();
        let task_engine = Arc::clone(engine);
        let handle = engine.tasks.spawn(async move {
            let _hold = hold;
            let gate = Arc::clone(
                task_engine
                    .installer
                    .gates
                    .entry(fingerprint.clone())
                    .or_default()
                    .value(),
            );
            let _remove = GateGuard {
                engine: Arc::clone(&task_engine),
                fingerprint: fingerprint.clone(),
            };
            let _turn = gate.lock_owned().await;
            Installer::exclusive(&task_engine, input, fingerprint).await
        });
        handle.await.map_err(|e| {
            if e.is_panic() {
                EngineError::Internal("install task panicked")
            } else {
                EngineError::ShuttingDown
            }
        })?
    }

    async fn exclusive(
        engine: &Arc<Engine>,
        input: InstallInput,
        fingerprint: String,
    ) -> Result<InstallOutcome, EngineError> {
        let explicit_id = input.connection_id.is_some();
        let replace = input.replace;
        let provider = engine.provider(&input.provider).cloned().ok_or_else(|| {
            EngineError::invalid(
                "provider",
                format!("unknown provider {:?}", input.provider.as_str()),
            )
        })?;
        // The provider's endpoints as this connection sees them.
        let provider = match provider.for_connection(&input.params) {
            Ok(std::borrow::Cow::Borrowed(_)) => provider,
            Ok(std::borrow::Cow::Owned(p)) => Arc::new(p),
            Err(reason) => return Err(EngineError::invalid("params", reason)),
        };

        // Where the id is known up front, a retry is recognised before the
        // provider sees the (single-use) code a second time.
        let known_id = match (&input.connection_id, &input.account_id) {
            (Some(id), _) => Some(id.clone()),
            (None, Some(account)) => Some(
                derive_connection_id(&input.provider, account)
                    .map_err(|e| EngineError::invalid("account_id", e.to_string()))?,
            ),
            (None, None) => None,
        };
        // Otherwise the id comes from the provider's answer, after the code is
        // spent: recent installs remember which connection a request made.
        let remembered = known_id
            .clone()
            .or_else(|| engine.installer.recent.get(&fingerprint));
        let stored = match &remembered {
            Some(id) => Some(engine.store.get(id).await),
            None => None,
        };
        // An unreadable record is refused without `force` before the
        // provider sees a single-use code, like a taken id below.
        if let (Some(id), Some(Err(StoreError::Corrupt { .. }))) = (&remembered, &stored) {
            refuse_unreadable(id, input.force)?;
        }
        if let Some(Ok(Some(existing))) = stored {
            let existing = &existing;
            if is_replay(existing, &fingerprint) {
                return Ok(replay(existing.clone()));
            }
            // Refused before the provider sees a single-use code, so no
            // grant is bought that could not be kept: without `replace`, an
            // install may only renew the grant of the same, named account.
            if known_id.is_some() {
                check_provider(existing, &input.provider)?;
                check_owner(existing, input.account_id.as_deref(), explicit_id, replace)?;
            }
        }

        let now = engine.clock.now();
        let mut metadata = std::collections::BTreeMap::new();
        // Whether the provider issued a grant for this very install (a code
        // exchange), which must be revoked if it cannot be kept.
        let issued = matches!(input.grant, InstallGrant::Code { .. });
        let (tokens, provider_account) = match input.grant {
            InstallGrant::Code {
                code,
                redirect_uri,
                code_verifier,
            } => {
                let grant = engine
                    .endpoint
                    .exchange_code(&provider, &code, &redirect_uri, code_verifier.as_ref())
                    .await
                    .map_err(|e| {
                        tracing::warn!(provider = %provider.name, error_class = e.class.as_str(), code = %e.code, "authorization code exchange failed");
                        EngineError::code_exchange_failed(&provider.name, &e, engine.clock.now())
                    })?;
                metadata = grant.metadata;
                (grant.tokens, grant.account_id)
            }
            InstallGrant::ClientCredentials => {
                let grant = engine
                    .endpoint
                    .client_credentials(&provider)
                    .await
                    .map_err(|e| {
                        tracing::warn!(provider = %provider.name, error_class = e.class.as_str(), code = %e.code, "client_credentials token request failed");
                        EngineError::code_exchange_failed(&provider.name, &e, engine.clock.now())
                    })?;
                metadata = grant.metadata;
                (grant.tokens, grant.account_id)
            }
            InstallGrant::Import {
                access_token,
                refresh_token,
                expires_in,
                scopes,
                token_type,
            } => {
                let expires_at = now.saturating_add(expires_in);
                // The import does not say when the token was issued; assume
                // the provider's usual lifetime so the refresh buffer is
                // measured against it, not against what is left.
                let obtained_at = now.min(expires_at.saturating_sub(provider.default_lifetime));
                (
                    TokenSet {
                        access_token,
                        refresh_token,
                        token_type,
                        scopes,
                        expires_at,
                        obtained_at,
                    },
                    None,
                )
            }
        };
        let account_id = input.account_id.or(provider_account).unwrap_or_default();
        let id = match known_id {
            Some(id) => id,
            None => derive_connection_id(&input.provider, &account_id).map_err(|_| {
                EngineError::invalid(
                    "account_id",
                    "required: name the connection_id or the account_id (the provider did not return one)",
                )
            })?,
        };

        for _ in 0..5 {
            let epoch = engine.slots.epoch();
            let (existing, unreadable) = match engine.store.get(&id).await {
                Ok(existing) => (existing, false),
                // A record that cannot be decoded is replaced only when
                // asked (`force`), so a broken connection can always be
                // installed again, but never by accident.
                Err(StoreError::Corrupt { .. }) => {
                    if let Err(refused) = refuse_unreadable(&id, input.force) {
                        if issued {
                            // Whose grant the record holds is unknown: the
                            // new one may be the same user's, so it is
                            // dropped, not revoked.
                            engine.discard_grant(&provider, &id, tokens, false);
                        }
                        return Err(refused);
                    }
                    (None, true)
                }
                Err(e) => return Err(e.into()),
            };
            if let Some(e) = &existing {
                if is_replay(e, &fingerprint) {
                    return Ok(replay(e.clone()));
                }
                // Taken since the check above, or the id came from the
                // provider's answer: the grant just bought cannot be kept.
                let known_account = Some(account_id.as_str()).filter(|a| !a.is_empty());
                // With it, whether the refused grant is surely another than
                // the stored one: another provider's, or two known, different
                // accounts'. Only such a grant is revoked: some providers
                // (Google) revoke every token of a user and client at once,
                // so revoking what may be the same user's new grant could end
                // the very connection it was refused for.
                let refused = match check_provider(e, &input.provider) {
                    Err(refused) => Some((refused, true)),
                    Ok(()) => check_owner(e, known_account, explicit_id, replace)
                        .err()
                        .map(|refused| {
                            (refused, known_account.is_some() && !e.account_id.is_empty())
                        }),
                };
                if let Some((refused, other_grant)) = refused {
                    if issued {
                        engine.discard_grant(&provider, &id, tokens, other_grant);
                    }
                    return Err(refused);
                }
            }
            // A replacement keeps the creation time and continues the
            // counters; the account is the one this install names (or the
            // provider's answer does), never a stale label of the grant it
            // replaced.
            let record = Connection {
                id: id.clone(),
                provider: input.provider.clone(),
                account_id: account_id.clone(),
                tokens: tokens.clone(),
                previous_refresh_token: None,
                incarnation: existing
                    .as_ref()
                    .map_or_else(new_incarnation, |e| e.incarnation),
                version: existing.as_ref().map_or(1, |e| e.version + 1),
                revision: existing.as_ref().map_or(1, |e| e.revision + 1),
                status: Status::Active,
                reconnect_cause: None,
                last_error: None,
                last_refresh_at: None,
                created_at: existing.as_ref().map_or(now, |e| e.created_at),
                updated_at: now,
                install_fingerprint: Some(fingerprint.clone()),
                params: input.params.clone(),
                metadata: metadata.clone(),
            };
            let written = if unreadable {
                engine.store.replace_unreadable(&record).await
            } else {
                engine
                    .store
                    .put(&record, existing.as_ref().map(|e| e.revision), None)
                    .await
            };
            match written {
                Ok(()) => {
                    tracing::info!(
                        connection_id = %id,
                        provider = %input.provider,
                        version = record.version,
                        ttl_secs = record.tokens.ttl(now).as_secs(),
                        replaced = existing.is_some() || unreadable,
                        "connection installed"
                    );
                    engine
                        .installer
                        .recent
                        .remember(fingerprint.clone(), id.clone());
                    let connection = engine.installed(record, existing.as_ref(), epoch);
                    return Ok(InstallOutcome {
                        connection,
                        created: existing.is_none() && !unreadable,
                        replayed: false,
                    });
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(EngineError::Contended(id))
    }
}

fn replay(existing: Connection) -> InstallOutcome {
    tracing::info!(connection_id = %existing.id, "install retried; answered without a second effect");
    InstallOutcome {
        connection: Arc::new(existing),
        created: false,
        replayed: true,
    }
}

impl Engine {
    /// Caches, schedules and announces a record written by an install, read
    /// at delete epoch `epoch`.
    fn installed(
        &self,
        record: Connection,
        previous: Option<&Connection>,
        epoch: u64,
    ) -> Arc<Connection> {
        let id = record.id.clone();
        let record = self.slots.cache(record, epoch);
        if let Some(slot) = self.slots.get(&id) {
            *super::slot::lock(&slot.retry) = Default::default();
        }
        self.schedule(&record);
        match previous {
            Some(p) if p.status != record.status => self.publish(EventKind::StatusChanged, &record),
            Some(_) => self.publish(EventKind::TokenRotated, &record),
            None => {}
        }
        record
    }
}

/// A random incarnation for a newly created connection, from std's
/// randomly keyed hasher (no extra dependency for 64 random bits).
fn new_incarnation() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish()
}

/// Refuses to replace a grant silently: an install renews an existing
/// connection only when both it and the connection name the same account.
/// An account unknown on either side counts as another one, and so does a
/// derived id that holds another account (ids are not injective: "u@x.com"
/// and "u_x.com" derive the same one). Only an explicit id with `replace`
/// replaces such a grant.
fn check_owner(
    existing: &Connection,
    account: Option<&str>,
    explicit_id: bool,
    replace: bool,
) -> Result<(), EngineError> {
    if account.is_some_and(|a| !a.is_empty() && a == existing.account_id) {
        return Ok(());
    }
    if explicit_id && replace {
        tracing::warn!(connection_id = %existing.id, "replacing a grant not known to be the same account's, as asked");
        return Ok(());
    }
    Err(EngineError::ConnectionIdTaken {
        id: existing.id.clone(),
        account_id: existing.account_id.clone(),
    })
}

/// Refuses to replace or delete a stored record that cannot be read unless
/// `force` says so. Invariant: an install or a delete never replaces an
/// unreadable record by accident. It may be sealed with a key this process
/// lacks (the only copy of a live grant, readable again with the right key
/// file), so only an operator who knows it is lost for good removes it.
pub(crate) fn refuse_unreadable(id: &ConnectionId, force: bool) -> Result<(), EngineError> {
    if force {
        tracing::warn!(connection_id = %id, "replacing or deleting an unreadable record, as asked (force)");
        return Ok(());
    }
    Err(EngineError::RecordUnreadable(id.clone()))
}

/// Refuses to re-install a connection under another provider.
fn check_provider(existing: &Connection, provider: &ProviderName) -> Result<(), EngineError> {
    if existing.provider == *provider {
        return Ok(());
    }
    Err(EngineError::ProviderMismatch {
        id: existing.id.clone(),
        existing: existing.provider.to_string(),
        requested: provider.to_string(),
    })
}

impl Engine {
    /// A grant the provider issued for an install that was then refused
    /// (the id turned out to be taken): when `revoke` (it is surely not the
    /// stored grant's user), revoked at the provider (RFC 7009) in an
    /// engine-owned task if it has a revocation endpoint, so no live grant
    /// is left that nobody holds; otherwise dropped. Logged either way,
    /// without a token.
    fn discard_grant(
        &self,
        provider: &Arc<tokend_provider::ProviderConfig>,
        id: &ConnectionId,
        tokens: TokenSet,
        revoke: bool,
    ) {
        if !revoke {
            tracing::warn!(connection_id = %id, provider = %provider.name, "an install's new grant was refused (connection id taken) and may be the same user's as the stored one: the grant is dropped, not revoked");
            return;
        }
        if provider.request.revocation_url.is_none() {
            tracing::warn!(connection_id = %id, provider = %provider.name, "an install's new grant was refused (connection id taken) and the provider has no revocation_url: the grant is dropped, not revoked");
            return;
        }
        let provider = Arc::clone(provider);
        let endpoint = Arc::clone(&self.endpoint);
        let id = id.clone();
        self.tasks.spawn(async move {
            let (token, hint) = match &tokens.refresh_token {
                Some(rt) => (rt, "refresh_token"),
                None => (&tokens.access_token, "access_token"),
            };
            match endpoint.revoke(&provider, token, hint).await {
                Ok(()) => {
                    tracing::warn!(connection_id = %id, provider = %provider.name, hint, "an install's new grant was refused (connection id taken); revoked it at the provider")
                }
                Err(e) => {
                    tracing::warn!(connection_id = %id, provider = %provider.name, error_class = e.class.as_str(), code = %e.code, "an install's new grant was refused (connection id taken); revoking it failed")
                }
            }
        });
    }
}

/// Whether `existing` is what this very install produced. A connection that
/// was revoked since is not: installing the same grant again revives it.
fn is_replay(existing: &Connection, fingerprint: &str) -> bool {
    existing.status == Status::Active
        && existing.install_fingerprint.as_deref() == Some(fingerprint)
}
