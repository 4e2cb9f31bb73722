"""kafka-python against chronik-broker: create a topic, produce with acks=all, consume from the
beginning with a consumer group, commit, and check every value came back once, in order.

usage: kafka_python_roundtrip.py BOOTSTRAP TOPIC COUNT
"""
import sys

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

bootstrap, topic, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
admin.close()

producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0, request_timeout_ms=10000)
sent = [f"py-{i:05d}".encode() for i in range(count)]
futures = [producer.send(topic, value=v) for v in sent]
offsets = [f.get(timeout=30).offset for f in futures]
producer.close()
assert offsets == list(range(count)), offsets[:10]

consumer = KafkaConsumer(
    topic,
    bootstrap_servers=bootstrap,
    group_id="py-group",
    auto_offset_reset="earliest",
    enable_auto_commit=False,
    consumer_timeout_ms=15000,
)
got = []
for message in consumer:
    got.append(message.value)
    if len(got) == count:
        break
consumer.commit()
consumer.close()
assert got == sent, f"got {len(got)} of {count}"
print(f"kafka-python: {count} produced and consumed in order")
