"""Produce to an allowed and a denied topic on one confluent-kafka producer.

Usage: kafka_produce_acl.py BOOTSTRAP ALLOWED DENIED. Prints one line per topic:
"<topic>: delivered" or "<topic>: <error name>", then produces to ALLOWED again
from a fresh producer (the first one's metadata requests now name the denied
topic too, and a request naming a denied topic is denied whole).
"""
import sys

from confluent_kafka import KafkaException, Producer

bootstrap, allowed, denied = sys.argv[1:4]
def new_producer():
    return Producer({
        "bootstrap.servers": bootstrap,
        "log_level": 0,
        "message.timeout.ms": 8000,
        "enable.idempotence": False,
    })


producer = new_producer()


def produce(topic):
    result = {}

    def done(err, msg):
        result["err"] = err

    try:
        producer.produce(topic, b"value", callback=done)
    except KafkaException as e:
        return e.args[0].name()
    producer.flush(15)
    err = result.get("err")
    return "delivered" if err is None else err.name()


for topic in (allowed, denied):
    print(f"{topic}: {produce(topic)}", flush=True)
producer = new_producer()
print(f"{allowed}: {produce(allowed)}", flush=True)
