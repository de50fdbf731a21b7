//! The device registry on the bus: a topic of [`RegistryEvent`]s, folded by every instance into
//! a [`RegistryView`] (`ioc_contract::registry`): devices, the API's issued tokens, and the audit
//! trail of every change (the events themselves, each naming who made it and when).
//!
//! Why a topic: every stage already depends on the bus and nothing else is shared by all of them
//! (ingest has no ClickHouse); the log survives restarts; a new instance rebuilds the view by
//! reading from the start, and a registration reaches every running instance within
//! milliseconds, so ingest accepts a new device's first message without polling a database.

use std::collections::HashMap;
use std::time::Duration;

pub use ioc_contract::registry::RegistryView;
use ioc_contract::RegistryEvent;
use tokio_util::sync::CancellationToken;

use crate::{Bus, BusError, Consumer, Producer, Record, StartAt};

/// Publishes a registry event, waits until the bus has it durably, and folds it into `view`
/// (read-your-writes: the caller sees it at once; other processes through the topic). The copy
/// `view`'s own follower reads back is not folded in a second time.
pub async fn publish(
    producer: &Producer,
    bus: &Bus,
    view: &RegistryView,
    event: RegistryEvent,
) -> Result<(), BusError> {
    let payload = serde_json::to_vec(&event).expect("registry events serialize");
    let key = view.writing(&payload);
    let sent = producer
        .send(&bus.topics().registry, event.key(), &payload)
        .await;
    view.written(key, event, sent.is_ok());
    sent
}

/// Reads the registry topic up to its current end into `view`, then keeps following it in a
/// background task until `shutdown`. Returns once the view has caught up, so a caller that
/// starts work afterwards knows every device registered before it started.
pub async fn follow(
    bus: &Bus,
    view: RegistryView,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, BusError> {
    let topic = bus.topics().registry.clone();
    let mut consumer = bus.consumer(&[&topic], StartAt::Beginning)?;
    catch_up(bus, &topic, &mut consumer, |r| {
        apply_message(&view, &r.payload)
    })
    .await?;
    Ok(tokio::spawn(async move {
        keep_following(consumer, view, shutdown).await
    }))
}

/// How long a Kafka read "to the end" waits for more after the reported end.
const KAFKA_TAIL_GRACE: Duration = Duration::from_secs(1);

/// Feeds `consumer`'s records of `topic` (every partition, read from the beginning) to `each`
/// until the topic's end as it was when called (on Kafka, and a second without more).
pub(crate) async fn catch_up(
    bus: &Bus,
    topic: &str,
    consumer: &mut Consumer,
    mut each: impl FnMut(Record),
) -> Result<(), BusError> {
    let ends = {
        let b = bus.clone();
        let t = topic.to_string();
        tokio::task::spawn_blocking(move || -> Result<HashMap<i32, i64>, BusError> {
            let mut ends = HashMap::new();
            for partition in 0..b.partitions(&t)? {
                let (low, high) = b.watermarks(&t, partition)?;
                if high > low {
                    ends.insert(partition, high);
                }
            }
            Ok(ends)
        })
        .await
        .expect("watermarks task")?
    };
    let mut unfinished = ends;
    while !unfinished.is_empty() {
        let record = consumer.recv().await?;
        if unfinished
            .get(&record.partition)
            .is_some_and(|end| record.offset + 1 >= *end)
        {
            unfinished.remove(&record.partition);
        }
        each(record);
    }
    // tansu 0.6 reports a partition's high watermark as if each producer batch were one record
    // (a batch of 4 at offsets 0..3 reads as high = 1), so on Kafka the end is also "nothing
    // more for a moment" (its first fetch of a partition takes ~250 ms here).
    if matches!(bus, Bus::Kafka(_)) {
        while let Ok(record) = tokio::time::timeout(KAFKA_TAIL_GRACE, consumer.recv()).await {
            each(record?);
        }
    }
    Ok(())
}

async fn keep_following(mut consumer: Consumer, view: RegistryView, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            record = consumer.recv() => match record {
                Ok(r) => apply_message(&view, &r.payload),
                Err(e) => {
                    tracing::warn!(error = %e, "registry topic read failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            },
        }
    }
}

fn apply_message(view: &RegistryView, payload: &[u8]) {
    if payload.is_empty() {
        return;
    }
    match serde_json::from_slice::<RegistryEvent>(payload) {
        Ok(event) => view.apply_from_topic(payload, event),
        Err(e) => tracing::error!(error = %e, "unreadable registry event skipped"),
    }
}
