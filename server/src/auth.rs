//! Authentication: `authorization: Bearer <key>` metadata resolves to a [`Principal`].
//!
//! Three kinds of caller: a tenant's API key (stored hashed; resolved per request so that a
//! revocation takes effect at once), the bootstrap admin key from configuration (acts across
//! tenants; compared in constant time), and — only when `dev_mode` is on — a caller with no key,
//! who acts as the admin of the single tenant `dev`.

use memoire_core::Error;
use memoire_core::command::Principal;
use memoire_core::model::KeyRole;
use memoire_store::{PgStore, hash_secret};
use subtle::ConstantTimeEq as _;
use tonic::metadata::MetadataMap;
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

    /// Who is calling, and whether they may do what needs `role`.
    pub async fn authorize(
        &self,
        metadata: &MetadataMap,
        role: KeyRole,
    ) -> Result<Principal, Error> {
        let principal = self.principal(metadata).await?;
        if principal.role < role {
            return Err(Error::PermissionDenied(format!(
                "this call needs a {role} key; the key used is a {} key",
                principal.role
            )));
        }
        Ok(principal)
    }

    /// The tenant a memory-service call acts for.
    pub async fn tenant(
        &self,
        metadata: &MetadataMap,
        role: KeyRole,
    ) -> Result<(Uuid, Principal), Error> {
        let principal = self.authorize(metadata, role).await?;
        match principal.tenant_id {
            Some(t) => Ok((t, principal)),
            None => Err(Error::PermissionDenied(
                "the bootstrap admin key manages tenants and keys; call the memory service with a \
                 tenant's API key (AdminService/CreateApiKey)"
                    .into(),
            )),
        }
    }

    async fn principal(&self, metadata: &MetadataMap) -> Result<Principal, Error> {
        let Some(value) = metadata.get("authorization") else {
            return match self.dev_tenant {
                Some(tenant) => Ok(Principal {
                    tenant_id: Some(tenant),
                    role: KeyRole::Admin,
                    actor: "dev".into(),
                }),
                None => Err(Error::Unauthenticated(
                    "missing API key: send `authorization: Bearer <key>` metadata".into(),
                )),
            };
        };
        let value = value
            .to_str()
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
            });
        }
        self.store
            .principal_for_secret(secret)
            .await?
            .ok_or_else(|| Error::Unauthenticated("invalid or revoked API key".into()))
    }
}
