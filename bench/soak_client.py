"""One soak client inside a lab pod: sends one kind of request, each on its own
connection, about ten a second until a deadline, and appends one JSON line per
request to OUT: {"kind", "t0", "t1", "outcome"} (times in seconds since the epoch).

Usage: soak_client.py KIND OUT DEADLINE
  http     GET /get and POST /post to api-service:80   outcome: status code or error
  redis    SET other:<n> and SET cache:<n> on db-service:6379   outcome: ok, noperm or error
  kafka    Produce to topics orders and secret on kafka:9092, a new producer each
           outcome: ok, denied (TOPIC_AUTHORIZATION_FAILED) or error
  tcp      a TCP connection to db-service:6379           outcome: connected or error
  ct-fill  keeps conntrack full-ish: 400 UDP sockets each send a datagram to
           db-service:9999 every 5 s (400-800 entries held); records nothing
"""
import http.client
import json
import socket
import sys
import time

kind, out, deadline = sys.argv[1], sys.argv[2], float(sys.argv[3])
TIMEOUT = 2.0


PEER = [None]


def http_request(method, path):
    conn = http.client.HTTPConnection("api-service", 80, timeout=TIMEOUT)
    try:
        conn.connect()
        PEER[0] = (conn.sock.getsockname()[1], conn.sock.getpeername()[0])
        conn.request(method, path, body=b"x" if method == "POST" else None)
        resp = conn.getresponse()
        resp.read()
        return str(resp.status)
    finally:
        conn.close()


def redis_set(key):
    with socket.create_connection(("db-service", 6379), timeout=TIMEOUT) as s:
        cmd = f"*3\r\n$3\r\nSET\r\n${len(key)}\r\n{key}\r\n$1\r\n1\r\n".encode()
        s.sendall(cmd)
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = s.recv(256)
            if not chunk:
                break
            reply += chunk
        if reply.startswith(b"+OK"):
            return "ok"
        if reply.startswith(b"-NOPERM"):
            return "noperm"
        return "error:" + reply[:40].decode(errors="replace").strip()


def kafka_produce(topic):
    from kafka import KafkaProducer
    from kafka.errors import TopicAuthorizationFailedError
    producer = KafkaProducer(bootstrap_servers="kafka:9092", api_version=(2, 4, 0),
                             enable_idempotence=False, retries=0, linger_ms=0,
                             request_timeout_ms=int(TIMEOUT * 1000),
                             max_block_ms=int(TIMEOUT * 1000))
    try:
        producer.send(topic, b"x").get(timeout=TIMEOUT)
        return "ok"
    except TopicAuthorizationFailedError:
        return "denied"
    finally:
        producer.close(timeout=1)


def tcp_connect():
    with socket.create_connection(("db-service", 6379), timeout=1.0):
        return "connected"


def requests(n):
    if kind == "http":
        return [("http-get", lambda: http_request("GET", "/get")),
                ("http-post", lambda: http_request("POST", "/post"))]
    if kind == "redis":
        return [("redis-set-other", lambda: redis_set(f"other:{n}")),
                ("redis-set-cache", lambda: redis_set(f"cache:{n}"))]
    if kind == "kafka":
        return [("kafka-produce-orders", lambda: kafka_produce("orders")),
                ("kafka-produce-secret", lambda: kafka_produce("secret"))]
    return [("tcp-connect", tcp_connect)]


if kind == "kafka":
    # The broker creates topics on first use: create them before anything is judged.
    for topic in ("orders", "secret"):
        for _ in range(20):
            try:
                kafka_produce(topic)
                break
            except Exception:  # not ready yet
                time.sleep(0.5)

if kind == "ct-fill":
    sockets = []
    for _ in range(400):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("", 0))
        sockets.append(u)
    target = (socket.gethostbyname("db-service"), 9999)
    while time.time() < deadline:
        for u in sockets:
            try:
                u.sendto(b"x", target)
            except OSError:  # an ICMP error from an earlier datagram
                pass
            time.sleep(5 / len(sockets))
    sys.exit(0)

n = 0
with open(out, "a", buffering=1) as f:
    while time.time() < deadline:
        for name, send in requests(n):
            t0 = time.time()
            try:
                outcome = send()
            except Exception as e:  # a refused or timed-out request is an outcome
                outcome = "error:" + type(e).__name__
            record = {"kind": name, "t0": t0, "t1": time.time(), "outcome": outcome}
            if PEER[0]:
                record["port"], record["peer"] = PEER[0]
                PEER[0] = None
            f.write(json.dumps(record) + "\n")
        n += 1
        time.sleep(0.1)
