//! The meetings an account hosts right now, kept so that signaling, restarted after a
//! crash or an upgrade, still admits people to them. Only hashes of the room id and the
//! host key are stored (see the migration); who is present stays in signaling's memory.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::clock::{from_millis, millis};
use crate::token::hashed;
use crate::{AccountError, Accounts};

/// A hosted meeting as stored: enough to admit people again, nothing to join with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostedRoom {
    /// SHA-256 of the host key, hex.
    pub host_key_hash: String,
    pub account_id: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

/// A hosted meeting as the account's export shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HostedRoomRecord {
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

impl Accounts {
    /// Records the meeting `room` that `account_id` has just created, open for `ttl`;
    /// forgets expired meetings on the way.
    pub async fn record_hosted_room(
        &self,
        room: &str,
        host_key: &str,
        account_id: &str,
        ttl: Duration,
    ) -> Result<(), AccountError> {
        let now = self.now();
        let ttl = SignedDuration::try_from(ttl).unwrap_or(SignedDuration::MAX);
        let expires = now.saturating_add(ttl).unwrap_or(Timestamp::MAX);
        let mut tx = self.store.write().await?;
        sqlx::query("DELETE FROM hosted_rooms WHERE expires_at <= $1")
            .bind(millis(now))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO hosted_rooms (room_hash, host_key_hash, account_id, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(hashed(room))
        .bind(hashed(host_key))
        .bind(account_id)
        .bind(millis(now))
        .bind(millis(expires))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The stored meeting `room`, if it has not ended or expired.
    pub async fn hosted_room(&self, room: &str) -> Result<Option<HostedRoom>, AccountError> {
        let row = sqlx::query(
            "SELECT host_key_hash, account_id, created_at, expires_at FROM hosted_rooms
             WHERE room_hash = $1 AND expires_at > $2",
        )
        .bind(hashed(room))
        .bind(millis(self.now()))
        .fetch_optional(self.store.pool())
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        Ok(Some(HostedRoom {
            host_key_hash: row.try_get(0)?,
            account_id: row.try_get(1)?,
            created_at: from_millis(row.try_get(2)?),
            expires_at: from_millis(row.try_get(3)?),
        }))
    }

    /// Forgets the meeting `room` (its host ended it).
    pub async fn forget_hosted_room(&self, room: &str) -> Result<(), AccountError> {
        sqlx::query("DELETE FROM hosted_rooms WHERE room_hash = $1")
            .bind(hashed(room))
            .execute(self.store.pool())
            .await?;
        Ok(())
    }

    /// The open meetings of an account, for its export.
    pub(crate) async fn hosted_rooms_of(
        &self,
        account_id: &str,
    ) -> Result<Vec<HostedRoomRecord>, AccountError> {
        let rows = sqlx::query(
            "SELECT created_at, expires_at FROM hosted_rooms WHERE account_id = $1 ORDER BY created_at",
        )
        .bind(account_id)
        .fetch_all(self.store.pool())
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(HostedRoomRecord {
                created_at: from_millis(row.try_get(0)?),
                expires_at: from_millis(row.try_get(1)?),
            });
        }
        Ok(out)
    }
}
