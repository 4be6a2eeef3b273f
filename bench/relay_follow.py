"""Follows one Observer (an agent or the relay) with grpcio's defaults and counts
what arrives until SIGTERM: flows, flows' nodes, LostEvents (events lost, by
source), node status events. Prints one JSON line on exit.

Usage: relay_follow.py STUBS_DIR HOST:PORT"""
import json
import signal
import sys
import threading

import grpc

sys.path.insert(0, sys.argv[1])
from observer import observer_pb2, observer_pb2_grpc  # noqa: E402

counts = {"flows": 0, "lost": 0, "lost_events": 0, "node_events": 0, "nodes": {}}
stop = threading.Event()


def main():
    channel = grpc.insecure_channel(sys.argv[2])
    stub = observer_pb2_grpc.ObserverStub(channel)
    call = stub.GetFlows(observer_pb2.GetFlowsRequest(follow=True))
    signal.signal(signal.SIGTERM, lambda *_: (stop.set(), call.cancel()))
    print("following", flush=True)
    try:
        for r in call:
            if r.HasField("flow"):
                counts["flows"] += 1
                counts["nodes"][r.node_name] = counts["nodes"].get(r.node_name, 0) + 1
            elif r.HasField("lost_events"):
                counts["lost_events"] += 1
                counts["lost"] += r.lost_events.num_events_lost
            elif r.HasField("node_status"):
                counts["node_events"] += 1
    except grpc.RpcError as e:
        if not stop.is_set():
            raise SystemExit(f"GetFlows: {e}")
    print(json.dumps(counts), flush=True)


main()
