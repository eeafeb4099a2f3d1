//! `kafka.security_protocol`, `kafka.sasl_*`, `kafka.ssl_ca_location` and
//! `kafka.extra` reach librdkafka: an invalid value is refused by
//! librdkafka itself, and SASL against the plaintext test broker fails where
//! the same client without it delivers.

use bytes::Bytes;
use gochat_common::bus::Producer;
use gochat_kafka::{Kafka, KafkaConfig, TokioRuntime};
use std::collections::BTreeMap;

fn brokers() -> String {
    std::env::var("GOCHAT_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

fn producer_error(cfg: KafkaConfig) -> String {
    match Kafka::new(cfg).producer::<TokioRuntime>("security-test") {
        Ok(_) => panic!("the producer was created"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn security_settings_are_passed_to_librdkafka() {
    let e = producer_error(KafkaConfig { security_protocol: "bogus".into(), ..Default::default() });
    assert!(e.contains("security.protocol"), "{e}");
    let e = producer_error(KafkaConfig {
        security_protocol: "sasl_plaintext".into(),
        sasl_mechanism: "NOT-A-MECHANISM".into(),
        ..Default::default()
    });
    assert!(e.to_lowercase().contains("sasl"), "{e}");
    let e = producer_error(KafkaConfig {
        extra: BTreeMap::from([("not.a.librdkafka.property".to_owned(), "1".to_owned())]),
        ..Default::default()
    });
    assert!(e.contains("not.a.librdkafka.property"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_against_a_plaintext_broker_does_not_deliver() {
    let topic = format!("security-test-{}", std::process::id());
    let plain = Kafka::new(KafkaConfig { brokers: brokers(), message_timeout_ms: 5_000, ..Default::default() });
    plain.ensure_topic(&topic, 1).await.expect("topic");
    let p = plain.producer::<TokioRuntime>("plain").unwrap();
    p.send(&topic, b"k", None, Bytes::from_static(b"plain")).await.expect("plaintext delivers");

    let sasl = Kafka::new(KafkaConfig {
        brokers: brokers(),
        message_timeout_ms: 3_000,
        security_protocol: "sasl_plaintext".into(),
        sasl_mechanism: "PLAIN".into(),
        sasl_username: "gochat".into(),
        sasl_password: "secret".into(),
        ..Default::default()
    });
    let p = sasl.producer::<TokioRuntime>("sasl").unwrap();
    let r = p.send(&topic, b"k", None, Bytes::from_static(b"sasl")).await;
    assert!(r.is_err(), "a SASL client delivered to a broker without SASL");
}
