//! The message bus between stages: Kafka (any Kafka-protocol broker: Apache Kafka, Redpanda,
//! tansu), through rdkafka.
//!
//! - [`KafkaBus`]: client settings, topic creation, producers and consumers with the settings
//!   the pipeline's guarantees rely on (idempotent producer with `acks=all`, manual commits).
//! - [`registry`]: the device registry, a topic of registration events that every instance of
//!   every stage folds into the same in-memory view.
//!
//! Stages reach each other only through here; none imports another.

pub mod registry;

use std::time::Duration;

use ioc_config::KafkaConfig;
use ioc_contract::Topics;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("kafka client error: {0}")]
    Kafka(#[from] KafkaError),
    #[error("creating topic {topic}: {code}")]
    CreateTopic {
        topic: String,
        code: RDKafkaErrorCode,
    },
    #[error("topic {0} not found in broker metadata")]
    NoSuchTopic(String),
}

/// Connection settings and topic names of one deployment's Kafka.
#[derive(Debug, Clone)]
pub struct KafkaBus {
    pub config: KafkaConfig,
    pub topics: Topics,
}

impl KafkaBus {
    pub fn new(config: KafkaConfig) -> KafkaBus {
        let topics = Topics::with_prefix(&config.topic_prefix);
        KafkaBus { config, topics }
    }

    fn base(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.config.brokers);
        c.set("log_level", "4");
        c
    }

    /// Creates the deployment's topics if they do not exist. The registry has one partition so
    /// that its events keep one order; the rest use `kafka.partitions`.
    pub async fn ensure_topics(&self) -> Result<(), BusError> {
        let admin: AdminClient<DefaultClientContext> = self.base().create()?;
        let new: Vec<NewTopic> = self
            .topics
            .all()
            .into_iter()
            .map(|name| {
                let partitions = if name == self.topics.registry {
                    1
                } else {
                    self.config.partitions
                };
                NewTopic::new(
                    name,
                    partitions,
                    TopicReplication::Fixed(self.config.replication),
                )
            })
            .collect();
        let results = admin
            .create_topics(
                &new,
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(BusError::CreateTopic { topic, code }),
            }
        }
        Ok(())
    }

    /// An idempotent producer (`acks=all`, no reordering or duplicates on retry) that batches
    /// for up to `linger`.
    pub fn producer(&self, linger: Duration) -> Result<FutureProducer, BusError> {
        let mut c = self.base();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", linger.as_millis().to_string())
            .set("compression.type", "none")
            // librdkafka retries within this time; past it the caller sees the error and decides.
            .set("message.timeout.ms", "60000")
            .set("queue.buffering.max.messages", "200000");
        Ok(c.create()?)
    }

    /// A consumer outside any group that reads every partition of `topics` from `offset`
    /// (`Offset::Beginning` to fold a log, `Offset::End` to tail it live).
    pub fn assigned_consumer(
        &self,
        topics: &[&str],
        offset: Offset,
    ) -> Result<StreamConsumer, BusError> {
        let consumer = self.ungrouped_consumer()?;
        let mut tpl = TopicPartitionList::new();
        for topic in topics {
            for partition in 0..partition_count(&consumer, topic)? {
                tpl.add_partition_offset(topic, partition, offset)?;
            }
        }
        consumer.assign(&tpl)?;
        Ok(consumer)
    }

    /// A consumer outside any group reading the given partitions of `topic`, each from its own
    /// offset. The stream uses it with offsets from its own checkpoint.
    pub fn assigned_consumer_at(
        &self,
        topic: &str,
        partitions: impl IntoIterator<Item = (i32, Offset)>,
    ) -> Result<StreamConsumer, BusError> {
        let consumer = self.ungrouped_consumer()?;
        let mut tpl = TopicPartitionList::new();
        for (partition, offset) in partitions {
            tpl.add_partition_offset(topic, partition, offset)?;
        }
        consumer.assign(&tpl)?;
        Ok(consumer)
    }

    /// A consumer that is in no group and commits nothing: partitions are assigned explicitly and
    /// positions kept by the caller. (librdkafka wants a group id all the same.) The pipeline
    /// uses no broker-side consumer groups: their failure handling differs between Kafka-protocol
    /// brokers, and the stream's checkpoint lives with its window state instead.
    fn ungrouped_consumer(&self) -> Result<StreamConsumer, BusError> {
        let mut c = self.base();
        c.set("group.id", "ioc-ungrouped")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        Ok(c.create()?)
    }

    /// Partition count of a topic, from broker metadata.
    pub fn partitions_of(&self, topic: &str) -> Result<i32, BusError> {
        let consumer: BaseConsumer = self.base().create()?;
        partition_count(&consumer, topic)
    }
}

fn partition_count<C: rdkafka::consumer::ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
) -> Result<i32, BusError> {
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let t = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| BusError::NoSuchTopic(topic.to_string()))?;
    if t.partitions().is_empty() {
        return Err(BusError::NoSuchTopic(topic.to_string()));
    }
    Ok(t.partitions().len() as i32)
}
