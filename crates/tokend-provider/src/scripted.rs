//! A scripted token endpoint for tests: a tiny provider model (live refresh
//! tokens, strict / no / grace rotation, single-use codes) plus a queue of
//! steps that make the next refresh calls fail, hang, rotate and lose the
//! answer, or answer with a body that fails validation.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Mutex,
    time::Duration,
};

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use tokend_core::{Clock, ErrorClass, TokenSet};
use tokio::time::Instant;

use crate::{
    client::TokenGrant,
    config::ProviderConfig,
    endpoint::TokenEndpoint,
    error::{ProviderError, Salvage},
};

/// How the model treats a refresh token once used.
#[derive(Clone, Copy, Debug)]
pub enum ScriptRotation {
    /// A used refresh token dies; the answer carries a new one.
    Strict,
    /// The refresh token stays; the answer omits it.
    None,
    /// Rotates, but a rotated-out token stays usable this long.
    Grace(Duration),
}

/// What the next refresh call does, before the model answers.
#[derive(Clone, Debug)]
pub enum Step {
    /// Fails with this error; the model does nothing.
    Fail(ProviderError),
    /// The model rotates as if it answered, but the caller gets the error:
    /// an answer lost after the provider acted on it.
    RotateThenFail(ProviderError),
    /// The model rotates and answers 2xx with a body that fails validation:
    /// a transient `malformed_response` whose salvage holds the new token.
    RotateThenSalvage,
    /// Never answers until [`ScriptedProvider::release`].
    Hang,
    /// Waits, then the model answers.
    Delay(Duration),
    /// The model rotates at once, but the answer arrives only after this
    /// long: a slow answer that may outlive the caller's lease.
    RotateThenDelay(Duration),
}

#[derive(Default)]
struct Model {
    next: u64,
    /// Live refresh tokens, with when a rotated-out one stops working.
    live: HashMap<String, Option<Instant>>,
    codes: HashSet<String>,
    script: VecDeque<Step>,
    presented: Vec<String>,
    calls: usize,
    exchanges: usize,
}

/// A provider model with a script. `Send + Sync`; share it with `Arc`.
pub struct ScriptedProvider {
    clock: Clock,
    rotation: ScriptRotation,
    lifetime: Mutex<Duration>,
    model: Mutex<Model>,
    released: tokio::sync::Notify,
}

impl ScriptedProvider {
    pub fn new(clock: Clock, rotation: ScriptRotation) -> Self {
        Self {
            clock,
            rotation,
            lifetime: Mutex::new(Duration::from_secs(1800)),
            model: Mutex::new(Model::default()),
            released: tokio::sync::Notify::new(),
        }
    }

    fn model(&self) -> std::sync::MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lifetime of the access tokens issued from now on.
    pub fn set_lifetime(&self, lifetime: Duration) {
        *self.lifetime.lock().unwrap_or_else(|p| p.into_inner()) = lifetime;
    }

    /// Mints a live (access, refresh) pair.
    pub fn issue(&self) -> (String, String) {
        let mut m = self.model();
        m.next += 1;
        let n = m.next;
        m.live.insert(format!("rt-{n}"), None);
        (format!("at-{n}"), format!("rt-{n}"))
    }

    /// Mints a single-use authorization code.
    pub fn issue_code(&self) -> String {
        let mut m = self.model();
        m.next += 1;
        let code = format!("code-{}", m.next);
        m.codes.insert(code.clone());
        code
    }

    /// Kills every refresh token (the user revoked the app).
    pub fn revoke_all(&self) {
        self.model().live.clear();
    }

    /// Queues a step for the next refresh call.
    pub fn push(&self, step: Step) {
        self.model().script.push_back(step);
    }

    /// Lets hung calls go on.
    pub fn release(&self) {
        self.released.notify_waiters();
    }

    /// Refresh calls so far.
    pub fn calls(&self) -> usize {
        self.model().calls
    }

    /// Code exchanges so far.
    pub fn code_exchanges(&self) -> usize {
        self.model().exchanges
    }

    /// Refresh tokens presented, in order (tests only: real ones are never
    /// exposed like this).
    pub fn presented(&self) -> Vec<String> {
        self.model().presented.clone()
    }

    /// Refresh tokens the model would accept now.
    pub fn live_refresh_tokens(&self) -> Vec<String> {
        let now = Instant::now();
        let mut live: Vec<String> = self
            .model()
            .live
            .iter()
            .filter(|(_, until)| until.is_none_or(|u| u > now))
            .map(|(t, _)| t.clone())
            .collect();
        live.sort();
        live
    }

    pub fn transient() -> ProviderError {
        error(ErrorClass::Transient, "http_503", Some(503), None)
    }

    /// A timeout after the request was sent: no answer, so in doubt.
    pub fn timed_out() -> ProviderError {
        let mut e = error(ErrorClass::Transient, "timeout", None, None);
        e.unanswered = true;
        e
    }

    /// A failure to connect: proven to precede sending, so not in doubt.
    pub fn connect_failed() -> ProviderError {
        error(ErrorClass::Transient, "connect_error", None, None)
    }

    pub fn rate_limited(retry_after: Duration) -> ProviderError {
        error(
            ErrorClass::RateLimited,
            "http_429",
            Some(429),
            Some(retry_after),
        )
    }

    pub fn invalid_client() -> ProviderError {
        error(
            ErrorClass::ClientMisconfigured,
            "invalid_client",
            Some(401),
            None,
        )
    }

    pub fn invalid_grant() -> ProviderError {
        error(ErrorClass::Revoked, "invalid_grant", Some(400), None)
    }

    /// The model's answer to `presented`: a rotated pair, or `invalid_grant`.
    /// Returns the token set and the refresh token it carries.
    fn answer(&self, presented: &str) -> Result<(TokenSet, Option<String>), ProviderError> {
        let now = Instant::now();
        let mut m = self.model();
        let alive = m
            .live
            .get(presented)
            .is_some_and(|until| until.is_none_or(|u| u > now));
        if !alive {
            return Err(Self::invalid_grant());
        }
        m.next += 1;
        let n = m.next;
        let refresh = match self.rotation {
            ScriptRotation::None => None,
            ScriptRotation::Strict => {
                m.live.remove(presented);
                Some(format!("rt-{n}"))
            }
            ScriptRotation::Grace(grace) => {
                // The grace runs from the first rotation, not each reuse.
                let until = m.live.get(presented).copied().flatten();
                m.live
                    .insert(presented.to_owned(), Some(until.unwrap_or(now + grace)));
                Some(format!("rt-{n}"))
            }
        };
        if let Some(r) = &refresh {
            m.live.insert(r.clone(), None);
        }
        drop(m);
        let obtained = self.clock.now();
        let lifetime = *self.lifetime.lock().unwrap_or_else(|p| p.into_inner());
        Ok((
            TokenSet {
                access_token: SecretString::from(format!("at-{n}")),
                refresh_token: refresh.clone().map(SecretString::from),
                token_type: "Bearer".into(),
                scopes: vec![],
                expires_at: obtained.saturating_add(lifetime),
                obtained_at: obtained,
            },
            refresh,
        ))
    }
}

fn error(
    class: ErrorClass,
    code: &str,
    http_status: Option<u16>,
    retry_after: Option<Duration>,
) -> ProviderError {
    ProviderError {
        class,
        code: code.into(),
        message: format!("scripted {code}"),
        http_status,
        correlation_id: None,
        retry_after,
        salvage: None,
        unanswered: false,
    }
}

fn grant(tokens: TokenSet) -> TokenGrant {
    TokenGrant {
        tokens,
        account_id: None,
        correlation_id: None,
        metadata: Default::default(),
    }
}

#[async_trait]
impl TokenEndpoint for ScriptedProvider {
    async fn refresh(
        &self,
        _config: &ProviderConfig,
        refresh_token: &SecretString,
    ) -> Result<TokenGrant, ProviderError> {
        let presented = refresh_token.expose_secret().to_owned();
        let step = {
            let mut m = self.model();
            m.calls += 1;
            m.presented.push(presented.clone());
            m.script.pop_front()
        };
        match step {
            None => self.answer(&presented).map(|(t, _)| grant(t)),
            Some(Step::Fail(e)) => Err(e),
            Some(Step::RotateThenFail(e)) => {
                self.answer(&presented)?;
                Err(e)
            }
            Some(Step::RotateThenSalvage) => {
                let (_, refresh) = self.answer(&presented)?;
                let mut e = error(ErrorClass::Transient, "malformed_response", Some(200), None);
                e.salvage = Some(Salvage {
                    refresh_token: refresh.map(SecretString::from),
                });
                Err(e)
            }
            Some(Step::Hang) => {
                self.released.notified().await;
                self.answer(&presented).map(|(t, _)| grant(t))
            }
            Some(Step::Delay(d)) => {
                tokio::time::sleep(d).await;
                self.answer(&presented).map(|(t, _)| grant(t))
            }
            Some(Step::RotateThenDelay(d)) => {
                let answer = self.answer(&presented);
                tokio::time::sleep(d).await;
                answer.map(|(t, _)| grant(t))
            }
        }
    }

    async fn exchange_code(
        &self,
        _config: &ProviderConfig,
        code: &SecretString,
        _redirect_uri: &str,
        _code_verifier: Option<&SecretString>,
    ) -> Result<TokenGrant, ProviderError> {
        let fresh = {
            let mut m = self.model();
            m.exchanges += 1;
            m.codes.remove(code.expose_secret())
        };
        if !fresh {
            return Err(Self::invalid_grant());
        }
        let (access, refresh) = self.issue();
        let obtained = self.clock.now();
        let lifetime = *self.lifetime.lock().unwrap_or_else(|p| p.into_inner());
        Ok(grant(TokenSet {
            access_token: SecretString::from(access),
            refresh_token: Some(SecretString::from(refresh)),
            token_type: "Bearer".into(),
            scopes: vec![],
            expires_at: obtained.saturating_add(lifetime),
            obtained_at: obtained,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ProviderConfig {
        ProviderConfig {
            name: tokend_core::ProviderName::new("p").unwrap(),
            token_url: "http://127.0.0.1:1/token".parse().unwrap(),
            client_id: "id".into(),
            client_secret: "secret".into(),
            client_auth: crate::ClientAuth::ClientSecretPost,
            extra_params: vec![],
            default_lifetime: Duration::from_secs(1800),
            refresh_policy: Default::default(),
            dialect: crate::Dialect::Rfc6749,
            account_id_field: None,
            rotation_grace: Duration::ZERO,
            min_refresh_interval: Duration::ZERO,
            request: Default::default(),
            response: Default::default(),
            grant: Default::default(),
            scopes: vec![],
        }
    }

    #[tokio::test(start_paused = true)]
    async fn strict_rotation_kills_the_old_token_and_grace_keeps_it() {
        let strict = ScriptedProvider::new(Clock::system(), ScriptRotation::Strict);
        let (_, rt) = strict.issue();
        let rt = SecretString::from(rt);
        strict.refresh(&config(), &rt).await.unwrap();
        assert_eq!(
            strict.refresh(&config(), &rt).await.unwrap_err().code,
            "invalid_grant"
        );

        let grace = ScriptedProvider::new(
            Clock::system(),
            ScriptRotation::Grace(Duration::from_secs(30)),
        );
        let (_, rt) = grace.issue();
        let rt = SecretString::from(rt);
        grace.refresh(&config(), &rt).await.unwrap();
        tokio::time::advance(Duration::from_secs(20)).await;
        grace
            .refresh(&config(), &rt)
            .await
            .expect("inside the grace");
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(grace.refresh(&config(), &rt).await.is_err(), "grace over");
    }

    #[tokio::test]
    async fn steps_are_consumed_in_order() {
        let p = ScriptedProvider::new(Clock::system(), ScriptRotation::Strict);
        let (_, rt) = p.issue();
        let rt = SecretString::from(rt);
        p.push(Step::Fail(ScriptedProvider::transient()));
        p.push(Step::RotateThenSalvage);
        assert_eq!(
            p.refresh(&config(), &rt).await.unwrap_err().code,
            "http_503"
        );
        let salvaged = p.refresh(&config(), &rt).await.unwrap_err();
        let new = salvaged.salvage.unwrap().refresh_token.unwrap();
        assert_eq!(
            p.live_refresh_tokens(),
            vec![new.expose_secret().to_owned()]
        );
        assert_eq!(p.calls(), 2);
        assert!(p.refresh(&config(), &new).await.is_ok());
    }
}
