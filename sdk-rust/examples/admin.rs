//! Every admin-service RPC through the typed client, with the bootstrap admin key.
//! Run against `make run`: `cargo run -p memoire-sdk --example admin`.

use memoire_sdk::{Client, Error, pb};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let admin_key =
        std::env::var("MEMOIRE_ADMIN_KEY").unwrap_or_else(|_| "memoire-dev-admin-key".into());
    let admin = Client::builder("http://127.0.0.1:50051")
        .api_key(admin_key)
        .build()?;

    let tenant = admin
        .create_tenant(pb::CreateTenantRequest {
            name: format!("example-{}", std::process::id()),
        })
        .await?
        .tenant
        .expect("the tenant");
    println!(
        "tenants: {}",
        admin
            .list_tenants(pb::ListTenantsRequest::default())
            .await?
            .tenants
            .len()
    );
    admin
        .update_tenant(pb::UpdateTenantRequest {
            tenant_id: tenant.id.clone(),
            pii_mode: pb::PiiMode::Mask as i32,
            episode_retention_days: Some(90),
            ..Default::default()
        })
        .await?;
    let key = admin
        .create_api_key(pb::CreateApiKeyRequest {
            tenant_id: tenant.id.clone(),
            name: "my-app".into(),
            role: pb::KeyRole::Writer as i32,
            ..Default::default()
        })
        .await?;
    println!("key (shown once): {}", key.secret);
    let keys = admin
        .list_api_keys(pb::ListApiKeysRequest {
            tenant_id: tenant.id.clone(),
        })
        .await?;
    let stats = admin
        .get_stats(pb::GetStatsRequest {
            tenant_id: tenant.id.clone(),
        })
        .await?;
    println!("stats: {} memories", stats.active_memories);
    let run = admin
        .run_maintenance(pb::RunMaintenanceRequest {
            tenant_id: tenant.id.clone(),
            job: pb::MaintenanceJob::Optimize as i32,
            wait: true,
            ..Default::default()
        })
        .await?;
    println!("optimize: {}", run.result_json);
    let dead = admin
        .list_dead_letters(pb::ListDeadLettersRequest {
            tenant_id: tenant.id.clone(),
            ..Default::default()
        })
        .await?;
    println!("dead letters: {}", dead.dead_letters.len());
    admin
        .replay_dead_letters(pb::ReplayDeadLettersRequest {
            tenant_id: tenant.id.clone(),
            ids: Vec::new(),
        })
        .await?;
    for k in keys.keys {
        admin
            .revoke_api_key(pb::RevokeApiKeyRequest { key_id: k.id })
            .await?;
    }
    Ok(())
}
