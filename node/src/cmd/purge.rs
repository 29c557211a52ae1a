//! Purge (admin, audited): drop every ticket of a partition for good, durably, and free
//! their memory; answered with how many went. A gate's certificate is refused.

use stile_engine::PurgeError;
use stile_protocol::frame::{error_code, Response};

use crate::stream::Stream;

impl Stream {
    /// Purges partition `partition`: every ticket minted into it so far, of every provider.
    pub(crate) fn purge(&self, id: u32, partition: u16) {
        self.admin_blocking(id, "purge", move |e| {
            let purged = e.purge(partition).map_err(|err| match err {
                PurgeError::NotServed(_) => (error_code::BAD_REQUEST, err.to_string()),
                PurgeError::DiskFull { .. } => (error_code::DISK_FULL, err.to_string()),
            })?;
            tracing::info!(
                target: "stile::audit",
                op = "purge",
                partition,
                tickets = purged.tickets,
                below = purged.below,
                imported = purged.imported,
            );
            Ok(Response::Purged {
                tickets: purged.tickets,
                below: purged.below,
            })
        });
    }
}
