//! The message bus between stages, with two implementations behind one interface:
//!
//! - [`KafkaBus`]: any Kafka-protocol broker (Apache Kafka, Redpanda, tansu) through rdkafka,
//!   with the settings the pipeline's guarantees rely on (idempotent producer with `acks=all`,
//!   no broker-side consumer groups).
//! - [`embedded::EmbeddedLog`]: the durable per-topic log of `ioc up`, in a directory.
//! - [`Bus`], [`Producer`], [`Consumer`]: what stages use; a send resolves once the record is
//!   durable in either implementation, and a consumer reads assigned partitions from offsets.
//! - [`registry`]: the device registry, a topic of registration events that every instance of
//!   every stage folds into the same in-memory view.
//! - [`audit`]: the audit log of personal-data reads.
//!
//! Stages reach each other only through here; none imports another.

pub mod audit;
pub mod embedded;
pub mod registry;
pub mod retry;

use std::time::Duration;

use ioc_config::KafkaConfig;
use ioc_contract::Topics;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::embedded::{EmbeddedLog, LogError, LogReader, LogStart};

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
    #[error("embedded bus: {0}")]
    Embedded(#[from] LogError),
}

/// `fetch.wait.max.ms` of every consumer (see `KafkaBus::ungrouped_consumer`).
const FETCH_WAIT_MS: &str = "100";

/// Most records a producer puts in one record batch. A consumer that resumes at a checkpointed
/// offset starts this many records earlier: tansu 0.6 returns nothing for a fetch that starts
/// inside a record batch (measured: a consumer assigned at offset 3 of a 10-record batch
/// receives nothing until a later batch arrives, silently skipping the rest of that batch),
/// and starting at or before the batch's first record avoids it. The stream drops the records
/// below its checkpoint (they were decided before; its rate limit must decide each once).
pub const MAX_BATCH_RECORDS: i64 = 10_000;

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

    /// Creates the deployment's topics if they do not exist. The registry, the audit log and the
    /// rules have one partition so that their events keep one order; the rest use
    /// `kafka.partitions`.
    pub async fn ensure_topics(&self) -> Result<(), BusError> {
        let admin: AdminClient<DefaultClientContext> = self.base().create()?;
        let new: Vec<NewTopic> = self
            .topics
            .all()
            .into_iter()
            .map(|name| {
                let partitions = if name == self.topics.registry
                    || name == self.topics.audit
                    || name == self.topics.rules
                {
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
            // At most this many records per record batch (librdkafka's default, made explicit):
            // consumers resumed at an offset start this far earlier, see MAX_BATCH_RECORDS.
            .set("batch.num.messages", MAX_BATCH_RECORDS.to_string())
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
            // A start below what the broker still holds begins at the oldest record, never at
            // the end (librdkafka's default would skip everything in between).
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // How long a fetch may wait for records to arrive. tansu 0.6 answers a waiting fetch
            // only when the wait ends, so librdkafka's 500 ms default delayed every record that
            // arrived during it: ingest learnt of a registered device ~650 ms after the API
            // answered (a first message sooner was `unknown_device`), and the live feed lagged
            // as much. Measured here with 100 ms: 50-250 ms, for 2.8 % of a core of tansu with
            // one idle API and ingest (20 ms: ~50 ms for 9.3 %). A busy topic's fetches return
            // with data at once anyway.
            .set("fetch.wait.max.ms", FETCH_WAIT_MS);
        Ok(c.create()?)
    }

    /// Partition count of a topic, from broker metadata.
    pub fn partitions_of(&self, topic: &str) -> Result<i32, BusError> {
        let consumer: BaseConsumer = self.base().create()?;
        partition_count(&consumer, topic)
    }
}

fn partition_count<C: rdkafka::consumer::ConsumerContext>(
    consumer: &impl rdkafka::consumer::Consumer<C>,
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

/// The partition a record keyed `key` goes to among `partitions`: librdkafka's default
/// (`consistent_random`) partitioner for a non-empty key, CRC-32 of the key modulo the count.
/// Every producer here keys by device id, so a device's records of every topic with the same
/// count land on the same partition number: what makes the stream process that consumes a
/// device's readings also the one that receives its alert commands.
pub fn key_partition(key: &str, partitions: i32) -> i32 {
    if partitions <= 1 {
        return 0;
    }
    (crc32fast::hash(key.as_bytes()) % partitions as u32) as i32
}

/// Where a consumer starts in a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The oldest record the bus still holds.
    Beginning,
    /// The next record to arrive (tail).
    End,
    /// This offset.
    Offset(i64),
}

impl From<StartAt> for Offset {
    fn from(s: StartAt) -> Offset {
        match s {
            StartAt::Beginning => Offset::Beginning,
            StartAt::End => Offset::End,
            StartAt::Offset(o) => Offset::Offset(o),
        }
    }
}

impl From<StartAt> for LogStart {
    fn from(s: StartAt) -> LogStart {
        match s {
            StartAt::Beginning => LogStart::Beginning,
            StartAt::End => LogStart::End,
            StartAt::Offset(o) => LogStart::Offset(o),
        }
    }
}

/// One record consumed from the bus.
#[derive(Debug, Clone)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub payload: Vec<u8>,
}

/// The bus of a deployment: Kafka, or the embedded log of `ioc up` (one partition per topic).
#[derive(Debug, Clone)]
pub enum Bus {
    Kafka(KafkaBus),
    Embedded { log: EmbeddedLog, topics: Topics },
}

impl Bus {
    pub fn topics(&self) -> &Topics {
        match self {
            Bus::Kafka(k) => &k.topics,
            Bus::Embedded { topics, .. } => topics,
        }
    }

    /// Creates missing topics (the embedded log has them from the start).
    pub async fn ensure_topics(&self) -> Result<(), BusError> {
        match self {
            Bus::Kafka(k) => k.ensure_topics().await,
            Bus::Embedded { .. } => Ok(()),
        }
    }

    pub fn partitions_of(&self, topic: &str) -> Result<i32, BusError> {
        match self {
            Bus::Kafka(k) => k.partitions_of(topic),
            Bus::Embedded { .. } => Ok(1),
        }
    }

    /// The first offset a partition holds and the offset after its last record (Kafka's low
    /// and high watermarks). Blocking.
    pub fn watermarks(&self, topic: &str, partition: i32) -> Result<(i64, i64), BusError> {
        match self {
            Bus::Kafka(k) => {
                let consumer: BaseConsumer = k.base().create()?;
                Ok(consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?)
            }
            Bus::Embedded { log, .. } => Ok((log.first_offset(topic)?, log.durable_end(topic)?)),
        }
    }

    /// How many partitions `topic` has (the embedded log has one per topic).
    pub fn partitions(&self, topic: &str) -> Result<i32, BusError> {
        match self {
            Bus::Kafka(k) => {
                let consumer: BaseConsumer = k.base().create()?;
                partition_count(&consumer, topic)
            }
            Bus::Embedded { .. } => Ok(1),
        }
    }

    /// Every record of `topic` up to its end as it is now, from the oldest the bus holds, in
    /// order within each partition. For small topics and rare requests (the dead-letter replay).
    pub async fn read_all(&self, topic: &str) -> Result<Vec<Record>, BusError> {
        let mut records = Vec::new();
        self.scan(topic, |r| records.push(r)).await?;
        Ok(records)
    }

    /// Hands every record of `topic` (every partition, from the beginning, to its end as it was
    /// when called) to `each`, without keeping them.
    pub async fn scan(&self, topic: &str, each: impl FnMut(Record)) -> Result<(), BusError> {
        let mut consumer = self.consumer(&[topic], StartAt::Beginning)?;
        registry::catch_up(self, topic, &mut consumer, each).await
    }

    /// A producer whose sends resolve once the record is durable. `linger` batches Kafka sends.
    pub fn producer(&self, linger: Duration) -> Result<Producer, BusError> {
        match self {
            Bus::Kafka(k) => Ok(Producer::Kafka(k.producer(linger)?)),
            Bus::Embedded { log, .. } => Ok(Producer::Embedded(log.clone())),
        }
    }

    /// A consumer reading every partition of `topics` from `start`.
    pub fn consumer(&self, topics: &[&str], start: StartAt) -> Result<Consumer, BusError> {
        match self {
            Bus::Kafka(k) => Ok(Consumer::Kafka(k.assigned_consumer(topics, start.into())?)),
            Bus::Embedded { log, .. } => Ok(Consumer::Embedded(EmbeddedConsumer {
                readers: topics
                    .iter()
                    .map(|t| log.reader(t, start.into()))
                    .collect::<Result<_, _>>()?,
                turn: 0,
            })),
        }
    }

    /// A consumer reading the given partitions of several topics, each from its own position,
    /// with [`Bus::consumer_at`]'s caveat: on Kafka it may first deliver records before a
    /// requested offset.
    pub fn consumer_from(&self, starts: &[(&str, i32, StartAt)]) -> Result<Consumer, BusError> {
        match self {
            Bus::Kafka(k) => {
                let consumer = k.ungrouped_consumer()?;
                let mut tpl = TopicPartitionList::new();
                for &(topic, partition, start) in starts {
                    let start = match start {
                        StartAt::Offset(o) => StartAt::Offset((o - MAX_BATCH_RECORDS).max(0)),
                        other => other,
                    };
                    tpl.add_partition_offset(topic, partition, start.into())?;
                }
                consumer.assign(&tpl)?;
                Ok(Consumer::Kafka(consumer))
            }
            Bus::Embedded { log, .. } => Ok(Consumer::Embedded(EmbeddedConsumer {
                readers: starts
                    .iter()
                    .filter(|(_, p, _)| *p == 0)
                    .map(|&(topic, _, s)| log.reader(topic, s.into()))
                    .collect::<Result<_, _>>()?,
                turn: 0,
            })),
        }
    }

    /// A consumer reading the given partitions of `topic`, each from its own position. On
    /// Kafka it may first deliver up to [`MAX_BATCH_RECORDS`] records before a requested
    /// offset (a broker may not serve a fetch from inside a record batch), so the caller must
    /// drop (or tolerate) the records below the offset it asked for.
    pub fn consumer_at(
        &self,
        topic: &str,
        partitions: impl IntoIterator<Item = (i32, StartAt)>,
    ) -> Result<Consumer, BusError> {
        match self {
            Bus::Kafka(k) => Ok(Consumer::Kafka(k.assigned_consumer_at(
                topic,
                partitions.into_iter().map(|(p, s)| {
                    let s = match s {
                        StartAt::Offset(o) => StartAt::Offset((o - MAX_BATCH_RECORDS).max(0)),
                        other => other,
                    };
                    (p, s.into())
                }),
            )?)),
            Bus::Embedded { log, .. } => Ok(Consumer::Embedded(EmbeddedConsumer {
                readers: partitions
                    .into_iter()
                    .filter(|(p, _)| *p == 0)
                    .map(|(_, s)| log.reader(topic, s.into()))
                    .collect::<Result<_, _>>()?,
                turn: 0,
            })),
        }
    }
}

/// Sends records; clones share one connection (Kafka) or log (embedded).
#[derive(Clone)]
pub enum Producer {
    Kafka(FutureProducer),
    Embedded(EmbeddedLog),
}

impl Producer {
    /// Sends one record and resolves once it is durable: acknowledged by all in-sync replicas
    /// (Kafka) or fsynced (embedded). A Kafka send gives up after 5 s in the local queue.
    pub async fn send(&self, topic: &str, key: &str, payload: &[u8]) -> Result<(), BusError> {
        match self {
            Producer::Kafka(p) => p
                .send(
                    FutureRecord::to(topic).key(key).payload(payload),
                    Duration::from_secs(5),
                )
                .await
                .map(|_| ())
                .map_err(|(e, _)| BusError::Kafka(e)),
            Producer::Embedded(log) => log
                .send(topic, key.as_bytes(), payload)
                .await
                .map(|_| ())
                .map_err(BusError::Embedded),
        }
    }
}

/// Reads records from assigned partitions.
pub enum Consumer {
    Kafka(StreamConsumer),
    Embedded(EmbeddedConsumer),
}

impl Consumer {
    /// The next record, waiting for one.
    pub async fn recv(&mut self) -> Result<Record, BusError> {
        match self {
            Consumer::Kafka(c) => {
                let m = c.recv().await?;
                Ok(Record {
                    topic: m.topic().to_string(),
                    partition: m.partition(),
                    offset: m.offset(),
                    payload: m.payload().unwrap_or_default().to_vec(),
                })
            }
            Consumer::Embedded(c) => c.recv().await,
        }
    }
}

/// Reads several embedded topics, taking ready records from each in turn.
pub struct EmbeddedConsumer {
    readers: Vec<LogReader>,
    turn: usize,
}

impl EmbeddedConsumer {
    async fn recv(&mut self) -> Result<Record, BusError> {
        loop {
            let n = self.readers.len();
            if n == 0 {
                return std::future::pending().await;
            }
            for i in 0..n {
                let r = &mut self.readers[(self.turn + i) % n];
                if let Some(record) = r.try_next()? {
                    self.turn = (self.turn + i + 1) % n;
                    return Ok(Record {
                        topic: r.topic().to_string(),
                        partition: 0,
                        offset: record.offset,
                        payload: record.payload,
                    });
                }
            }
            if self.readers.iter().any(LogReader::ready) {
                tokio::task::yield_now().await;
                continue;
            }
            let waits = self.readers.iter_mut().map(|r| Box::pin(r.wait()));
            futures::future::select_all(waits).await.0?;
        }
    }
}
