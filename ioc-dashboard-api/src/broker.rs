//! The API's own MQTT sessions with the broker: the broker's log ([`crate::connections`]) and
//! its dynamic security plugin ([`crate::dynsec`]). Each follows one topic filter, subscribing
//! again after every (re)connect, since the session is clean.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS, SubscribeReasonCode};
use tokio_util::sync::CancellationToken;

/// What a followed session reports.
pub enum Followed<'a> {
    /// The broker answered the subscription: granted or not.
    Subscribed(bool),
    Message(&'a Publish),
    /// The connection dropped; it is tried again in a second.
    Lost,
}

/// Connects with `options` and subscribes to `filter` until `shutdown`, reconnecting as needed,
/// and tells `on` what happens. Returns the client, to publish with.
pub fn follow(
    options: MqttOptions,
    filter: &'static str,
    qos: QoS,
    shutdown: CancellationToken,
    mut on: impl FnMut(Followed<'_>) + Send + 'static,
) -> (AsyncClient, tokio::task::JoinHandle<()>) {
    let (client, mut events) = AsyncClient::new(options, 100);
    let subscriber = client.clone();
    let task = tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                e = events.poll() => e,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Err(e) = subscriber.subscribe(filter, qos).await {
                        tracing::warn!(error = %e, %filter, "subscribing failed");
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => on(Followed::Subscribed(
                    ack.return_codes
                        .iter()
                        .all(|c| !matches!(c, SubscribeReasonCode::Failure)),
                )),
                Ok(Event::Incoming(Packet::Publish(p))) => on(Followed::Message(&p)),
                Ok(_) => {}
                Err(e) => {
                    on(Followed::Lost);
                    tracing::warn!(error = %e, %filter, "broker connection lost; reconnecting");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    (client, task)
}
