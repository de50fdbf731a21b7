//! Sending one message (a notification, or a digest of several) to one recipient: a webhook
//! (JSON, signed) or email (SMTP).

use std::time::Duration;

use hmac::{Hmac, Mac};
use ioc_config::{RecipientConfig, SmtpConfig, WebhookConfig};
use lettre::message::{header::ContentType, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::json;
use sha2::Sha256;

use crate::message::{digest_text, Notification};

/// How one recipient is reached.
pub enum Channel {
    Webhook {
        client: reqwest::Client,
        config: WebhookConfig,
    },
    Email {
        mailer: AsyncSmtpTransport<Tokio1Executor>,
        from: Mailbox,
        to: Vec<Mailbox>,
    },
}

impl Channel {
    /// `ca_pem`: CA certificates trusted besides the public roots (`notify.ca_file`).
    pub fn of(
        recipient: &RecipientConfig,
        smtp: &SmtpConfig,
        ca_pem: Option<&[u8]>,
    ) -> Result<Channel, String> {
        if let Some(w) = &recipient.webhook {
            let mut builder = reqwest::Client::builder()
                .timeout(w.timeout)
                .connect_timeout(Duration::from_secs(5));
            if let Some(pem) = ca_pem {
                for cert in reqwest::Certificate::from_pem_bundle(pem)
                    .map_err(|e| format!("notify.ca_file: {e}"))?
                {
                    builder = builder.add_root_certificate(cert);
                }
            }
            let client = builder
                .build()
                .map_err(|e| format!("webhook client: {e}"))?;
            return Ok(Channel::Webhook {
                client,
                config: w.clone(),
            });
        }
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host);
        if smtp.starttls {
            let mut tls = TlsParameters::builder(smtp.host.clone());
            if let Some(pem) = ca_pem {
                tls = tls.add_root_certificate(
                    Certificate::from_pem(pem).map_err(|e| format!("notify.ca_file: {e}"))?,
                );
            }
            let tls = tls
                .build()
                .map_err(|e| format!("smtp {}: {e}", smtp.host))?;
            builder = builder.tls(Tls::Required(tls));
        }
        let mut builder = builder
            .port(smtp.port)
            .timeout(Some(Duration::from_secs(15)));
        if !smtp.username.is_empty() {
            builder = builder.credentials(Credentials::new(
                smtp.username.clone(),
                smtp.password.clone(),
            ));
        }
        let from = smtp
            .from
            .parse()
            .map_err(|e| format!("notify.smtp.from {:?}: {e}", smtp.from))?;
        let to = recipient
            .email
            .iter()
            .map(|a| a.parse().map_err(|e| format!("{a:?}: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Channel::Email {
            mailer: builder.build(),
            from,
            to,
        })
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Channel::Webhook { .. } => "webhook",
            Channel::Email { .. } => "email",
        }
    }

    /// Sends `items` as one message: one notification as itself, several as a digest.
    pub async fn send(&self, items: &[Notification]) -> Result<(), String> {
        match self {
            Channel::Webhook { client, config } => webhook(client, config, items).await,
            Channel::Email { mailer, from, to } => {
                let (subject, body) = digest_text(items);
                let mut message = Message::builder().from(from.clone()).subject(subject);
                for t in to {
                    message = message.to(t.clone());
                }
                let keys: Vec<&str> = items.iter().map(|n| n.idempotency_key.as_str()).collect();
                let message = message
                    .header(ContentType::TEXT_PLAIN)
                    .body(format!(
                        "{body}\n-- \nIdempotency-Key: {}\n",
                        keys.join(", ")
                    ))
                    .map_err(|e| format!("email: {e}"))?;
                mailer
                    .send(message)
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("smtp: {}", with_causes(&e)))
            }
        }
    }
}

/// An error with what caused it: a client's own text is often only "error sending request",
/// and the person reading the delivery's last error needs "invalid peer certificate:
/// UnknownIssuer".
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// The key a request of `items` carries: the notification's own, or for a digest one made
/// of all of theirs.
pub fn request_key(items: &[Notification]) -> String {
    match items {
        [one] => one.idempotency_key.clone(),
        many => {
            let keys: Vec<&str> = many.iter().map(|n| n.idempotency_key.as_str()).collect();
            format!(
                "digest:{}",
                &ioc_contract::sha256_hex(&keys.join("\n"))[..32]
            )
        }
    }
}

/// `sha256=<hex>` of `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

async fn webhook(
    client: &reqwest::Client,
    config: &WebhookConfig,
    items: &[Notification],
) -> Result<(), String> {
    let body = match items {
        [one] => serde_json::to_vec(one),
        many => serde_json::to_vec(&json!({ "digest": true, "notifications": many })),
    }
    .map_err(|e| format!("encoding: {e}"))?;
    let mut request = client
        .post(&config.url)
        .header("Content-Type", "application/json")
        .header("Idempotency-Key", request_key(items));
    for (k, v) in &config.headers {
        request = request.header(k, v);
    }
    if !config.secret.is_empty() {
        request = request.header("X-IOC-Signature", signature(&config.secret, &body));
    }
    let response = request
        .body(body)
        .send()
        .await
        .map_err(|e| format!("webhook {}: {}", config.url, with_causes(&e)))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!(
            "webhook {} answered HTTP {}",
            config.url,
            status.as_u16()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
