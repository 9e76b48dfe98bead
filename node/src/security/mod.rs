//! Who may connect, join, push and publish: tokens, channel rules, the API key and origins.
//!
//! # Layout
//! - [`token`]: HS256 connect tokens, [`switchboard_core::token`] re-exported: the node and the
//!   WebAssembly fake server check tokens with the same code.

pub use switchboard_core::token;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use subtle::ConstantTimeEq as _;
use switchboard_core::presence::Meta;
use switchboard_core::{Access, ChannelRules};
use tracing::warn;

use crate::config::Config;
use token::{TokenError, TokenSecret};

/// The node's access policy, built once from the configuration.
#[derive(Debug, Clone)]
pub struct Security {
    secret: Option<TokenSecret>,
    rules: Arc<ChannelRules>,
    api_key: Option<Vec<u8>>,
    allowed_origins: Vec<String>,
}

/// Who a socket belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// The token's `sub`; `None` on an open node.
    pub user: Option<String>,
    /// The token's `info` claim (shown by presence).
    pub info: Option<Meta>,
    /// How long the token is still accepted (`exp` plus the clock-skew leeway); the socket is
    /// closed with 3005 then.
    pub valid_for: Option<Duration>,
}

impl Security {
    /// The policy the configuration describes. Without a token secret the node is open:
    /// every socket may join and push everywhere, and channel rules are not enforced.
    ///
    /// # Errors
    /// A token secret that is too short (already refused by configuration validation).
    pub fn from_config(config: &Config) -> Result<Self, String> {
        let secret = config
            .token_secret
            .as_deref()
            .map(TokenSecret::new)
            .transpose()?;
        let rules = if secret.is_some() {
            let fallback = config
                .channels
                .iter()
                .find(|(namespace, _)| namespace == "*")
                .map_or(Access::SECURE_DEFAULT, |(_, channel)| Access {
                    join: channel.join.unwrap_or(Access::SECURE_DEFAULT.join),
                    push: channel.push.unwrap_or(Access::SECURE_DEFAULT.push),
                });
            let mut rules = ChannelRules::new(fallback);
            for (namespace, channel) in config.channels.iter().filter(|(n, _)| n != "*") {
                rules.set(
                    namespace.clone(),
                    Access {
                        join: channel.join.unwrap_or(fallback.join),
                        push: channel.push.unwrap_or(fallback.push),
                    },
                );
            }
            rules
        } else {
            if config
                .channels
                .iter()
                .any(|(_, channel)| channel.join.is_some() || channel.push.is_some())
            {
                warn!("channel rules are not enforced without --token-secret");
            }
            ChannelRules::new(Access::OPEN)
        };
        Ok(Self {
            secret,
            rules: Arc::new(rules),
            api_key: config.api_key.as_ref().map(|key| key.as_bytes().to_vec()),
            allowed_origins: config
                .allowed_origins
                .iter()
                .map(|origin| origin.trim().trim_end_matches('/').to_owned())
                .filter(|origin| !origin.is_empty())
                .collect(),
        })
    }

    /// Whether sockets need a token.
    #[must_use]
    pub const fn requires_token(&self) -> bool {
        self.secret.is_some()
    }

    /// Whether `POST /api/publish` needs the API key.
    #[must_use]
    pub const fn requires_api_key(&self) -> bool {
        self.api_key.is_some()
    }

    /// The channel rules in force.
    #[must_use]
    pub const fn rules(&self) -> &Arc<ChannelRules> {
        &self.rules
    }

    /// Checks the token of a connecting socket (the `token` query parameter).
    ///
    /// # Errors
    /// [`TokenError`] when a secret is configured and the token is missing or invalid.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Identity, TokenError> {
        let Some(secret) = &self.secret else {
            return Ok(Identity::default());
        };
        let token = token.ok_or(TokenError::Malformed)?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        secret.verify_claims(token, now).map(|verified| Identity {
            valid_for: Some(Duration::from_secs(verified.valid_for(now))),
            user: Some(verified.sub),
            info: verified.info,
        })
    }

    /// Whether the node runs open (no token secret): clients name themselves.
    #[must_use]
    pub const fn is_open(&self) -> bool {
        self.secret.is_none()
    }

    /// Whether a WebSocket from `origin` may connect. No `Origin` header means no browser,
    /// and is allowed; with no allow-list every origin is.
    #[must_use]
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        match origin {
            None => true,
            Some(_) if self.allowed_origins.is_empty() => true,
            Some(origin) => {
                let origin = origin.trim_end_matches('/');
                self.allowed_origins
                    .iter()
                    .any(|allowed| allowed.eq_ignore_ascii_case(origin))
            }
        }
    }

    /// Whether an `Authorization` header carries the API key (compared in constant time).
    #[must_use]
    pub fn api_key_accepted(&self, authorization: Option<&str>) -> bool {
        let Some(key) = &self.api_key else {
            return true;
        };
        let Some(presented) = authorization.and_then(|value| value.strip_prefix("Bearer ")) else {
            return false;
        };
        presented.trim().as_bytes().ct_eq(key).into()
    }

    /// Signs a token for `sub` valid for `ttl_seconds`, with `info` as its `info` claim (the
    /// `token` command).
    ///
    /// # Errors
    /// No token secret is configured.
    pub fn sign(
        &self,
        sub: &str,
        ttl_seconds: u64,
        info: Option<&Meta>,
    ) -> Result<String, &'static str> {
        let secret = self.secret.as_ref().ok_or(
            "no token secret: set --token-secret, TOKEN_SECRET or token-secret in the config file",
        )?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        Ok(secret.sign_with_info(sub, now.saturating_add(ttl_seconds), info))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_core::Topic;

    fn security(args: &[&str]) -> Security {
        let config =
            Config::load_from(std::iter::once("switchboard").chain(args.iter().copied())).unwrap();
        Security::from_config(&config).unwrap()
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn an_open_node_admits_everyone_everywhere() {
        let open = security(&[]);
        assert!(!open.requires_token());
        assert_eq!(open.authenticate(None), Ok(Identity::default()));
        let topic = Topic::new("auditlog:42").unwrap();
        assert!(open.rules().may_join(&topic, None));
        assert!(open.rules().may_push(&topic, None));
    }

    #[test]
    fn with_a_secret_tokens_are_required_and_unlisted_namespaces_are_owner_only() {
        let secure = security(&["--token-secret", SECRET, "--open-publish"]);
        assert!(secure.authenticate(None).is_err());
        let token = secure.sign("42", 60, None).unwrap();
        let identity = secure.authenticate(Some(&token)).unwrap();
        assert_eq!(identity.user.as_deref(), Some("42"));
        let own = Topic::new("auditlog:42").unwrap();
        let other = Topic::new("auditlog:43").unwrap();
        assert!(secure.rules().may_join(&own, Some("42")));
        assert!(!secure.rules().may_join(&other, Some("42")));
        assert!(!secure.rules().may_push(&own, Some("42")));
    }

    #[test]
    fn api_key_needs_the_bearer_scheme_and_the_exact_key() {
        let keyed = security(&["--api-key", "k3y"]);
        assert!(keyed.api_key_accepted(Some("Bearer k3y")));
        assert!(!keyed.api_key_accepted(Some("Bearer k3")));
        assert!(!keyed.api_key_accepted(Some("Bearer k3yy")));
        assert!(!keyed.api_key_accepted(Some("k3y")));
        assert!(!keyed.api_key_accepted(None));
        assert!(security(&[]).api_key_accepted(None));
    }

    #[test]
    fn origins_are_matched_exactly_but_absent_origins_pass() {
        let listed = security(&[
            "--allowed-origins",
            "https://app.example.com,http://localhost:3000/",
        ]);
        assert!(listed.origin_allowed(Some("https://app.example.com")));
        assert!(listed.origin_allowed(Some("http://localhost:3000")));
        assert!(!listed.origin_allowed(Some("https://evil.example.com")));
        assert!(!listed.origin_allowed(Some("https://app.example.com.evil.com")));
        assert!(listed.origin_allowed(None));
        assert!(security(&[]).origin_allowed(Some("https://anything")));
    }
}
