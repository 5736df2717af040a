//! The provider presets: what each named provider (`preset = "hubspot"`,
//! ...) fills in where a `[providers.NAME]` table is silent, beside the
//! dialects they pick.

use serde::Deserialize;

use crate::config::{ClientAuth, Dialect, RequestBody};

/// HubSpot's token endpoint.
pub const HUBSPOT_TOKEN_URL: &str = "https://api.hubapi.com/oauth/v1/token";

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    Hubspot,
    /// tokend's own sandbox provider (`tokend sandbox`).
    Sandbox,
    /// Slack's `oauth.v2.access`: refusals in HTTP 200 bodies, the
    /// workspace as `team.id`. For user tokens add `token_path = "authed_user"`.
    Slack,
    /// GitHub Apps' user tokens: refusals in HTTP 200 bodies, 8-hour tokens.
    Github,
    /// Notion: a JSON body with HTTP Basic, the workspace as `workspace_id`.
    Notion,
    /// Google: refresh tokens die after six months unused (keepalive 150 days).
    Google,
    /// Xero: rotating refresh tokens with a 30-minute reuse grace, dead after
    /// 60 days unused (keepalive 45 days).
    Xero,
    /// Intuit QuickBooks: a rolling 100-day refresh token that changes on
    /// every refresh (keepalive 60 days).
    Intuit,
    /// Atlassian: rotating refresh tokens, dead after 90 days unused
    /// (keepalive 60 days).
    Atlassian,
    /// Zendesk: one endpoint per subdomain (`params.subdomain`).
    Zendesk,
    /// Shopify: one endpoint per shop (`params.shop`), expiring offline tokens.
    Shopify,
    /// Microsoft identity platform (Entra ID), multi-tenant endpoint:
    /// AADSTS codes; consent and interaction required are their own
    /// RECONNECT_REQUIRED causes; refresh tokens die after 90 days unused
    /// (keepalive 60 days).
    Microsoft,
    /// Zoho: one accounts host per data centre (`params.dc`: `com`, `eu`,
    /// `in`, `com.au`, ...); `invalid_code` in HTTP 200; "Access Denied"
    /// means throttled.
    Zoho,
    /// Salesforce: no `expires_in` (sessions last 2 hours by default), no
    /// rotation, and `instance_url` kept as connection metadata.
    Salesforce,
    /// Facebook (and Instagram through it): 60-day tokens renewed by
    /// exchanging the current one (`fb_exchange_token`), monthly
    /// (keepalive 30 days).
    Facebook,
}

/// What a preset fills in where a `[providers.NAME]` table is silent.
pub struct PresetDefaults {
    pub token_url: Option<&'static str>,
    /// Renew by exchanging the access token: (grant_type, parameter).
    pub exchange: Option<(&'static str, &'static str)>,
    pub metadata_fields: &'static [&'static str],
    pub rotation_grace_secs: u64,
    pub keepalive_days: Option<u64>,
    pub client_auth: ClientAuth,
    pub dialect: Dialect,
    pub default_lifetime_secs: u64,
    pub account_id_field: Option<&'static str>,
    pub body: RequestBody,
    /// The values each listed connection parameter may take.
    pub param_values: &'static [(&'static str, &'static [&'static str])],
}

/// Zoho's data centres, each an accounts host `accounts.zoho.{dc}`
/// (Zoho's "Multi DC" page). Canada's is `accounts.zohocloud.ca`, which
/// this template cannot name: configure it as a provider of its own.
pub const ZOHO_DATA_CENTRES: &[&str] = &["com", "eu", "in", "com.au", "jp", "com.cn", "sa"];

impl PresetDefaults {
    /// What `preset` (or no preset) fills in.
    pub fn of(preset: Option<Preset>) -> Self {
        let generic = PresetDefaults {
            token_url: None,
            exchange: None,
            metadata_fields: &[],
            rotation_grace_secs: 0,
            keepalive_days: None,
            client_auth: ClientAuth::ClientSecretBasic,
            dialect: Dialect::Rfc6749,
            default_lifetime_secs: 3600,
            account_id_field: None,
            body: RequestBody::Form,
            param_values: &[],
        };
        match preset {
            None => generic,
            Some(Preset::Sandbox) => PresetDefaults {
                account_id_field: Some("account_id"),
                ..generic
            },
            Some(Preset::Hubspot) => PresetDefaults {
                token_url: Some(HUBSPOT_TOKEN_URL),
                client_auth: ClientAuth::ClientSecretPost,
                dialect: Dialect::Hubspot,
                default_lifetime_secs: 1800,
                // The portal id, where the token endpoint sends it: Install
                // then needs no account_id.
                account_id_field: Some("hub_id"),
                ..generic
            },
            Some(Preset::Slack) => PresetDefaults {
                token_url: Some("https://slack.com/api/oauth.v2.access"),
                client_auth: ClientAuth::ClientSecretPost,
                dialect: Dialect::Slack,
                default_lifetime_secs: 43_200,
                account_id_field: Some("team.id"),
                ..generic
            },
            Some(Preset::Github) => PresetDefaults {
                token_url: Some("https://github.com/login/oauth/access_token"),
                client_auth: ClientAuth::ClientSecretPost,
                dialect: Dialect::Github,
                default_lifetime_secs: 28_800,
                ..generic
            },
            Some(Preset::Notion) => PresetDefaults {
                token_url: Some("https://api.notion.com/v1/oauth/token"),
                account_id_field: Some("workspace_id"),
                body: RequestBody::Json,
                ..generic
            },
            Some(Preset::Google) => PresetDefaults {
                token_url: Some("https://oauth2.googleapis.com/token"),
                client_auth: ClientAuth::ClientSecretPost,
                keepalive_days: Some(150),
                ..generic
            },
            Some(Preset::Xero) => PresetDefaults {
                token_url: Some("https://identity.xero.com/connect/token"),
                default_lifetime_secs: 1800,
                rotation_grace_secs: 1800,
                keepalive_days: Some(45),
                ..generic
            },
            Some(Preset::Intuit) => PresetDefaults {
                token_url: Some("https://oauth.platform.intuit.com/oauth2/v1/tokens/bearer"),
                keepalive_days: Some(60),
                ..generic
            },
            Some(Preset::Atlassian) => PresetDefaults {
                token_url: Some("https://auth.atlassian.com/oauth/token"),
                client_auth: ClientAuth::ClientSecretPost,
                // Rotating refresh tokens with a 10-minute reuse leeway
                // (Atlassian's rotating refresh token announcement).
                rotation_grace_secs: 600,
                keepalive_days: Some(60),
                ..generic
            },
            Some(Preset::Zendesk) => PresetDefaults {
                token_url: Some("https://{subdomain}.zendesk.com/oauth/tokens"),
                client_auth: ClientAuth::ClientSecretPost,
                ..generic
            },
            Some(Preset::Microsoft) => PresetDefaults {
                token_url: Some("https://login.microsoftonline.com/common/oauth2/v2.0/token"),
                client_auth: ClientAuth::ClientSecretPost,
                dialect: Dialect::Microsoft,
                // "The Microsoft identity platform doesn't revoke old
                // refresh tokens when used": a rotated-out one lives on for
                // its lifetime, 24 hours at the least (single-page apps).
                rotation_grace_secs: 86_400,
                keepalive_days: Some(60),
                ..generic
            },
            Some(Preset::Zoho) => PresetDefaults {
                token_url: Some("https://accounts.zoho.{dc}/oauth/v2/token"),
                client_auth: ClientAuth::ClientSecretPost,
                dialect: Dialect::Zoho,
                param_values: &[("dc", ZOHO_DATA_CENTRES)],
                ..generic
            },
            Some(Preset::Facebook) => PresetDefaults {
                token_url: Some("https://graph.facebook.com/v19.0/oauth/access_token"),
                exchange: Some(("fb_exchange_token", "fb_exchange_token")),
                client_auth: ClientAuth::ClientSecretPost,
                dialect: Dialect::Facebook,
                default_lifetime_secs: 5_184_000,
                keepalive_days: Some(30),
                ..generic
            },
            Some(Preset::Salesforce) => PresetDefaults {
                token_url: Some("https://login.salesforce.com/services/oauth2/token"),
                client_auth: ClientAuth::ClientSecretPost,
                default_lifetime_secs: 7200,
                metadata_fields: &["instance_url"],
                ..generic
            },
            Some(Preset::Shopify) => PresetDefaults {
                token_url: Some("https://{shop}.myshopify.com/admin/oauth/access_token"),
                client_auth: ClientAuth::ClientSecretPost,
                ..generic
            },
        }
    }
}
