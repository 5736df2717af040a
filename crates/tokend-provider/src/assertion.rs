//! Client authentication by a signed JWT: `private_key_jwt` (RFC 7523 §2.2,
//! OpenID Connect Core §9), for providers that take no shared secret.

use std::{fmt, sync::Arc, time::Duration};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use tokend_core::Timestamp;

/// `client_assertion_type` of a JWT client assertion (RFC 7523 §2.2).
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How long a signed assertion is valid: long enough for clock skew and a
/// slow request, short enough that a leaked one is soon worthless.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(60);

/// Signs client assertions with the client's private key. The key never
/// appears in `Debug` output.
#[derive(Clone)]
pub struct AssertionSigner {
    key: Arc<EncodingKey>,
    algorithm: Algorithm,
    key_id: Option<String>,
    audience: Option<String>,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    jti: String,
    iat: i64,
    exp: i64,
}

impl AssertionSigner {
    /// The signing algorithms accepted in `jwt_algorithm`.
    pub const ALGORITHMS: &'static [&'static str] = &[
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
    ];

    /// A signer from a PEM private key (PKCS#8, or PKCS#1 for RSA) and an
    /// algorithm named as in JOSE (`RS256`, `ES256`, `EdDSA`...). `audience`
    /// replaces the token URL as the `aud` claim, for providers that want
    /// their issuer there.
    ///
    /// # Errors
    /// An unknown algorithm, or a key that does not parse for it. The text
    /// never quotes the key.
    pub fn from_pem(
        pem: &[u8],
        algorithm: &str,
        key_id: Option<String>,
        audience: Option<String>,
    ) -> Result<Self, String> {
        let algorithm = match algorithm {
            "RS256" => Algorithm::RS256,
            "RS384" => Algorithm::RS384,
            "RS512" => Algorithm::RS512,
            "PS256" => Algorithm::PS256,
            "PS384" => Algorithm::PS384,
            "PS512" => Algorithm::PS512,
            "ES256" => Algorithm::ES256,
            "ES384" => Algorithm::ES384,
            "EdDSA" => Algorithm::EdDSA,
            other => {
                return Err(format!(
                    "jwt_algorithm {other:?} is not one of {}",
                    Self::ALGORITHMS.join(", ")
                ));
            }
        };
        let key = match algorithm {
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
            _ => EncodingKey::from_rsa_pem(pem),
        }
        .map_err(|_| format!("the private key is not a PEM {algorithm:?} key"))?;
        let signer = Self {
            key: Arc::new(key),
            algorithm,
            key_id,
            audience,
        };
        // A key of the wrong curve or size parses but cannot sign: find out
        // at start-up, not at the first refresh.
        signer
            .sign(
                "probe",
                "https://probe.invalid/token",
                Timestamp::from_unix_millis(0),
            )
            .map_err(|_| format!("the private key cannot sign {algorithm:?}"))?;
        Ok(signer)
    }

    /// This signer with `audience` as the `aud` claim: a provider's
    /// per-connection `jwt_audience`, filled from the connection's
    /// parameters.
    #[must_use]
    pub fn with_audience(&self, audience: String) -> Self {
        Self {
            audience: Some(audience),
            ..self.clone()
        }
    }

    /// A fresh assertion for `client_id` at `token_url`: `iss` and `sub` the
    /// client, a random `jti`, valid for a minute from `now`.
    ///
    /// # Errors
    /// When signing fails (a key the algorithm cannot use).
    pub fn sign(&self, client_id: &str, token_url: &str, now: Timestamp) -> Result<String, String> {
        let iat = now.unix_millis().div_euclid(1000);
        let jti: u128 = rand::random();
        let claims = Claims {
            iss: client_id,
            sub: client_id,
            aud: self.audience.as_deref().unwrap_or(token_url),
            jti: format!("{jti:032x}"),
            iat,
            exp: iat + ASSERTION_LIFETIME.as_secs() as i64,
        };
        let mut header = Header::new(self.algorithm);
        header.kid.clone_from(&self.key_id);
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|_| "cannot sign the client assertion".to_owned())
    }
}

impl fmt::Debug for AssertionSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssertionSigner")
            .field("key", &"[REDACTED]")
            .field("algorithm", &self.algorithm)
            .field("key_id", &self.key_id)
            .field("audience", &self.audience)
            .finish()
    }
}
