//! Who is calling: the `authorization` value of a request resolves to a [`Principal`].
//!
//! Three kinds of caller: a tenant's API key (stored hashed; resolved per request so that a
//! revocation takes effect at once), the bootstrap admin key from configuration (acts across
//! tenants; compared in constant time), and — only when `dev_mode` is on — a caller with no key,
//! who acts as the admin of the single tenant `dev`. Whether the principal may make a given call
//! is [`Principal::require`]'s question, asked by each adapter.

use memoire_core::Error;
use memoire_core::command::{CallerLimits, Principal};
use memoire_core::model::KeyRole;
use memoire_store::{PgStore, hash_secret};
use subtle::ConstantTimeEq as _;
use uuid::Uuid;

/// The actor recorded for the bootstrap admin key.
pub const BOOTSTRAP_ACTOR: &str = "bootstrap-admin";

/// Resolves callers.
#[derive(Debug, Clone)]
pub struct Authenticator {
    store: PgStore,
    admin_hash: Option<[u8; 32]>,
    dev_tenant: Option<Uuid>,
}

impl Authenticator {
    /// An authenticator; `dev_tenant` enables key-less access as that tenant's admin.
    pub fn new(store: PgStore, admin_key: Option<&str>, dev_tenant: Option<Uuid>) -> Self {
        Authenticator {
            store,
            admin_hash: admin_key.map(hash_secret),
            dev_tenant,
        }
    }

    /// The caller behind an `authorization` value (`None` when the request has none; `Err` when
    /// it is not text).
    pub async fn principal(
        &self,
        authorization: Option<Result<&str, ()>>,
    ) -> Result<Principal, Error> {
        let Some(value) = authorization else {
            return match self.dev_tenant {
                Some(tenant) => {
                    let t = self.store.tenant(tenant).await?;
                    Ok(Principal {
                        tenant_id: Some(tenant),
                        role: KeyRole::Admin,
                        actor: "dev".into(),
                        teach_pii_mode: t.pii_mode.for_teach(t.scrub_teach),
                        key_id: None,
                        limits: CallerLimits::of_tenant(&t),
                    })
                }
                None => Err(Error::Unauthenticated(
                    "missing API key: send `authorization: Bearer <key>` metadata".into(),
                )),
            };
        };
        let value = value
            .map_err(|_| Error::Unauthenticated("the authorization metadata is not text".into()))?;
        let secret = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| Error::Unauthenticated("authorization must be `Bearer <key>`".into()))?
            .trim();
        if let Some(admin) = &self.admin_hash
            && bool::from(hash_secret(secret).ct_eq(admin))
        {
            return Ok(Principal {
                tenant_id: None,
                role: KeyRole::Admin,
                actor: BOOTSTRAP_ACTOR.into(),
                teach_pii_mode: memoire_core::model::PiiMode::Off,
                key_id: None,
                limits: CallerLimits::default(),
            });
        }
        self.store
            .principal_for_secret(secret)
            .await?
            .ok_or_else(|| Error::Unauthenticated("invalid or revoked API key".into()))
    }
}
