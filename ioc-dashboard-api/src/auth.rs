//! Who may call what. Every `/api/v1/` route names the [`Permission`] it needs; a bearer token
//! is either the configured admin token (`api.admin_token`, role `admin`) or one the API issued
//! (`POST /api/v1/tokens`), found by its SHA-256 in the registry, never stored in the clear.
//!
//! A missing or unknown token is 401; a known token whose role lacks the permission is 403.

use axum::http::{header, HeaderMap, StatusCode};
use ioc_contract::{Actor, Role};

use crate::error::{ApiFailure, ApiResult};
use crate::AppState;

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Devices, readings, aggregates, alerts, the live feed: every role.
    ReadTelemetry,
    /// Register and update devices, commissioning, replay: admin and installer.
    ManageDevices,
    /// Camera events, which carry plate pseudonyms (personal data, DOMAIN.md §7): admin and
    /// enforcement. Every read is audited.
    ReadEvents,
    /// The cleartext evidence store (plates, images): enforcement only. Every read is audited.
    ReadEvidence,
    /// Violations counted per plate pseudonym (who offends again, where): enforcement only.
    /// Every read is audited.
    ReadRepeats,
    /// Tokens and the audit log: admin.
    Administer,
    /// Acknowledge and resolve alerts: admin, operator, and environment (for the `air` and
    /// `water` categories only: [`may_act_on`]).
    ActOnAlerts,
}

/// Whether `role`, allowed [`Permission::ActOnAlerts`], may act on an alert of `category`.
pub fn may_act_on(role: Role, category: &str) -> bool {
    match role {
        Role::Environment => matches!(category, "air" | "water"),
        _ => Permission::ActOnAlerts.allows(role),
    }
}

impl Permission {
    pub fn roles(self) -> &'static [Role] {
        match self {
            Permission::ReadTelemetry => &[
                Role::Admin,
                Role::Operator,
                Role::Installer,
                Role::Enforcement,
                Role::Environment,
            ],
            Permission::ManageDevices => &[Role::Admin, Role::Installer],
            Permission::ActOnAlerts => &[Role::Admin, Role::Operator, Role::Environment],
            Permission::ReadEvents => &[Role::Admin, Role::Enforcement],
            Permission::ReadEvidence | Permission::ReadRepeats => &[Role::Enforcement],
            Permission::Administer => &[Role::Admin],
        }
    }

    pub fn allows(self, role: Role) -> bool {
        self.roles().contains(&role)
    }
}

/// Compares without an early exit, so response timing does not reveal a prefix of the token.
fn token_matches(given: &str, expected: &str) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    given
        .bytes()
        .zip(expected.bytes())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

pub use ioc_contract::sha256_hex;

/// `n` random bytes from the operating system, hex.
pub fn random_hex(n: usize) -> std::io::Result<String> {
    let mut bytes = vec![0u8; n];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether `given` (a token [`authorize`] accepted) is still accepted: the configured admin
/// token always is; an issued one until it is revoked. For sessions that outlive a request.
pub fn still_accepted(state: &AppState, given: &str) -> impl Fn() -> bool + Send + 'static {
    let admin = {
        let configured = &state.config.admin_token;
        !configured.is_empty() && token_matches(given, configured)
    };
    let (registry, hash) = (state.registry.clone(), sha256_hex(given));
    move || admin || registry.token_by_hash(&hash).is_some()
}

/// The caller behind `given`, if it may do what `need` names.
pub fn authorize(state: &AppState, given: Option<&str>, need: Permission) -> ApiResult<Actor> {
    let refuse = |message: &str| {
        state.metrics.requests_unauthorized.inc();
        Err(ApiFailure::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            message,
        ))
    };
    let Some(given) = given.filter(|t| !t.is_empty()) else {
        return refuse("missing token: send Authorization: Bearer <token>");
    };
    let admin = &state.config.admin_token;
    let actor = if !admin.is_empty() && token_matches(given, admin) {
        Actor::admin_token()
    } else {
        // A hash look-up: its timing says nothing useful about a random token.
        match state.registry.token_by_hash(&sha256_hex(given)) {
            Some(token) => Actor {
                name: token.name,
                role: token.role,
            },
            None => return refuse("invalid token"),
        }
    };
    if !need.allows(actor.role) {
        state.metrics.requests_forbidden.inc();
        let roles: Vec<&str> = need.roles().iter().map(|r| r.as_str()).collect();
        return Err(ApiFailure::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "a {} token may not do this; it needs the role {}",
                actor.role.as_str(),
                roles.join(" or ")
            ),
        ));
    }
    Ok(actor)
}

pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_enforcement_reads_evidence_and_everyone_reads_telemetry() {
        for role in [
            Role::Admin,
            Role::Operator,
            Role::Installer,
            Role::Enforcement,
            Role::Environment,
        ] {
            assert!(Permission::ReadTelemetry.allows(role));
            assert_eq!(
                Permission::ActOnAlerts.allows(role),
                matches!(role, Role::Admin | Role::Operator | Role::Environment)
            );
            assert_eq!(
                may_act_on(role, "device"),
                matches!(role, Role::Admin | Role::Operator)
            );
            assert_eq!(
                may_act_on(role, "water"),
                matches!(role, Role::Admin | Role::Operator | Role::Environment)
            );
            assert_eq!(
                Permission::ReadEvidence.allows(role),
                role == Role::Enforcement
            );
            assert_eq!(
                Permission::ReadEvents.allows(role),
                matches!(role, Role::Admin | Role::Enforcement)
            );
            assert_eq!(
                Permission::ManageDevices.allows(role),
                matches!(role, Role::Admin | Role::Installer)
            );
            assert_eq!(Permission::Administer.allows(role), role == Role::Admin);
        }
    }

    #[test]
    fn token_comparison_and_hashing() {
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abd", "abc"));
        assert!(!token_matches("ab", "abc"));
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let a = random_hex(20).unwrap();
        assert_eq!(a.len(), 40);
        assert_ne!(a, random_hex(20).unwrap());
    }
}
