//! The audit log of personal-data reads: a one-partition topic of [`AuditEntry`]s, kept
//! forever. Registry changes are audited by the registry events themselves (see
//! [`crate::registry`]); reads change nothing there, so they are written here, and written
//! before the data is served: a read that cannot be audited is not answered.

use ioc_contract::AuditEntry;

use crate::{Bus, BusError, Producer};

/// Appends `entry` and waits until the bus has it durably.
pub async fn record(producer: &Producer, bus: &Bus, entry: &AuditEntry) -> Result<(), BusError> {
    let payload = serde_json::to_vec(entry).expect("audit entries serialize");
    producer
        .send(&bus.topics().audit, &entry.action, &payload)
        .await
}

/// Every entry in the log, oldest first. Reads the whole topic: reads of personal data are
/// counted in thousands a day, not millions.
pub async fn read(bus: &Bus) -> Result<Vec<AuditEntry>, BusError> {
    let records = bus.read_all(&bus.topics().audit).await?;
    Ok(records
        .iter()
        .filter_map(|r| match serde_json::from_slice::<AuditEntry>(&r.payload) {
            Ok(entry) => Some(entry),
            Err(e) => {
                tracing::error!(error = %e, "unreadable audit entry skipped");
                None
            }
        })
        .collect())
}
