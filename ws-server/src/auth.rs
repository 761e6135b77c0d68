//! Who a connection is and what it may do: [`Grant`], the [`Authenticator`] trait the hub
//! consults, and [`JwtAuthenticator`], its JWT implementation.
//!
//! A JWT's claims say which channels the connection may subscribe to (`channels`) and publish
//! on (`publish`), as patterns where `*` matches any run of characters and `{sub}` stands for
//! the token's subject: `["prices:*", "orders:{sub}"]`. No `channels` claim means no channel.
//!
//! The subject is substituted as a literal: a `*` (or any other character) in a subject
//! matches only itself, so a token for subject `*` or `bob*` with `orders:{sub}` reaches the
//! channel `orders:*` or `orders:bob*` and nothing else. Only the `*`s written in the pattern
//! itself are wildcards.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use thiserror::Error;

/// Why a token was refused. The message never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct AuthError(pub String);

/// What one connection may do, decided once when it authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The subject (user id), if authenticated.
    pub user_id: Option<String>,
    subscribe: Vec<Pattern>,
    publish: Vec<Pattern>,
    /// When the grant ends (the token's expiry); the connection is closed then. `None`: never.
    pub expires_at: Option<SystemTime>,
    /// `Publish` frames per second this connection may send, replacing the hub's
    /// `WS_PUBLISH_RATE_LIMIT` for it (0: no limit); `None`: the hub's limit applies. From a
    /// JWT's `publish_rate` claim, so that a hub open to untrusted publishers can still let a
    /// data utility's token publish at full speed.
    pub publish_rate: Option<u32>,
}

impl Grant {
    /// Everything allowed, forever: the hub without authentication.
    pub fn open() -> Self {
        Self {
            user_id: None,
            subscribe: vec![Pattern::any()],
            publish: vec![Pattern::any()],
            expires_at: None,
            publish_rate: None,
        }
    }

    /// A grant for `user_id` with subscribe and publish patterns: `*` matches any run of
    /// characters, and `{sub}` is replaced by the user id taken literally (a `*` in it is no
    /// wildcard).
    pub fn new(
        user_id: impl Into<String>,
        subscribe: Vec<String>,
        publish: Vec<String>,
        expires_at: Option<SystemTime>,
    ) -> Self {
        let user_id = user_id.into();
        let compile =
            |patterns: Vec<String>| patterns.iter().map(|p| Pattern::new(p, &user_id)).collect();
        Self {
            subscribe: compile(subscribe),
            publish: compile(publish),
            user_id: Some(user_id),
            expires_at,
            publish_rate: None,
        }
    }

    /// The same grant with its own publication rate (see [`Grant::publish_rate`]).
    #[must_use]
    pub fn with_publish_rate(mut self, per_second: Option<u32>) -> Self {
        self.publish_rate = per_second;
        self
    }

    /// Whether the connection may subscribe to `channel`.
    pub fn may_subscribe(&self, channel: &str) -> bool {
        self.subscribe.iter().any(|p| p.matches(channel))
    }

    /// Whether the connection may publish on `channel`.
    pub fn may_publish(&self, channel: &str) -> bool {
        self.publish.iter().any(|p| p.matches(channel))
    }
}

/// A claim pattern, split at its own `*`s once: the literal pieces between them, with
/// `{sub}` already replaced in each piece. Wildcards exist only between pieces, so nothing
/// substituted into a piece can add one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    /// At least one piece; `n` pieces stand for `n - 1` wildcards between them.
    pieces: Vec<String>,
}

impl Pattern {
    fn new(pattern: &str, subject: &str) -> Self {
        Self {
            pieces: pattern
                .split('*')
                .map(|piece| piece.replace("{sub}", subject))
                .collect(),
        }
    }

    /// `*`: anything.
    fn any() -> Self {
        Self {
            pieces: vec![String::new(), String::new()],
        }
    }

    /// Whether `text` is the pieces in order, with anything (also nothing) between them.
    fn matches(&self, text: &str) -> bool {
        let Some((first, rest_pieces)) = self.pieces.split_first() else {
            return false;
        };
        let Some(mut rest) = text.strip_prefix(first.as_str()) else {
            return false;
        };
        let Some((last, middle)) = rest_pieces.split_last() else {
            return rest.is_empty();
        };
        for piece in middle {
            match rest.find(piece.as_str()) {
                Some(at) => rest = &rest[at + piece.len()..],
                None => return false,
            }
        }
        rest.len() >= last.len() && rest.ends_with(last.as_str())
    }
}

/// The check the hub runs on every token, at the upgrade or in an `Authenticate` frame.
/// Implement it to plug in your own scheme.
pub trait Authenticator: Send + Sync + 'static {
    /// The grant for `token`.
    ///
    /// # Errors
    /// [`AuthError`] saying why the token is refused (never quoting the token).
    fn authenticate(&self, token: &str) -> Result<Grant, AuthError>;
}

/// The claims the hub reads from a JWT.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    /// Publications per second for this token (0: no limit), replacing the hub's default.
    #[serde(default)]
    publish_rate: Option<u32>,
}

/// JWTs signed with HS256 (a shared secret) or RS256/ES256 (a public key); `exp` required.
pub struct JwtAuthenticator {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for JwtAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuthenticator")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

impl JwtAuthenticator {
    fn with(key: DecodingKey, algorithm: Algorithm) -> Self {
        let mut validation = Validation::new(algorithm);
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self { key, validation }
    }

    /// HS256 with a shared secret.
    pub fn hs256(secret: &[u8]) -> Self {
        Self::with(DecodingKey::from_secret(secret), Algorithm::HS256)
    }

    /// RS256 with a PEM RSA public key.
    ///
    /// # Errors
    /// If the PEM is not an RSA public key.
    pub fn rs256_pem(pem: &[u8]) -> Result<Self, AuthError> {
        let key = DecodingKey::from_rsa_pem(pem)
            .map_err(|e| AuthError(format!("bad RSA public key: {e}")))?;
        Ok(Self::with(key, Algorithm::RS256))
    }

    /// ES256 with a PEM P-256 public key.
    ///
    /// # Errors
    /// If the PEM is not an EC public key.
    pub fn es256_pem(pem: &[u8]) -> Result<Self, AuthError> {
        let key = DecodingKey::from_ec_pem(pem)
            .map_err(|e| AuthError(format!("bad EC public key: {e}")))?;
        Ok(Self::with(key, Algorithm::ES256))
    }
}

impl Authenticator for JwtAuthenticator {
    fn authenticate(&self, token: &str) -> Result<Grant, AuthError> {
        let data =
            jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                AuthError(
                    match e.kind() {
                        ErrorKind::ExpiredSignature => "token expired",
                        ErrorKind::ImmatureSignature => "token not valid yet (nbf)",
                        ErrorKind::InvalidSignature => "bad token signature",
                        ErrorKind::InvalidAlgorithm => "token signed with another algorithm",
                        ErrorKind::MissingRequiredClaim(_) => "token lacks sub or exp",
                        _ => "malformed token",
                    }
                    .to_owned(),
                )
            })?;
        let claims = data.claims;
        // An `exp` past what the clock can hold (up to 2^64 - 1 seconds) means no expiry
        // in practice; it must never overflow.
        let expires_at = UNIX_EPOCH.checked_add(Duration::from_secs(claims.exp));
        if expires_at.is_some_and(|at| at <= SystemTime::now()) {
            return Err(AuthError("token expired".to_owned()));
        }
        Ok(
            Grant::new(claims.sub, claims.channels, claims.publish, expires_at)
                .with_publish_rate(claims.publish_rate),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        for (pattern, text, expected) in [
            ("*", "anything", true),
            ("prices:*", "prices:SOL-USDC", true),
            ("prices:*", "prices:", true),
            ("prices:*", "orders:1", false),
            ("orders:alice", "orders:alice", true),
            ("orders:alice", "orders:alice2", false),
            ("a*b*c", "a-x-b-y-c", true),
            ("a*b*c", "a-x-c-b", false),
            ("*:USDC", "SOL:USDC", true),
            ("ab*ba", "aba", false),
        ] {
            assert_eq!(
                Pattern::new(pattern, "").matches(text),
                expected,
                "{pattern} ~ {text}"
            );
        }
    }

    #[test]
    fn sub_is_substituted_and_no_claim_means_nothing() {
        let grant = Grant::new("alice", vec!["orders:{sub}".into()], vec![], None);
        assert!(grant.may_subscribe("orders:alice"));
        assert!(!grant.may_subscribe("orders:bob"));
        assert!(!grant.may_publish("orders:alice"));
        let none = Grant::new("bob", vec![], vec![], None);
        assert!(!none.may_subscribe("prices:SOL-USDC"));
        assert!(Grant::open().may_publish("x"));
    }

    #[test]
    fn the_subject_is_substituted_literally() {
        for subject in ["*", "bob*", "b*b", "bob:*", "*:*"] {
            let grant = Grant::new(
                subject,
                vec!["orders:{sub}".into()],
                vec!["fills:{sub}:*".into()],
                None,
            );
            let own = format!("orders:{subject}");
            assert!(
                grant.may_subscribe(&own),
                "{subject} reaches its own channel"
            );
            for other in ["orders:bob", "orders:alice", "orders:bob:x", "orders:bb"] {
                if other != own {
                    assert!(
                        !grant.may_subscribe(other),
                        "{subject} must not reach {other}"
                    );
                }
            }
            assert!(grant.may_publish(&format!("fills:{subject}:1")));
            assert!(!grant.may_publish("fills:bob:1") || subject == "bob");
        }
    }

    #[test]
    fn hs256_tokens_are_checked() {
        use jsonwebtoken::{EncodingKey, Header, encode};
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 60;
        let claims = serde_json::json!({"sub": "alice", "exp": exp, "channels": ["prices:*"]});
        let token = encode(&Header::default(), &claims, &EncodingKey::from_secret(b"k")).unwrap();
        let grant = JwtAuthenticator::hs256(b"k").authenticate(&token).unwrap();
        assert_eq!(grant.user_id.as_deref(), Some("alice"));
        assert!(grant.may_subscribe("prices:X"));
        let refused = JwtAuthenticator::hs256(b"other")
            .authenticate(&token)
            .unwrap_err();
        assert_eq!(refused.0, "bad token signature");
        assert!(!refused.to_string().contains(&token));
        let old = serde_json::json!({"sub": "alice", "exp": 1000});
        let expired = encode(&Header::default(), &old, &EncodingKey::from_secret(b"k")).unwrap();
        assert_eq!(
            JwtAuthenticator::hs256(b"k")
                .authenticate(&expired)
                .unwrap_err()
                .0,
            "token expired"
        );
    }
}
