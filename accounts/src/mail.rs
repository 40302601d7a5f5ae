//! E-mail to account holders (verification, e-mail change, password reset): written to
//! an outbox folder under `./data` by default, or sent through the SMTP relay the
//! operator configures — the only outbound connection Veil may make (P9). Outbox files
//! hold addresses, so they are named by account and deleted with it, or after the
//! links in them have expired.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Body, Mailbox, Message};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MailConfig {
    /// `smtp://user:pass@host:587?tls=required` or `smtps://…`; empty: use the outbox.
    pub smtp_url: String,
    /// Folder for mail when no SMTP relay is configured.
    pub outbox_dir: PathBuf,
    /// The sender address.
    pub from: String,
}

impl Default for MailConfig {
    fn default() -> Self {
        MailConfig {
            smtp_url: String::new(),
            outbox_dir: "data/outbox".into(),
            from: "Veil <veil@localhost>".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("the sender address is invalid")]
    From,
    #[error("the SMTP URL is invalid")]
    SmtpUrl,
    #[error("the recipient address is invalid")]
    To,
    #[error("cannot write to the outbox: {0}")]
    Outbox(std::io::Error),
    #[error("the SMTP relay refused or failed")]
    Smtp,
}

/// What a message is for; part of outbox file names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Verify,
    ChangeEmail,
    PasswordReset,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Verify => "verify",
            Purpose::ChangeEmail => "change_email",
            Purpose::PasswordReset => "password_reset",
        }
    }
}

pub enum Mailer {
    Outbox {
        dir: PathBuf,
        from: Mailbox,
    },
    Smtp {
        transport: AsyncSmtpTransport<Tokio1Executor>,
        from: Mailbox,
    },
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mailer::Outbox { dir, .. } => write!(f, "Mailer::Outbox({})", dir.display()),
            Mailer::Smtp { .. } => f.write_str("Mailer::Smtp"),
        }
    }
}

impl Mailer {
    pub fn new(config: &MailConfig) -> Result<Mailer, MailError> {
        let from: Mailbox = config.from.parse().map_err(|_| MailError::From)?;
        if config.smtp_url.is_empty() {
            return Ok(Mailer::Outbox {
                dir: config.outbox_dir.clone(),
                from,
            });
        }
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&config.smtp_url)
            .map_err(|_| MailError::SmtpUrl)?
            .timeout(Some(Duration::from_secs(20)))
            .build();
        Ok(Mailer::Smtp { transport, from })
    }

    pub fn outbox(&self) -> Option<&Path> {
        match self {
            Mailer::Outbox { dir, .. } => Some(dir),
            Mailer::Smtp { .. } => None,
        }
    }

    /// Sends one plain-text message to `to` about `account_id`'s `purpose`.
    pub async fn send(
        &self,
        account_id: &str,
        purpose: Purpose,
        to: &str,
        subject: &str,
        body: String,
    ) -> Result<(), MailError> {
        let to: Mailbox = to.parse().map_err(|_| MailError::To)?;
        let from = match self {
            Mailer::Outbox { from, .. } | Mailer::Smtp { from, .. } => from.clone(),
        };
        let message = Message::builder()
            .from(from)
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            // Plain 7-bit text keeps links whole and readable in the outbox.
            .body(
                Body::new_with_encoding(body, ContentTransferEncoding::SevenBit)
                    .map_err(|_| MailError::To)?,
            )
            .map_err(|_| MailError::To)?;
        match self {
            Mailer::Outbox { dir, .. } => {
                let stamp = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos();
                let name = format!("{stamp}-{account_id}-{}.eml", purpose.as_str());
                tokio::fs::create_dir_all(dir)
                    .await
                    .map_err(MailError::Outbox)?;
                tokio::fs::write(dir.join(name), message.formatted())
                    .await
                    .map_err(MailError::Outbox)
            }
            Mailer::Smtp { transport, .. } => transport
                .send(message)
                .await
                .map(|_| ())
                .map_err(|_| MailError::Smtp),
        }
    }
}

/// An outbox file's account id, from its name `<stamp>-<account>-<purpose>.eml`.
pub fn outbox_account(file_name: &str) -> Option<&str> {
    let rest = file_name.strip_suffix(".eml")?;
    let (_, rest) = rest.split_once('-')?;
    // Account ids are 22 base64url characters (which may themselves hold '-').
    rest.get(..22)
        .filter(|_| rest.as_bytes().get(22) == Some(&b'-'))
}

/// Every outbox message (name, modified time), oldest first.
pub fn outbox_messages(dir: &Path) -> Vec<(PathBuf, SystemTime)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".eml"))
        .map(|e| {
            let modified = e
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            (e.path(), modified)
        })
        .collect();
    out.sort_by_key(|(_, t)| *t);
    out
}

/// The link in the newest outbox message for `account_id` and `purpose` (for tests
/// and for trying Veil locally without a mail server).
pub fn latest_link(dir: &Path, account_id: &str, purpose: Purpose) -> Option<String> {
    let suffix = format!("-{account_id}-{}.eml", purpose.as_str());
    outbox_messages(dir)
        .into_iter()
        .rev()
        .filter(|(p, _)| p.to_string_lossy().ends_with(&suffix))
        .find_map(|(p, _)| {
            let text = std::fs::read_to_string(p).ok()?;
            text.split_whitespace()
                .find(|w| w.starts_with("http://") || w.starts_with("https://"))
                .map(str::to_string)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_names_carry_the_account() {
        let id = "ab-cdefghijklmnopqrstu";
        assert_eq!(id.len(), 22);
        assert_eq!(outbox_account(&format!("123-{id}-verify.eml")), Some(id));
        assert_eq!(outbox_account("123-short-verify.eml"), None);
        assert_eq!(outbox_account("notes.txt"), None);
    }
}
