//! The bus on the real Kafka-protocol broker (tansu): what the stream's resume relies on.

use std::time::Duration;

use anyhow::Result;
use ioc_bus::{Bus, KafkaBus, StartAt};

use crate::harness::KAFKA;

/// A consumer resumed at an offset inside a producer's record batch still gets that record and
/// everything after it. (tansu 0.6 serves nothing for a fetch that starts mid-batch; the bus
/// starts such consumers earlier, and this test fails if that stops working.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_resumed_inside_a_record_batch_gets_every_record_from_there() -> Result<()> {
    let prefix = format!("t_resume_{}.", std::process::id());
    let bus = Bus::Kafka(KafkaBus::new(ioc_config::KafkaConfig {
        brokers: KAFKA.into(),
        topic_prefix: prefix,
        partitions: 1,
        replication: 1,
    }));
    bus.ensure_topics().await?;
    let topic = bus.topics().aggregates.clone();
    // A long linger: the ten sends go out as one record batch.
    let producer = bus.producer(Duration::from_millis(300))?;
    let sends = (0..10).map(|i| {
        let (p, t) = (producer.clone(), topic.clone());
        async move { p.send(&t, "k", format!("{i}").as_bytes()).await }
    });
    for r in futures::future::join_all(sends).await {
        r?;
    }
    for start in [0, 3, 7, 9] {
        let mut consumer = bus.consumer_at(&topic, [(0, StartAt::Offset(start))])?;
        let mut seen = Vec::new();
        while seen.last() != Some(&9) {
            let r = tokio::time::timeout(Duration::from_secs(15), consumer.recv())
                .await
                .map_err(|_| anyhow::anyhow!("start {start}: nothing after {seen:?}"))??;
            assert_eq!(String::from_utf8(r.payload)?, r.offset.to_string());
            seen.push(r.offset);
        }
        assert!(
            (start..10).all(|o| seen.contains(&o)),
            "start {start}: got {seen:?}"
        );
    }
    Ok(())
}
