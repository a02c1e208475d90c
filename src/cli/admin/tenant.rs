//! `valet admin tenant …`: the kill switch and tenant status.

use super::{Client, describe, or_dash, time};
use crate::cli::TenantCommand;
use crate::proto;

/// Runs one tenant command.
pub(super) async fn run(client: &mut Client, cmd: TenantCommand) -> Result<(), String> {
    match cmd {
        TenantCommand::Disable {
            tenant,
            vendor,
            reason,
            compromised,
        } => {
            let done = client
                .set_tenant_status(proto::SetTenantStatusRequest {
                    tenant: tenant.clone(),
                    vendor: vendor.clone().unwrap_or_default(),
                    state: proto::TenantState::Disabled as i32,
                    reason,
                    compromised,
                })
                .await
                .map_err(describe)?
                .into_inner();
            let scope = vendor.map_or_else(|| "every vendor".to_owned(), |v| format!("vendor {v}"));
            println!("tenant {tenant} disabled for {scope}: its calls are refused on every replica");
            if compromised {
                runbook(&tenant, &done);
            }
            Ok(())
        }
        TenantCommand::Enable { tenant, vendor } => {
            let done = client
                .set_tenant_status(proto::SetTenantStatusRequest {
                    tenant: tenant.clone(),
                    vendor: vendor.unwrap_or_default(),
                    state: proto::TenantState::Enabled as i32,
                    ..Default::default()
                })
                .await
                .map_err(describe)?
                .into_inner();
            print_status(&done.status.unwrap_or_default());
            Ok(())
        }
        TenantCommand::Status { tenant } => {
            let status = client
                .get_tenant_status(proto::GetTenantStatusRequest { tenant })
                .await
                .map_err(describe)?
                .into_inner();
            print_status(&status);
            Ok(())
        }
        TenantCommand::Offboard {
            tenant,
            retention_days,
            now,
            reason,
        } => {
            let done = client
                .offboard_tenant(proto::OffboardTenantRequest {
                    tenant: tenant.clone(),
                    retention_days: if now { 0 } else { retention_days },
                    now,
                    reason,
                })
                .await
                .map_err(describe)?
                .into_inner();
            println!("tenant {tenant} offboarded");
            println!("deleted:");
            for line in &done.deleted {
                println!("  {line}");
            }
            let until = time(done.final_deletion.as_ref());
            match now {
                true => println!("retained: nothing (removed at once)"),
                false => {
                    println!(
                        "retained until {until} (restore before then: valet admin tenant restore --tenant {tenant}):"
                    );
                    for line in &done.retained {
                        println!("  {line}");
                    }
                }
            }
            Ok(())
        }
        TenantCommand::Restore { tenant } => {
            let status = client
                .restore_tenant(proto::RestoreTenantRequest {
                    tenant: tenant.clone(),
                })
                .await
                .map_err(describe)?
                .into_inner();
            print_status(&status);
            println!(
                "put new credentials (valet admin credential put --tenant {tenant} ...) and create new API keys: the old ones were deleted and revoked"
            );
            Ok(())
        }
        TenantCommand::EraseRecords { tenant } => {
            let done = client
                .purge_tenant_records(proto::PurgeTenantRecordsRequest {
                    tenant: tenant.clone(),
                })
                .await
                .map_err(describe)?
                .into_inner();
            println!(
                "erased {} stored responses (idempotency records) of tenant {tenant}",
                done.purged
            );
            Ok(())
        }
        TenantCommand::List => {
            let list = client
                .list_tenants(proto::ListTenantsRequest {})
                .await
                .map_err(describe)?
                .into_inner();
            for status in &list.tenants {
                print_status(status);
            }
            Ok(())
        }
    }
}

fn print_status(status: &proto::TenantStatus) {
    let offboarded = status.disables.iter().find_map(|d| d.offboarded_until.as_ref());
    let state = match proto::TenantState::try_from(status.state) {
        _ if offboarded.is_some() => "offboarded",
        Ok(proto::TenantState::Disabled) => "disabled",
        _ if status.disables.is_empty() => "enabled",
        _ => "enabled (some vendors disabled)",
    };
    match offboarded {
        Some(until) => println!("{}\t{state}\tfinal deletion {}", status.tenant, time(Some(until))),
        None => println!("{}\t{state}", status.tenant),
    }
    for d in &status.disables {
        let scope = if d.vendor.is_empty() {
            "all vendors"
        } else {
            &d.vendor
        };
        let marked = if d.compromised.is_empty() {
            String::new()
        } else {
            format!("\tcompromised credentials: {}", d.compromised.len())
        };
        println!(
            "  disabled\t{scope}\tsince {}\tby {}\treason: {}{marked}",
            time(d.disabled_at.as_ref()),
            or_dash(&d.actor),
            d.reason
        );
    }
}

/// The incident runbook's next steps after containment.
fn runbook(tenant: &str, done: &proto::SetTenantStatusResponse) {
    println!(
        "revoked {} API key(s) scoped only to {tenant}:",
        done.revoked_key_ids.len()
    );
    for id in &done.revoked_key_ids {
        println!("  {id}");
    }
    println!("marked {} credential(s) compromised:", done.compromised.len());
    for c in &done.compromised {
        println!("  {}\tfingerprint {}", c.vendor, c.fingerprint);
    }
    println!(
        "next steps:
  1. investigate: valet audit verify, then read the audit log for tenant {tenant}
     (credential_lease entries name every caller and reason)
  2. notify the tenant and your security contact
  3. rotate at the vendor, then here: valet admin credential rotate --tenant {tenant} --vendor V
     (or credential put), for every credential listed above
  4. issue new API keys for the tenant's services: valet admin apikey create --tenant {tenant} ...
  5. re-enable: valet admin tenant enable --tenant {tenant}"
    );
}
