"""Produce one message to a fresh topic and consume it back, with confluent-kafka.

Usage: kafka_roundtrip.py BOOTSTRAP [TOPIC]. Prints "consumed <value>" and exits 0,
or exits non-zero with the reason.
"""
import sys
import time
import uuid

from confluent_kafka import Consumer, Producer

bootstrap = sys.argv[1]
topic = sys.argv[2] if len(sys.argv) > 2 else "roundtrip-" + uuid.uuid4().hex[:8]
value = "hello-" + uuid.uuid4().hex[:8]

producer = Producer({"bootstrap.servers": bootstrap, "log_level": 3})
producer.produce(topic, value.encode())
if producer.flush(15) != 0:
    sys.exit("produce: message not delivered")

consumer = Consumer({
    "bootstrap.servers": bootstrap,
    "group.id": "g-" + topic,
    "auto.offset.reset": "earliest",
    "session.timeout.ms": 6000,
    "log_level": 3,
})
consumer.subscribe([topic])
deadline = time.time() + 30
try:
    while time.time() < deadline:
        msg = consumer.poll(1.0)
        if msg is None or msg.error():
            continue
        got = msg.value().decode()
        if got != value:
            sys.exit(f"consumed {got!r}, produced {value!r}")
        print("consumed", got)
        sys.exit(0)
finally:
    consumer.close()
sys.exit("consume: nothing within 30 s")
